"""Ahead-of-time check (`python -m mosaic_jax.tools.aot`): topology parsing, the report on simulated CPU devices,
the exit status when the estimate does not fit, and (where libtpu is installed) a compile-only TPU topology."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from mosaic_jax.tools import aot, aot_scaling
from tests.conftest import REPO

TINY = ["--config=experiments/configs/tiny_cpu.py", "--config.model.vocab_size=512", "--config.model.n_layer=2",
        "--config.model.n_embd=64", "--config.model.n_head=4", "--config.model.pmem_size=128",
        "--config.model.block_size=64", "--config.train.global_batch=8"]


def _aot(*args, extra_env=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.pop("XLA_FLAGS", None)   # the tool sets its own device count
    env.update(extra_env or {})
    return subprocess.run([sys.executable, "-m", "mosaic_jax.tools.aot", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def test_parse_topology():
    t = aot.parse_topology("v4-32")    # 32 TensorCores = 16 chips (megacore: one JAX device per chip), 4 hosts
    assert (t.topology_name, t.num_devices, t.chip_config_name, t.chips_per_host_bounds, t.hbm_gib) == \
        ("v4:2x2x4", 16, "megacore", (2, 2, 1), 32)
    assert aot.parse_topology("v4:2x2x2").num_devices == 8
    assert aot.parse_topology("v5litepod-16").topology_name == "v5e:4x4"
    assert aot.parse_topology("v6e-8").chips_per_host_bounds == (2, 4, 1)
    assert aot.parse_topology("v5p-128").topology_name == "v5p:4x4x4"
    assert aot.parse_topology("v5p:1x1x1").chips_per_host_bounds == (1, 1, 1)     # one chip: one host of one
    with pytest.raises(aot.AotError, match="v4-32"):
        aot.parse_topology("h100-8")


def test_report_on_simulated_devices(tmp_path):
    """4 simulated CPU devices, FSDP=2 x tensor=2: exact per-device parameter bytes, a temporaries estimate, and
    exit status 3 with 'DOES NOT FIT' when the device memory given is too small."""
    out = tmp_path / "report.json"
    res = _aot(*TINY, "--config.mesh.data=1", "--config.mesh.fsdp=2", "--config.mesh.tensor=2", "--num_devices=4",
               "--device_memory_gb=0.001", f"--out={out}")
    assert res.returncode == 3, res.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["mesh"] == {"data": 1, "fsdp": 2, "tensor": 2} and r["num_devices"] == 4 and r["platform"] == "cpu"
    b = r["per_device_bytes"]
    assert r["total_bytes"]["params"] == 4 * r["params"]                        # float32 master weights
    assert r["total_bytes"]["params"] / 4 <= b["params"] < r["total_bytes"]["params"] / 2   # mostly sharded
    assert b["optimizer"] == pytest.approx(2 * b["params"], rel=0.01)          # adam mu + nu (+ a count)
    assert b["batch"] == 2 * 4 * 64 * 4     # inputs+targets: 8 rows over fsdp=2 (tensor replicates) x 64 x int32
    assert b["temporaries"] > 0 and b["peak_estimate"] > b["params"] + b["optimizer"]
    assert r["fits"] is False
    text = res.stdout
    assert "parameters (float32)" in text and "optimizer state" in text and "temporaries" in text
    assert "DOES NOT FIT" in text and "XLA:CPU" in text


def test_bad_arguments_are_one_line_errors():
    res = _aot(*TINY, "--config.mesh.fsdp=3", "--num_devices=4")
    assert res.returncode == 1 and res.stderr.strip().startswith("aot: error: mesh:"), res.stderr[-2000:]


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is not None, reason="libtpu installed: see the next test")
def test_topology_without_libtpu_says_what_to_install():
    res = _aot(*TINY, "--topology=v4-8", "--config.mesh.fsdp=4")
    assert res.returncode == 1 and "needs libtpu" in res.stderr and "--num_devices" in res.stderr, res.stderr[-2000:]


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu is not installed (jax[tpu])")
def test_tpu_topology_compile_only(tmp_path):
    out = tmp_path / "tpu.json"
    res = _aot(*TINY, "--topology=v4-8", "--config.mesh.fsdp=4", f"--out={out}")
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["platform"] == "tpu" and r["num_devices"] == 4 and r["fits"] is True and r["device_memory_gib"] == 32


def test_scaling_table_and_growth_exponents():
    import ml_collections
    rows = [{"arch": "mosaic", "impl": i, "seq_len": t, "temporaries": c * t ** e, "refused": False}
            for i, c, e in (("dense", 3.0, 2), ("pallas", 5.0, 1)) for t in (1024, 4096, 8192)]
    assert aot_scaling.growth(rows, "dense") == pytest.approx([2.0, 2.0])
    assert aot_scaling.growth(rows, "pallas") == pytest.approx([1.0, 1.0])
    table = aot_scaling.format_table(rows)
    assert table.splitlines()[0] == "| model | path | T=1,024 | T=4,096 | T=8,192 | growth exponent |"
    assert "| mosaic | pallas |" in table and "1.00, 1.00" in table
    cfg = ml_collections.ConfigDict({"model": {"arch": "mosaic", "block_size": 512},
                                     "impl": {"cmem_impl": "auto", "pmem_impl": "auto", "v2_impl": "auto"},
                                     "data": {"seq_len": 0, "packing": False}})
    c = aot_scaling.with_path(cfg, 8192, "pallas")
    assert (c.data.seq_len, c.model.block_size, c.impl.cmem_impl, c.impl.pmem_impl) == (8192, 8192, "pallas",
                                                                                           "pallas")
    assert cfg.impl.cmem_impl == "auto"     # the caller's config is untouched
    with pytest.raises(ValueError, match="unknown path"):
        aot_scaling.with_path(cfg, 64, "cudnn")
    with pytest.raises(ValueError, match="seq_lens"):
        aot_scaling.parse_list("2k", int, "seq_lens")
