"""ModelConfig's three parts (issue 14, item 4): the shared fields, the family's own section (Family.fields) and the
implementation switches (`impl`); flat reads and flat construction; old flat configs still load; resolve() turns
every "auto" the family reads into a choice once and shows the family's section alone in config.json."""
import dataclasses
import pickle

import jax
import jax.numpy as jnp
import pytest

from mosaic_jax.models import registry
from mosaic_jax.models.config import ImplConfig, ModelConfig, NoFields, common_fields
from mosaic_jax.models.mosaic.fields import MosaicFields
from mosaic_jax.models.mosaic_v2.fields import V2Fields
from mosaic_jax.ops import dispatch
from mosaic_jax.training import integrity, run_config, sections
from _configs import config_with


def test_each_family_has_its_own_section():
    assert type(ModelConfig(arch="mosaic").fields) is MosaicFields
    assert type(ModelConfig(arch="mosaic_v2").fields) is V2Fields
    assert ModelConfig(arch="gpt2").fields == NoFields()
    shared = {f.name for f in common_fields()}
    for fam in registry.families():
        own = {f.name for f in dataclasses.fields(fam.fields)}
        assert not own & shared, fam.name                              # a family field never shadows a shared one
        assert not own & {f.name for f in dataclasses.fields(ImplConfig)}, fam.name


def test_flat_reads_and_writes_go_to_the_right_part():
    c = ModelConfig(arch="mosaic_v2", n_embd=64, n_head=4, short_window=8, n_head_long=0, cmem_impl="dense",
                    dtype="bfloat16")
    assert c.fields.short_window == c.short_window == 8 and c.impl.dtype == c.dtype == "bfloat16"
    assert (c.short_heads, c.long_heads, c.short_lookback, c.ffn_dim) == (4, 0, 7, 192)   # V2Fields.DERIVED
    d = c.replace(short_window=16, remat="full")
    assert (d.short_window, d.remat, d.n_embd, d.dtype) == (16, "full", 64, "bfloat16")
    assert dataclasses.replace(c, doc_masking=False).fields.doc_masking is False


def test_a_field_of_another_family_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"ModelConfig\.pmem_size: not a field of arch='gpt2'"):
        ModelConfig(arch="gpt2", pmem_size=448)
    with pytest.raises(AttributeError, match=r"arch='gpt2'\) has no field 'short_window'"):
        ModelConfig(arch="gpt2").short_window
    with pytest.raises(ValueError, match=r"impl\.cmem_impl='fast' not in"):
        ModelConfig(cmem_impl="fast")


def test_changing_the_family_keeps_only_the_fields_the_new_one_has():
    v1 = ModelConfig(arch="mosaic", n_embd=64, n_head=4, pmem_size=224, proj_impl="dense")
    g = v1.replace(arch="gpt2")
    assert g.fields == NoFields() and (g.n_embd, g.proj_impl) == (64, "dense")
    assert g.replace(arch="mosaic").pmem_size == MosaicFields().pmem_size   # not remembered through gpt2


@pytest.mark.parametrize("arch", ["mosaic", "mosaic_v2", "gpt2"])
def test_dict_round_trip_hash_and_pickle(arch):
    c = ModelConfig(arch=arch, n_embd=64, n_head=4, n_layer=2, remat="dots")
    assert ModelConfig.from_dict(c.to_dict(), strict=True) == c
    assert pickle.loads(pickle.dumps(c)) == c and hash(pickle.loads(pickle.dumps(c))) == hash(c)
    assert c.replace(n_layer=3) != c and hash(c.replace(n_layer=3)) != hash(c)
    assert set(c.model_dict()) == set(c.to_dict()) - {f.name for f in dataclasses.fields(ImplConfig)}
    # a jit static argument: equal configs share one compiled function
    f = jax.jit(lambda x, cfg: x * cfg.n_layer, static_argnums=1)
    assert float(f(jnp.float32(1), c)) == float(f(jnp.float32(1), ModelConfig.from_dict(c.to_dict()))) == 2.0


def test_a_flat_config_of_the_one_class_layout_still_loads():
    """Exports and reference model_args hold every field flat, other families' too: those are left out."""
    old = {**ModelConfig().to_dict(), **dataclasses.asdict(V2Fields()), "short_window": 99}
    assert ModelConfig.from_dict(old) == ModelConfig()
    with pytest.raises(ValueError, match=r"ModelConfig\.\w+: not a field of arch=.mosaic."):
        ModelConfig.from_dict(old, strict=True)


def test_resolve_substitutes_auto_and_shows_only_the_familys_fields():
    rc = run_config.resolve(config_with(**{"model.arch": "gpt2", "model.pmem_size": 448, "data.seq_len": 64}), 260,
                            backend="cpu")
    assert rc.model.fields == NoFields()
    saved = rc.to_dict()
    assert "pmem_size" not in saved["model"] and "cmem_impl" not in saved["model"]
    assert saved["impl"]["loss_impl"] == rc.model.loss_impl == dispatch.loss("auto", "cpu") == "fused"
    assert rc.requested_model.loss_impl == "auto"                     # exports and decoding choose again
    assert saved["resolved_impl"]["requested"] == dataclasses.asdict(ImplConfig())
    assert run_config.model_of(saved) == rc.requested_model           # what generate/evaluate load with
    # the switches gpt2 does not read stay as asked
    assert saved["impl"]["cmem_impl"] == "auto"

    rc = run_config.resolve(config_with(**{"impl.leaky_impl": "matrix", "model.ic_dropout": 0.1,
                                       "data.seq_len": 64}), 260, backend="gpu")
    assert rc.model.leaky_impl == "matrix" and rc.model.pmem_impl == "dense"   # GPU + read dropout: no flash
    assert rc.eval_model.pmem_impl == "flash" and rc.requested_model.pmem_impl == "auto"
    assert rc.model.replace(**dataclasses.asdict(rc.requested_model.impl)) == rc.requested_model


def test_help_lists_the_impl_section_and_whose_each_model_field_is():
    lines = sections.help_lines()
    assert any(ln.strip().startswith("--config.impl.cmem_impl (str, default 'auto')") for ln in lines)
    assert any("--config.model.short_window" in ln and "[mosaic_v2]" in ln for ln in lines)
    assert any("--config.model.pmem_size" in ln and "[mosaic]" in ln for ln in lines)
    assert not any("--config.model.cmem_impl" in ln for ln in lines)


def test_resume_compares_model_fields_across_the_two_layouts():
    rc = run_config.resolve(config_with(), 260, backend="cpu").to_dict()
    old = {**rc, "model": {**rc["model"], **{k: "x" for k in ("dtype", "cmem_impl")}}}   # impl fields in model
    assert integrity.config_differences(old, rc) == []
    other = {**rc, "model": {**rc["model"], "pmem_size": 16}}
    assert integrity.config_differences(other, rc) == [f"model.pmem_size: saved 16, requested "
                                                       f"{rc['model']['pmem_size']}"]


def test_a_moved_field_names_its_new_place(capsys):
    from mosaic_jax import train
    assert train.main(["--config=tiny_cpu", "--config.model.remat=full", "--print_config"]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "--config.model.remat: moved to --config.impl.remat (the implementation switches have their own section, "
        "`impl`)")
    raw = run_config.base_config().to_dict()
    raw["model"]["cmem_impl"] = "dense"    # a config file written with the old layout
    with pytest.raises(run_config.ConfigError, match=r"^model\.cmem_impl='dense': this field moved to impl\.cmem_impl"):
        run_config.resolve(__import__("ml_collections").ConfigDict(raw), 260)
