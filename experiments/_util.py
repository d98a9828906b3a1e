"""Small helpers shared by the experiment drivers: progress lines with rate/ETA, results folders, markdown."""
from __future__ import annotations

import json
import os
import pathlib
import platform
import shlex
import sys
import time
from typing import Any, Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:        # run as `python experiments/<name>.py` without installing the package
    sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared"
RESULTS = REPO / "experiments" / "results"


class Progress:
    """Prints `label i/n, rate, ETA, extra` at most every `every` seconds (and at the end)."""

    def __init__(self, label: str, total: int, every: float = 10.0, unit: str = "step") -> None:
        self.label, self.total, self.every, self.unit = label, total, every, unit
        self.t0 = self.last = time.time()

    def __call__(self, i: int, **extra: Any) -> None:
        now = time.time()
        if now - self.last < self.every and i < self.total:
            return
        self.last = now
        rate = i / max(now - self.t0, 1e-9)
        eta = (self.total - i) / max(rate, 1e-9)
        info = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in extra.items())
        print(f"  [{self.label}] {i}/{self.total} {self.unit}s, {rate:.2f} {self.unit}/s, ETA {eta:.0f}s {info}",
              flush=True)


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command as a user of a fresh clone would type it: `python`, paths relative to the repository root,
    ../shared for the shared data (recorded commands name no path of the machine that ran them)."""
    argv = sys.argv if argv is None else argv
    text = " ".join(shlex.quote(a) for a in argv)
    return text.replace(sys.executable, "python").replace(str(SHARED), "../shared").replace(str(REPO) + "/", "")


def machine() -> str:
    return f"{platform.machine()} CPU, {os.cpu_count()} cores (shared), {platform.python_implementation()} " \
           f"{platform.python_version()}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}"
        return str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def out_dir(path: str | os.PathLike) -> pathlib.Path:
    p = pathlib.Path(path)
    p.mkdir(parents=True, exist_ok=True)
    return p


def savefig(fig: Any, path: pathlib.Path, dpi: int = 80) -> None:
    """Save a small PNG (the results folder keeps every PNG under ~300 KB)."""
    fig.savefig(path, dpi=dpi, bbox_inches="tight")


def write_protocol(out: pathlib.Path, protocol: dict) -> None:
    """Register a study: write out/protocol.json once (never overwritten) and print it."""
    f = out / "protocol.json"
    if f.exists():
        raise SystemExit(f"{f}: already registered (never overwritten)")
    out.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps(protocol, indent=1, ensure_ascii=False) + "\n")
    print(json.dumps(protocol, indent=1, ensure_ascii=False))


def amend_protocol(out: pathlib.Path, changes: dict, why: str, after_runs: int) -> dict:
    """Amend a registered protocol in place: apply `changes` and append a dated record (what changed from what,
    why, and after how many finished runs) so every report can say whether the change came before any result."""
    import datetime

    f = out / "protocol.json"
    if not f.exists():
        raise SystemExit(f"{f}: no protocol to amend; run `register` first")
    p = json.loads(f.read_text())
    change = "; ".join(f"{k} {p.get(k)} → {v}" for k, v in changes.items())
    p.update(changes)
    p.setdefault("amendments", []).append({
        "utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "change": change,
        "why": why, "after_runs": after_runs})
    f.write_text(json.dumps(p, indent=1, ensure_ascii=False) + "\n")
    print(f"{f}: amended ({change})")
    return p


def amendment_when(amendment: dict) -> str:
    n = amendment.get("after_runs", 0)
    return f"after {n} runs" if n else "before any run"


def amendments_line(p: dict) -> str:
    return "; ".join(f"{x['utc']}, {amendment_when(x)}: {x['change']} ({x['why']})"
                     for x in p.get("amendments", [])) or "none"

