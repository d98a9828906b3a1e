"""AdamW recipe: weight-decay masks (as the reference's configure_optimizers), the nanoGPT schedule, clipping."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mosaic_jax.models import lm
from mosaic_jax.training import optim
from mosaic_jax.models.config import ModelConfig


def _masked_counts(cfg):
    abstract = jax.eval_shape(lambda: lm.init_params(cfg, jax.random.PRNGKey(0)))
    mask = optim.decay_mask(lm.param_axes(cfg))
    per_layer = lambda path: any(getattr(k, "key", None) == "blocks" for k in path)  # noqa: E731
    counts = {True: [0, 0], False: [0, 0]}
    for (path, x), m in zip(jax.tree_util.tree_leaves_with_path(abstract), jax.tree.leaves(mask)):
        tensors = x.shape[0] if per_layer(path) else 1
        counts[m][0] += tensors
        counts[m][1] += math.prod(x.shape)
    return counts


def test_decay_groups_match_reference_paper_model():
    """spec §3.5: 85 decayed tensors (123,568,128 params), 109 not decayed (20,208 params) for L=12."""
    counts = _masked_counts(ModelConfig())   # the paper's 12-layer mosaic
    assert counts[True] == [85, 123_568_128]
    assert counts[False] == [109, 20_208]


def test_decay_mask_gpt2_excludes_norms_and_biases():
    cfg = ModelConfig(arch="gpt2", n_layer=2, n_embd=32, n_head=4, vocab_size=64, block_size=16, bias=True)
    mask = optim.decay_mask(lm.param_axes(cfg))
    blk = mask["blocks"]["gpt2"]
    assert blk["c_attn"] and blk["c_fc"] and blk["mlp_proj"] and blk["attn_proj"]
    assert mask["embed"] and mask["pos_embed"]
    assert not (blk["b_attn"] or blk["b_fc"] or blk["ln_1"]["weight"] or mask["ln_out"]["weight"])


def test_reference_ndim():
    assert optim.reference_ndim(("layers", "heads")) == 1
    assert optim.reference_ndim(("layers", "heads", "head_dim")) == 1          # a (C,) bias split per head
    assert optim.reference_ndim(("layers", "embed", "heads", "head_dim")) == 2  # a (C, C) linear
    assert optim.reference_ndim(("layers", "pmem_tables", "heads", "slots", "head_dim")) == 4


def _nanogpt_lr(it, lr, min_lr, warmup, decay):
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > decay:
        return min_lr
    ratio = (it - warmup) / (decay - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def test_schedule_is_nanogpt_get_lr():
    c = optim.OptimConfig(lr=5e-3, min_lr=1e-4, warmup_steps=20, decay_steps=200)
    sched = optim.lr_schedule(c)
    for it in [0, 1, 10, 19, 20, 21, 100, 199, 200, 201, 1000]:
        assert float(sched(it)) == pytest.approx(_nanogpt_lr(it, 5e-3, 1e-4, 20, 200), rel=1e-5), it


def test_weight_decay_only_on_masked_params():
    """With zero gradients Adam's step is 0, so only decoupled weight decay moves the params."""
    params = {"w": jnp.ones((3, 4)), "scale": jnp.ones((4,))}
    mask = {"w": True, "scale": False}
    c = optim.OptimConfig(lr=0.1, min_lr=0.1, warmup_steps=0, decay_steps=10, weight_decay=0.5)
    tx = optim.make_optimizer(c, mask)
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new["w"], 1.0 - 0.1 * 0.5, rtol=1e-6)
    np.testing.assert_array_equal(new["scale"], 1.0)


def test_global_norm_clipping():
    params = {"a": jnp.zeros((4,)), "b": jnp.zeros((2, 2))}
    grads = {"a": jnp.full((4,), 10.0), "b": jnp.full((2, 2), 10.0)}   # global norm 20
    c = optim.OptimConfig(lr=1e-3, warmup_steps=0, decay_steps=10, grad_clip=1.0, b1=0.9)
    tx = optim.make_optimizer(c, {"a": False, "b": True})
    _, state = tx.update(grads, tx.init(params), params)
    mu = state[1][0].mu   # adam's first moment = (1 - b1) * clipped gradient
    assert float(optax.global_norm(mu)) == pytest.approx(0.1 * 1.0, rel=1e-5)


def test_bad_optim_config_names_fields():
    with pytest.raises(ValueError, match="optim.lr"):
        optim.OptimConfig(lr=-1.0)
    with pytest.raises(ValueError, match="optim.warmup_steps"):
        optim.OptimConfig(warmup_steps=-1)
