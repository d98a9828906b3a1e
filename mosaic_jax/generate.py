"""Generate text from a trained run, streaming it as it is produced.

    python -m mosaic_jax.generate --workdir=runs/tiny_cpu --prompt="Once upon a time" \
        [--max_new_tokens=200] [--temperature=0.8] [--top_k=0] [--top_p=1.0] [--seed=0] [--greedy]
        [--past_window=continue|recompute] [--num_samples=1] [--step=N] [--tokenizer=SPEC] [--no_eos_prefix]

`load_for_inference(workdir)` reads what `python -m mosaic_jax.train` writes: the newest finalised
`checkpoints/<step>/` (params only, restored onto one device; its `config` item gives the ModelConfig and its
`data` item the tokenizer's data folder and hash), or else `export/` (params + model_config.json) with the data
path from `config.json`. The tokenizer is `--tokenizer` if given, else the prepared-data folder the run trained on,
else the copy training keeps in `workdir/tokenizer/` (the data folder moved); the checkpoint's hash must match.
"""
from __future__ import annotations

import json
import pathlib
import sys
from typing import Any, Optional, Sequence

import jax
import orbax.checkpoint as ocp
from absl import flags

from mosaic_jax import cli_util
from mosaic_jax.io import storage   # first: STORAGE_EMULATOR_HOST for gcsfs and tensorstore
from mosaic_jax.data.tokenizers import load_tokenizer
from mosaic_jax.inference import sampling
from mosaic_jax.io import data_cache
from mosaic_jax.models.config import ModelConfig
from mosaic_jax.models.lm import init_params
from mosaic_jax.training import run_config
from mosaic_jax.training.checkpoint import TOKENIZER_DIR


class InferenceLoadError(RuntimeError):
    """The workdir holds nothing loadable, or its tokenizer cannot be found (one-line message)."""


def _checkpoint_steps(ckpt_dir: pathlib.Path) -> list[int]:
    # Orbax renames a step folder into place only once it is complete: numeric names are finalised steps
    # (in-progress saves carry a tmp suffix, set-aside broken ones a `.broken-<time>` suffix).
    # On gs:// Orbax writes in place and marks a finished step with commit_success.txt.
    if not ckpt_dir.is_dir():
        return []
    remote = storage.is_remote(ckpt_dir)
    return sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit() and (p / "state").is_dir()
                  and (not remote or (p / "commit_success.txt").exists()))


def _read_json(path: pathlib.Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InferenceLoadError(f"{path}: cannot read JSON ({e})") from None


def _model_config(d: dict[str, Any]) -> ModelConfig:
    return run_config.model_of(d)   # a full run config or a bare model config


def _restore_params(path: pathlib.Path, cfg: ModelConfig, in_state: bool) -> Any:
    """Params onto the default device; from a TrainState item only its `params` subtree is read."""

    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract)
    if in_state:
        target = {"params": target}
    restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=sharding), target)
    try:
        out = ocp.PyTreeCheckpointer().restore(
            path, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=in_state))
    except Exception as e:  # noqa: BLE001 - any failure means this checkpoint does not hold these params
        raise InferenceLoadError(f"{path}: cannot restore params ({type(e).__name__}: "
                                 f"{' '.join(str(e).split())[:200]})") from None
    return out["params"] if in_state else out


def load_for_inference(workdir: str, step: Optional[int] = None, tokenizer: Optional[str] = None
                       ) -> tuple[ModelConfig, Any, Any]:
    """(ModelConfig, params, tokenizer) from a training workdir (see the module docstring)."""
    wd = storage.path(workdir)   # absolute (Orbax restores only absolute paths), or a gs:// URL
    if not wd.is_dir():
        raise InferenceLoadError(f"--workdir={workdir}: no such folder")
    steps = _checkpoint_steps(wd / "checkpoints")
    export = wd / "export"
    data_meta: dict[str, Any] = {}
    if step is not None and step not in steps:
        raise InferenceLoadError(f"{wd / 'checkpoints'}: no finalised step {step} (have {steps})")
    if steps:
        s = steps[-1] if step is None else step
        item = wd / "checkpoints" / str(s)
        cfg = _model_config(_read_json(item / "config" / "metadata"))
        data_meta = _read_json(item / "data" / "metadata") if (item / "data" / "metadata").is_file() else {}
        params = _restore_params(item / "state", cfg, in_state=True)
    elif (export / "model_config.json").is_file():
        cfg = _model_config(_read_json(export / "model_config.json"))
        params = _restore_params(export / "params", cfg, in_state=False)
    else:
        raise InferenceLoadError(f"{wd}: no checkpoints/<step>/ and no export/ (train with python -m mosaic_jax.train)")
    if tokenizer is not None:
        tok = _load_tokenizer(tokenizer)
        problem = _hash_problem(tokenizer, tok, data_meta.get("tokenizer_hash"))
        if problem:
            raise InferenceLoadError(problem)
        return cfg, params, tok
    return cfg, params, _run_tokenizer(wd, data_meta)


def _hash_problem(spec: str, tok: Any, want: Optional[str]) -> Optional[str]:
    """Why `tok` is not the tokenizer the checkpoint was trained with, or None (no hash recorded: accepted)."""
    if not want or tok.hash == want:
        return None
    return f"tokenizer {spec} (hash {tok.hash[:12]}) is not the one the checkpoint was trained with (hash {want[:12]})"


def _load_tokenizer(spec: str) -> Any:
    try:
        return load_tokenizer(data_cache.local_copy(spec))   # gs://: a local copy of the folder
    except ValueError as e:   # DataError
        raise InferenceLoadError(str(e)) from None


def _run_tokenizer(wd: pathlib.Path, data_meta: dict[str, Any]) -> Any:
    """The run's tokenizer: its recorded data folder, else the copy training left in `workdir/tokenizer/`
    (checkpoint.save_tokenizer); the first whose hash matches the checkpoint's wins."""

    run_cfg = _read_json(wd / "config.json") if (wd / "config.json").is_file() else {}
    recorded = data_meta.get("path") or run_cfg.get("data", {}).get("path")
    copy = wd / TOKENIZER_DIR
    order = (str(copy), recorded) if storage.is_remote(recorded or "") else (recorded, str(copy))   # gs:// data:
    # the run's small tokenizer copy first (trying the data folder would download the whole data set)
    candidates = [c for c in order if c and (c in ("byte", "gpt2") or storage.path(c).exists())]
    if not candidates:
        if not recorded:
            raise InferenceLoadError(f"{wd}: cannot tell which tokenizer the run used; pass --tokenizer=SPEC")
        raise InferenceLoadError(f"the run's data folder {recorded} is gone and {copy} does not exist; pass "
                                 "--tokenizer=SPEC (its prepared-data folder or sentencepiece .model)")
    want = data_meta.get("tokenizer_hash")
    problems: list[str] = []
    for spec in candidates:
        try:
            tok = _load_tokenizer(spec)
        except InferenceLoadError as e:
            problems.append(str(e))
            continue
        problem = _hash_problem(spec, tok, want)
        if problem is None:
            return tok
        problems.append(problem)
    raise InferenceLoadError("; ".join(problems) + "; pass --tokenizer=SPEC")


class TextStream:
    """Incremental detokenisation: prints only text that no later token can change."""

    def __init__(self, tok: Any, prefix_ids: Sequence[int], out: Any = None) -> None:
        self.tok, self.ids, self.out = tok, list(prefix_ids), out or sys.stdout
        self.printed = tok.decode(self.ids)

    def push(self, token: int) -> None:
        self.ids.append(int(token))
        self._emit(final=False)

    def _emit(self, final: bool) -> None:
        text = self.tok.decode(self.ids)
        # Hold back a trailing partial UTF-8 sequence (byte/BPE tokens can split a character).
        if text.startswith(self.printed) and (final or not text.endswith("\ufffd")):
            self.out.write(text[len(self.printed):])
            self.out.flush()
            self.printed = text

    def close(self) -> None:
        self._emit(final=True)
        self.out.write("\n")
        self.out.flush()


FLAGS = flags.FlagValues()
flags.DEFINE_string("workdir", None, "Training run folder (checkpoints/ or export/).", flag_values=FLAGS)
flags.DEFINE_string("prompt", "", "Text to continue (empty: start a new document).", flag_values=FLAGS)
flags.DEFINE_integer("max_new_tokens", 200, "Tokens to generate.", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_float("temperature", 0.8, "Sampling temperature (0: greedy).", lower_bound=0.0, flag_values=FLAGS)
flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens (0: off).", lower_bound=0, flag_values=FLAGS)
flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (1: off).", lower_bound=0.0, upper_bound=1.0,
                   flag_values=FLAGS)
flags.DEFINE_bool("greedy", False, "Argmax decoding (= --temperature=0).", flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "Sampling seed.", flag_values=FLAGS)
flags.DEFINE_integer("num_samples", 1, "Samples drawn in one batch (streamed when 1).", lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_enum("past_window", "continue", ["continue", "recompute"], "Past block_size: keep decoding "
                  "incrementally (mosaic) or recompute the last block_size tokens for each new one (the reference).",
                  flag_values=FLAGS)
flags.DEFINE_integer("max_len", 0, "Decoder cache size (0: prompt + max_new_tokens).", lower_bound=0,
                     flag_values=FLAGS)
flags.DEFINE_integer("step", None, "Checkpoint step (default: newest).", flag_values=FLAGS)
flags.DEFINE_string("tokenizer", None, "Tokenizer spec, if the run's data folder moved.", flag_values=FLAGS)
flags.DEFINE_bool("no_eos_prefix", False, "Do not put EOS before the prompt (training data is `doc EOS doc EOS "
                  "...`, so a prompt that starts a document follows an EOS).", flag_values=FLAGS)
flags.DEFINE_bool("no_stream", False, "Print the text only at the end.", flag_values=FLAGS)


def _prompt_text(prompt: str) -> str:
    """The prompt as valid text: bytes that are not UTF-8 arrive as lone surrogates (PEP 383)."""
    try:
        prompt.encode("utf-8")
        return prompt
    except UnicodeEncodeError as e:
        raise cli_util.UsageError(f"--prompt: not valid UTF-8 text (undecodable byte at character {e.start})") from None


def _generate(rest: list[str]) -> int:
    args = cli_util.namespace(FLAGS)
    if not args.workdir:
        raise cli_util.UsageError("--workdir is required")
    prompt = _prompt_text(args.prompt)

    try:
        cfg, params, tok = load_for_inference(args.workdir, args.step, args.tokenizer)
        sc = sampling.SamplingConfig(temperature=0.0 if args.greedy else args.temperature, top_k=args.top_k,
                                     top_p=args.top_p)
    except ValueError as e:
        raise cli_util.CommandError(str(e)) from None
    ids = ([] if args.no_eos_prefix else [tok.eos_id]) + tok.encode(prompt)
    if not ids:
        raise cli_util.UsageError("empty prompt with --no_eos_prefix: nothing to condition on")
    n = args.num_samples
    stream = n == 1 and not args.no_stream
    streams = [TextStream(tok, ids, sys.stdout if stream else _Sink()) for _ in range(n)]
    if stream:
        sys.stdout.write(streams[0].printed)
        sys.stdout.flush()
    try:
        for out in sampling.generate_stream(cfg, params, [ids] * n, max_new_tokens=args.max_new_tokens,
                                            sampling=sc, seed=args.seed, eos_id=tok.eos_id,
                                            past_window=args.past_window, max_len=args.max_len or None,
                                            vocab_limit=tok.vocab_size):
            for s, t in zip(streams, out.tokens):
                if t >= 0 and t != tok.eos_id:
                    s.push(int(t))
    except ValueError as e:
        if stream:
            print()
        raise cli_util.CommandError(str(e)) from None
    if stream:
        streams[0].close()
    else:
        for i, s in enumerate(streams):
            print(f"=== sample {i} ===\n{tok.decode(s.ids)}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The CLI; returns the exit status (2: bad flags, 1: the run cannot be loaded or sampled)."""
    return cli_util.run("generate", FLAGS, _generate, argv, doc=__doc__, errors=(InferenceLoadError,))


cli = cli_util.exit_with(main)


class _Sink:
    def write(self, _: str) -> None:
        pass

    def flush(self) -> None:
        pass


if __name__ == "__main__":
    cli()
