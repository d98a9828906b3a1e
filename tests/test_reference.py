"""Interoperability with the official checkpoints: formats, names, round trips and clear errors."""
import json
import pathlib

import jax
import numpy as np
import pytest

import mosaic_jax as mj
from mosaic_jax.models.config import ModelConfig
from mosaic_jax.models.mosaic.reference import ReferenceFormatError, read_state_dict, state_dict_from_params

TINY = dict(vocab_size=96, n_layer=2, n_embd=64, n_head=4, pmem_size=56, block_size=32)


def golden_sd(golden_dir: pathlib.Path) -> tuple[dict, dict]:
    return read_state_dict(golden_dir / "mm_v1_tiny.npz")


def to_eft(sd: dict) -> dict:
    """Rename a regular state_dict to the eft version's names (as memory_mosaics_eft.py writes them)."""
    out = {}
    for k, v in sd.items():
        if ".k_featurizer.conv.weight" in k:
            out[k.replace("k_featurizer.conv.weight", "leaky_average.linear.weight")] = v[..., 0]
        elif k.endswith(".leaky_key_beta"):
            out[k.replace("leaky_key_beta", "leaky_average.leaky_beta_w_under")] = v
            out[k.replace("leaky_key_beta", "leaky_average.leaky_beta_u_under")] = v
        else:
            out[k] = v
    return out


def assert_trees_equal(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_config_read_from_the_file(golden_dir: pathlib.Path) -> None:
    cfg, _ = mj.load_reference(golden_dir / "mm_v1_tiny.npz")
    ref = json.loads(str(np.load(golden_dir / "mm_v1_tiny.npz")["config"]))
    for k in ("vocab_size", "n_head", "n_embd", "n_layer", "pmem_size", "block_size", "weight_tying", "bias"):
        assert getattr(cfg, k) == ref[k]


def test_eft_names_load_to_the_same_params(golden_dir: pathlib.Path) -> None:
    sd, args = golden_sd(golden_dir)
    _, regular = mj.load_reference(sd)
    _, eft = mj.load_reference(to_eft(sd))
    assert_trees_equal(regular, eft)


def test_prefixes_and_shapes_only_config(golden_dir: pathlib.Path) -> None:
    sd, _ = golden_sd(golden_dir)
    cfg_a, p_a = mj.load_reference({"model": {"_orig_mod." + k: v for k, v in sd.items()}})
    cfg_b, p_b = mj.load_reference({"module." + k: v for k, v in sd.items()})
    assert_trees_equal(p_a, p_b)
    assert (cfg_a.n_head, cfg_a.pmem_size, cfg_a.n_layer, cfg_a.weight_tying) == (4, 56, 2, True)


def test_torch_checkpoint_as_written_by_the_training_script(golden_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    torch = pytest.importorskip("torch")
    sd, args = golden_sd(golden_dir)
    ckpt = {"model": {"_orig_mod." + k: torch.from_numpy(v.copy()) for k, v in to_eft(sd).items()},
            "model_args": {**args, "vocab_size": 96}, "iter_num": 3, "optimizer": {}}
    torch.save(ckpt, tmp_path / "ckpt.pt")
    cfg, params = mj.load_reference(tmp_path / "ckpt.pt")
    ref = np.load(golden_dir / "mm_v1_tiny.npz")
    np.testing.assert_allclose(mj.apply(cfg, params, ref["idx"]), ref["logits"], atol=2e-5)


@pytest.mark.parametrize("ext", [".npz", ".safetensors"])
@pytest.mark.parametrize("arch,extra", [("mosaic", {}), ("mosaic", dict(bias=True, weight_tying=False,
                                                                         pmem_count=2, k_kernel_size=2)),
                                        ("gpt2", {}), ("gpt2", dict(bias=True, weight_tying=False))])
def test_export_then_load_round_trip(tmp_path: pathlib.Path, ext: str, arch: str, extra: dict) -> None:
    cfg = ModelConfig.from_dict(dict(arch=arch, **{**TINY, **extra}))
    params = jax.tree.map(np.asarray, mj.init_params(cfg, jax.random.key(1)))
    sd = mj.export_reference(cfg, params, tmp_path / f"m{ext}")
    cfg2, params2 = mj.load_reference(tmp_path / f"m{ext}")
    assert cfg2.to_dict() == cfg.to_dict()   # the shared fields, the family's own (none for gpt2) and impl
    assert_trees_equal(params, params2)
    if arch == "mosaic":  # reference layouts: Conv1d (out, in, K), Linear (out, in), slot tables (1, H, P, D)
        assert sd["blocks.0.attn.k_featurizer.conv.weight"].shape == (64, 64, cfg.k_kernel_size)
        assert sd["blocks.1.pmem.pmem.M_k0"].shape == (1, 4, 56, 16)
        np.testing.assert_array_equal(sd["blocks.1.attn.v_featurizer.linear.weight"].T.reshape(64, 4, 16),
                                      params["blocks"]["mosaic"]["cmem"]["wv"][1])


def test_golden_state_dict_round_trips_exactly(golden_dir: pathlib.Path) -> None:
    sd, _ = golden_sd(golden_dir)
    cfg, params = mj.load_reference(sd)
    back = state_dict_from_params(cfg, params)
    assert list(back) == list(sd)  # reference key order
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k])


def test_bad_checkpoints_give_clear_errors(golden_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    sd, _ = golden_sd(golden_dir)
    missing = {k: v for k, v in sd.items() if k != "blocks.1.pmem.c_proj.weight"}
    with pytest.raises(ReferenceFormatError, match=r"missing key 'blocks\.1\.pmem\.c_proj\.weight'"):
        mj.load_reference(missing)
    wrong = dict(sd, **{"blocks.0.attn.c_proj.weight": np.zeros((64, 32), np.float32)})
    with pytest.raises(ReferenceFormatError, match=r"blocks\.0\.attn\.c_proj\.weight: shape \(64, 32\)"):
        mj.load_reference(wrong)
    with pytest.raises(ReferenceFormatError, match="unexpected key 'blocks.0.attn.surprise'"):
        mj.load_reference(dict(sd, **{"blocks.0.attn.surprise": np.zeros(3)}))
    eft = to_eft(sd)
    eft["blocks.0.attn.leaky_average.leaky_beta_u_under"] = eft["blocks.0.attn.leaky_average.leaky_beta_u_under"] + 1
    with pytest.raises(ReferenceFormatError, match="leaky_beta_u_under"):
        mj.load_reference(eft)
    with pytest.raises(ReferenceFormatError, match="no such file"):
        mj.load_reference(tmp_path / "absent.pt")
    (tmp_path / "weights.bin.gz").write_bytes(b"x")
    with pytest.raises(ReferenceFormatError, match="unknown extension"):
        mj.load_reference(tmp_path / "weights.bin.gz")
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(Exception, match="empty.npz"):
        mj.load_reference(tmp_path / "empty.npz")
    with pytest.raises(ReferenceFormatError, match="emb.weight"):
        mj.load_reference({"something": np.zeros(2)})


def test_corrupt_torch_file_is_reported(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("torch")
    bad = tmp_path / "ckpt.pt"
    bad.write_bytes(b"not a zip archive at all")
    with pytest.raises(ReferenceFormatError, match="ckpt.pt: not a readable .pt state_dict"):
        mj.load_reference(bad)


def test_export_refuses_unknown_format_and_leaves_no_partial_file(tmp_path: pathlib.Path) -> None:
    cfg = ModelConfig(**TINY)
    params = mj.init_params(cfg, jax.random.key(0))
    with pytest.raises(ValueError, match="npz or .safetensors"):
        mj.export_reference(cfg, params, tmp_path / "m.pt")
    assert list(tmp_path.iterdir()) == []
