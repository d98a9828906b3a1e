"""The run keeps its own tokenizer: training copies the prepared folder's tokenizer into `workdir/tokenizer/`
(checkpoint.save_tokenizer) and `generate.load_for_inference` falls back to it when the data folder has moved.
"""
import json
import logging
import os
import shutil
import subprocess
import sys

import pytest

from mosaic_jax import generate
from mosaic_jax.training import checkpoint
from mosaic_jax.data import pipeline
from mosaic_jax.data.tokenizers import MANIFEST_FILE, SentencePieceTokenizer, load_tokenizer
from tests.conftest import REPO


@pytest.fixture(scope="module")
def sp_data(tmp_path_factory, data_dir):
    """150 kB of TinyStories with a small sentencepiece model (a real file to copy)."""
    root = tmp_path_factory.mktemp("sp_data")
    (root / "train.txt").write_bytes((data_dir / "tinystories" / "train_v1_prefix_a.txt").read_bytes()[:150_000])
    options = pipeline.PrepareOptions(tokenizer_sample_mb=0.5, val_fraction=0.05)
    pipeline.prepare([str(root / "train.txt")], str(root / "prepared"), "sp:400", options, num_workers=1,
                     progress=False)
    return root / "prepared"


@pytest.fixture(scope="module")
def byte_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("byte_data")
    (root / "train.txt").write_text("Once upon a time there was a cat.\n\nThe cat slept.\n" * 20)
    pipeline.prepare([str(root / "train.txt")], str(root / "prepared"), "byte", num_workers=1, progress=False)
    return root / "prepared"


def test_save_tokenizer_copies_and_never_overwrites(sp_data, byte_data, tmp_path, caplog):
    dest = checkpoint.save_tokenizer(sp_data, tmp_path)
    assert dest == tmp_path / checkpoint.TOKENIZER_DIR and (dest / "tokenizer.model").is_file()
    copied = load_tokenizer(str(dest))
    assert isinstance(copied, SentencePieceTokenizer) and copied.hash == load_tokenizer(str(sp_data)).hash
    manifest = (dest / MANIFEST_FILE).read_text()
    assert checkpoint.save_tokenizer(sp_data, tmp_path) == dest            # the same tokenizer: kept as is
    with caplog.at_level(logging.WARNING):
        assert checkpoint.save_tokenizer(byte_data, tmp_path) is None       # another one: never overwritten
    assert "holds another tokenizer" in caplog.text
    assert (dest / MANIFEST_FILE).read_text() == manifest
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temporary folder left behind


def _train(workdir, data):
    args = ["--config.model.n_layer=2", "--config.model.n_embd=32", "--config.model.n_head=4",
            "--config.model.pmem_size=64", "--config.model.block_size=32", "--config.train.steps=2",
            "--config.train.global_batch=8", "--config.optim.warmup_steps=1", "--config.train.log_every=1",
            "--config.train.checkpoint_every=2", "--config.train.eval_every=0", "--config.train.sample_tokens=0"]
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=8")
    cmd = [sys.executable, "-m", "mosaic_jax.train", "--config=experiments/configs/tiny_cpu.py",
           f"--workdir={workdir}", f"--config.data.path={data}", *args]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.mark.slow
def test_trained_run_loads_after_its_data_folder_moves(sp_data, tmp_path):
    data, wd = tmp_path / "data", tmp_path / "run"
    shutil.copytree(sp_data, data)
    want = load_tokenizer(str(data)).hash
    _train(wd, data)
    assert load_tokenizer(str(wd / checkpoint.TOKENIZER_DIR)).hash == want

    shutil.move(str(data), str(tmp_path / "moved"))
    cfg, params, tok = generate.load_for_inference(str(wd))                 # from checkpoints/2
    assert tok.hash == want and tok.decode(tok.encode("Once upon a time")) == "Once upon a time"
    assert cfg.vocab_size >= tok.vocab_size and params

    # export/ only (no data item with a hash): still the copy
    export_only = tmp_path / "export_only"
    shutil.copytree(wd, export_only, ignore=shutil.ignore_patterns("checkpoints"))
    assert generate.load_for_inference(str(export_only))[2].hash == want

    # the hash check still applies to the copy
    meta = next((wd / "checkpoints").glob("*/data/metadata"))
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "tokenizer_hash": "0" * 64}))
    with pytest.raises(generate.InferenceLoadError, match="not the one the checkpoint was trained with"):
        generate.load_for_inference(str(wd))

    # neither the data folder nor the copy: the one-line error asks for --tokenizer
    shutil.rmtree(export_only / checkpoint.TOKENIZER_DIR)
    with pytest.raises(generate.InferenceLoadError, match="is gone .*--tokenizer"):
        generate.load_for_inference(str(export_only))
