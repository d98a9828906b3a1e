"""Typed config fields: each field's type, default and one-line help live in ONE place, the dataclass.

    @dataclasses.dataclass(frozen=True)
    class DataConfig:
        seq_len: int = field(0, "tokens per row (0: model.block_size)")

`describe(cls)` lists (name, type, default, help) for `--help` and the command-line defaults; `build(cls, values,
section)` makes the dataclass from a config section, checking each value against the field's type and naming the
field on a mismatch. Kept free of JAX so that every CLI's `--help` stays fast.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Mapping, TypeVar

T = TypeVar("T")


def field(default: Any, help: str) -> Any:   # noqa: A002 - `help` reads best at the call sites
    """A dataclass field with a default and its one-line help (field metadata)."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class FieldInfo:
    name: str
    type: type
    default: Any
    help: str


def describe(cls: type) -> list[FieldInfo]:
    """The fields of dataclass `cls` in declaration order, with their resolved types (a nested section, such as
    ModelConfig's `impl`, is its own config section and not listed)."""
    hints = typing.get_type_hints(cls)
    return [FieldInfo(f.name, hints[f.name], f.default, f.metadata.get("help", "")) for f in dataclasses.fields(cls)
            if not f.metadata.get("nested")]


def check_type(value: Any, typ: type, where: str) -> Any:
    """`value` as a `typ` field takes it (an int is a float; a bool is not an int); TypeError naming `where`."""
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise TypeError(f"{where}={value!r}: expected {typ.__name__}, got {type(value).__name__}")
    return value


def build(cls: type[T], values: Mapping[str, Any], section: str) -> T:
    """`cls(**the values of its fields found in `values`)`, each type-checked (TypeError names section.field)."""
    kwargs = {f.name: check_type(values[f.name], f.type, f"{section}.{f.name}")
              for f in describe(cls) if f.name in values}
    return cls(**kwargs)
