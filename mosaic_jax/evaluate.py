"""Score a trained run on a text corpus: loss, perplexity and the average loss per position in the window.

    python -m mosaic_jax.evaluate --workdir=runs/tiny_cpu --input=../shared/data/tinystories/valid_v1_prefix.txt \
        [--window=0 (block_size)] [--batch_size=8] [--max_windows=0] [--out=WORKDIR/eval]
        [--attention_text="Once upon a time" --attention_layer=0 --attention_head=-1]

The corpus (files joined by EOS) is cut into consecutive, non-overlapping windows of `window`+1 tokens; position
t of a window predicts its token t+1 from tokens 0..t, so position 0 has no context (the paper's Fig. 8 curve).
A window longer than block_size is allowed for the memory mosaic (no position encoding; the per-position curve
then shows what happens past the training window). Writes `eval.json`, `per_position_loss.csv` and
`per_position_loss.png`; with --attention_text, `attention_L{l}_H{h}.png` (head -1: all heads of the layer).
"""
from __future__ import annotations

import csv
import io
import json
import math
import pathlib
import sys
from typing import Any, Optional, Sequence

import jax.numpy as jnp
import numpy as np
from absl import flags

from mosaic_jax import cli_util
from mosaic_jax.io import storage   # first: STORAGE_EMULATOR_HOST for gcsfs and tensorstore
from mosaic_jax.data import ingest
from mosaic_jax.data.errors import DataError
from mosaic_jax.generate import InferenceLoadError, load_for_inference
from mosaic_jax.models import registry
from mosaic_jax.models.config import ModelConfig
from mosaic_jax.tasks.analysis import attention_maps, token_losses


def corpus_windows(ids: Sequence[int], window: int) -> np.ndarray:
    """(N, window+1) consecutive windows; the last one shares its first token with the previous one's last."""
    ids = np.asarray(ids, np.int32)
    n = (len(ids) - 1) // window
    if n < 1:
        raise ValueError(f"the input has {len(ids)} tokens: fewer than one window of {window + 1} tokens")
    idx = np.arange(n)[:, None] * window + np.arange(window + 1)[None]
    return ids[idx]


def score_windows(cfg: ModelConfig, params: Any, windows_NT1: np.ndarray, batch_size: int) -> np.ndarray:
    """Per-token losses (N, T) in fixed-shape batches (the last one padded, so one compile)."""

    N = len(windows_NT1)
    out = []
    for s in range(0, N, batch_size):
        chunk = windows_NT1[s:s + batch_size]
        pad = batch_size - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
        out.append(np.asarray(token_losses(cfg, params, jnp.asarray(chunk)))[:batch_size - pad])
    return np.concatenate(out)


def summarize(losses_NT: np.ndarray) -> dict[str, Any]:
    loss = float(losses_NT.mean())
    return {"loss": loss, "perplexity": math.exp(min(loss, 80.0)), "tokens_scored": int(losses_NT.size),
            "windows": int(losses_NT.shape[0]), "window": int(losses_NT.shape[1]),
            "per_position_loss": [float(x) for x in losses_NT.mean(axis=0)]}


def write_outputs(out_dir: pathlib.Path, summary: dict[str, Any], block_size: int, title: str) -> list[pathlib.Path]:
    """eval.json, per_position_loss.csv and per_position_loss.png."""
    import matplotlib   # here: Agg is chosen before pyplot loads, and only when plotting (not on import)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "eval.json", out_dir / "per_position_loss.csv", out_dir / "per_position_loss.png"]
    storage.write_text(paths[0], json.dumps(summary, indent=1) + "\n")   # local or gs:// (never half-written)
    curve = summary["per_position_loss"]
    table = io.StringIO(newline="")
    w = csv.writer(table)
    w.writerow(["position", "mean_loss", "windows"])
    w.writerows([t, f"{x:.6f}", summary["windows"]] for t, x in enumerate(curve))
    storage.write_text(paths[1], table.getvalue())
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(np.arange(len(curve)), curve, lw=0.8, alpha=0.5, label="mean over windows")
    k = max(len(curve) // 32, 1)
    if k > 1:   # a running mean makes the trend readable when few windows were scored
        smooth = np.convolve(curve, np.ones(k) / k, mode="valid")
        ax.plot(np.arange(len(smooth)) + (k - 1) / 2, smooth, lw=1.6, label=f"running mean over {k} positions")
    if len(curve) > block_size:
        ax.axvline(block_size, color="gray", ls="--", lw=0.8, label=f"training window ({block_size})")
    ax.legend(fontsize=8)
    ax.set_xlabel("position in the window (tokens of context)")
    ax.set_ylabel("mean loss (nats)")
    ax.set_title(f"{title}: loss {summary['loss']:.3f}, ppl {summary['perplexity']:.1f}", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    plt.close(fig)
    storage.write_bytes(paths[2], png.getvalue())
    return paths


def plot_attention(maps_HTT: np.ndarray, heads: Sequence[int], labels: Sequence[str], layer: int,
                   path: pathlib.Path, title: str) -> None:
    import matplotlib   # here: Agg is chosen before pyplot loads, and only when plotting (not on import)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(heads)
    cols = min(n, 4)
    rows = -(-n // cols)
    T = maps_HTT.shape[-1]
    size = max(3.0, min(12.0, 0.18 * T))
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    what = f"{title} read weights"
    for ax, h in zip(axes.flat, heads):
        ax.imshow(maps_HTT[h], cmap="viridis", vmin=0.0, interpolation="nearest")
        ax.set_title(f"layer {layer} head {h} ({what})", fontsize=9)
        if T <= 64:
            ax.set_xticks(range(T), labels, rotation=90, fontsize=6)
            ax.set_yticks(range(T), labels, fontsize=6)
        ax.set_xlabel("memory position j")
        ax.set_ylabel("query position t")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _token_labels(tok: Any, ids: Sequence[int]) -> list[str]:
    return [repr(tok.decode([i]))[1:-1] or f"<{i}>" for i in ids]


FLAGS = flags.FlagValues()
flags.DEFINE_string("workdir", None, "Training run folder (checkpoints/ or export/).", flag_values=FLAGS)
flags.DEFINE_list("input", [], "Comma-separated text files to score, local or gs:// (plain text, JSONL or gzip, "
                  "decoded as prepare_data does).", flag_values=FLAGS)
flags.DEFINE_integer("window", 0, "Tokens of context per window (0: block_size).", lower_bound=0, flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 8, "Windows per forward pass.", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer("max_windows", 0, "Score at most this many windows (0: all).", lower_bound=0, flag_values=FLAGS)
flags.DEFINE_string("out", "", "Output folder (default: WORKDIR/eval).", flag_values=FLAGS)
flags.DEFINE_string("attention_text", "", "Plot attention maps over this text.", flag_values=FLAGS)
flags.DEFINE_integer("attention_layer", 0, "Layer of the attention maps.", flag_values=FLAGS)
flags.DEFINE_integer("attention_head", -1, "Head of the attention maps (-1: every head of the layer).",
                     flag_values=FLAGS)
flags.DEFINE_integer("step", None, "Checkpoint step (default: newest).", flag_values=FLAGS)
flags.DEFINE_string("tokenizer", None, "Tokenizer spec, if the run's data folder moved.", flag_values=FLAGS)


def read_corpus(files: Sequence[str], tok: Any) -> list[int]:
    """Token ids of `files` joined by EOS; each file is one document, read like prepare_data reads it
    (gzip, JSONL objects, UTF-8 with undecodable bytes replaced by U+FFFD and counted, binary refused)."""
    ids: list[int] = []
    for f in files:
        if not storage.path(f).is_file():   # a local file or a gs:// object (ingest streams it)
            raise cli_util.CommandError(f"--input: {f}: file not found")
        reader = ingest.SourceReader(f, separator="file")
        for doc in reader.documents():
            ids += tok.encode(doc) + [tok.eos_id]
        if reader.replaced_bytes:
            print(f"{f}: {reader.replaced_bytes} undecodable bytes replaced by U+FFFD", file=sys.stderr)
    return ids


def _evaluate(rest: list[str]) -> int:
    args = cli_util.namespace(FLAGS)

    if not args.workdir:
        raise cli_util.UsageError("--workdir is required")
    if not args.input and not args.attention_text:
        raise cli_util.UsageError("give --input (scoring) and/or --attention_text (attention maps)")
    try:
        cfg, params, tok = load_for_inference(args.workdir, args.step, args.tokenizer)
        window = args.window or cfg.block_size
        fam = registry.of(cfg)
        limit = fam.max_positions(cfg)
        if limit is not None and window > limit:
            raise cli_util.UsageError(f"--window={window} exceeds the {fam.title} block_size {limit} "
                                      "(learned positions)")
        out_dir = storage.path(args.out or f"{str(args.workdir).rstrip('/')}/eval")
        if args.input:
            windows = corpus_windows(read_corpus(args.input, tok), window)
            if args.max_windows:
                windows = windows[:args.max_windows]
            summary = summarize(score_windows(cfg, params, windows, args.batch_size))
            summary.update(workdir=str(args.workdir), input=",".join(args.input), arch=cfg.arch,
                           block_size=cfg.block_size)
            for path in write_outputs(out_dir, summary, cfg.block_size, f"{cfg.arch} on {len(windows)} windows"):
                print(f"wrote {path}")
            print(f"loss {summary['loss']:.4f} | perplexity {summary['perplexity']:.2f} | "
                  f"{summary['tokens_scored']:,} tokens in {summary['windows']} windows of {window}")
        if args.attention_text:
            ids = [tok.eos_id] + tok.encode(args.attention_text)
            layer = args.attention_layer
            heads = range(cfg.n_head) if args.attention_head < 0 else [args.attention_head]
            if not 0 <= layer < cfg.n_layer or any(not 0 <= h < cfg.n_head for h in heads):
                raise cli_util.UsageError(f"--attention_layer/--attention_head out of range ({cfg.n_layer} layers, "
                                          f"{cfg.n_head} heads)")
            if limit is not None and len(ids) > limit:
                raise cli_util.UsageError(f"--attention_text has {len(ids)} tokens > {fam.title} block_size "
                                          f"{limit}")
            maps = np.asarray(attention_maps(cfg, params, np.asarray([ids], np.int32)))[layer, 0]
            out_dir.mkdir(parents=True, exist_ok=True)
            name = f"attention_L{layer}_H{'all' if args.attention_head < 0 else args.attention_head}.png"
            plot_attention(maps, list(heads), _token_labels(tok, ids), layer, out_dir / name, fam.title)
            print(f"wrote {out_dir / name}")
    except (DataError, ValueError) as e:
        raise cli_util.CommandError(str(e)) from None
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The CLI; returns the exit status (2: bad flags, 1: unreadable run or input)."""
    return cli_util.run("evaluate", FLAGS, _evaluate, argv, doc=__doc__, errors=(InferenceLoadError,))


cli = cli_util.exit_with(main)


if __name__ == "__main__":
    cli()
