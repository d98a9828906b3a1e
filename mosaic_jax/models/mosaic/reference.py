"""Interoperability with the official PyTorch code (facebookresearch/MemoryMosaics, `Library/`).

    cfg, params = load_reference(path_or_state_dict)    # ckpt.pt, bare .pt / .npz / .safetensors state_dict
    export_reference(cfg, params, "model.npz")           # or .safetensors: reference-named state_dict

Reads the regular (`memory_mosaics.py`) and eft (`memory_mosaics_eft.py`) key names, strips `_orig_mod.` and
`module.` prefixes, and also reads the GPT-2 baseline (`baseline/baselines.py`, nanoGPT names). torch is only
imported for .pt files, which are loaded with `weights_only=True`.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Callable, Iterator, Mapping, Optional, Union

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from mosaic_jax.models import registry
from mosaic_jax.models.config import ModelConfig

StateDict = dict[str, np.ndarray]
PREFIXES = ("_orig_mod.", "module.")


class ReferenceFormatError(ValueError):
    """A reference checkpoint that does not match what the architecture needs."""


# ---------------------------------------------------------------------------------------------------------------
# Name/layout table: (reference name, params path, reference shape, to_jax, to_reference)
# ---------------------------------------------------------------------------------------------------------------
Entry = tuple[str, tuple[str, ...], tuple[int, ...], Callable[[np.ndarray], np.ndarray],
              Callable[[np.ndarray], np.ndarray]]


def _same(x: np.ndarray) -> np.ndarray:
    return x


def _entries(cfg: ModelConfig) -> Iterator[Entry]:
    fam = registry.of(cfg)
    if fam.reference_entries is None:
        raise ReferenceFormatError(f"arch {cfg.arch!r} has no official PyTorch checkpoint format")
    return fam.reference_entries(cfg)


def mosaic_entries(cfg: ModelConfig) -> Iterator[Entry]:
    """The v1 reference's state_dict (facebookresearch/MemoryMosaics `Library/`)."""
    C, H, D, K, P, V = cfg.n_embd, cfg.n_head, cfg.head_dim, cfg.k_kernel_size, cfg.pmem_size, cfg.vocab_size
    lin_in = (lambda w: w.T.reshape(C, H, D), lambda w: w.reshape(C, C).T)            # (out,in) -> (C,H,D)
    lin_out = (lambda w: w.T.reshape(H, D, C), lambda w: w.reshape(C, C).T)           # (out,in) -> (H,D,C)
    conv = (lambda w: w.transpose(2, 1, 0).reshape(K, C, H, D), lambda w: w.reshape(K, C, C).transpose(2, 1, 0))
    vec_hd = (lambda b: b.reshape(H, D), lambda b: b.reshape(C))
    yield "emb.weight", ("embed",), (V, C), _same, _same
    for layer in range(cfg.n_layer):  # in the reference's state_dict order
        r, j = f"blocks.{layer}.", ("blocks", "mosaic")
        for ln, ref, mine in (("ln1", "attn", "cmem"), ("ln2", "pmem", "pmem")):
            yield r + f"{ln}.weight", j + (ln, "weight"), (C,), _same, _same
            if cfg.bias:
                yield r + f"{ln}.bias", j + (ln, "bias"), (C,), _same, _same
            for s in ("leaky_key_beta", "kernel_beta", "value_beta"):
                yield r + f"{ref}.{s}", j + (mine, s), (H,), _same, _same
            if ref == "pmem":
                for n in range(cfg.pmem_count):
                    for m in ("k", "v"):  # (1,H,P,D) per table -> row n of (N,H,P,D)
                        yield (r + f"pmem.pmem.M_{m}{n}", j + ("pmem", f"m{m}", str(n)), (1, H, P, D),
                               lambda w: w[0], lambda w: w[None])
            yield r + f"{ref}.k_featurizer.conv.weight", j + (mine, "k_features", "wk"), (C, C, K), *conv
            if cfg.bias:
                yield r + f"{ref}.k_featurizer.conv.bias", j + (mine, "k_features", "bk"), (C,), *vec_hd
            if ref == "attn":
                yield r + "attn.v_featurizer.coef", j + ("cmem", "v_coef"), (H,), _same, _same
                yield r + "attn.v_featurizer.linear.weight", j + ("cmem", "wv"), (C, C), *lin_in
                if cfg.bias:
                    yield r + "attn.v_featurizer.linear.bias", j + ("cmem", "bv"), (C,), *vec_hd
            yield r + f"{ref}.c_proj.weight", j + (mine, "out", "wo"), (C, C), *lin_out
            if cfg.bias:
                yield r + f"{ref}.c_proj.bias", j + (mine, "out", "bo"), (C,), _same, _same
    yield "ln_out.weight", ("ln_out", "weight"), (C,), _same, _same
    if cfg.bias:
        yield "ln_out.bias", ("ln_out", "bias"), (C,), _same, _same
    yield "head.weight", ("head",) if not cfg.weight_tying else ("embed",), (V, C), _same, _same


def gpt2_entries(cfg: ModelConfig) -> Iterator[Entry]:
    C, H, D, V = cfg.n_embd, cfg.n_head, cfg.head_dim, cfg.vocab_size
    yield "transformer.wte.weight", ("embed",), (V, C), _same, _same
    yield "transformer.wpe.weight", ("pos_embed",), (cfg.block_size, C), _same, _same
    for layer in range(cfg.n_layer):
        r, j = f"transformer.h.{layer}.", ("blocks", "gpt2")
        yield r + "ln_1.weight", j + ("ln_1", "weight"), (C,), _same, _same
        yield r + "ln_2.weight", j + ("ln_2", "weight"), (C,), _same, _same
        yield (r + "attn.c_attn.weight", j + ("c_attn",), (3 * C, C),
               lambda w: w.reshape(3, H, D, C).transpose(3, 0, 1, 2), lambda w: w.transpose(1, 2, 3, 0).reshape(3 * C, C))
        yield (r + "attn.c_proj.weight", j + ("attn_proj",), (C, C),
               lambda w: w.T.reshape(H, D, C), lambda w: w.reshape(C, C).T)
        yield r + "mlp.c_fc.weight", j + ("c_fc",), (4 * C, C), lambda w: w.T, lambda w: w.T
        yield r + "mlp.c_proj.weight", j + ("mlp_proj",), (C, 4 * C), lambda w: w.T, lambda w: w.T
        if cfg.bias:
            for ln in ("ln_1", "ln_2"):
                yield r + f"{ln}.bias", j + (ln, "bias"), (C,), _same, _same
            yield (r + "attn.c_attn.bias", j + ("b_attn",), (3 * C,),
                   lambda b: b.reshape(3, H, D), lambda b: b.reshape(3 * C))
            yield r + "attn.c_proj.bias", j + ("b_attn_proj",), (C,), _same, _same
            yield r + "mlp.c_fc.bias", j + ("b_fc",), (4 * C,), _same, _same
            yield r + "mlp.c_proj.bias", j + ("b_mlp_proj",), (C,), _same, _same
    yield "transformer.ln_f.weight", ("ln_out", "weight"), (C,), _same, _same
    if cfg.bias:
        yield "transformer.ln_f.bias", ("ln_out", "bias"), (C,), _same, _same
    yield "lm_head.weight", ("embed",) if cfg.weight_tying else ("head",), (V, C), _same, _same


# ---------------------------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------------------------
def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def read_state_dict(source: Union[str, os.PathLike, Mapping[str, Any]]) -> tuple[StateDict, dict[str, Any]]:
    """(state_dict as numpy arrays with prefixes stripped, model_args or {}) from a file or a mapping."""
    model_args: dict[str, Any] = {}
    if isinstance(source, Mapping):
        raw: Mapping[str, Any] = source
        if "model" in raw and isinstance(raw["model"], Mapping):
            model_args = dict(raw.get("model_args") or {})
            raw = raw["model"]
    else:
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise ReferenceFormatError(f"{path}: no such file")
        ext = os.path.splitext(path)[1].lower()
        try:
            raw, model_args = _read_file(path, ext)
        except ReferenceFormatError:
            raise
        except Exception as e:  # noqa: BLE001 - numpy/safetensors/torch raise many kinds for a bad file
            msg = str(e).splitlines()[0] if str(e) else ""
            raise ReferenceFormatError(f"{path}: not a readable {ext} state_dict ({type(e).__name__}: {msg})") from e
        if isinstance(raw, Mapping) and "model" in raw and isinstance(raw["model"], Mapping):
            return read_state_dict(raw)
    sd: StateDict = {}
    for key, value in raw.items():
        name = key
        for p in PREFIXES:
            while name.startswith(p):
                name = name[len(p):]
        sd[name] = _to_numpy(value)
    return sd, model_args


def _read_file(path: str, ext: str) -> tuple[Mapping[str, Any], dict[str, Any]]:
    """(raw mapping, model_args) from a .npz, .safetensors or torch file."""
    if ext == ".npz":
        with np.load(path, allow_pickle=False) as z:
            model_args = json.loads(str(z["config"])) if "config" in z.files else {}
            raw = {k[3:]: z[k] for k in z.files if k.startswith("sd/")}
        if not raw:
            raise ReferenceFormatError(f"{path}: no 'sd/<name>' entries in this .npz")
        return raw, model_args
    if ext == ".safetensors":
        with safe_open(path, framework="numpy") as f:
            meta = f.metadata() or {}
            raw = {k: f.get_tensor(k) for k in f.keys()}
        return raw, json.loads(meta["config"]) if "config" in meta else {}
    if ext in (".pt", ".pth", ".bin"):
        try:
            import torch   # optional: extra [hf]
        except ImportError as e:
            raise ReferenceFormatError(f"{path}: reading .pt files needs torch (pip install torch)") from e
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(obj, Mapping):
            raise ReferenceFormatError(f"{path}: expected a dict, found {type(obj).__name__}")
        return obj, {}
    raise ReferenceFormatError(f"{path}: unknown extension {ext!r} (expected .pt, .npz or .safetensors)")


def eft_to_regular(sd: StateDict) -> StateDict:
    """Map eft names (leaky_average.*) onto the regular ones; the two models compute the same function."""
    if not any(".leaky_average." in k for k in sd):
        return sd
    out: StateDict = {}
    for k, v in sd.items():
        m = re.match(r"(.*)\.leaky_average\.(leaky_beta_w_under|leaky_beta_u_under|linear\.weight|linear\.bias)$", k)
        if not m:
            out[k] = v
            continue
        base, what = m.groups()
        if what == "leaky_beta_w_under":
            out[f"{base}.leaky_key_beta"] = v
        elif what == "leaky_beta_u_under":
            w = sd.get(f"{base}.leaky_average.leaky_beta_w_under")
            if w is None or w.shape != v.shape or not np.array_equal(w, v):
                raise ReferenceFormatError(f"{k}: differs from {base}.leaky_average.leaky_beta_w_under "
                                           "(only sep_w_on_t=False checkpoints are supported)")
        elif what == "linear.weight":
            out[f"{base}.k_featurizer.conv.weight"] = v[..., None]
        else:
            out[f"{base}.k_featurizer.conv.bias"] = v
    return out


def infer_config(sd: StateDict, model_args: Optional[Mapping[str, Any]] = None) -> ModelConfig:
    """A ModelConfig from the reference's `model_args` where present, else from the tensor shapes."""
    args = dict(model_args or {})
    gpt2 = "transformer.wte.weight" in sd
    emb = sd.get("transformer.wte.weight" if gpt2 else "emb.weight")
    if emb is None:
        raise ReferenceFormatError("missing key 'emb.weight' (or 'transformer.wte.weight'): not a reference state_dict")
    pat = r"transformer\.h\.(\d+)\." if gpt2 else r"blocks\.(\d+)\."
    layers = {int(m.group(1)) for k in sd for m in [re.match(pat, k)] if m}
    shape_args: dict[str, Any] = {"arch": "gpt2" if gpt2 else "mosaic", "vocab_size": emb.shape[0],
                                  "n_embd": emb.shape[1], "n_layer": len(layers)}
    head = sd.get("lm_head.weight" if gpt2 else "head.weight")
    shape_args["weight_tying"] = head is None or (head.shape == emb.shape and np.array_equal(head, emb))
    if gpt2:
        shape_args["block_size"] = sd["transformer.wpe.weight"].shape[0]
        shape_args["bias"] = "transformer.ln_f.bias" in sd
    else:
        beta = sd.get("blocks.0.attn.leaky_key_beta")
        if beta is None:
            raise ReferenceFormatError("missing key 'blocks.0.attn.leaky_key_beta'")
        shape_args["n_head"] = beta.shape[0]
        shape_args["pmem_size"] = sd["blocks.0.pmem.pmem.M_k0"].shape[2]
        shape_args["pmem_count"] = sum(1 for k in sd if re.match(r"blocks\.0\.pmem\.pmem\.M_k\d+$", k))
        shape_args["k_kernel_size"] = sd["blocks.0.attn.k_featurizer.conv.weight"].shape[-1]
        shape_args["bias"] = "ln_out.bias" in sd
    merged = {**args, **{k: v for k, v in shape_args.items() if k not in args or k in ("arch", "n_layer")}}
    if gpt2 and "n_head" not in args:
        raise ReferenceFormatError("GPT-2 checkpoints need model_args['n_head'] (it cannot be read off the shapes)")
    return ModelConfig.from_dict(merged)


def _set(tree: dict[str, Any], path: tuple[str, ...], value: np.ndarray) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def _get(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    for p in path:
        tree = tree[p]
    return tree


def params_from_state_dict(cfg: ModelConfig, sd: StateDict) -> dict[str, Any]:
    """Reference-named arrays -> our params pytree (layers stacked on a leading axis), shapes checked."""
    params: dict[str, Any] = {}
    per_layer: dict[tuple[str, ...], list[np.ndarray]] = {}
    for name, path, shape, to_jax, _ in _entries(cfg):
        if name not in sd:
            raise ReferenceFormatError(f"missing key {name!r} (expected shape {shape})")
        w = np.asarray(sd[name], dtype=np.float32)
        if tuple(w.shape) != shape:
            raise ReferenceFormatError(f"{name}: shape {tuple(w.shape)} does not match {shape} expected from the config")
        w = to_jax(w)
        if path[0] == "blocks":  # visited layer by layer, in order; slot tables are rows of (N,H,P,D)
            per_layer.setdefault(path[:-1] if path[-1].isdigit() else path, []).append(w)
        elif path == ("embed",) and "embed" in params:
            if not np.array_equal(params["embed"], w):
                raise ReferenceFormatError(f"{name}: differs from the embedding but weight_tying is set")
        else:
            _set(params, path, w)
    extra = sorted(set(sd) - {e[0] for e in _entries(cfg)})
    if extra:
        raise ReferenceFormatError(f"unexpected key {extra[0]!r} (shape {tuple(sd[extra[0]].shape)})"
                                   + (f" and {len(extra) - 1} more" if len(extra) > 1 else ""))
    for key, values in per_layer.items():
        if key[-1] in ("mk", "mv"):
            n = cfg.pmem_count
            values = [np.stack(values[i:i + n]) for i in range(0, len(values), n)]
        _set(params, key, np.stack(values))
    return params


def load_reference(source: Union[str, os.PathLike, Mapping[str, Any]]) -> tuple[ModelConfig, dict[str, Any]]:
    """(config, params) from an official checkpoint (`ckpt.pt`), or a bare state_dict file or mapping."""
    sd, model_args = read_state_dict(source)
    sd = eft_to_regular(sd)
    cfg = infer_config(sd, model_args)
    where = source if isinstance(source, (str, os.PathLike)) else "state_dict"
    try:
        return cfg, params_from_state_dict(cfg, sd)
    except ReferenceFormatError as e:
        raise ReferenceFormatError(f"{os.fspath(where) if not isinstance(where, str) else where}: {e}") from None


def state_dict_from_params(cfg: ModelConfig, params: Mapping[str, Any]) -> StateDict:
    """Our params -> the regular reference state_dict (numpy, float32, reference key order)."""
    sd: StateDict = {}
    for name, path, shape, _, to_ref in _entries(cfg):
        layer = re.match(r"(?:blocks|transformer\.h)\.(\d+)\.", name)
        if path[0] == "blocks":
            key = path[:-1] if path[-1].isdigit() else path
            w = np.asarray(_get(params, key))[int(layer.group(1))]
            if path[-1].isdigit():
                w = w[int(path[-1])]
        else:
            w = np.asarray(_get(params, path))
        sd[name] = np.ascontiguousarray(to_ref(w).reshape(shape), dtype=np.float32)
    return sd


def reference_model_args(cfg: ModelConfig) -> dict[str, Any]:
    keys = ("vocab_size", "n_head", "n_embd", "n_layer", "v_shift", "block_size", "k_kernel_size", "v_kernel_size",
            "ic_dropout", "hd_dropout", "bias", "pmem_count", "pmem_size", "pre_ln", "weight_tying")
    args = {k: getattr(cfg, k) for k in keys if hasattr(cfg, k)}   # GPT-2 has no slots or key kernels
    args.update(k_fe_type="linearconv", v_fe_type="lowrlinearconv", arch=cfg.arch)
    return args


def export_reference(cfg: ModelConfig, params: Mapping[str, Any], path: Union[str, os.PathLike]) -> StateDict:
    """Write a reference-named state_dict (.npz with `sd/<name>` + `config`, or .safetensors with config metadata)."""
    sd = state_dict_from_params(cfg, params)
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    config_json = json.dumps(reference_model_args(cfg))
    tmp = path + ".tmp" + ext
    if ext == ".npz":
        np.savez(tmp, config=np.array(config_json), **{f"sd/{k}": v for k, v in sd.items()})
    elif ext == ".safetensors":
        tied = cfg.weight_tying   # the v1 state_dict names both emb.weight and head.weight
        save_file({k: v.copy() if (tied and k == "head.weight") else v for k, v in sd.items()}, tmp,
                  metadata={"config": config_json})
    else:
        raise ValueError(f"{path}: export needs a .npz or .safetensors file name")
    os.replace(tmp, path)  # never leave a half-written file under the final name
    return sd
