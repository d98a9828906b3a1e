"""Smoke test of the benchmark harness (CPU): rows are complete, name the device, and the table renders."""
import importlib.util
import json
import pathlib

import pytest

from mosaic_jax.tools import bench, bench_report, hostinfo


def test_bench_smoke_rows_markdown_and_profiles(capsys: pytest.CaptureFixture, tmp_path) -> None:
    png = tmp_path / "plot" / "bench.png"
    rows = bench.main(["--smoke", "--arch=mosaic,gpt2", "--impl=fast", "--rounds=1", "--decode_tokens=2",
                       "--markdown", f"--plot={png}", f"--profile={tmp_path / 'prof'}", "--profile_steps=1"])
    out = capsys.readouterr().out
    lines = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    assert len(lines) == len(rows) == 4      # (mosaic, gpt2) x (train, decode)
    for r in lines:
        assert r["device"].startswith("cpu") and r["tokens_per_s"] > 0 and r["backend"] == "cpu"
        assert r["cmd"].startswith("python -m mosaic_jax.tools.bench")
        assert r["cpu_model"] in r["device"] and all(f in r["device"] for f in r["cpu_flags"])
        assert len(r["load_avg"]["start"]) == len(r["load_avg"]["end"]) == 3
    train = [r for r in lines if r["bench"] == "train"]
    for r in train:
        assert r["step_ms"] > 0 and 0 < r["mfu"] < 1 and r["xla_mem_gb"] > 0 and r["flops_per_token"] > 0
    mosaic = next(r for r in train if r["arch"] == "mosaic")
    assert mosaic["vs_gpt2"] > 0
    assert "| device |" in out and out.count("| cpu") == 4 and "Load average" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --profile: one jax.profiler trace per row (what TensorBoard's profile plugin / xprof open), taken after the
    # timed rounds, whose timing above is still there and untraced.
    folders = {r["profile_dir"] for r in lines}
    assert len(folders) == 4 and (tmp_path / "prof" / "train_mosaic_tiny_T32_B2_float32_fast").is_dir()
    for r in lines:
        assert r["profile_dir"] == str(tmp_path / "prof" / bench.row_name(r)) and r["profiled_step_ms"] > 0
        traces = list(pathlib.Path(r["profile_dir"]).glob("plugins/profile/*/*.xplane.pb"))
        assert len(traces) == 1 and traces[0].stat().st_size > 0


def test_bench_profile_path_that_is_a_file_fails_at_once(tmp_path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(SystemExit) as e:
        bench.main(["--size=tiny", f"--profile={tmp_path / 'f'}"])
    assert e.value.code == 1 and "--profile=" in capsys.readouterr().err


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


INTEL = "model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
AMD = "model name\t: AMD EPYC\nflags\t\t: fpu sse avx avx2 fma\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2\n"


def test_cpu_info_names_model_and_matmul_flags() -> None:
    assert hostinfo.cpu_info(INTEL) == {"cpu_model": "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz",
                                        "cpu_flags": ["avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"]}
    assert hostinfo.cpu_info(AMD) == {"cpu_model": "AMD EPYC", "cpu_flags": ["avx2"]}
    assert hostinfo.cpu_info("") == {"cpu_model": "unknown CPU", "cpu_flags": []}
    dev = hostinfo.device_fields(INTEL)["device"]        # this test runs on CPU (conftest)
    assert dev.startswith("cpu: Intel(R) Xeon(R)") and "avx512_bf16 amx_tile amx_bf16" in dev


def _row(arch: str, dtype: str, impl: str, tps: float, device: str = "cpu: A (avx2)", **kw) -> dict:
    return {"bench": "train", "device": device, "cpu_model": "A", "cpu_flags": ["avx2"], "size": "cpu", "T": 256,
            "B": 8, "dropout": 0.0, "arch": arch, "dtype": dtype, "impl": impl, "tokens_per_s": tps} | kw


def test_ratios_pair_rows_of_the_same_precision_and_machine_only() -> None:
    rows = [_row("mosaic", "float32", "fast", 300.0), _row("mosaic", "bfloat16", "fast", 600.0),
            _row("gpt2", "float32", "fast", 200.0), _row("gpt2", "bfloat16", "fast", 500.0),
            _row("gpt2", "bfloat16", "plain", 50.0),
            _row("mosaic", "float32", "torch-compile", 100.0), _row("mosaic", "bfloat16", "torch-compile", 400.0),
            _row("mosaic", "float32", "torch-eager", 150.0),     # no bf16 eager row: no bf16 eager ratio
            _row("mosaic", "bfloat16", "torch-compile", 1.0, device="cpu: B (avx2)"),   # another machine
            _row("mosaic", "bfloat16", "torch-compile", 2.0, dropout=0.05)]             # another step
    bench_report.add_ratios(rows)
    f32, bf16 = rows[0], rows[1]
    assert (f32["vs_torch_compile"], f32["vs_torch_eager"], f32["vs_gpt2"]) == (3.0, 2.0, 1.5)
    assert (bf16["vs_torch_compile"], bf16["vs_gpt2"]) == (1.5, 1.2) and "vs_torch_eager" not in bf16
    for r in rows:
        for name, basis in r.get("ratio_rows", {}).items():
            assert basis.split()[1] == r["dtype"], (name, basis)      # every ratio is same-precision
    assert not any(k.startswith("vs_") for r in rows[2:] for k in r)  # torch and GPT-2 rows carry none
    table = bench_report.markdown([r | {"step_ms": 1.0} for r in rows], {"float32": 1e11, "bfloat16": 2e11})
    assert "PyTorch reference, compile, bf16 autocast" in table and "bfloat16 200 GFLOP/s" in table
    assert "| 1.50 | 1.20 |" in table                                # the bf16 mosaic row's same-dtype ratios
    # the baseline comes from the family (registry), not from arch names here: v2 has none, an unknown name none
    others = [_row("mosaic_v2", "float32", "fast", 300.0), _row("plugin_x", "float32", "fast", 300.0),
              _row("gpt2", "float32", "fast", 200.0)]
    bench_report.add_ratios(others)
    assert not any(k.startswith("vs_") for r in others for k in r)


def test_torch_modes_and_their_precision_agree_with_the_reference_script() -> None:
    pytest.importorskip("torch")
    spec = importlib.util.spec_from_file_location("torch_reference", bench.REFERENCE_SCRIPT)
    torch_reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(torch_reference)
    assert set(torch_reference.MODES) == set(bench.TORCH_MODES)
    for mode, dtype in bench.TORCH_MODES.items():
        assert torch_reference.mode_dtype(mode) == dtype


def test_profile_groups_ops_by_the_model_part_they_come_from() -> None:
    spec = importlib.util.spec_from_file_location("profile_step", bench.REFERENCE_SCRIPT.with_name("profile_step.py"))
    prof = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prof)
    hlo = ('  %ynn_fusion.7 = f32[8] fusion(%p), metadata={op_name="jit(step)/transpose(jvp(LanguageModel))/'
           'blocks/mosaic/pmem/while/body/exp" source_file="x.py"}\n'
           '  ROOT %add.3 = f32[8] add(%a, %b), metadata={op_name="jit(step)/add"}\n'
           '  %fusion.2 = f32[8] fusion(%q), metadata={op_name="jit(step)/jvp(LanguageModel)/blocks/mosaic/ln1/mul"}\n')
    names = prof.op_names(hlo)
    assert names == {"ynn_fusion.7": "jit(step)/transpose(jvp(LanguageModel))/blocks/mosaic/pmem/while/body/exp",
                     "add.3": "jit(step)/add", "fusion.2": "jit(step)/jvp(LanguageModel)/blocks/mosaic/ln1/mul"}
    assert prof.group_of(names["ynn_fusion.7"]).startswith("P-mem read kernel") and "[bwd]" in prof.group_of(
        names["ynn_fusion.7"])
    assert prof.group_of(names["add.3"]).startswith("optimizer")
    assert prof.group_of(names["fusion.2"]) == "LayerNorm"
    assert prof.CONTAINER.match("while.290") and not prof.CONTAINER.match("ynn_fusion.7")   # loops: not twice
