"""Smoke test of the benchmark harness (CPU): rows are complete, name the device, and the table renders."""
import json

import pytest

from mosaic_jax import bench


def test_bench_smoke_rows_and_markdown(capsys: pytest.CaptureFixture, tmp_path) -> None:
    png = tmp_path / "plot" / "bench.png"
    rows = bench.main(["--smoke", "--arch=mosaic,gpt2", "--impl=fast", "--rounds=1", "--decode_tokens=2",
                       "--markdown", f"--plot={png}"])
    out = capsys.readouterr().out
    lines = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    assert len(lines) == len(rows) == 4      # (mosaic, gpt2) x (train, decode)
    for r in lines:
        assert r["device"].startswith("cpu") and r["tokens_per_s"] > 0 and r["backend"] == "cpu"
        assert r["cmd"].startswith("python -m mosaic_jax.bench")
    train = [r for r in lines if r["bench"] == "train"]
    for r in train:
        assert r["step_ms"] > 0 and 0 < r["mfu"] < 1 and r["xla_mem_gb"] > 0 and r["flops_per_token"] > 0
    mosaic = next(r for r in train if r["arch"] == "mosaic")
    assert mosaic["vs_gpt2"] > 0
    assert "| device |" in out and out.count("| cpu") == 4
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_impl_overrides() -> None:
    cfg = bench.model_config("mosaic", "tiny", 32, "float32", "plain+pmem_impl=fused+scan_layers=False", 0.0, "none")
    assert (cfg.pmem_impl, cfg.cmem_impl, cfg.scan_layers) == ("fused", "dense", False)
    with pytest.raises(ValueError, match="impl"):
        bench.model_config("mosaic", "tiny", 32, "float32", "fastest", 0.0, "none")


@pytest.mark.parametrize("args,named", [(["--arch=mosiac"], "--arch='mosiac'"), (["--dtype=fp16"], "--dtype='fp16'"),
                                        (["--size=huge"], "--size='huge'"), (["--seq=12x"], "--seq='12x'"),
                                        (["--impl=fast+pmem=dense"], "'pmem=dense'"),
                                        (["--impl=fast+n_layer=two"], "'n_layer=two'"),
                                        (["--torch=jit"], "--torch='jit'")])
def test_bench_bad_arguments_fail_at_once_with_one_line(args: list[str], named: str,
                                                        capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        bench.main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert named in err and err.startswith("bench: error:")
