"""`python -m mosaic_jax.generate` on a workdir laid out as `python -m mosaic_jax.train` writes it.

The workdir fixture is written with the training code's own Checkpointer / export (not by training: seconds
instead of a minute), over a prepared byte-tokenizer data folder.
"""
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mosaic_jax as mj
from mosaic_jax import generate
from mosaic_jax.inference import sampling
from mosaic_jax.data.tokenizers import ByteTokenizer

from test_decode import perturbed_params

REPO = pathlib.Path(__file__).resolve().parents[1]
CFG = mj.ModelConfig(vocab_size=320, n_layer=2, n_head=4, n_embd=32, pmem_size=16, block_size=32,
                     ic_dropout=0.0, hd_dropout=0.0)
TEXT = "Once upon a time there was a little cat. The cat liked to play in the sun.\n" * 8


def make_workdir(root: pathlib.Path, cfg: mj.ModelConfig, params, *, step: int = 7, export_only: bool = False
                 ) -> pathlib.Path:
    """A run folder: config.json, checkpoints/<step>/{state,config,data} (or only export/), byte tokenizer data."""
    from mosaic_jax.training import checkpoint
    from mosaic_jax.data import pipeline

    data = root / "data"
    if not data.exists():
        (root / "train.txt").write_text(TEXT)
        pipeline.prepare([str(root / "train.txt")], str(data), "byte", num_workers=1, progress=False)
    wd = root / ("export_run" if export_only else "run")
    wd.mkdir(parents=True)
    run_cfg = {"model": cfg.to_dict(), "data": {"path": str(data)}, "train": {"steps": step}}
    (wd / "config.json").write_text(json.dumps(run_cfg))
    if export_only:
        checkpoint.export_params(wd / "export", params, cfg.to_dict())
        return wd
    ck = checkpoint.Checkpointer(wd / "checkpoints", every=1, keep=3, async_save=False)
    state = {"step": jnp.int32(step), "params": params, "opt_state": {"mu": params}}
    ck.save(step, state, run_cfg, {"path": str(data), "tokenizer_hash": ByteTokenizer.hash, "position": step},
            force=True)
    ck.close()
    return wd


@pytest.fixture(scope="module")
def params():
    return perturbed_params(CFG, seed=21)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, params):
    return make_workdir(tmp_path_factory.mktemp("gen"), CFG, params)


def test_load_for_inference(workdir, params, tmp_path):
    cfg, loaded, tok = generate.load_for_inference(str(workdir))
    assert cfg == CFG and isinstance(tok, ByteTokenizer)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # export/ only (no checkpoints): the same params.
    wd2 = make_workdir(workdir.parent, CFG, params, export_only=True)
    _, exported, _ = generate.load_for_inference(str(wd2))
    for a, b in zip(jax.tree.leaves(exported), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_cli_greedy_matches_library(workdir, params, capsys):
    rc = generate.main([f"--workdir={workdir}", "--prompt=Once upon", "--max_new_tokens=40", "--greedy"])
    out = capsys.readouterr().out
    assert rc == 0
    tok = ByteTokenizer()
    ids = [tok.eos_id] + tok.encode("Once upon")
    new = sampling.generate(CFG, params, [ids], max_new_tokens=40, sampling=sampling.SamplingConfig(temperature=0),
                            eos_id=tok.eos_id, vocab_limit=tok.vocab_size)[0]
    assert out == tok.decode(ids + new) + "\n"
    assert out.startswith("Once upon")


def test_cli_samples_seeded(workdir, capsys):
    args = [f"--workdir={workdir}", "--prompt=The cat", "--max_new_tokens=24", "--top_k=20", "--top_p=0.9",
            "--num_samples=2", "--past_window=recompute"]
    assert generate.main(args + ["--seed=5"]) == 0
    first = capsys.readouterr().out
    assert generate.main(args + ["--seed=5"]) == 0
    assert capsys.readouterr().out == first
    assert first.count("=== sample") == 2


@pytest.mark.parametrize("extra,message", [
    (["--step=99"], "no finalised step 99"),
    (["--tokenizer=gpt2:/nonexistent"], ""),
    (["--top_p=0"], "top_p"),
])
def test_cli_errors(workdir, capsys, extra, message):
    assert generate.main([f"--workdir={workdir}", "--prompt=x", *extra]) == 1
    err = capsys.readouterr().err
    assert err.startswith("generate: error: ") and message in err and err.count("\n") == 1


@pytest.mark.parametrize("flag", ["--max_new_tokens=-5", "--temperature=-1", "--num_samples=-2"])
def test_negative_values_are_refused(workdir, capsys, flag):
    """Issue 13 item 6: these were accepted with exit 0; now a usage error (2) naming the flag, nothing sampled."""
    assert generate.main([f"--workdir={workdir}", "--prompt=x", flag]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("generate: error:") and flag.split("=")[0] in err and err.count("\n") == 1
    assert out == ""


def test_non_utf8_prompt_is_one_line(workdir):
    """Bytes that are not UTF-8 on the command line (Latin-1 "café"): one line naming --prompt, no traceback."""
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, "-m", "mosaic_jax.generate", f"--workdir={workdir}".encode(),
                           b"--prompt=caf\xe9", b"--max_new_tokens=4"],
                          cwd=REPO, env=env, capture_output=True, timeout=300)
    err = proc.stderr.decode().strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and err[0].startswith("generate: error: --prompt"), err


def test_cli_missing_workdir(tmp_path, capsys):
    assert generate.main([f"--workdir={tmp_path / 'nope'}"]) == 1
    assert "no such folder" in capsys.readouterr().err


def test_tokenizer_hash_mismatch(workdir, tmp_path, capsys):
    import shutil
    wd = tmp_path / "run"
    shutil.copytree(workdir, wd)
    meta = wd / "checkpoints" / "7" / "data" / "metadata"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "tokenizer_hash": "0" * 64}))
    assert generate.main([f"--workdir={wd}", "--prompt=x"]) == 1
    assert "not the one the checkpoint was trained with" in capsys.readouterr().err


def test_module_entry_point_streams(workdir):
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, "-m", "mosaic_jax.generate", f"--workdir={workdir}",
                           "--prompt=Once upon a time", "--max_new_tokens=60", "--temperature=0.7", "--seed=1"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("Once upon a time") and len(proc.stdout) > len("Once upon a time")
