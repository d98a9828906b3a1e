"""Experiment config presets (ml_collections `get_config()` files) shipped inside the package, so that
`--config=tiny_cpu` works from an installed wheel. A `--config` value that is a preset name resolves to the
file here; a path (`experiments/configs/tiny_cpu.py`, `my_config.py`, `file.py:arg`) is used as given.
`experiments/configs/*.py` are thin re-exports of these files, kept for old commands.
"""
from __future__ import annotations

import os
import re
from typing import Sequence

_DIR = os.path.dirname(os.path.abspath(__file__))
_NAME = re.compile(r"[A-Za-z_]\w*")


def names() -> list[str]:
    return sorted(f[:-3] for f in os.listdir(_DIR) if f.endswith(".py") and not f.startswith("_"))


def path(name: str) -> str:
    """The file of preset `name` (KeyError naming the presets when there is none)."""
    if name not in names():
        raise KeyError(f"{name}: no such preset (presets: {', '.join(names())})")
    return os.path.join(_DIR, f"{name}.py")


def resolve(value: str) -> str:
    """A --config value: a preset name (optionally `name:arg`) becomes its file; anything else is unchanged."""
    name, sep, arg = value.partition(":")
    if _NAME.fullmatch(name) and not os.path.exists(name) and name in names():
        return path(name) + sep + arg
    return value


def resolve_config_args(argv: Sequence[str]) -> list[str]:
    """argv with `--config=NAME` / `--config NAME` preset names replaced by their files."""
    out = list(argv)
    for i, a in enumerate(out):
        if a == "--":
            break
        if a.startswith("--config="):
            out[i] = "--config=" + resolve(a[len("--config="):])
        elif a == "--config" and i + 1 < len(out):
            out[i + 1] = resolve(out[i + 1])
    return out
