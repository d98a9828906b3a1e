"""The Pallas kernels (mosaic_jax.kernels.pallas) equal the dense reads, in Pallas interpret mode on CPU: values and
gradients, several blocks, ragged lengths, the zero rows, causality, the band masks of v2, document masks,
dropout, bfloat16, and the whole model through the `pallas` implementation switch.

Tolerances (float32): every output is a convex combination of values (|v| ≲ 3) computed in another order
(online softmax over key blocks vs one softmax), so the rounding differs by a few ulps per term summed:
≲ T·2⁻²⁴·max|v| ≈ 1e-5 at T ≤ 48 in the worst case and ~1e-6 typically. Hence max error ≤ 1e-5·max(1, |ref|).
Interpret mode compiles each kernel into a CPU loop (seconds each): shapes stay tiny, one compiled program per
case, compiled at XLA's lowest optimisation level (compile time dominates; the values do not depend on it
beyond rounding).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mosaic_jax as mj
from mosaic_jax.kernels import memory_vjp, pallas, platform
from mosaic_jax.ops import memory, memory_v2
from mosaic_jax.models.config import ModelConfig
from mosaic_jax.kernels.pallas import dropout as pdropout

BLOCKS = dict(block_q=16, block_k=8)     # T = 37 -> 3 query blocks x 5 key blocks, padded to 48
QUICK = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def rand(key: int, *shape: int, scale: float = 1.0) -> jax.Array:
    return scale * jax.random.normal(jax.random.key(key), shape, jnp.float32)


def quick_jit(f, *args):
    """f compiled for these arguments' shapes at the lowest XLA optimisation level."""
    return jax.jit(f).lower(*args).compile(QUICK)


def value_and_grads(f, args, w):
    """f(*args), and the gradient of Σ w·f in every argument (one jit: forward and both backward kernels)."""
    y, vjp = jax.vjp(f, *args)
    return y, vjp(w.astype(y.dtype))


def compiled_value_and_grads(f, args, w):
    return quick_jit(lambda *a: value_and_grads(f, a, w), *args)


def assert_close(a, b, tol: float = 1e-5) -> None:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    scale = max(1.0, float(np.abs(b).max()))
    assert float(np.abs(a - b).max()) <= tol * scale, (float(np.abs(a - b).max()), scale)


def compare(fast, dense, args, tol: float = 1e-5):
    """fast and dense agree in value and in the gradient of a random linear functional; returns fast's
    compiled (value, grads) function for more calls on other inputs of the same shapes."""
    w = rand(99, *jax.eval_shape(dense, *args).shape)
    fast_c = compiled_value_and_grads(fast, args, w)
    (yf, gf), (yd, gd) = fast_c(*args), compiled_value_and_grads(dense, args, w)(*args)
    assert_close(yf, yd, tol)
    for a, b in zip(gf, gd):
        assert_close(a, b, tol)
    return yf, fast_c


def dense_read(q, k, v, allowed_BTS, keep_BHTS=None, rate=0.0):
    """The dense read with an explicit dropout mask (the dense form's math, the kernel's mask)."""
    a = memory.masked_softmax(jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32),
                              allowed_BTS[:, None])
    if keep_BHTS is not None:
        a = jnp.where(keep_BHTS, a / (1 - rate), 0.0)
    return jnp.einsum("bhts,bshd->bthd", a.astype(v.dtype), v)


def sequence_keep(seed, B, H, T, rate):
    """The kernels' mask for (batch, head) pair g = b·H + h: row id g·T + t, column j (memory_vjp.dropout_keep)."""
    rows = jnp.arange(B * H)[:, None] * T + jnp.arange(T)[None, :]
    return memory_vjp.dropout_keep(seed, rows, T, rate).reshape(B, H, T, T)


# ---------------------------------------------------------------------------------------------------------------
# v1 contextual read
# ---------------------------------------------------------------------------------------------------------------
def test_contextual_equals_dense_zero_row_and_causality() -> None:
    B, T, H, D = 2, 37, 2, 8
    k, v = memory.l2_normalize(rand(0, B, T, H, D)) * 2.5, rand(1, B, T, H, D)
    fast = lambda k, v: pallas.contextual_read(k, v, **BLOCKS)
    y, fast_c = compare(fast, lambda k, v: memory.contextual_retrieval(k, v, impl="dense"), (k, v))
    np.testing.assert_array_equal(np.asarray(y[:, 0]), 0.0)                      # row 0 reads nothing
    # causality, bit for bit: keys and values from t0 on never reach rows < t0; values from t0 on never reach
    # row t0 (strict: j <= t - 1); the pair t0 - 1 reaches row t0
    t0 = 21
    y2, _ = fast_c(k.at[:, t0:].multiply(-1.5), v.at[:, t0:].add(3.0))
    np.testing.assert_array_equal(np.asarray(y2[:, :t0]), np.asarray(y[:, :t0]))
    assert np.abs(np.asarray(y2[:, t0:] - y[:, t0:])).max(axis=(0, 2, 3)).min() > 1e-3
    y2, _ = fast_c(k, v.at[:, t0:].add(3.0))
    np.testing.assert_array_equal(np.asarray(y2[:, :t0 + 1]), np.asarray(y[:, :t0 + 1]))
    y3, _ = fast_c(k, v.at[:, t0 - 1].add(3.0))
    np.testing.assert_array_equal(np.asarray(y3[:, :t0]), np.asarray(y[:, :t0]))
    assert np.abs(np.asarray(y3[:, t0] - y[:, t0])).max() > 1e-3


def test_contextual_bfloat16_close_to_float32_dense() -> None:
    """bf16 inputs: weights rounded to bf16 before the value matmul in both forms (relative 2⁻⁸), so the
    kernel and the bf16 dense form each sit within ~2⁻⁸·Σ|w·v| ≲ 1e-2 of the float32 read."""
    B, T, H, D = 1, 37, 2, 8
    k, v = memory.l2_normalize(rand(2, B, T, H, D)) * 2.0, rand(3, B, T, H, D)
    kb, vb = k.astype(jnp.bfloat16), v.astype(jnp.bfloat16)
    w = rand(98, B, T, H, D)
    yf, gf = compiled_value_and_grads(lambda k, v: pallas.contextual_read(k, v, **BLOCKS), (kb, vb), w)(kb, vb)
    k32, v32 = kb.astype(jnp.float32), vb.astype(jnp.float32)
    y32, g32 = compiled_value_and_grads(lambda k, v: memory.contextual_retrieval(k, v), (k32, v32), w)(k32, v32)
    assert yf.dtype == jnp.bfloat16 and gf[0].dtype == jnp.bfloat16
    assert_close(yf, y32, 2e-2)
    for a, b in zip(gf, g32):
        assert_close(a, b, 5e-2)


def test_dropout_hash_is_the_fused_kernels_mask() -> None:
    """The int32 hash of the kernels gives memory_vjp.dropout_keep's bits; its keep rate is 1 − p (binomial 5σ)."""
    seed, rate, R, C = jnp.uint32(123456789), 0.3, 300, 400
    ref = memory_vjp.dropout_keep(seed, jnp.arange(R, dtype=jnp.uint32), C, rate)
    got = pdropout.keep(jax.lax.bitcast_convert_type(seed, jnp.int32), jnp.arange(R, dtype=jnp.int32)[:, None],
                        jnp.arange(C, dtype=jnp.int32)[None, :], rate)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
    n = R * C
    assert abs(float(got.mean()) - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / n)
    # neighbouring rows and columns are uncorrelated
    g = np.asarray(got, np.float64) - (1 - rate)
    for a, b in ((g[1:], g[:-1]), (g[:, 1:], g[:, :-1])):
        assert abs((a * b).mean() / g.var()) < 5 / np.sqrt(a.size)


def test_contextual_dropout_mask_inside_the_kernel() -> None:
    """Uniform weights (k = 0) and one-hot values expose the kernel's mask: y[t, j]·t·(1 − p) = keep[t, j]."""
    B, T, H, rate, seed = 1, 24, 2, 0.4, jnp.uint32(5)
    k = jnp.zeros((B, T, H, T))
    v = jnp.broadcast_to(jnp.eye(T)[None, :, None, :], (B, T, H, T))
    y = quick_jit(lambda k, v: pallas.contextual_read(k, v, seed, rate, **BLOCKS), k, v)(k, v)
    t = jnp.arange(T)[None, None, :, None]
    got = np.asarray(jnp.transpose(y, (0, 2, 1, 3)) * jnp.maximum(t, 1) * (1 - rate))
    keep = np.asarray(sequence_keep(seed, B, H, T, rate) & memory.strict_causal_mask(T)[None, None])
    np.testing.assert_allclose(got, keep.astype(np.float32), atol=1e-5)


def test_contextual_dropout_equals_fused_and_dense_with_the_same_mask() -> None:
    B, T, H, D, rate, seed = 2, 37, 2, 8, 0.3, jnp.uint32(11)
    k, v = memory.l2_normalize(rand(4, B, T, H, D)) * 2.0, rand(5, B, T, H, D)
    keep = sequence_keep(seed, B, H, T, rate)
    allowed = jnp.broadcast_to(memory.strict_causal_mask(T), (B, T, T))
    fast = lambda k, v: pallas.contextual_read(k, v, seed, rate, **BLOCKS)
    y, _ = compare(fast, lambda k, v: dense_read(k, k, v, allowed, keep, rate), (k, v))
    assert_close(y, memory_vjp.contextual_read(k, v, 0, seed, rate))               # the CPU kernel's stream


# ---------------------------------------------------------------------------------------------------------------
# v1 persistent read
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rate", [0.0, 0.25])
def test_persistent_equals_dense(rate: float) -> None:
    """Unmasked flash over a ragged slot table (P = 20 -> 3 blocks of 8, the last padded); dropout: the fused
    read's masks (the same seed), checked against the dense math with those masks."""
    B, T, H, D, P, seed = 2, 9, 2, 8, 20, jnp.uint32(3)
    q, mk, mv = rand(6, B, T, H, D, scale=2.0), rand(7, H, P, D), rand(8, H, P, D)
    fast = lambda q, mk, mv: pallas.persistent_read(q, mk, mv, seed, rate, block_q=8, block_k=8)
    if rate == 0.0:
        dense = lambda q, mk, mv: memory.persistent_retrieval(q, mk[None], mv[None], impl="dense")
    else:
        rows = jnp.arange(B * T)[:, None] * H + jnp.arange(H)[None, :]
        keep = memory_vjp.dropout_keep(seed, rows, P, rate).reshape(B, T, H, P)

        def dense(q, mk, mv):
            a = jax.nn.softmax(jnp.einsum("bthd,hpd->bthp", q, mk), -1)
            return jnp.einsum("bthp,hpd->bthd", jnp.where(keep, a / (1 - rate), 0.0), mv)
    y, _ = compare(fast, dense, (q, mk, mv))
    assert_close(y, memory_vjp.persistent_read(q, mk, mv, 0, seed if rate else None, rate))


# ---------------------------------------------------------------------------------------------------------------
# v2: short window and long-term skip as block-sparse band masks
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,rate,docs", [("short", 0.0, False), ("long", 0.3, False), ("long", 0.3, True)])
def test_v2_reads_equal_dense(kind: str, rate: float, docs: bool) -> None:
    """With docs, packed documents (segment ids): row 0 holds 3 documents whose boundaries fall inside query
    and key blocks (10 and 30 are not multiples of 16 or 8), row 1 one; each document start reads nothing.
    One document case: the document test is the same per-tile comparison in all three kernels whatever the
    band, and each case costs a trace and compile of its kernels (~10 s), not its shapes."""
    B, T, H, D, look, seed = 2, 37, 2, 8, 5, jnp.uint32(9)
    skip = jnp.asarray([3, 20])            # 20 > block_q: whole query blocks read nothing
    seg = jnp.asarray([[0] * 10 + [1] * 20 + [2] * 7, [4] * T], jnp.int32) if docs else None
    k = memory.l2_normalize(rand(10, B, T, H, D))
    q, v = k * (1.0 + jnp.abs(rand(11, B, T, H, 1))), rand(12, B, T, H, D)     # q = β_t·k_t, β_t ≥ 1
    allowed = memory_v2.memory_mask(kind, T, look=look, skip_B=skip, segment_ids_BT=seg, B=B)
    keep = sequence_keep(seed, B, H, T, rate) if rate else None
    if kind == "short":
        fast = lambda q, k, v: pallas.short_term_read(q, k, v, look, seed, rate, segment_ids_BT=seg, **BLOCKS)
    else:
        fast = lambda q, k, v: pallas.long_term_read(q, k, v, skip, seed, rate, segment_ids_BT=seg, **BLOCKS)
    y, _ = compare(fast, lambda q, k, v: dense_read(q, k, v, allowed, keep, rate), (q, k, v))
    empty = ~np.asarray(allowed).any(-1)                                       # (B, T) rows reading nothing
    assert empty.any() and np.all(np.asarray(y)[empty] == 0)
    if docs:
        assert empty[0, [0, 10, 30]].all() and not empty[0, 29]                # document starts read nothing
    if rate == 0.0:      # dense_read is memory_v2's dense read
        assert_close(y, memory_v2.retrieve(q, k, v, kind, look=look, skip_B=skip, segment_ids_BT=seg,
                                        impl="dense"))


# ---------------------------------------------------------------------------------------------------------------
# Dispatch and the whole model
# ---------------------------------------------------------------------------------------------------------------
def test_auto_chooses_pallas_on_tpu_only() -> None:
    assert memory.resolve_impl("auto", True) != "pallas"                        # this CPU
    assert memory.resolve_impl("pallas", True, dropout=True) == "pallas"
    with platform.target("tpu"):
        assert memory.resolve_impl("auto", True, dropout=True) == "pallas"
        assert memory.resolve_impl("auto", False) == "dense"                    # another kernel or mask
        assert memory_v2.choose_impl("auto", 4096, None, True) == "pallas"
        assert memory_v2.choose_impl("auto", 4096, jnp.zeros((1, 4)), False) == "pallas"      # documents too
        assert pallas.reads.interpret_default() is False
    with platform.target("gpu"):
        assert memory.resolve_impl("auto", True) == "flash"
    with pytest.raises(ValueError, match="pallas"):
        ModelConfig(cmem_impl="palas")


V1 = dict(vocab_size=64, n_layer=2, n_embd=32, n_head=2, pmem_size=24, block_size=32)


def test_model_with_pallas_reads_equals_default() -> None:
    """Loss and gradients of a tiny memory mosaic, float32, T = 21 (ragged), dropout on: the pallas reads and
    the CPU default (fused) draw the same hash masks, the residual dropout the same bernoulli masks.
    Tolerance: each read agrees to ~1e-6 relative (module docstring); two layers, the head and the loss
    amplify that by O(10) in the gradients -> 1e-5 on the loss, 1e-4 of each gradient's scale."""
    base = ModelConfig(**V1)
    assert memory.resolve_impl(base.cmem_impl, True, True) == "fused"          # the default path here
    params = mj.init_params(base, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 21), 0, base.vocab_size)
    targets, rng = jnp.roll(tokens, -1, 1), jax.random.key(5)

    def run(c: ModelConfig):
        return quick_jit(jax.value_and_grad(lambda p: mj.loss_fn(c, p, tokens, targets, rng=rng)), params)(params)

    (lf, gf), (lr, gr) = run(base.replace(cmem_impl="pallas", pmem_impl="pallas")), run(base)
    np.testing.assert_allclose(lf, lr, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(gf), jax.tree.leaves(gr)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max()) + 1e-7)


def test_reads_run_per_device_under_a_mesh() -> None:
    """Under a traced 8-device mesh (fsdp 4 x tensor 2, as train_step.jit_train_step traces) the kernels run
    per device in shard_map (Mosaic kernels cannot be SPMD-partitioned) and equal the one-device read, values
    and gradients, the slot-table gradient summed over the batch shards."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    from mosaic_jax.parallel import sharding
    from mosaic_jax.training import train_step
    mesh = sharding.make_mesh(1, 4, 2, devices=jax.devices()[:8])
    B, T, H, D, S = 4, 12, 2, 8, 12
    k, v, mk = memory.l2_normalize(rand(40, B, T, H, D)) * 2.0, rand(41, B, T, H, D), rand(42, H, S, D)

    def loss(k, v, mk):
        return jnp.sum(pallas.contextual_read(k, v) * v) + jnp.sum(pallas.persistent_read(k, mk, mk) * v)

    f = jax.value_and_grad(loss, (0, 1, 2))
    one = quick_jit(f, k, v, mk)(k, v, mk)
    bthd = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor", None))
    args = (jax.device_put(k, bthd), jax.device_put(v, bthd), mk)
    traced = train_step.traced_under(f, mesh)
    assert str(jax.make_jaxpr(traced)(*args)).count("shard_map") >= 2        # both reads, per device
    assert "shard_map" not in str(jax.make_jaxpr(f)(*args))                  # no mesh traced: no shard_map
    per_device = quick_jit(traced, *args)(*args)
    for a, b in zip(jax.tree.leaves(per_device), jax.tree.leaves(one)):
        assert_close(a, b)
