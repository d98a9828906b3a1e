"""The command-line layer every mosaic_jax CLI shares: absl flags (ml_collections for `--config`), `--help` that
exits 0 and shows every flag with its default, and one error format, `<command>: error: <one line>`, with exit
status 2 for usage errors (an unknown flag, a bad value) and 1 for runtime failures (a missing file, bad data).

A CLI defines its flags on its own `flags.FlagValues` (so several CLIs can be imported in one process and
`main(argv)` can be called repeatedly, e.g. by tests) and runs through `run()`:

    FLAGS = flags.FlagValues()
    flags.DEFINE_string("workdir", None, "Run folder.", flag_values=FLAGS)

    def main(argv=None) -> int:
        return cli_util.run("generate", FLAGS, _body, argv, doc=__doc__, errors=(InferenceLoadError,))
"""
from __future__ import annotations

import difflib
import importlib.util
import os
import re
import sys
import types
from typing import Any, Callable, Optional, Sequence

from absl import flags

from mosaic_jax import presets
from mosaic_jax.training import legacy_config, sections

USAGE_EXIT, FAILURE_EXIT = 2, 1
_HELP_ARGS = ("-h", "-help", "--help", "--helpshort", "--helpfull", "-?")


class UsageError(Exception):
    """A bad command line (missing/invalid flag value): exit status 2."""


class CommandError(Exception):
    """A runtime failure with a one-line explanation (missing file, bad data): exit status 1."""


def one_line(message: Any) -> str:
    return " ".join(str(message).split())


def command_name(prog: str) -> str:
    """The name the user typed when it is a console script (mosaic-train), else the module's short name."""
    exe = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return exe if exe.startswith("mosaic-") else prog


def report(prog: str, message: Any, code: int) -> int:
    print(f"{command_name(prog)}: error: {one_line(message)}", file=sys.stderr, flush=True)
    return code


def _own_flags(fv: flags.FlagValues) -> list[Any]:
    """The CLI's flags: everything but absl's own (logging verbosity, flagfile, ...)."""
    seen: dict[str, Any] = {}
    for module, module_flags in fv.flags_by_module_dict().items():
        if module.startswith("absl."):
            continue
        for f in module_flags:
            seen.setdefault(f.name, f)
    return sorted(seen.values(), key=lambda f: f.name)


def help_text(prog: str, fv: flags.FlagValues, doc: str = "") -> str:
    lines = [(doc or "").strip("\n"), "", f"usage: {command_name(prog)} [flags]", "",
             "flags (default in parentheses):"]
    for f in _own_flags(fv):
        default = "none" if f.default is None or f.default_as_str in (None, "'None'") else f.default_as_str
        name = f"--[no]{f.name}" if f.boolean else f"--{f.name}"
        lines.append(f"  {name} (default: {default})")
        lines.append(f"      {one_line(f.help)}")
        if f.name == "config":
            lines.append("      Override any field with --config.<section>.<field>=VALUE (e.g. "
                         f"--config.train.steps=100); presets: {', '.join(presets.names())}.")
    if "config" in fv:   # every field of the typed sections (training/sections.py), with its type and default
        lines += ["", "config fields (--config.<section>.<field>=VALUE; type, default: help):",
                  *sections.help_lines()]
    return "\n".join(lines).lstrip("\n") + "\n"


def _suggest(name: str, fv: flags.FlagValues) -> str:
    close = difflib.get_close_matches(name, [f.name for f in _own_flags(fv)], n=1)
    return f' (did you mean "--{close[0]}"?)' if close else ""


def _load_config_file(argv: Sequence[str]) -> Any:
    """The config `--config=FILE[:ARG]` in argv names (for error hints when flag parsing stopped early)."""
    value = next(a.split("=", 1)[1] for a in argv if a.startswith("--config="))
    path, _, arg = value.partition(":")
    spec = importlib.util.spec_from_file_location("_mosaic_cli_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def _config_field_error(flag: str, argv: Sequence[str]) -> str:
    """`--config.train.stepz: no such config field (did you mean "steps"?)`, from the loaded config's keys; for a
    field that moved to another section, `--config.train.lr: moved to --config.optim.lr ...` (legacy_config)."""
    moved = legacy_config.moved_message(flag)
    if moved:
        return moved
    hint = ""
    try:
        node = _load_config_file(argv)
        for key in flag.split(".")[1:]:
            if key not in node:
                close = difflib.get_close_matches(key, [str(k) for k in node.keys()], n=1)
                hint = f' (did you mean "{close[0]}"?)' if close else ""
                break
            node = node[key]
    except Exception:  # noqa: BLE001 - no loadable config: no suggestion
        pass
    return f"--{flag}: no such config field{hint}"


def _override_flag(e: BaseException, argv: Sequence[str]) -> Optional[str]:
    """The `config.a.b` flag ml_collections failed on: it raises AttributeError(KeyError("'b'\\nDid you mean...")),
    whose str() is full of escapes, so the field is matched against argv instead."""
    inner: Any = e
    while isinstance(inner, BaseException) and inner.args:
        inner = inner.args[0]
    field = str(inner).splitlines()[0].strip().strip("'\"") if str(inner).strip() else ""
    for a in argv:
        name = a.split("=")[0].lstrip("-")
        if name.startswith("config.") and field in name.split(".")[1:]:
            return name
    return None


_LOCKED_KEY = re.compile(r'Key "(\w+)" does not exist and cannot be added since the config is locked')


def _config_file_field_error(e: BaseException) -> Optional[str]:
    """`--config: the config file sets train.lr: moved to optim.lr (...)` (or `: no such config field`) for a
    config file that sets a field its section lacks; ml_collections' own message is a page long and names no
    section, which is told here from the fields it lists. None for any other error."""
    text = str(e).replace("\\'", "'")
    m = _LOCKED_KEY.search(text)
    if not m:
        return None
    listed = set(re.findall(r"'(\w+)':", text[m.end():]))
    section = next((s.name for s in sections.all_sections() if listed and listed <= {f.name for f in s.fields()}), None)
    name = f"{section}.{m.group(1)}" if section else m.group(1)
    moved = legacy_config.moved_to(name) if section else None
    return (f"--config: the config file sets {name}: " +
            (f"moved to {moved} (write c.{moved} = ...)" if moved else "no such config field"))


def parse(prog: str, fv: flags.FlagValues, argv: Sequence[str], doc: str = "") -> list[str]:
    """Parse `argv` (without the program name) into `fv`; returns the positional arguments.
    `--help` prints the help and raises SystemExit(0); a bad flag prints one line and raises SystemExit(2)."""
    argv = list(argv)
    head = argv[:argv.index("--")] if "--" in argv else argv
    if any(a in _HELP_ARGS for a in head):
        sys.stdout.write(help_text(prog, fv, doc))
        sys.stdout.flush()
        raise SystemExit(0)
    if "config" in fv:
        argv = presets.resolve_config_args(argv)
    fv.unparse_flags()
    try:
        return fv([prog, *argv])[1:]
    except flags.UnrecognizedFlagError as e:
        if e.flagname.startswith("config.") and "config" in fv:
            raise SystemExit(report(prog, _config_field_error(e.flagname, argv), USAGE_EXIT))
        raise SystemExit(report(prog, f"unknown flag --{e.flagname}{_suggest(e.flagname, fv)}", USAGE_EXIT))
    except flags.Error as e:
        raise SystemExit(report(prog, e, USAGE_EXIT))
    except (AttributeError, KeyError) as e:   # ml_collections: an override of a field the config lacks
        flag = _override_flag(e, argv)
        message = _config_field_error(flag, argv) if flag else (_config_file_field_error(e) or e)
        raise SystemExit(report(prog, message, USAGE_EXIT))
    except Exception as e:  # noqa: BLE001 - ml_collections runs the config file: any error in it is the user's
        raise SystemExit(report(prog, f"--config: {type(e).__name__}: {e}", USAGE_EXIT))


def load_config(fv: flags.FlagValues, example: str = "tiny_cpu") -> Any:
    """The ml_collections config of `--config` (loaded lazily; a missing or broken file surfaces here)."""
    if fv["config"].value is None and not fv["config"].present:
        raise UsageError(f"--config is required (a preset such as --config={example}, or a config file)")
    try:
        config = fv["config"].value
        config.keys()   # config_flags defers load errors to the first attribute access
        return config
    except Exception as e:  # noqa: BLE001 - config_flags wraps every load failure in a generic error
        reason = [ln.strip() for ln in str(e).splitlines() if ln.strip()][-1]
        given = fv["config"].serialize().split("=", 1)[-1]
        raise CommandError(f"cannot load --config={given}: {reason}") from None


def namespace(fv: flags.FlagValues) -> types.SimpleNamespace:
    """The parsed flags as attributes (what argparse's parse_args returned)."""
    return types.SimpleNamespace(**{name: fv[name].value for name in fv})


def check_out_parent(flag: str, path: str) -> None:
    """Refuse an output path whose folder does not exist before any work is done."""
    parent = os.path.dirname(os.path.abspath(path))
    if path and not os.path.isdir(parent):
        raise CommandError(f"--{flag}={path}: folder {parent} not found")


def run(prog: str, fv: flags.FlagValues, body: Callable[[list[str]], Optional[int]],
        argv: Optional[Sequence[str]] = None, *, doc: str = "", errors: tuple[type[BaseException], ...] = (),
        positional: bool = False) -> int:
    """Parse, run `body(positional_args)`, map failures to one line and an exit status; returns the status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        rest = parse(prog, fv, argv, doc)
    except SystemExit as e:
        return int(e.code or 0)
    if rest and not positional:
        return report(prog, f"unexpected arguments: {' '.join(rest)}", USAGE_EXIT)
    try:
        return int(body(rest) or 0)
    except UsageError as e:
        return report(prog, e, USAGE_EXIT)
    except FileNotFoundError as e:
        return report(prog, f"{e.filename}: file not found" if e.filename else e, FAILURE_EXIT)
    except (CommandError, OSError, *errors) as e:
        return report(prog, e, FAILURE_EXIT)


def exit_with(main: Callable[[], int]) -> Callable[[], None]:
    """A console-script entry point: `mosaic-train = mosaic_jax.train:cli` where cli = exit_with(main)."""
    def entry() -> None:
        sys.exit(main())
    return entry
