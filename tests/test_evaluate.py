"""Scoring (loss, perplexity, per-position loss as JSON/CSV/PNG) and attention maps."""
import csv
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mosaic_jax as mj
from mosaic_jax import evaluate
from mosaic_jax.inference import decode
from mosaic_jax.ops import memory
from mosaic_jax.tasks import analysis
from mosaic_jax.models.lm import loss_fn

from test_decode import perturbed_params
from test_generate_cli import CFG, TEXT, make_workdir


@pytest.fixture(scope="module")
def params():
    return perturbed_params(CFG, seed=31)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, params):
    return make_workdir(tmp_path_factory.mktemp("eval"), CFG, params)


def test_corpus_windows():
    w = evaluate.corpus_windows(list(range(23)), 5)
    assert w.shape == (4, 6)
    np.testing.assert_array_equal(w[1], [5, 6, 7, 8, 9, 10])
    with pytest.raises(ValueError, match="fewer than one window"):
        evaluate.corpus_windows([1, 2, 3], 5)


def test_token_losses_match_the_training_loss(params):
    windows = np.asarray(np.random.default_rng(0).integers(0, CFG.vocab_size, (3, 21)), np.int32)
    losses = np.asarray(analysis.token_losses(CFG, params, jnp.asarray(windows)))
    assert losses.shape == (3, 20)
    ref = float(jax.jit(loss_fn, static_argnums=0)(CFG, params, jnp.asarray(windows[:, :-1]), jnp.asarray(windows[:, 1:])))
    np.testing.assert_allclose(losses.mean(), ref, rtol=1e-5)
    # Batched scoring with a padded last batch gives the same per-token losses.
    np.testing.assert_allclose(evaluate.score_windows(CFG, params, windows, batch_size=2), losses, atol=1e-6)


def test_cli_scores_a_corpus(workdir, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    out = tmp_path / "eval"
    window = 2 * CFG.block_size        # past the training window: allowed for the mosaic
    rc = evaluate.main([f"--workdir={workdir}", f"--input={corpus}", f"--window={window}", f"--out={out}",
                        "--batch_size=4", "--attention_text=Once upon a time", "--attention_layer=1"])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads((out / "eval.json").read_text())
    n = (len(TEXT.encode()) + 1 - 1) // window     # byte tokens + EOS
    assert summary["windows"] == n and summary["window"] == window and summary["tokens_scored"] == n * window
    assert len(summary["per_position_loss"]) == window
    np.testing.assert_allclose(np.mean(summary["per_position_loss"]), summary["loss"], rtol=1e-5)
    np.testing.assert_allclose(np.exp(summary["loss"]), summary["perplexity"], rtol=1e-5)
    rows = list(csv.reader(open(out / "per_position_loss.csv")))
    assert rows[0] == ["position", "mean_loss", "windows"] and len(rows) == window + 1
    for name in ("per_position_loss.png", "attention_L1_Hall.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_errors(workdir, tmp_path, capsys):
    assert evaluate.main([f"--workdir={workdir}"]) == 2
    assert evaluate.main([f"--workdir={workdir}", f"--input={tmp_path / 'missing.txt'}"]) == 1
    assert evaluate.main([f"--workdir={workdir}", "--attention_text=hi", "--attention_layer=9"]) == 2
    err = capsys.readouterr().err
    assert err.count("evaluate: error: ") == 3 and "missing.txt" in err and "out of range" in err


@pytest.mark.parametrize("flag", ["--batch_size=0", "--window=-5", "--max_windows=-1"])
def test_bad_numbers_are_one_line_naming_the_flag(workdir, tmp_path, capsys, flag):
    """Issue 13 item 6: `range() arg 3 must not be zero` and a message about "-5+1" before."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    assert evaluate.main([f"--workdir={workdir}", f"--input={corpus}", flag]) == 2
    err = capsys.readouterr().err
    assert err.startswith("evaluate: error:") and flag.split("=")[0] in err and err.count("\n") == 1


def test_latin1_input_is_decoded_like_prepare_data(workdir, tmp_path, capsys):
    """A Latin-1 file: its undecodable bytes become U+FFFD (as prepare_data does) and the file is named."""
    from mosaic_jax.data.tokenizers import ByteTokenizer
    corpus = tmp_path / "latin1.txt"
    text = TEXT.replace("little cat", "petit café")
    corpus.write_bytes(text.encode("latin-1"))
    assert evaluate.main([f"--workdir={workdir}", f"--input={corpus}", "--out", str(tmp_path / "e")]) == 0
    err = capsys.readouterr().err
    assert f"{corpus}: 8 undecodable bytes replaced by U+FFFD" in err     # one é per line, 8 lines
    ids = evaluate.read_corpus([str(corpus)], ByteTokenizer())
    # a file is one document, read as prepare_data reads it: the final newline ends the document
    assert ids == ByteTokenizer().encode(text.replace("é", "\ufffd").rstrip("\n")) + [ByteTokenizer().eos_id]


def test_mosaic_attention_maps_are_the_cmem_read_weights(params):
    tokens = np.asarray(np.random.default_rng(1).integers(0, CFG.vocab_size, (2, 12)), np.int32)
    maps = np.asarray(analysis.attention_maps(CFG, params, jnp.asarray(tokens)))
    L, B, H, T, _ = maps.shape
    assert (L, B, H, T) == (CFG.n_layer, 2, CFG.n_head, 12)
    assert np.all(maps[..., 0, :] == 0)                               # row 0: nothing stored yet
    np.testing.assert_allclose(maps[..., 1:, :].sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(np.ones((T, T)), k=0)[None, None, None] * maps == 0)   # strict: j ≤ t − 1
    # A·v is what the C-mem reads (before c_proj).
    _, internals = jax.jit(decode.forward_with_internals, static_argnums=0)(CFG, params, jnp.asarray(tokens))
    k, v = internals[1]["keys"], internals[1]["values"]
    np.testing.assert_allclose(np.einsum("bhts,bshd->bthd", maps[1], np.asarray(v)),
                               np.asarray(memory.contextual_retrieval(k, v, impl="dense")), atol=1e-5)
    one = np.asarray(analysis.attention_map(CFG, params, jnp.asarray(tokens[0]), 1, 2))
    np.testing.assert_allclose(one, maps[1, 0, 2], atol=1e-6)


def test_gpt2_attention_maps_are_causal():
    cfg = mj.ModelConfig(arch="gpt2", vocab_size=64, n_layer=2, n_head=4, n_embd=32, block_size=16)
    params = perturbed_params(cfg, seed=3)
    maps = np.asarray(analysis.attention_maps(cfg, params, jnp.arange(10, dtype=jnp.int32)[None]))
    np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(np.ones((10, 10)), k=1)[None, None, None] * maps == 0)
    with pytest.raises(ValueError, match="out of range"):
        analysis.attention_map(cfg, params, jnp.arange(4), 2, 0)
