"""mosaic_jax params ↔ Hugging Face state_dicts and configs (numpy only; no torch here).

* GPT-2 runs ↔ transformers' native `GPT2LMHeadModel`: the nanoGPT names of `reference.py` (one name table),
  with transformers' Conv1D layout (in, out) for the four projection matrices, and zero biases when bias=False.
* Memory mosaics (v1, v2) → `modeling_mosaic.MosaicForCausalLM`: mosaic_jax's own names and layouts, layers
  unstacked (`blocks.<l>.<path>`), so nothing is reshaped.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from mosaic_jax.models.mosaic import reference
from mosaic_jax.models.config import ModelConfig

StateDict = dict[str, np.ndarray]
CONV1D = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")


class HFImportError(ValueError):
    """A Hugging Face checkpoint this library cannot map (one-line message)."""


# ---------------------------------------------------------------------------------------------------------------
# GPT-2
# ---------------------------------------------------------------------------------------------------------------
def gpt2_config_dict(cfg: ModelConfig, eos_id: int) -> dict[str, Any]:
    return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": cfg.vocab_size,
            "n_positions": cfg.block_size, "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
            "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
            "resid_pdrop": cfg.hd_dropout, "embd_pdrop": 0.0, "attn_pdrop": cfg.ic_dropout,
            "tie_word_embeddings": cfg.weight_tying, "bos_token_id": eos_id, "eos_token_id": eos_id}


def gpt2_state_dict(cfg: ModelConfig, params: Mapping[str, Any]) -> StateDict:
    """Our GPT-2 params → GPT2LMHeadModel's state_dict (float32 numpy)."""
    sd = reference.state_dict_from_params(cfg, params)
    out: StateDict = {}
    for name, w in sd.items():
        if name == "lm_head.weight" and cfg.weight_tying:
            continue   # tied to transformer.wte.weight by transformers
        out[name] = np.ascontiguousarray(w.T) if name.endswith(CONV1D) else w
    if not cfg.bias:   # GPT2LMHeadModel always has biases: zeros compute the same function
        C = cfg.n_embd
        zeros = {"ln_1.bias": C, "ln_2.bias": C, "attn.c_attn.bias": 3 * C, "attn.c_proj.bias": C,
                 "mlp.c_fc.bias": 4 * C, "mlp.c_proj.bias": C}
        for layer in range(cfg.n_layer):
            out.update({f"transformer.h.{layer}.{k}": np.zeros(n, np.float32) for k, n in zeros.items()})
        out["transformer.ln_f.bias"] = np.zeros(C, np.float32)
    return out


def gpt2_from_hf(hf_config: Mapping[str, Any], sd: Mapping[str, np.ndarray]) -> tuple[ModelConfig, dict[str, Any]]:
    """A transformers GPT-2 (config dict, state_dict as numpy) → (ModelConfig, our params)."""
    act = hf_config.get("activation_function", "gelu_new")
    eps = float(hf_config.get("layer_norm_epsilon", 1e-5))
    C = int(hf_config["n_embd"])
    problems = [f"activation_function={act!r} (need gelu_new, the tanh GELU)" if act != "gelu_new" else "",
                f"layer_norm_epsilon={eps} (need 1e-5)" if abs(eps - 1e-5) > 1e-12 else "",
                f"n_inner={hf_config.get('n_inner')} (need 4·n_embd)" if hf_config.get("n_inner") not in (None, 4 * C) else "",
                "scale_attn_by_inverse_layer_idx=true" if hf_config.get("scale_attn_by_inverse_layer_idx") else "",
                "scale_attn_weights=false" if hf_config.get("scale_attn_weights") is False else ""]
    problems = [p for p in problems if p]
    if problems:
        raise HFImportError(f"unsupported GPT-2 variant: {'; '.join(problems)}")
    sd = {k[len("model."):] if k.startswith("model.") else k: np.asarray(v, np.float32) for k, v in sd.items()}
    tied = bool(hf_config.get("tie_word_embeddings", True))
    cfg = ModelConfig(arch="gpt2", vocab_size=int(hf_config["vocab_size"]), n_layer=int(hf_config["n_layer"]),
                      n_head=int(hf_config["n_head"]), n_embd=C, block_size=int(hf_config["n_positions"]),
                      bias=True, weight_tying=tied, ic_dropout=float(hf_config.get("attn_pdrop", 0.0)),
                      hd_dropout=float(hf_config.get("resid_pdrop", 0.0)))
    ours: StateDict = {}
    wanted = {e[0] for e in reference._entries(cfg)}
    for name in wanted:
        if name == "lm_head.weight" and tied:   # transformers saves a tied head once, as the embedding
            ours[name] = sd["transformer.wte.weight"] if "transformer.wte.weight" in sd else None
            continue
        if name not in sd:
            raise HFImportError(f"missing tensor {name!r} in the GPT-2 checkpoint")
        ours[name] = np.ascontiguousarray(sd[name].T) if name.endswith(CONV1D) else sd[name]
    ours = {k: v for k, v in ours.items() if v is not None}
    try:
        return cfg, reference.params_from_state_dict(cfg, ours)
    except reference.ReferenceFormatError as e:
        raise HFImportError(str(e)) from None


# ---------------------------------------------------------------------------------------------------------------
# Memory mosaics
# ---------------------------------------------------------------------------------------------------------------
def mosaic_config_dict(cfg: ModelConfig, eos_id: int) -> dict[str, Any]:
    """The fields of `modeling_mosaic.MosaicConfig`: the shared ones, and those of the family's section it has
    (v1: the slots and key kernel; v2: the memories' sizes); MosaicConfig's defaults stand for the others."""
    own = {"pmem_size": "pmem_size", "pmem_count": "pmem_count", "k_kernel_size": "k_kernel_size",
           "n_head_short": "short_heads", "n_head_long": "long_heads", "short_lookback": "short_lookback",
           "long_skip_eval": "long_skip_eval", "ffn_dim": "ffn_dim"}   # MosaicConfig name -> ModelConfig name
    return {"arch": cfg.arch, "vocab_size": cfg.vocab_size, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
            "n_embd": cfg.n_embd, "block_size": cfg.block_size, "bias": cfg.bias, "weight_tying": cfg.weight_tying,
            **{theirs: getattr(cfg, ours) for theirs, ours in own.items() if hasattr(cfg, ours)},
            "bos_token_id": eos_id, "eos_token_id": eos_id, "pad_token_id": eos_id}


def mosaic_state_dict(cfg: ModelConfig, params: Mapping[str, Any]) -> StateDict:
    """Our params → MosaicForCausalLM's state_dict: the same arrays, layer l of each stacked leaf as
    `blocks.<l>.<path>` (the block module's name, `mosaic` or `mosaic_v2`, is dropped)."""
    out: StateDict = {}

    def walk(tree: Mapping[str, Any], path: tuple[str, ...]) -> None:
        for k, v in tree.items():
            if isinstance(v, Mapping):
                walk(v, path + (k,))
                continue
            a = np.asarray(v, np.float32)
            if path[:1] == ("blocks",):
                for layer in range(cfg.n_layer):
                    out[".".join(("blocks", str(layer)) + path[2:] + (k,))] = np.ascontiguousarray(a[layer])
            else:
                out[".".join(path + (k,))] = np.ascontiguousarray(a)

    walk(params, ())
    return out
