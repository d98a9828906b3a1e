"""The example plug-in family (experiments/families/mosaic_swiglu, not in the library) trains through the CLI,
decodes exactly, is scored by `evaluate` and timed by `bench`, with no edit outside its folder."""
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mosaic_jax import evaluate, generate
from mosaic_jax.models import flops, registry
from mosaic_jax.models.config import ModelConfig
from mosaic_jax.models.lm import apply, init_params
from mosaic_jax.tools import bench

REPO = pathlib.Path(__file__).resolve().parents[1]
MODULE = "experiments.families.mosaic_swiglu.family"
TINY = ["--config.model.n_layer=2", "--config.model.n_embd=32", "--config.model.n_head=4",
        "--config.model.ffn_hidden=64", "--config.model.block_size=32", "--config.train.steps=4",
        "--config.train.global_batch=8", "--config.optim.warmup_steps=1", "--config.train.log_every=1",
        "--config.train.checkpoint_every=4", "--config.train.eval_every=0", "--config.train.sample_tokens=0"]


@pytest.fixture(scope="module")
def run(prepared_byte, tmp_path_factory):
    wd = tmp_path_factory.mktemp("swiglu") / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "mosaic_jax.train", "--config=experiments/families/mosaic_swiglu/config.py",
           f"--workdir={wd}", f"--config.data.path={prepared_byte}", *TINY]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return wd


def test_trained_run_records_the_family(run):
    model = json.loads((run / "config.json").read_text())["model"]
    assert model["arch"] == "mosaic_swiglu" and model["family_module"] == MODULE
    losses = [json.loads(ln)["loss"] for ln in (run / "metrics.jsonl").read_text().splitlines()
              if '"train"' in ln and '"loss"' in ln]
    assert len(losses) == 4 and np.isfinite(losses).all()


def test_generate_and_decoding_equal_the_full_forward(run, capsys):
    assert generate.main([f"--workdir={run}", "--prompt=Once upon", "--max_new_tokens=6", "--greedy",
                          "--no_stream"]) == 0
    assert "=== sample 0 ===" in capsys.readouterr().out
    # The family's decoder (the default, inference/recompute.py) fed the tokens of a full forward, ragged prompts:
    # same logits at every position. Only the padded length differs, so float32 rounding differs by a few ulps of
    # logits of order 1: 1e-5, as tests/test_decode.py (comparing logits, not argmax, so near-ties cannot flip).
    cfg, params, _ = generate.load_for_inference(str(run))
    dec = registry.decoder(cfg)
    tokens = jnp.asarray([[1, 70, 71, 72, 73, 74, 75, 76], [1, 80, 81, 82, 83, 84, 85, 86]], jnp.int32)
    ref = np.asarray(apply(cfg, params, tokens))
    lengths = jnp.asarray([3, 2], jnp.int32)
    logits, cache = dec.prefill(cfg, params, tokens[:, :3], lengths, dec.init_cache(cfg, 2, 8))
    np.testing.assert_allclose(np.asarray(logits)[0, :3], ref[0, :3], atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(logits)[1, :2], ref[1, :2], atol=1e-5, rtol=0)
    for _ in range(4):
        pos = np.asarray(cache["pos"])
        logits, cache = dec.step(cfg, params, cache, tokens[jnp.arange(2), pos])
        np.testing.assert_allclose(np.asarray(logits), ref[[0, 1], pos], atol=1e-5, rtol=0)


def test_evaluate_scores_the_run(run, tmp_path, data_dir):
    out = tmp_path / "eval"
    assert evaluate.main([f"--workdir={run}", f"--input={data_dir / 'tinystories' / 'train_v2gpt4_prefix.txt'}",
                          "--window=32", "--max_windows=4", "--batch_size=4", f"--out={out}"]) == 0
    summary = json.loads((out / "eval.json").read_text())
    assert summary["arch"] == "mosaic_swiglu" and np.isfinite(summary["loss"])


def test_bench_times_the_family():
    rows = bench.main(["--arch=mosaic_swiglu", f"--family_module={MODULE}", "--size=tiny", "--seq=32",
                       "--batch=2", "--rounds=1", "--warmup=0", "--pause=0"])
    row = next(r for r in rows if r["arch"] == "mosaic_swiglu")
    cfg = ModelConfig(arch="mosaic_swiglu", family_module=MODULE, n_layer=row["L"], n_embd=row["C"],
                      n_head=row["H"], vocab_size=row["V"], block_size=32)
    assert row["tokens_per_s"] > 0 and row["ffn"] == cfg.ffn_dim
    assert row["flops_per_token"] == pytest.approx(flops.train_flops_per_token(cfg, 32))


def test_family_flops_count_its_matmuls():
    """The family's FLOP formula against XLA's count of the compiled forward pass, as tests/test_flops.py does
    for the built-in families: matmuls dominate at this size, so they agree within 5%. Layers are unrolled (XLA
    counts a while-loop body once) and the leaky average is the scan (its T×T matrix form adds FLOPs the
    model-FLOP convention leaves out)."""
    T, B = 128, 2
    cfg = ModelConfig(arch="mosaic_swiglu", family_module=MODULE, n_layer=2, n_embd=256, n_head=4, ffn_hidden=512,
                      vocab_size=512, block_size=T, scan_layers=False, leaky_impl="scan", ic_dropout=0.0,
                      hd_dropout=0.0)
    params = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    tokens = jax.ShapeDtypeStruct((B, T), jnp.int32)
    cost = jax.jit(lambda p, x: apply(cfg, p, x)).lower(params, tokens).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    assert cost["flops"] / (B * T) == pytest.approx(flops.forward_flops_per_token(cfg, T), rel=0.05)


def test_unknown_family_errors_name_the_choices():
    with pytest.raises(ValueError, match=r"arch='nope' is not a registered model family.*mosaic_v2"):
        ModelConfig(arch="nope")
    with pytest.raises(ValueError, match=r"family_module='no.such.module' cannot be imported"):
        ModelConfig(arch="nope", family_module="no.such.module")
    assert registry.get("mosaic_swiglu", MODULE).name == "mosaic_swiglu"   # imports MODULE, which registers it
    assert "mosaic_swiglu" in registry.names()
