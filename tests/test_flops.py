"""The analytic FLOP formula, checked against the spec's numbers and against XLA's cost analysis; peaks and MFU."""
import json
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import pytest

from mosaic_jax.models import flops, lm
from mosaic_jax.models.config import ModelConfig

NOTES_CFG = ModelConfig(n_layer=4, n_embd=256, n_head=8, pmem_size=896, vocab_size=8192, block_size=256)


def test_formula_matches_performance_notes():
    """../shared/spec/performance_notes.md: 11.53 MFLOP/token forward, 34.60 training at T=256, 37.75 at T=512."""
    assert flops.forward_flops_per_token(NOTES_CFG, 256) / 1e6 == pytest.approx(11.53, abs=0.01)
    assert flops.train_flops_per_token(NOTES_CFG, 256) / 1e6 == pytest.approx(34.60, abs=0.01)
    assert flops.train_flops_per_token(NOTES_CFG, 512) / 1e6 == pytest.approx(37.75, abs=0.01)


def test_mosaic_with_p_3_5c_equals_gpt2():
    mm = ModelConfig(n_layer=12, n_embd=768, n_head=12, pmem_size=2688)
    assert flops.forward_flops_per_token(mm, 512) == flops.forward_flops_per_token(mm.replace(arch="gpt2"), 512)


def test_causal_halving_option():
    full = flops.forward_flops_per_token(NOTES_CFG, 256)
    half = flops.forward_flops_per_token(NOTES_CFG, 256, causal_halving=True)
    assert full - half == NOTES_CFG.n_layer * 2 * 256 * 256


@pytest.mark.parametrize("arch", ["mosaic", "gpt2"])
def test_formula_vs_xla_cost_analysis(arch):
    """XLA counts every op; matmuls dominate at this size, so the formula must agree within 5%.

    Layers are unrolled (XLA's cost analysis counts a while-loop body once) and the leaky average uses the
    associative scan (its T×T matrix form adds hardware FLOPs the model-FLOP convention leaves out).
    """
    T, B = 128, 2
    cfg = ModelConfig.from_dict(dict(arch=arch, n_layer=2, n_embd=256, n_head=4, pmem_size=512, vocab_size=512, block_size=T,
                      scan_layers=False, leaky_impl="scan", ic_dropout=0.0, hd_dropout=0.0))
    params = jax.eval_shape(lambda: lm.init_params(cfg, jax.random.PRNGKey(0)))
    tokens = jax.ShapeDtypeStruct((B, T), jnp.int32)
    loss = lambda p, x: lm.loss_fn(cfg, p, x, x)  # noqa: E731

    def xla_flops(fn):
        cost = jax.jit(fn).lower(params, tokens).compile().cost_analysis()
        return (cost[0] if isinstance(cost, list) else cost)["flops"] / (B * T)

    assert xla_flops(loss) == pytest.approx(flops.forward_flops_per_token(cfg, T), rel=0.05)
    assert xla_flops(jax.value_and_grad(loss)) == pytest.approx(flops.train_flops_per_token(cfg, T), rel=0.05)


@pytest.mark.parametrize("kind,peak", [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H200", 989e12),
                                       ("NVIDIA A100-SXM4-80GB", 312e12), ("TPU v4", 275e12),
                                       ("TPU v5 lite", 197e12), ("TPU v5p", 459e12), ("TPU v5", 459e12),
                                       ("TPU v6 lite", 918e12), ("cpu", None)])
def test_peak_table(kind, peak):
    assert flops.device_peak_flops(SimpleNamespace(device_kind=kind)) == peak


def test_mfu():
    assert flops.mfu(1000.0, 1e9, 4e12) == pytest.approx(0.25)
    assert flops.mfu(1000.0, 1e9, None) is None


def test_cpu_peak_is_measured_once_and_cached(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(flops, "measure_cpu_peak", lambda dtype: calls.append(dtype) or 123e9)
    assert flops.cpu_peak_flops(tmp_path, "float32") == 123e9
    assert flops.cpu_peak_flops(tmp_path, "float32") == 123e9
    assert calls == ["float32"]
    assert list(json.loads((tmp_path / "cpu_peak_flops.json").read_text()).values()) == [123e9]


def test_measure_cpu_peak_is_positive():
    assert flops.measure_cpu_peak("float32", n=128, repeats=2) > 0


def test_v2_formula_vs_xla_cost_analysis():
    """v2 counts the pairs each query reads; at a short context the reads are a few % of the step either way."""
    from mosaic_jax.models.mosaic_v2 import counts as v2_counts
    T, B = 16, 2
    cfg = v2_counts.v2_small().replace(n_layer=2, n_embd=256, n_head=4, ffn_hidden=768, vocab_size=1024, block_size=T,
                                       scan_layers=False)
    params = jax.eval_shape(lambda: lm.init_params(cfg, jax.random.PRNGKey(0)))
    tokens = jax.ShapeDtypeStruct((B, T), jnp.int32)
    cost = jax.jit(lambda p, x: lm.loss_fn(cfg, p, x, x)).lower(params, tokens).compile().cost_analysis()
    xla = (cost[0] if isinstance(cost, list) else cost)["flops"] / (B * T)
    ours = flops.forward_flops_per_token(cfg, T)
    assert ours == v2_counts.forward_flops_per_token(cfg, T)["total"]
    assert ours != flops.forward_flops_per_token(cfg.replace(arch="gpt2"), T)   # not the GPT-2 branch
    assert xla == pytest.approx(ours, rel=0.05)
