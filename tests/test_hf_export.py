"""Hugging Face export (mosaic_jax.hf.export, `python -m mosaic_jax.export`) and GPT-2 import, offline.

* tiny GPT-2, v1 and v2 models (random params: every per-head scalar differs from its init) exported,
  loaded by transformers' AutoModelForCausalLM: logits equal mosaic_jax.apply to 1e-4, and every token of a greedy
  generate() is the argmax of mosaic_jax's logits for its prefix;
* the tokenizer.json of a sentencepiece run encodes text to the same ids as sentencepiece (PreTrainedTokenizerFast);
* a real `python -m mosaic_jax.train` run exported through the CLI (model card with the final losses), and the CLI's
  errors (help exits 0, bad flag exit 2, missing run exit 1, an existing --out untouched);
* import: a randomly initialised GPT2LMHeadModel saved with save_pretrained → our params, logits equal.

Tolerance 1e-4 (the issue's): both sides are float32 and differ only in operation order; the rounding error of
these 2-layer, width-16 models is ~1e-6 relative on logits of size ~1 (measured max 3e-6).
"""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jax.numpy as jnp  # noqa: E402

from mosaic_jax.training import checkpoint
from mosaic_jax.models.config import ModelConfig  # noqa: E402
from mosaic_jax.data import tokenizers as mt  # noqa: E402
from mosaic_jax.hf.export import ExportError, export_hf  # noqa: E402
from mosaic_jax.models.lm import apply  # noqa: E402
from _tiny_params import random_params  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def _hf_libraries():
    """torch and transformers (optional dependencies) are imported when this file's tests run, not when pytest
    collects it: their import costs ~6 s of CPU on every xdist worker, and only one worker runs this file."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")


TOL = 1e-4
ARCHS = {
    "gpt2": dict(arch="gpt2", bias=True),
    "mosaic": dict(arch="mosaic", k_kernel_size=2, pmem_count=2),
    "mosaic_bias_untied": dict(arch="mosaic", bias=True, weight_tying=False),
    "mosaic_v2": dict(arch="mosaic_v2", short_window=6, long_skip_eval=3, long_skip_min=2, long_skip_max=4,
                      n_head_long=1),
}


@pytest.fixture(scope="module")
def sp_model(data_dir, tmp_path_factory):
    text = (data_dir / "tinystories" / "valid_v1_prefix.txt").read_text()[:200_000]
    tok = mt.train_sentencepiece([text], 400, num_threads=1)
    path = tmp_path_factory.mktemp("sp") / "tok.model"
    tok.save(str(path))
    return path, text


def _tiny_workdir(root, arch):
    cfg = ModelConfig.from_dict(dict(vocab_size=416, n_layer=2, n_head=2, n_embd=16, block_size=32, pmem_size=8, **ARCHS[arch]))
    params = random_params(cfg)
    checkpoint.export_params(root / "export", params, cfg.to_dict())
    return cfg, params


@pytest.mark.parametrize("arch", list(ARCHS))
def test_export_logits_and_generate_match(arch, sp_model, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    sp_path, text = sp_model
    cfg, params = _tiny_workdir(tmp_path / "run", arch)
    out = export_hf(str(tmp_path / "run"), str(tmp_path / "hf"), tokenizer=str(sp_path))
    names = set(os.listdir(out))
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer.model",
            "README.md"} <= names
    assert ("modeling_mosaic.py" in names) == (arch != "gpt2")
    model, info = AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=arch != "gpt2",
                                                       output_loading_info=True)
    assert not any(info.values()), info   # every tensor found, none unexpected
    assert type(model).__name__ == ("GPT2LMHeadModel" if arch == "gpt2" else "MosaicForCausalLM")

    # generate() first; its output is then checked teacher-forced (one compiled shape per model): every
    # generated token is the argmax of mosaic_jax's logits for its prefix
    prompt = np.random.default_rng(0).integers(0, 400, (1, 6))
    seq = model.generate(torch.tensor(prompt), max_new_tokens=8, do_sample=False).numpy()
    assert seq.shape == (1, 14) and (seq[:, :6] == prompt).all()
    ids = np.concatenate([seq, np.random.default_rng(1).integers(0, 400, (2, 14))])
    want = np.asarray(apply(cfg, params, jnp.asarray(ids)))
    with torch.no_grad():
        got = model(torch.tensor(ids)).logits.float().numpy()
    assert np.abs(got - want).max() < TOL
    assert (want[0, 5:-1].argmax(-1) == seq[0, 6:]).all()

    fast = PreTrainedTokenizerFast.from_pretrained(str(out))
    sample = text[5000:9000] + " héllo  wörld 🙂\n\n\tend"
    sp = mt.SentencePieceTokenizer.from_file(str(sp_path))
    assert fast.encode(sample, add_special_tokens=False) == sp.encode(sample)
    assert fast.decode(sp.encode(sample)) == sample
    assert fast.eos_token_id == sp.eos_id == json.loads((out / "generation_config.json").read_text())["eos_token_id"]


def test_export_refuses_existing_out(tmp_path):
    _tiny_workdir(tmp_path / "run", "mosaic")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="already exists"):
        export_hf(str(tmp_path / "run"), str(tmp_path / "hf"), tokenizer="byte")
    assert os.listdir(tmp_path / "hf") == ["keep.txt"]


def test_byte_tokenizer_json_matches():
    from mosaic_jax.hf.tokenizer import to_tokenizers
    tok = mt.ByteTokenizer()
    hf = to_tokenizers(tok)
    text = "Once upon a time, ünïcode 🙂 \n\t"   # (literal "<s>" text would match the special token)
    assert hf.encode(text, add_special_tokens=False).ids == tok.encode(text)
    assert hf.decode(tok.encode(text)) == text


# ---- import ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tied", [True, False])
def test_import_gpt2_logits_equal(tied, tmp_path):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from mosaic_jax.hf.import_gpt2 import load_hf_gpt2
    torch.manual_seed(0)
    hf_cfg = GPT2Config(vocab_size=97, n_positions=40, n_embd=24, n_layer=2, n_head=3, tie_word_embeddings=tied)
    model = GPT2LMHeadModel(hf_cfg).eval()
    with torch.no_grad():   # non-zero biases and LayerNorm params, so every mapped tensor matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(str(tmp_path / "gpt2"))
    cfg, params = load_hf_gpt2(tmp_path / "gpt2")
    assert (cfg.arch, cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.weight_tying) == \
        ("gpt2", 2, 3, 24, 40, tied)
    ids = np.random.default_rng(1).integers(0, 97, (2, 40))
    with torch.no_grad():
        want = model(torch.tensor(ids)).logits.numpy()
    assert np.abs(np.asarray(apply(cfg, params, jnp.asarray(ids))) - want).max() < TOL
    if tied:   # the CLI's path: a run folder (export/ + an hf: tokenizer) that generate/evaluate/lm-eval read
        from transformers import PreTrainedTokenizerFast

        from mosaic_jax.generate import load_for_inference
        from mosaic_jax.hf.import_gpt2 import import_to_workdir
        from mosaic_jax.hf.tokenizer import to_tokenizers
        PreTrainedTokenizerFast(tokenizer_object=to_tokenizers(mt.ByteTokenizer()), eos_token="</s>").save_pretrained(
            str(tmp_path / "gpt2"))
        import_to_workdir(str(tmp_path / "gpt2"), str(tmp_path / "run"))
        cfg2, params2, tok = load_for_inference(str(tmp_path / "run"))
        assert cfg2 == cfg and tok.kind == "hf" and tok.eos_id == 1 and tok.encode("hi") == [108, 109]
        assert np.abs(np.asarray(apply(cfg2, params2, jnp.asarray(ids))) - want).max() < TOL


def test_import_rejects_other_variants(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from mosaic_jax.hf.import_gpt2 import load_hf_gpt2
    from mosaic_jax.hf.weights import HFImportError
    GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=8, n_embd=8, n_layer=1, n_head=2,
                               activation_function="relu")).save_pretrained(str(tmp_path / "m"))
    with pytest.raises(HFImportError, match="activation_function='relu'"):
        load_hf_gpt2(tmp_path / "m")


# ---- the CLI on a real training run --------------------------------------------------------------------
@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = dict(os.environ)
    e.update(PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
             XLA_FLAGS="--xla_force_host_platform_device_count=1",   # one device: the quickest compile
             HF_HOME=str(tmp_path_factory.mktemp("hf_home")),
             JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")))
    return e


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, data_dir, env):
    """4 steps of `python -m mosaic_jax.train` (v1, byte tokenizer) on a slice of TinyStories."""
    from mosaic_jax.data import pipeline
    root = tmp_path_factory.mktemp("hf_run")
    (root / "train.txt").write_bytes((data_dir / "tinystories" / "train_v1_prefix_a.txt").read_bytes()[:60_000])
    pipeline.prepare([str(root / "train.txt")], str(root / "data"), "byte", num_workers=1, progress=False)
    args = ["--config.model.n_layer=1", "--config.model.n_embd=16", "--config.model.n_head=2",
            "--config.model.pmem_size=16", "--config.model.block_size=16", "--config.train.steps=4",
            "--config.train.global_batch=8", "--config.optim.warmup_steps=1", "--config.train.log_every=1",
            "--config.train.checkpoint_every=4", "--config.train.eval_every=4", "--config.train.eval_batches=1",
            "--config.train.sample_tokens=0"]
    res = subprocess.run([sys.executable, "-m", "mosaic_jax.train", "--config=experiments/configs/tiny_cpu.py",
                          f"--workdir={root / 'run'}", f"--config.data.path={root / 'data'}", *args],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return root / "run"


def _export(env, *args):
    return subprocess.run([sys.executable, "-m", "mosaic_jax.export", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_export_cli_on_a_trained_run(trained_run, env, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mosaic_jax.generate import load_for_inference
    res = _export(env, f"--workdir={trained_run}", "--format=hf", f"--out={tmp_path / 'hf'}")
    assert res.returncode == 0, res.stderr[-2000:]
    card = (tmp_path / "hf" / "README.md").read_text()
    losses = [json.loads(x) for x in (trained_run / "metrics.jsonl").read_text().splitlines()]
    last_train = [r for r in losses if r.get("split") == "train"][-1]
    assert f"final train loss: {last_train['loss']:.4f} (step 4)" in card and "final eval loss" in card
    assert "tokens seen: 512" in card   # 4 steps × 8 × 16

    cfg, params, tok = load_for_inference(str(trained_run))
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), trust_remote_code=True)
    hf_tok = AutoTokenizer.from_pretrained(str(tmp_path / "hf"), trust_remote_code=True)
    ids = [tok.eos_id] + tok.encode("Once upon a time")
    assert hf_tok.encode("Once upon a time", add_special_tokens=False) == ids[1:]
    gen = model.generate(torch.tensor([ids]), max_new_tokens=5, do_sample=False).numpy()
    assert gen.shape[1] == len(ids) + 5 or gen[0, -1] == tok.eos_id   # 5 new tokens, or stopped at EOS
    seq = gen[0].tolist()
    with torch.no_grad():
        got = model(torch.tensor([seq])).logits.numpy()
    want = np.asarray(apply(cfg, params, jnp.asarray([seq])))
    assert np.abs(got - want).max() < TOL
    assert (want[0, len(ids) - 1:-1].argmax(-1) == gen[0, len(ids):]).all()   # greedy, as mosaic_jax
    assert hf_tok.decode(seq, skip_special_tokens=True).startswith("Once upon a time")

    # errors: a one-line message with the command's prefix; usage 2, runtime 1; nothing overwritten
    helped = _export(env, "--help")
    assert helped.returncode == 0 and "--push_to_hub" in helped.stdout
    bad = _export(env, "--wrkdir=x")
    assert bad.returncode == 2 and bad.stderr.strip().startswith("export: error:") and "wrkdir" in bad.stderr
    missing = _export(env, f"--workdir={tmp_path / 'nope'}", f"--out={tmp_path / 'o'}")
    assert missing.returncode == 1 and missing.stderr.strip().splitlines() == [
        f"export: error: --workdir={tmp_path / 'nope'}: no such folder"]
    before = sorted(os.listdir(tmp_path / "hf"))
    again = _export(env, f"--workdir={trained_run}", f"--out={tmp_path / 'hf'}")
    assert again.returncode == 1 and "already exists" in again.stderr and sorted(os.listdir(tmp_path / "hf")) == before
