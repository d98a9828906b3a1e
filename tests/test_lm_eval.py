"""The lm-evaluation-harness adapter (model type `mosaic_jax`), offline, on a tiny memory mosaic.

* loglikelihood of batched, padded, length-sorted requests equals an independent per-request sum of
  log_softmax(mosaic_jax.apply) over the continuation (EOS before the context), is_greedy likewise (the reference
  scores one request per row, padded to another width than the adapter's);
* loglikelihood_rolling equals each token predicted from at most max_length previous tokens (EOS first);
* generate_until equals mosaic_jax's greedy decoder cut at the first stop string;
* `python -m mosaic_jax.hf.lm_eval_cli --model mosaic_jax ...` runs three tasks defined in the test (local
  JSONL, dataset_path: json; multiple choice, rolling perplexity, generation) and prints their scores.

Tolerance: both sides are float32 forwards of the same function on different padded shapes; sums of ≤ 40
log-probabilities of size ~5 agree to ~1e-5 (atol 1e-4).
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
pytest.importorskip("lm_eval")

import jax.numpy as jnp  # noqa: E402

from mosaic_jax.inference import sampling
from mosaic_jax.training import checkpoint
from mosaic_jax.models.config import ModelConfig  # noqa: E402
from mosaic_jax.data.tokenizers import ByteTokenizer  # noqa: E402
from mosaic_jax.models.lm import apply  # noqa: E402
from _tiny_params import random_params  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
ATOL = 1e-4


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny v1 run folder (export/, random params), byte tokenizer."""
    cfg = ModelConfig(arch="mosaic", vocab_size=272, n_layer=2, n_head=2, n_embd=16, block_size=32, pmem_size=8)
    params = random_params(cfg)
    wd = tmp_path_factory.mktemp("lm_eval") / "run"
    checkpoint.export_params(wd / "export", params, cfg.to_dict())
    return wd, cfg, params


def _lm(run, **kw):
    from mosaic_jax.hf.lm_eval_adapter import MosaicJaxLM
    return MosaicJaxLM(workdir=str(run[0]), tokenizer="byte", batch_size=3, **kw)


def _req(kind, args):
    from lm_eval.api.instance import Instance
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


REF_WIDTH = 48   # the reference pads every row to this one width (one compile); the adapter pads to 32 or 64


def _logprobs(cfg, params, seq):
    """log p(seq[i+1] | seq[:i+1]) for every i, and whether seq[i+1] is the argmax: one row on its own."""
    n = len(seq) - 1
    row = np.zeros((1, REF_WIDTH), np.int32)
    row[0, :n] = seq[:-1]
    logits = np.asarray(apply(cfg, params, jnp.asarray(row)))[0, :n].astype(np.float64)
    m = logits.max(-1, keepdims=True)
    logp = logits - (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))
    tgt = np.asarray(seq[1:])
    return logp[np.arange(len(tgt)), tgt], logits.argmax(-1) == tgt


def test_loglikelihood_matches_unbatched(run):
    _, cfg, params = run
    lm = _lm(run)
    tok = ByteTokenizer()
    pairs = [("Once upon a time", " there was"), ("", "Hello"), ("The cat sat on", " the mat."),
             ("A", "B"), ("Lily and Tom went to the park to play", " with a ball")]
    got = lm.loglikelihood([_req("loglikelihood", p) for p in pairs])
    for (ctx, cont), (lp, greedy) in zip(pairs, got):
        c_ids, w_ids = tok.encode(ctx), tok.encode(cont)
        seq = ([tok.eos_id] + c_ids + w_ids)[-(lm.max_length + 1):]   # the context is left-truncated
        lps, hits = _logprobs(cfg, params, seq)
        assert abs(lp - lps[-len(w_ids):].sum()) < ATOL
        assert greedy == bool(hits[-len(w_ids):].all())


def test_loglikelihood_rolling_windows(run):
    _, cfg, params = run
    L = 16
    lm = _lm(run, max_length=L)
    tok = ByteTokenizer()
    texts = ["short one", "a longer text that needs three windows of sixteen bytes."]
    got = lm.loglikelihood_rolling([_req("loglikelihood_rolling", (t,)) for t in texts])
    for text, total in zip(texts, got):
        tokens = tok.encode(text)
        ids, n = [tok.eos_id] + tokens, len(tokens)
        # lm_eval's disjoint windows: predictions end at L, 2L, ..., n; each window reads at most L inputs
        want, prev = 0.0, 0
        for end in sorted(set(list(range(L, n, L)) + [n])):
            start = max(0, end - L)
            lps, _ = _logprobs(cfg, params, ids[start:end + 1])   # predicts tokens start..end-1
            want += lps[prev - start:].sum()
            prev = end
        assert abs(total - want) < ATOL * len(ids)


def test_generate_until_matches_decoder(run):
    _, cfg, params = run
    lm = _lm(run)
    tok = ByteTokenizer()
    prompts = ["Once upon", "The dog", "A"]
    kw = {"until": ["e"], "max_gen_toks": 6, "do_sample": False}
    got = lm.generate_until([_req("generate_until", (p, kw)) for p in prompts])
    rows = sampling.generate(cfg, params, [[tok.eos_id] + tok.encode(p) for p in prompts], max_new_tokens=6,
                             sampling=sampling.SamplingConfig(0.0), eos_id=tok.eos_id, vocab_limit=tok.vocab_size)
    for text, ids in zip(got, rows):
        full = tok.decode(ids)
        assert text == (full[:full.index("e")] if "e" in full else full)


TASKS = {
    "mj_choice": {"output_type": "multiple_choice", "doc_to_text": "{{question}}", "doc_to_choice": "{{choices}}",
                  "doc_to_target": "{{answer}}", "metric_list": [{"metric": "acc"}]},
    "mj_rolling": {"output_type": "loglikelihood_rolling", "doc_to_text": "", "doc_to_target": "{{text}}",
                   "metric_list": [{"metric": "word_perplexity"}, {"metric": "bits_per_byte"}]},
    "mj_gen": {"output_type": "generate_until", "doc_to_text": "{{question}}", "doc_to_target": "{{target}}",
               "generation_kwargs": {"until": ["\n"], "max_gen_toks": 4, "do_sample": False},
               "metric_list": [{"metric": "exact_match"}]},
}


@pytest.mark.slow
def test_lm_eval_cli_scores_local_tasks(run, tmp_path):
    rows = [{"question": f"Q{i}: the sky is", "choices": [" blue", " green", " loud"], "answer": i % 3,
             "text": f"Once upon a time there was a cat number {i}.", "target": " blue"} for i in range(4)]
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for name, spec in TASKS.items():   # JSON is YAML
        spec = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
                "test_split": "test", **spec}
        (tasks / f"{name}.yaml").write_text(json.dumps(spec))
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               HF_HOME=str(tmp_path / "hf_home"))
    res = subprocess.run([sys.executable, "-m", "mosaic_jax.hf.lm_eval_cli", "--model", "mosaic_jax",
                          "--model_args", f"workdir={run[0]},tokenizer=byte", "--batch_size", "4",
                          "--tasks", ",".join(TASKS), "--include_path", str(tasks),
                          "--output_path", str(tmp_path / "out")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    for name, metric in (("mj_choice", "acc"), ("mj_rolling", "bits_per_byte"), ("mj_gen", "exact_match")):
        line = next((ln for ln in res.stdout.splitlines() if name in ln and metric in ln), None)
        assert line is not None, res.stdout[-3000:]
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())["results"]
    assert 0.0 <= results["mj_choice"]["acc,none"] <= 1.0 and results["mj_rolling"]["bits_per_byte,none"] > 0
