"""The mesh, the logical-rules table and the param/optimizer-state shardings (8 simulated CPU devices)."""
import jax
import pytest
from jax.sharding import AxisType, PartitionSpec as P

from mosaic_jax.models import lm
from mosaic_jax.parallel import sharding
from mosaic_jax.training import optim, train_state
from mosaic_jax.models.config import ModelConfig

TINY = ModelConfig(n_layer=2, n_embd=32, n_head=4, pmem_size=16, vocab_size=64, block_size=16)


def test_resolve_mesh_shape():
    assert sharding.resolve_mesh_shape(1, -1, 1, 8) == (1, 8, 1)
    assert sharding.resolve_mesh_shape(2, -1, 2, 8) == (2, 2, 2)
    assert sharding.resolve_mesh_shape(-1, 2, 1, 8) == (4, 2, 1)
    with pytest.raises(ValueError, match="at most one"):
        sharding.resolve_mesh_shape(-1, -1, 1, 8)
    with pytest.raises(ValueError, match="not divisible"):
        sharding.resolve_mesh_shape(3, -1, 1, 8)
    with pytest.raises(ValueError, match="but there are 8 devices"):
        sharding.resolve_mesh_shape(2, 2, 1, 8)
    with pytest.raises(ValueError, match="mesh.tensor=0"):
        sharding.resolve_mesh_shape(1, -1, 0, 8)


def test_make_mesh_is_auto_with_named_axes():
    mesh = sharding.make_mesh(2, -1, 2)
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert all(t == AxisType.Auto for t in mesh.axis_types)


def test_logical_to_spec_divisibility_and_reuse():
    mesh = sharding.make_mesh(2, 2, 2)
    assert sharding.logical_to_spec(("vocab", "embed"), (64, 32), mesh) == P(None, "fsdp")
    assert sharding.logical_to_spec(("embed", "mlp"), (32, 128), mesh) == P("fsdp", "tensor")
    # 3 is not divisible by fsdp=2: replicated rather than an error
    assert sharding.logical_to_spec(("embed", "mlp"), (3, 128), mesh) == P(None, "tensor")
    # a mesh axis is never used twice in one spec
    assert sharding.logical_to_spec(("embed", "embed"), (32, 32), mesh) == P("fsdp")
    assert sharding.logical_to_spec(("batch", None), (8, 5), mesh) == P(("data", "fsdp"))
    assert sharding.logical_to_spec(("batch", None), (6, 5), mesh) == P()   # 6 % 4 != 0
    with pytest.raises(KeyError, match="LOGICAL_RULES"):
        sharding.logical_to_spec(("nonsense",), (4,), mesh)


@pytest.mark.parametrize("arch", ["mosaic", "gpt2"])
def test_every_param_axis_has_a_rule(arch):
    axes = lm.param_axes(TINY.replace(arch=arch, bias=True))
    names = {a for leaf in jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple)) for a in leaf}
    assert names <= set(sharding.LOGICAL_RULES), names - set(sharding.LOGICAL_RULES)


def test_golden_param_specs_on_2x2x2():
    """FSDP on embed (and P-mem slots), tensor parallel over heads, the input table never sharded on vocab."""
    mesh = sharding.make_mesh(2, 2, 2)
    abstract = jax.eval_shape(lambda: lm.init_params(TINY, jax.random.PRNGKey(0)))
    specs = sharding.tree_specs(lm.param_axes(TINY), abstract, mesh)
    blk = specs["blocks"]["mosaic"]
    assert specs["embed"] == P(None, "fsdp")
    assert specs["ln_out"]["weight"] == P()
    assert blk["cmem"]["wv"] == P(None, "fsdp", "tensor")
    assert blk["cmem"]["k_features"]["wk"] == P(None, None, "fsdp", "tensor")
    assert blk["cmem"]["out"]["wo"] == P(None, "tensor", None, "fsdp")
    assert blk["cmem"]["leaky_key_beta"] == P(None, "tensor")
    assert blk["pmem"]["mk"] == P(None, None, "tensor", "fsdp")
    assert blk["ln1"]["weight"] == P()


def test_gpt2_specs_megatron_pairing():
    mesh = sharding.make_mesh(1, 4, 2)
    cfg = TINY.replace(arch="gpt2")
    abstract = jax.eval_shape(lambda: lm.init_params(cfg, jax.random.PRNGKey(0)))
    blk = sharding.tree_specs(lm.param_axes(cfg), abstract, mesh)["blocks"]["gpt2"]
    assert blk["c_attn"] == P(None, "fsdp", None, "tensor")
    assert blk["c_fc"] == P(None, "fsdp", "tensor")
    assert blk["mlp_proj"] == P(None, "tensor", "fsdp")


def test_optimizer_state_sharded_like_params():
    mesh = sharding.make_mesh(1, 4, 2)
    tx = optim.make_optimizer(optim.OptimConfig(decay_steps=10), optim.decay_mask(lm.param_axes(TINY)))
    sh = train_state.state_shardings(TINY, tx, mesh)
    adam = sh.opt_state[1][0]   # chain(clip, adamw(...)) -> adamw's ScaleByAdamState
    assert jax.tree.leaves(adam.mu) == jax.tree.leaves(sh.params)
    assert jax.tree.leaves(adam.nu) == jax.tree.leaves(sh.params)
    assert adam.count.spec == P()
    assert sh.step.spec == P() and sh.rng.spec == P()


def test_batch_sharding_rows_over_data_and_fsdp():
    mesh = sharding.make_mesh(2, 2, 2)
    assert sharding.batch_sharding(mesh).spec == P(("data", "fsdp"), None)
    assert sharding.data_parallel_size(mesh) == 4
