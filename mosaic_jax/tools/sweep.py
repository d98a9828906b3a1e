r"""Sweeps: a grid or a list of `--config.x=v` overrides -> one run folder each, run one after another here or
submitted as one SLURM job array, then one results table (markdown and CSV) gathered from the runs' metrics.

    # 3 x 2 grid, locally, one after another (re-running the same command skips finished runs, resumes the rest)
    python -m mosaic_jax.tools.sweep run --name=lr_width --grid=optim.lr=1e-3,3e-3,1e-2 --grid=model.n_embd=128,256 \
        -- --config=tiny_cpu --config.data.path=data/tinystories_sp4k
    # explicit list of runs, as a SLURM job array of 8-GPU jobs (launch/slurm_gpu.sbatch), 2 at a time
    python -m mosaic_jax.tools.sweep run --name=arch --mode=slurm --max_parallel=2 \
        --run="model.arch=mosaic" --run="model.arch=gpt2 model.n_head=12" -- --config=babistories_mm
    python -m mosaic_jax.tools.sweep gather runs/sweeps/arch       # results.md + results.csv (also done after a local sweep)

`run --dry_run` prints the commands (or the sbatch submission) without running anything. Layout:
`<root>/<name>/sweep.json` (the runs: folder, overrides, full argument list), `<root>/<name>/<NNN>_<key=value>...`
(each run's --workdir), `results.md`, `results.csv`. A SLURM array task reads its arguments with
`python -m mosaic_jax.tools.sweep args <sweep dir> <index>` (one per line), which is what slurm_gpu.sbatch does.

`--root` may be gs://bucket/prefix: sweep.json, the runs' workdirs, sweep_status.json and the results tables then live
in the bucket, and `gather gs://...` reads the runs' metrics from it. What runs the commands stays on this machine:
the training subprocesses (local mode), and the SLURM log files, which sbatch writes only to a local path
(`./slurm_logs/<name>/` for a gs:// root).
"""
from __future__ import annotations

import csv
import io
import itertools
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from typing import Any, Optional, Sequence

from absl import flags

from mosaic_jax import cli_util
from mosaic_jax.io import storage
from mosaic_jax.training import legacy_config

DEFAULT_COMMAND = f"{shlex.quote(sys.executable)} -m mosaic_jax.train"
SBATCH_SCRIPT = "launch/slurm_gpu.sbatch"


class SweepError(ValueError):
    """Bad sweep arguments or an inconsistent sweep folder (one-line message)."""


def normalize_key(key: str) -> str:
    """'optim.lr', 'config.optim.lr' and '--config.optim.lr' all mean the config field optim.lr. A field's old
    spelling (train.lr) is refused here, before any run starts, naming the new one."""
    key = key.strip().lstrip("-")
    if key.startswith("config."):
        key = key[len("config."):]
    if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+", key):
        raise SweepError(f"{key!r}: expected a config field like optim.lr or model.n_embd")
    if legacy_config.moved_to(key):
        raise SweepError(f"{key!r}: moved to {legacy_config.moved_to(key)} (the optimizer's fields have their own "
                         "section)")
    return key


def parse_assignment(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep:
        raise SweepError(f"{text!r}: expected FIELD=VALUE (e.g. optim.lr=3e-3)")
    return normalize_key(key), value.strip()


def expand(grid: Sequence[str] = (), runs: Sequence[str] = (), spec: Optional[dict[str, Any]] = None
           ) -> list[dict[str, str]]:
    """The runs' overrides, in order: every `--run` (space-separated FIELD=VALUE), then the cartesian product of
    every `--grid FIELD=V1,V2,...` (first field varies slowest). A spec dict may hold "grid" {field: [values]}
    and "runs" [{field: value}]."""
    listed: list[dict[str, str]] = []
    axes: list[tuple[str, list[str]]] = []
    for item in (spec or {}).get("runs", []):
        listed.append({normalize_key(k): str(v) for k, v in item.items()})
    for k, values in (spec or {}).get("grid", {}).items():
        axes.append((normalize_key(k), [str(v) for v in values]))
    for text in runs:
        listed.append(dict(parse_assignment(part) for part in shlex.split(text)))
    for text in grid:
        key, values = parse_assignment(text)
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not vals:
            raise SweepError(f"--grid {text!r}: no values")
        axes.append((key, vals))
    if len({k for k, _ in axes}) != len(axes):
        raise SweepError("a field appears twice in --grid")
    product = [dict(zip([k for k, _ in axes], combo)) for combo in itertools.product(*[v for _, v in axes])] \
        if axes else []
    out = listed + product
    if not out:
        raise SweepError("nothing to sweep: give --grid FIELD=V1,V2 and/or --run 'FIELD=V FIELD=V' (or --spec)")
    return out


def run_name(index: int, overrides: dict[str, str]) -> str:
    """'003_lr=0.003_n_embd=256': index, then each override's last field name and value, filesystem-safe."""
    parts = [f"{index:03d}"] + [f"{k.split('.')[-1]}={v}" for k, v in overrides.items()]
    return re.sub(r"[^\w.=+-]+", "-", "_".join(parts))[:120]


def plan_sweep(root: str | os.PathLike, name: str, base_args: Sequence[str], overrides: list[dict[str, str]],
               command: str = DEFAULT_COMMAND) -> dict[str, Any]:
    sweep_dir = storage.path(root) / name   # an absolute local path or a gs:// URL
    runs = []
    for i, ov in enumerate(overrides):
        run_dir = sweep_dir / run_name(i, ov)
        args = [*base_args, *(f"--config.{k}={v}" for k, v in ov.items()), f"--workdir={run_dir}"]
        runs.append({"index": i, "name": run_dir.name, "dir": str(run_dir), "overrides": ov, "args": args})
    return {"name": name, "dir": str(sweep_dir), "command": shlex.split(command), "base_args": list(base_args),
            "runs": runs}


def write_manifest(plan: dict[str, Any]) -> os.PathLike:
    """Create the sweep folder and sweep.json; an existing sweep must have the same runs (re-running resumes)."""
    sweep_dir = storage.path(plan["dir"])
    path = sweep_dir / "sweep.json"
    if path.exists():
        old = json.loads(path.read_text())
        if [r["args"] for r in old["runs"]] != [r["args"] for r in plan["runs"]]:
            raise SweepError(f"{path} describes other runs: use another --name, or delete the folder to restart")
    if not storage.is_remote(sweep_dir):
        sweep_dir.mkdir(parents=True, exist_ok=True)
    storage.write_text(path, json.dumps({**plan, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1) + "\n")
    return path


def load_manifest(sweep_dir: str | os.PathLike) -> dict[str, Any]:
    path = storage.path(sweep_dir) / "sweep.json"
    try:
        found = path.exists()
    except Exception as e:  # noqa: BLE001 - gs://: no bucket, no permission, no network: one line
        raise SweepError(f"{path}: cannot read ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    if not found:
        raise SweepError(f"{path} not found (is {sweep_dir} a sweep folder made by `sweep run`?)")
    return json.loads(path.read_text())


# ---- results -------------------------------------------------------------------------------------------------

def run_result(run: dict[str, Any]) -> dict[str, Any]:
    """Status and final metrics of one run, from its workdir (metrics.jsonl, config.json, sweep_status.json)."""
    d = storage.path(run["dir"])
    out: dict[str, Any] = {"run": run["name"], **run["overrides"], "status": "not started", "step": None,
                           "train_loss": None, "eval_loss": None, "eval_perplexity": None, "tokens_per_s": None}
    train: dict[int, dict[str, Any]] = {}
    evals: dict[int, dict[str, Any]] = {}
    metrics = d / "metrics.jsonl"
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue   # a line cut by a kill
            if rec.get("split") == "train":
                train[rec["step"]] = rec   # after a resume a step may repeat: the last record wins
            elif rec.get("split") == "eval":
                evals[rec["step"]] = rec
    steps_wanted = None
    if (d / "config.json").exists():
        try:
            steps_wanted = json.loads((d / "config.json").read_text())["train"]["steps"]
        except (json.JSONDecodeError, KeyError):
            pass
    if train:
        last = train[max(train)]
        out.update(step=last["step"], train_loss=last.get("loss"))
        tps = [r["tokens_per_s"] for r in train.values() if isinstance(r.get("tokens_per_s"), (int, float))]
        out["tokens_per_s"] = statistics.median(tps) if tps else None
        out["status"] = "done" if steps_wanted is not None and last["step"] >= steps_wanted else "incomplete"
    if evals:
        last_eval = evals[max(evals)]
        out.update(eval_loss=last_eval.get("loss"), eval_perplexity=last_eval.get("perplexity"))
    status_file = d / "sweep_status.json"
    if status_file.exists():
        rc = json.loads(status_file.read_text()).get("returncode")
        if rc not in (0, None):
            out["status"] = f"failed (exit {rc})"
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def gather(sweep_dir: str | os.PathLike) -> tuple[str, list[dict[str, Any]]]:
    """Write results.md and results.csv in the sweep folder; returns (markdown, rows)."""
    manifest = load_manifest(sweep_dir)
    rows = [run_result(r) for r in manifest["runs"]]
    keys = list(dict.fromkeys(k for r in manifest["runs"] for k in r["overrides"]))
    columns = ["run", *keys, "status", "step", "train_loss", "eval_loss", "eval_perplexity", "tokens_per_s"]
    md = [f"# sweep {manifest['name']}", "",
          "| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    md += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    text = "\n".join(md) + "\n"
    sweep_dir = storage.path(sweep_dir)
    storage.write_text(sweep_dir / "results.md", text)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in columns})
    storage.write_text(sweep_dir / "results.csv", buf.getvalue())
    return text, rows


# ---- running -------------------------------------------------------------------------------------------------

def run_local(plan: dict[str, Any], rerun: bool = False, dry_run: bool = False) -> int:
    """Run the sweep's runs one after another; returns the number of failed runs."""
    failures = 0
    for run in plan["runs"]:
        cmd = [*plan["command"], *run["args"]]
        if dry_run:
            print(shlex.join(cmd))
            continue
        if not rerun and run_result(run)["status"] == "done":
            print(f"[sweep] {run['name']}: already done, skipped", flush=True)
            continue
        print(f"[sweep] {run['name']}: {shlex.join(cmd)}", flush=True)
        t0 = time.time()
        rc = subprocess.call(cmd)
        run_dir = storage.path(run["dir"])
        if not storage.is_remote(run_dir):
            run_dir.mkdir(parents=True, exist_ok=True)
        storage.write_text(run_dir / "sweep_status.json",
                           json.dumps({"returncode": rc, "seconds": round(time.time() - t0, 1)}) + "\n")
        if rc != 0:
            failures += 1
            print(f"[sweep] {run['name']}: failed with exit status {rc}; going on", file=sys.stderr, flush=True)
    return failures


def slurm_log_dir(plan: dict[str, Any]) -> str:
    """Where the array tasks' logs go: the sweep folder, or ./slurm_logs/<name> for a gs:// sweep (sbatch writes
    only to a filesystem path)."""
    return os.path.abspath(os.path.join("slurm_logs", plan["name"])) if storage.is_remote(plan["dir"]) else plan["dir"]


def sbatch_command(plan: dict[str, Any], sbatch_args: Sequence[str] = (), max_parallel: int = 0,
                   script: str = SBATCH_SCRIPT) -> list[str]:
    n = len(plan["runs"])
    array = f"0-{n - 1}" + (f"%{max_parallel}" if max_parallel > 0 else "")
    out = os.path.join(slurm_log_dir(plan), "slurm-%A_%a.out")
    return ["sbatch", f"--array={array}", f"--job-name={plan['name']}", f"--output={out}",
            f"--export=ALL,MOSAIC_SWEEP_DIR={plan['dir']}", *sbatch_args, script]


def _main_run(a: Any, base_args: list[str]) -> int:
    spec = json.loads(storage.path(a.spec).read_text()) if a.spec else None
    overrides = expand(a.grid, a.run, spec)
    if not base_args:
        raise SweepError("give the training flags after '--' (at least --config=PRESET or a config file)")
    if any(x.startswith("--workdir") for x in base_args):
        raise SweepError("--workdir is set per run by the sweep: leave it out of the training flags")
    plan = plan_sweep(a.root, a.name, base_args, overrides, a.command)
    if a.mode == "slurm":
        cmd = sbatch_command(plan, shlex.split(a.sbatch_args), a.max_parallel, a.sbatch_script)
        if a.dry_run:
            print(shlex.join(cmd))
            for run in plan["runs"]:
                print(f"# array task {run['index']}: {shlex.join(run['args'])}")
            return 0
        write_manifest(plan)
        os.makedirs(slurm_log_dir(plan), exist_ok=True)
        print(shlex.join(cmd), flush=True)
        rc = subprocess.call(cmd)
        if rc == 0:
            print(f"submitted {len(plan['runs'])} runs; when they finish: python -m mosaic_jax.tools.sweep gather {plan['dir']}")
        return rc
    if a.dry_run:
        run_local(plan, dry_run=True)
        return 0
    write_manifest(plan)
    failures = run_local(plan, rerun=a.rerun)
    text, _ = gather(plan["dir"])
    print(text, flush=True)
    print(f"results: {plan['dir']}/results.md and results.csv", flush=True)
    return 1 if failures else 0


FLAGS = flags.FlagValues()
flags.DEFINE_string("name", None, "run: sweep name, the folder <root>/<name>.", flag_values=FLAGS)
flags.DEFINE_string("root", "runs/sweeps", "run: where sweep folders go (local or gs://bucket/prefix).",
                    flag_values=FLAGS)
flags.DEFINE_multi_string("grid", [], "run: a grid axis FIELD=V1,V2,... (repeat for a cartesian product), e.g. "
                          "optim.lr=1e-3,3e-3.", flag_values=FLAGS)
flags.DEFINE_multi_string("run", [], "run: one explicit run 'FIELD=V FIELD=V' (repeat for a list).", flag_values=FLAGS)
flags.DEFINE_string("spec", None, 'run: JSON file (local or gs://) {"grid": {"optim.lr": [..]}, '
                    '"runs": [{"model.arch": "gpt2"}]}.',
                    flag_values=FLAGS)
flags.DEFINE_enum("mode", "local", ["local", "slurm"], "run: local = one after another here; slurm = one sbatch job "
                  "array.", flag_values=FLAGS)
flags.DEFINE_string("command", DEFAULT_COMMAND, "run, local mode: the training command (e.g. 'bash "
                    "launch/local_multiprocess.sh -n 2 -d 4 --').", flag_values=FLAGS)
flags.DEFINE_string("sbatch_args", "", "run, slurm mode: extra sbatch options, e.g. '--nodes=2 -p gpu'.",
                    flag_values=FLAGS)
flags.DEFINE_string("sbatch_script", SBATCH_SCRIPT, "run, slurm mode: the batch script.", flag_values=FLAGS)
flags.DEFINE_integer("max_parallel", 0, "run, slurm mode: at most this many array tasks at once (0: no limit).",
                     lower_bound=0, flag_values=FLAGS)
flags.DEFINE_bool("rerun", False, "run, local mode: also re-run finished runs.", flag_values=FLAGS)
flags.DEFINE_bool("dry_run", False, "run: print the commands / the submission, run nothing.", flag_values=FLAGS)
_USAGE = "give a subcommand: run [flags] -- TRAIN_FLAGS | gather SWEEP_DIR | args SWEEP_DIR INDEX"


def _sweep(rest: list[str], base_args: list[str]) -> int:
    if not rest or rest[0] not in ("run", "gather", "args"):
        raise cli_util.UsageError(_USAGE)
    cmd, operands = rest[0], rest[1:]
    try:
        if cmd == "run":
            if operands:
                raise cli_util.UsageError(f"run takes flags only (unexpected: {' '.join(operands)})")
            if not FLAGS.name:
                raise cli_util.UsageError("run needs --name")
            return _main_run(cli_util.namespace(FLAGS), base_args)
        if cmd == "gather":
            if len(operands) != 1:
                raise cli_util.UsageError("usage: gather SWEEP_DIR")
            text, _ = gather(operands[0])
            print(text, end="")
            return 0
        if len(operands) != 2 or not operands[1].lstrip("-").isdigit():
            raise cli_util.UsageError("usage: args SWEEP_DIR INDEX")
        sweep_dir, index = operands[0], int(operands[1])
        runs = load_manifest(sweep_dir)["runs"]
        if not 0 <= index < len(runs):
            raise SweepError(f"run index {index} not in [0, {len(runs)}) for {sweep_dir}")
        print("\n".join(runs[index]["args"]))
        return 0
    except SweepError as e:
        raise cli_util.UsageError(str(e)) from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The CLI; returns the exit status (2: bad arguments or sweep folder, 1: a run failed)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    base_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, base_args = argv[:cut], argv[cut + 1:]
    return cli_util.run("sweep", FLAGS, lambda rest: _sweep(rest, base_args), argv, doc=__doc__, positional=True)


cli = cli_util.exit_with(main)


if __name__ == "__main__":
    cli()
