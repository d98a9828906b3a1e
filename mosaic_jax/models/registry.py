"""The model-family registry: the one place where an architecture name (`ModelConfig.arch`) is looked up.

A family (v1 memory mosaic, v2, GPT-2, or a research plug-in) is a `Family` record of pure functions. The
language model (`models/lm.py`), the decoders, FLOP counts, training, `evaluate`, `generate`, `bench` and `aot`
ask the family what to do and never compare architecture strings. A new family is one folder with a
`family.py` that calls `register(Family(...))`; see docs/extending.md.

Where families come from, in order: the built-ins below; modules named by the `mosaic_jax.families` entry-point
group of installed packages; and `ModelConfig.family_module`, a dotted module name imported on first use (a
run's config.json records it, so `generate` and `evaluate` find a plug-in family again).
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional

from mosaic_jax.models.config import NoFields

if TYPE_CHECKING:   # annotations only (the string aliases below): nothing here uses jax at run time
    import jax

Array = "jax.Array"
Initializer = Callable[..., "jax.Array"]

BUILTIN_MODULES = ("mosaic_jax.models.mosaic.family", "mosaic_jax.models.mosaic_v2.family",
                   "mosaic_jax.models.gpt2.family")
ENTRY_POINT_GROUP = "mosaic_jax.families"


class BlockInputs(NamedTuple):
    """What every block gets besides the residual stream (the same for all families)."""
    segment_ids_BT: Optional[Array]   # document ids (packing) or None
    extras: Any                        # per-sequence inputs made by the family's `prepare` (v2: long-term skip m)
    layer_idx: Array                   # the block's depth (a scanned int32), for depth-dependent init
    deterministic: bool                # eval mode: no dropout


def _no_prepare(module: Any, cfg: Any, x_BTC: Array, segment_ids_BT: Optional[Array], deterministic: bool
                ) -> tuple[Array, Any]:
    return x_BTC, None


def _no_check(cfg: Any) -> None:
    return None


@dataclasses.dataclass(frozen=True)
class Family:
    """One model family, behind one small interface (every field but the first five has a default).

    run_block(cfg, fns, x_BTC, inputs) -> x_BTC: one block, called inside the layer scan (Flax compact
        context: create the block's module there, named after the family, so params live under
        `params["blocks"][name]`).
    embed_init / head_init(cfg): initializers of the token table and of the untied head.
    forward_flops_per_token(cfg, seq_len, causal_halving): matmul FLOPs of one forward pass, per token.
    decoder: dotted module with `init_cache`, `prefill`, `step`, `prefill_jit`, `step_jit` (the incremental
        decoder, imported when first used): `mosaic_jax.inference.decode`, the shared one driven by
        `layer_decoder`; a family's own; or by default `mosaic_jax.inference.recompute`, exact for any
        causal family (it recomputes the forward pass at every step).
    prepare(module, cfg, x_BTC, segment_ids_BT, deterministic) -> (x_BTC, extras): before the blocks (learned
        positions, per-sequence draws); may raise for inputs the family does not support.
    validate(cfg): raise ValueError naming the field for configurations the family does not support.
    logit_divisor(cfg): the logits are divided by this (v1 mosaic: √C, as the reference).
    max_positions(cfg): the longest sequence the model can read (learned positions), None when unbounded.
    document_masking: honours segment ids (so `data.packing` may be on).
    layer_decoder: per-layer cache/prefill/step functions for the shared decoder (see inference/decode.py),
        and `read_weights(internals)`, the (B, H, T, T) read weights of one layer for analysis.
    reference_entries(cfg): the official state_dict's entries (models/mosaic/reference.py), when there is one.
    title: a human name for reports ("Memory Mosaic v1").
    describe(cfg): family-specific sizes for benchmark rows ({"P": slots} for the v1 mosaic).
    hf_export: how `export --format=hf` writes the model: "gpt2" (transformers' own GPT-2 classes), "remote"
        (hf/modeling_mosaic.py shipped as remote code), "" (not exportable).
    baseline: the family `bench` sets this one against at equal FLOPs (its `vs_<baseline>` ratio), "" for none.
    fields: the family's own `model.*` section, a frozen dataclass of typed fields with defaults and help
        (`config_fields.field`), kept in a JAX-free module of the family's folder; its class attribute `DERIVED`
        may name sizes computed from the whole config (read as `cfg.<name>`). NoFields: none of its own.
    impl_switches: the ModelConfig implementation switches the family reads (ops/dispatch.SWITCHES); a run's
        config.json records what each resolved to (`resolved_impl`). Every family reads `loss_impl` (models/lm.py).
    """
    name: str
    run_block: Callable[[Any, Any, Array, BlockInputs], Array]
    embed_init: Callable[[Any], Initializer]
    head_init: Callable[[Any], Initializer]
    forward_flops_per_token: Callable[[Any, int, bool], float]
    decoder: str = "mosaic_jax.inference.recompute"
    prepare: Callable[[Any, Any, Array, Optional[Array], bool], tuple[Array, Any]] = _no_prepare
    validate: Callable[[Any], None] = _no_check
    logit_divisor: Callable[[Any], float] = lambda cfg: 1.0
    max_positions: Callable[[Any], Optional[int]] = lambda cfg: None
    document_masking: bool = True
    layer_decoder: Any = None
    reference_entries: Optional[Callable[[Any], Any]] = None
    title: str = ""
    describe: Callable[[Any], dict[str, Any]] = lambda cfg: {}
    hf_export: str = ""
    baseline: str = ""
    fields: type = NoFields
    impl_switches: tuple[str, ...] = ("loss_impl",)


_FAMILIES: dict[str, Family] = {}
_loaded_builtins = False


def register(family: Family) -> Family:
    """Add a family (re-registering the same name replaces it: a re-imported plug-in stays consistent)."""
    _FAMILIES[family.name] = family
    return family


def _load_builtins() -> None:
    global _loaded_builtins
    if _loaded_builtins:
        return
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        importlib.import_module(ep.module)
    _loaded_builtins = True   # only once every import succeeded: a failed one is retried, not half-remembered


def get(name: str, family_module: str = "") -> Family:
    """The family called `name`, importing `family_module` first when it is given and `name` is unknown."""
    _load_builtins()
    if name not in _FAMILIES and family_module:
        try:
            importlib.import_module(family_module)
        except ImportError as e:
            raise ValueError(f"ModelConfig.family_module={family_module!r} cannot be imported: {e}") from None
    if name not in _FAMILIES:
        hint = f" (family_module {family_module!r} did not register it)" if family_module else ""
        raise ValueError(f"ModelConfig.arch={name!r} is not a registered model family{hint}; known: {names()}")
    return _FAMILIES[name]


def of(cfg: Any) -> Family:
    """The family of a ModelConfig."""
    return get(cfg.arch, getattr(cfg, "family_module", ""))


def baseline_of(name: str) -> str:
    """The equal-FLOPs baseline family of the family called `name` ("" when it has none or is not registered
    here, e.g. a plug-in named in benchmark rows read back from JSON)."""
    try:
        return get(name).baseline
    except ValueError:
        return ""


def families() -> list[Family]:
    """Every registered family (the built-ins and installed plug-ins, plus any imported since)."""
    _load_builtins()
    return [_FAMILIES[n] for n in sorted(_FAMILIES)]


def names() -> list[str]:
    _load_builtins()
    return sorted(_FAMILIES)


def decoder(cfg: Any) -> Any:
    """The incremental-decoder module of cfg's family."""
    return importlib.import_module(of(cfg).decoder)
