"""Memory Mosaics v2: masks (short window, long skip, documents), gated keys, bandwidth, implementations that
must agree, reduction to v1, initialisation, configuration, counts."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mosaic_jax as mj
from mosaic_jax.models import lm
from mosaic_jax.models.mosaic_v2 import counts as v2_counts
from mosaic_jax.ops import memory, memory_v2
from mosaic_jax.training import optim
from mosaic_jax.models.config import ModelConfig
from mosaic_jax.models.mosaic.layers import ContextualMemory, MemoryFns

TINY_V2 = dict(arch="mosaic_v2", vocab_size=64, n_layer=2, n_embd=32, n_head=2, block_size=32, short_window=5,
               long_skip_min=2, long_skip_max=6, long_skip_eval=3, ic_dropout=0.0, hd_dropout=0.0)


def tiny(**kw) -> ModelConfig:
    return ModelConfig(**{**TINY_V2, **kw})


def rand(key: int, shape, scale: float = 1.0) -> jax.Array:
    return scale * jax.random.normal(jax.random.key(key), shape)


# ---------------------------------------------------------------------------------------------------------------
# Masks and pair counts: the definitions, written out with loops
# ---------------------------------------------------------------------------------------------------------------
def brute_mask(kind, T, look, skip_B, seg):
    B = seg.shape[0]
    out = np.zeros((B, T, T), bool)
    for b in range(B):
        for t in range(T):
            for j in range(T):
                ok = (t - look <= j <= t - 1) if kind == "short" else (j <= t - skip_B[b])
                out[b, t, j] = ok and seg[b, t] == seg[b, j]
    return out


SEG = np.array([[1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3],
                [1] * 16,
                [1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 0, 0]])


@pytest.mark.parametrize("kind", ["short", "long"])
def test_masks_and_counts_match_definitions(kind: str) -> None:
    T = SEG.shape[1]
    skip = np.array([1, 3, 5])
    look = memory_v2.lookback(5, "t-h+1")
    assert look == 4 and memory_v2.lookback(5, "t-h") == 5
    allowed = np.asarray(memory_v2.memory_mask(kind, T, look=look, skip_B=skip, segment_ids_BT=SEG, B=3))
    np.testing.assert_array_equal(allowed, brute_mask(kind, T, look, skip, SEG))
    pos = memory_v2.doc_positions(jnp.asarray(SEG), 3, T)
    np.testing.assert_array_equal(np.asarray(pos)[0], [0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5])
    n = np.asarray(memory_v2.pair_counts(kind, pos, look=look, skip_B=skip))
    np.testing.assert_array_equal(n, allowed.sum(-1))


def readable_pairs(fn, T: int) -> np.ndarray:
    """(B,T,T) pattern of which pairs j influence which outputs t: |∂y_t/∂v_j| + |∂y_t/∂k_j| summed > 0."""
    B, H, D = 2, 2, 4
    q = rand(1, (B, T, H, D))
    k = memory.l2_normalize(rand(2, (B, T, H, D)))
    v = rand(3, (B, T, H, D))
    jv = jax.jacrev(lambda vv: fn(q, k, vv))(v)          # (B,T,H,D, B,T,H,D)
    jk = jax.jacrev(lambda kk: fn(q, kk, v))(k)
    infl = np.abs(np.asarray(jv)).sum((2, 3, 6, 7)) + np.abs(np.asarray(jk)).sum((2, 3, 6, 7))
    return np.stack([infl[b, :, b, :] for b in range(B)]) > 0


@pytest.mark.parametrize("impl", ["dense", "flash", "blockwise"])
@pytest.mark.parametrize("kind", ["short", "long"])
def test_causality_style_window_and_skip(kind: str, impl: str) -> None:
    """Perturbing pair j changes exactly the outputs the mask allows to read it (every implementation)."""
    T, look, skip = 10, 3, jnp.array([1, 4])
    seg = None if impl == "flash" else jnp.asarray([[1] * 4 + [2] * 6, [1] * 10])
    fn = lambda q, k, v: memory_v2.retrieve(q, k, v, kind, look=look, skip_B=skip, segment_ids_BT=seg,
                                            impl=impl, block=5)
    pattern = readable_pairs(fn, T)
    expect = np.asarray(memory_v2.memory_mask(kind, T, look=look, skip_B=skip, segment_ids_BT=seg, B=2))
    np.testing.assert_array_equal(pattern, expect)


@pytest.mark.parametrize("oldest", ["t-h+1", "t-h"])
def test_flash_and_blockwise_equal_dense(oldest: str) -> None:
    B, T, H, D = 2, 21, 2, 4
    look = memory_v2.lookback(9, oldest)
    k = memory.l2_normalize(rand(4, (B, T, H, D)))
    q = k * (3.0 + jnp.abs(rand(5, (B, T, H, 1))))
    v = rand(6, (B, T, H, D))
    skip = jnp.array([3, 11])
    for kind in ("short", "long"):
        kw = dict(look=look, skip_B=skip)
        dense = memory_v2.retrieve(q, k, v, kind, impl="dense", **kw)
        for impl in ("flash", "blockwise"):
            np.testing.assert_allclose(memory_v2.retrieve(q, k, v, kind, impl=impl, block=8, **kw), dense,
                                       atol=2e-6, err_msg=f"{kind} {impl}")
    # documents: blockwise == dense, values and gradients
    seg = jnp.asarray(np.repeat([[1, 2, 3], [1, 1, 2]], [6, 10, 5], axis=1))
    for kind in ("short", "long"):
        f = lambda impl, qq: jnp.sum(jnp.sin(memory_v2.retrieve(qq, k, v, kind, look=look, skip_B=skip,
                                                                segment_ids_BT=seg, impl=impl, block=8)))
        np.testing.assert_allclose(f("blockwise", q), f("dense", q), rtol=1e-5)
        np.testing.assert_allclose(jax.grad(lambda qq: f("blockwise", qq))(q), jax.grad(lambda qq: f("dense", qq))(q),
                                   atol=1e-5)
    with pytest.raises(ValueError, match="blockwise"):
        memory_v2.retrieve(q, k, v, "short", look=look, segment_ids_BT=seg, impl="flash")


# ---------------------------------------------------------------------------------------------------------------
# Gated keys and bandwidth
# ---------------------------------------------------------------------------------------------------------------
def sequential_state(kt, lg, ld, reset):
    """k̄_t = g_t k̃_t + λ_t k̄_{t−1} in plain float64 arithmetic (λ_t = 0 at a reset)."""
    kt, g, lam = np.asarray(kt, np.float64), np.exp(np.asarray(lg, np.float64)), np.exp(np.asarray(ld, np.float64))
    out = np.zeros_like(kt)
    for t in range(kt.shape[1]):
        prev = 0.0 if t == 0 else out[:, t - 1] * (lam[:, t] * (1 - reset[:, t, None]))[..., None]
        out[:, t] = g[:, t][..., None] * kt[:, t] + prev
    return out


def test_gated_keys_forms_agree_and_reset_at_documents() -> None:
    B, T, H, D = 2, 16, 3, 5
    kt = rand(7, (B, T, H, D))
    lg = rand(8, (B, T, H), 2.0)
    ld = -jnp.abs(rand(9, (B, T, H)))
    reset = np.zeros((B, T), bool)
    reset[:, 0] = True
    reset[0, [6, 12]] = True
    expect = sequential_state(kt, lg, ld, reset.astype(float))
    expect /= np.linalg.norm(expect, axis=-1, keepdims=True)
    for impl in ("scan", "matrix"):
        k, s, m = jax.jit(memory_v2.gated_keys, static_argnums=4)(kt, lg, ld, jnp.asarray(reset), impl)
        np.testing.assert_allclose(k, expect, atol=2e-6, err_msg=impl)
        np.testing.assert_allclose(np.asarray(s) * np.exp(np.asarray(m))[..., None],
                                   sequential_state(kt, lg, ld, reset.astype(float)), rtol=2e-5, atol=1e-6)
    # the recurrent step (the decoder's) from an empty state
    s, m = jnp.zeros((B, H, D)), jnp.full((B, H), memory_v2.NEG_LOG)
    step = jax.jit(memory_v2.gated_state_step)
    for t in range(T):
        dec = jnp.where(jnp.asarray(reset)[:, t, None], memory_v2.NEG_LOG, ld[:, t])
        s, m = step(s, m, kt[:, t], lg[:, t], dec)
    np.testing.assert_allclose(memory.l2_normalize(s), expect[:, -1], atol=2e-6)
    # a document's keys never mix in the previous document: row 0 from position 6 on = its own document alone
    k_alone, _, _ = memory_v2.gated_keys(kt[:1, 6:12], lg[:1, 6:12], ld[:1, 6:12], None, "scan")
    k_all, _, _ = memory_v2.gated_keys(kt, lg, ld, jnp.asarray(reset), "scan")
    np.testing.assert_allclose(k_all[:1, 6:12], k_alone, atol=1e-6)


def test_exponential_gate_does_not_overflow() -> None:
    B, T, H, D = 1, 20, 2, 4
    kt = rand(10, (B, T, H, D))
    lg = jnp.linspace(0.0, 300.0, T)[None, :, None] * jnp.ones((B, T, H))   # e^{300} overflows float32
    ld = -0.1 * jnp.ones((B, T, H))
    for impl in ("scan", "matrix"):
        f = lambda a: jnp.sum(jnp.sin(memory_v2.gated_keys(kt, a, ld, None, impl)[0]))
        value, g = jax.jit(jax.value_and_grad(f))(lg)
        assert bool(jnp.isfinite(value)) and bool(jnp.all(jnp.isfinite(g)))


def test_constant_gate_and_decay_is_v1_leaky_average() -> None:
    """With g ≡ 1 and λ ≡ e^{−λ_h}, the gated key direction is v1's leaky average."""
    B, T, H, D = 2, 17, 3, 4
    kt = rand(11, (B, T, H, D))
    lam = jnp.array([0.5, 1.7, 4.0])
    k, _, _ = memory_v2.gated_keys(kt, jnp.zeros((B, T, H)), jnp.broadcast_to(-lam, (B, T, H)), None, "scan")
    np.testing.assert_allclose(k, memory.l2_normalize(memory.leaky_average(kt, lam, "matrix")), atol=2e-6)


def test_bandwidth_reparameterisation() -> None:
    n = jnp.array([0, 1, 8, 1000])
    th = lambda x: jnp.array([x])
    beta = memory_v2.bandwidth(n, th(1.5), th(1.5), th(1 / 3))[:, 0]
    np.testing.assert_allclose(beta, np.exp(1.5) * (np.maximum(n, 1) ** (1 / 3) + 1), rtol=1e-5)
    # clamps: β₀, β₁ ≤ e^{10}, α = min(|θ|, 1)
    np.testing.assert_allclose(memory_v2.bandwidth(n, th(20.), th(20.), th(-3.))[:, 0],
                               np.exp(10) * (np.maximum(n, 1) + 1), rtol=1e-5)
    g = jax.grad(lambda a: jnp.sum(memory_v2.bandwidth(jnp.arange(5), th(1.), th(1.), a)))(th(0.3))
    assert bool(jnp.all(jnp.isfinite(g)))
    np.testing.assert_allclose(memory_v2.value_scale(jnp.array([0.0, -2.0, 40.0])), [1.0, np.exp(2), np.exp(15)],
                               rtol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Reduction to v1
# ---------------------------------------------------------------------------------------------------------------
def test_short_memory_covering_everything_is_v1_contextual_memory() -> None:
    """Window ≥ T, no long-term memory, α = 0 (constant β), W_g = W_λ = 0 (g = λ = 1: cumulative keys): the v2
    memory unit is v1's C-mem with key scale √β, value scale α_ψ and cumulative-sum keys."""
    B, T, C, H = 2, 15, 16, 2
    D = C // H
    h = rand(12, (B, T, C))
    wk, wv = rand(13, (C, H, D), 0.3), rand(14, (C, H, D), 0.3)
    coef, theta_v, b0, b1 = jnp.array([0.3, 0.8]), jnp.array([0.4, -0.2]), jnp.array([1.0, 0.2]), jnp.array([.5, 2.])
    p2 = dict(wk=wk, wv=wv, wg=jnp.zeros((C, H)), wl=jnp.zeros((C, H)), v_coef=coef, value_scale=theta_v,
              bw_b0=b0, bw_b1=b1, bw_alpha=jnp.zeros((H,)))
    y2, _ = memory_v2.unit_forward(p2, h, "short", look=T + 3, impl="dense")
    beta = np.exp(b0) + np.exp(b1)
    cfg1 = ModelConfig(n_embd=C, n_head=H, ic_dropout=0.0, hd_dropout=0.0)
    cumsum_keys = lambda kt, leak, scale, impl: memory.l2_normalize(jnp.cumsum(kt, axis=1)) * scale[None, None, :, None]
    fns = MemoryFns(keys=cumsum_keys)
    p1 = dict(leaky_key_beta=jnp.ones((H,)), kernel_beta=jnp.log(jnp.sqrt(beta)) / 10,
              value_beta=jnp.abs(theta_v) / 10, v_coef=coef, wv=wv, k_features=dict(wk=wk[None]),
              out=dict(wo=jnp.eye(C).reshape(H, D, C)))
    y1 = ContextualMemory(cfg1, fns).apply({"params": p1}, h)
    np.testing.assert_allclose(y2.reshape(B, T, C), y1, atol=2e-5)


def test_short_only_full_window_equals_long_only_skip_one() -> None:
    """At the model level both memories reduce to v1's strict causal read: a short-term memory whose window
    covers the sequence and a long-term memory with m = 1 give the same logits from the same weights."""
    T = 14
    short = tiny(n_layer=1, n_head_long=0, short_window=T + 1)
    long = tiny(n_layer=1, n_head_short=0, long_skip_eval=1)
    params = mj.init_params(short, jax.random.key(0))
    blocks = dict(params["blocks"]["mosaic_v2"])
    blocks["long"] = blocks.pop("short")
    params_long = {**params, "blocks": {"mosaic_v2": blocks}}
    tokens = jax.random.randint(jax.random.key(1), (2, T), 0, 64)
    np.testing.assert_allclose(mj.apply(long, params_long, tokens), mj.apply(short, params, tokens), atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# The language model
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def v2_model():
    cfg = tiny()
    return cfg, mj.init_params(cfg, jax.random.key(0))


def test_causality_and_document_isolation(v2_model) -> None:
    cfg, params = v2_model
    T = 18
    tokens = jax.random.randint(jax.random.key(2), (2, T), 0, 64)
    seg = jnp.asarray([[1] * 7 + [2] * 11, [1] * 18])
    f = jax.jit(lambda x, s: mj.apply(cfg, params, x, segment_ids_BT=s))
    base = np.asarray(f(tokens, seg))
    for s in (0, 5, 12):
        out = np.asarray(f(tokens.at[:, s].set((tokens[:, s] + 1) % 64), seg))
        np.testing.assert_array_equal(out[:, :s], base[:, :s])          # causal
        assert np.abs(out[1, s] - base[1, s]).max() > 1e-6
        if s < 7:                                                        # document 2 never sees document 1
            np.testing.assert_array_equal(out[0, 7:], base[0, 7:])
    # a packed document = the same document alone (no position encoding: masks and resets are relative)
    alone = np.asarray(mj.apply(cfg, params, tokens[:1, 7:]))
    np.testing.assert_allclose(base[0, 7:], alone[0], atol=2e-5)
    # doc_masking=False ignores the segment ids: the same as one document per row
    one_doc = np.asarray(f(tokens, jnp.ones_like(seg)))
    free = dataclasses.replace(cfg, doc_masking=False)
    np.testing.assert_allclose(np.asarray(mj.apply(free, params, tokens, segment_ids_BT=seg)), one_doc, atol=1e-5)
    # the implementations agree in the model (CPU auto = dense retrieval, T×T key matrix up to T = 64)
    blockwise = dataclasses.replace(cfg, v2_impl="blockwise", v2_key_impl="scan")
    np.testing.assert_allclose(mj.apply(blockwise, params, tokens, segment_ids_BT=seg), base, atol=2e-5)
    np.testing.assert_allclose(mj.apply(dataclasses.replace(cfg, v2_impl="flash"), params, tokens), one_doc,
                               atol=2e-5)


def test_training_skip_is_drawn_per_sequence_and_fixed_in_eval(v2_model) -> None:
    """With dropout off, training-mode logits of each row equal eval logits at some m in [min, max]: one m per
    sequence, shared by every layer; the same rng gives the same draw; eval uses long_skip_eval."""
    cfg, params = v2_model
    cfg = dataclasses.replace(cfg, long_skip_min=2, long_skip_max=3, long_skip_eval=3)
    tokens = jax.random.randint(jax.random.key(4), (8, 10), 0, 64)
    train_fn = jax.jit(lambda r: mj.apply(cfg, params, tokens, rng=r))
    train = np.asarray(train_fn(jax.random.key(5)))
    np.testing.assert_array_equal(train, np.asarray(train_fn(jax.random.key(5))))
    evals = {m: np.asarray(mj.apply(dataclasses.replace(cfg, long_skip_eval=m), params, tokens))
             for m in range(1, 5)}
    found = [[m for m, e in evals.items() if np.allclose(e[b], train[b], atol=1e-6)] for b in range(8)]
    assert all(len(f) == 1 and cfg.long_skip_min <= f[0] <= cfg.long_skip_max for f in found), found
    assert len({f[0] for f in found}) > 1                                # rows draw different m
    np.testing.assert_allclose(mj.apply(cfg, params, tokens), evals[cfg.long_skip_eval], atol=0)


def test_grads_finite_with_documents_and_training_mode() -> None:
    cfg = tiny(ic_dropout=0.1, hd_dropout=0.1)
    params = mj.init_params(cfg, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(6), (2, 9), 0, 64)
    seg = jnp.asarray([[1] * 4 + [2] * 5, [1] * 9])

    def loss(p):
        logits = mj.apply(cfg, p, tokens, rng=jax.random.key(7), segment_ids_BT=seg)
        total, n = lm.cross_entropy(logits, jnp.roll(tokens, -1, 1))
        return total / n
    grads = jax.jit(jax.grad(loss))(params)
    leaves = jax.tree.leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert all(float(jnp.abs(g).sum()) > 0 for g in leaves)


def test_table6_initialisation() -> None:
    cfg = tiny(n_layer=4, n_embd=64, n_head=4, vocab_size=512, ffn_hidden=256, weight_tying=False)
    params = mj.init_params(cfg, jax.random.key(0))
    C, F = cfg.n_embd, cfg.ffn_dim
    trunc = 0.98658  # std of a unit normal truncated at ±3
    blk = params["blocks"]["mosaic_v2"]
    for name, fan, w in [("wk", C, blk["short"]["wk"]), ("wv", C, blk["long"]["wv"]), ("wo", C, blk["wo"]),
                         ("w1", C, blk["ffn"]["w1"]), ("w2", F, blk["ffn"]["w2"]), ("wg", C, blk["long"]["wg"]),
                         ("wl", C, blk["short"]["wl"])]:
        for l in range(cfg.n_layer):
            sigma = 1 / np.sqrt(2 * fan * (l + 1))
            tol = 4 / np.sqrt(w[l].size)                                 # ~ 3 standard errors of a std estimate
            assert abs(float(jnp.std(w[l])) / (sigma * trunc) - 1) < tol, (name, l)
            assert float(jnp.abs(w[l]).max()) <= 3 * sigma * (1 + 1e-6), (name, l)
    for name in ("embed", "head"):
        sigma = 1 / np.sqrt(2 * C)
        assert abs(float(jnp.std(params[name])) / (sigma * trunc) - 1) < 0.05
        assert float(jnp.abs(params[name]).max()) <= 3 * sigma * (1 + 1e-6)
    s = blk["short"]
    np.testing.assert_allclose(s["bw_b0"], 1.5)
    np.testing.assert_allclose(s["bw_b1"], 1.5)
    np.testing.assert_allclose(s["bw_alpha"], 1 / 3, rtol=1e-6)
    np.testing.assert_allclose(s["value_scale"], 0.0)
    assert float(s["v_coef"].min()) >= 0 and float(s["v_coef"].max()) <= 1
    # every 1-D-per-layer parameter is excluded from weight decay, every matrix decayed
    mask = optim.decay_mask(mj.param_axes(cfg))
    assert mask["blocks"]["mosaic_v2"]["short"]["wg"] and not mask["blocks"]["mosaic_v2"]["short"]["bw_b0"]


@pytest.mark.parametrize("change,field", [
    (dict(n_head_short=0, n_head_long=0), "n_head_short"),
    (dict(n_head_long=-2), "n_head_long"),
    (dict(short_window=1), "short_window"),
    (dict(short_oldest="t-h-1"), "short_oldest"),
    (dict(long_skip_min=0), "long_skip_min"),
    (dict(long_skip_min=9, long_skip_max=4), "long_skip_max"),
    (dict(long_skip_eval=0), "long_skip_eval"),
    (dict(ffn_hidden=-1), "ffn_hidden"),
    (dict(bias=True), "bias"),
    (dict(v2_impl="splash"), "v2_impl"),
])
def test_config_validation_names_the_field(change, field) -> None:
    with pytest.raises(ValueError, match=field):
        tiny(**change)


def test_counts_match_initialiser_and_paper() -> None:
    cfg = tiny(n_head_short=3, weight_tying=False)
    assert v2_counts.param_count(cfg) == v2_counts.analytic_params(cfg)["total"]      # eval_shape of the init
    large = v2_counts.v2_large()
    n = v2_counts.analytic_params(large)["total"]
    assert abs(n / 9.9e9 - 1) < 0.01                                          # paper: 9.9B
    assert abs(v2_counts.analytic_params(dataclasses.replace(large, n_head_long=0))["total"] / 8.3e9 - 1) < 0.01
    assert abs(v2_counts.forward_flops_per_token(large)["total"] / 18.9e9 - 1) < 0.01   # paper: 18.9 GFLOPs
    assert abs(v2_counts.llama_params(32, 4096, 14336, v2_counts.LLAMA3_VOCAB) / 8.8e9 - 1) < 0.01


@pytest.mark.parametrize("name,counts", [("v2_small", v2_counts.v2_small), ("v2_large", v2_counts.v2_large)])
def test_presets_resolve_to_the_paper_sizes(name, counts) -> None:
    import importlib.util
    import pathlib
    from mosaic_jax.training import run_config
    path = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "configs" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    resolved = run_config.resolve(mod.get_config(), data_vocab_size=128000).model
    fields = ("arch", "vocab_size", "n_layer", "n_embd", "n_head", "short_heads", "long_heads", "ffn_dim",
              "short_window", "short_oldest", "long_skip_min", "long_skip_max", "long_skip_eval", "weight_tying",
              "doc_masking")
    assert {f: getattr(resolved, f) for f in fields} == {f: getattr(counts(), f) for f in fields}
