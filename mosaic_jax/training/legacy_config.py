"""Config fields that moved between sections, for what older versions wrote or users still type.

* `moved_message("config.train.lr")`: the one-line error for an old command-line spelling (cli_util), which names
  the new one: `--config.train.lr: moved to --config.optim.lr`. An old spelling is refused, never mapped silently:
  a sweep or script that still sets it should say what it means in the current layout.
* `upgrade(raw)`: a config that an older version SAVED (a run's config.json, a checkpoint's `config` item) in the
  current layout, so that an old run resumes (integrity.config_differences) and its records stay readable.

Moved so far: the optimizer's fields (OptimConfig: lr, min_lr, warmup_steps, ...) from `train` to `optim`, and the
implementation switches (ImplConfig: dtype, *_impl, scan_layers, remat) from `model` to `impl`.
No JAX here: every CLI's flag errors use it.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

from mosaic_jax.config_fields import describe
from mosaic_jax.models.config import ImplConfig
from mosaic_jax.training.sections import OptimConfig

# old "section.field" -> current "section.field"
MOVED: dict[str, str] = {**{f"train.{f.name}": f"optim.{f.name}" for f in describe(OptimConfig)},
                         **{f"model.{f.name}": f"impl.{f.name}" for f in describe(ImplConfig)}}
WHY = {"optim": "the optimizer's fields", "impl": "the implementation switches"}


def _field(name: str) -> str:
    """'section.field' from a flag's `--config.section.field` / `config.section.field` or the bare name."""
    return name.lstrip("-").removeprefix("config.")


def moved_to(name: str) -> Optional[str]:
    """The current name of a field an older version called `name` ('train.lr' -> 'optim.lr'), else None.
    `name` may carry a flag's `config.` / `--config.` prefix."""
    return MOVED.get(_field(name))


def moved_message(flag: str) -> Optional[str]:
    """'--config.train.lr: moved to --config.optim.lr (...)' for an old spelling `flag`, else None."""
    new = moved_to(flag)
    if new is None:
        return None
    old = _field(flag)
    section = new.split(".")[0]
    return f"--config.{old}: moved to --config.{new} ({WHY[section]} have their own section, `{section}`)"


def upgrade(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the saved config `raw` (plain dicts, as config.json holds it) in the current layout: each moved
    field goes to its new section, unless that section already holds it. A current config comes back equal."""
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in raw.items()}
    for old, new in MOVED.items():
        (old_section, old_field), (new_section, new_field) = old.split("."), new.split(".")
        src = out.get(old_section)
        if not isinstance(src, dict) or old_field not in src:
            continue
        dst = out.setdefault(new_section, {})
        if isinstance(dst, dict) and new_field not in dst:
            dst[new_field] = src.pop(old_field)
    return out
