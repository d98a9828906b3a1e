"""Seconds-long smoke runs of the experiment drivers in experiments/ (each with --smoke into a temp folder).

They check that each driver runs end to end and writes its table and plots; the numbers are meaningless.
"""
import importlib
import pathlib
import sys

import pytest

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"


def _driver(name: str):
    if str(EXPERIMENTS) not in sys.path:
        sys.path.insert(0, str(EXPERIMENTS))
    return importlib.import_module(name)


def _check_outputs(out: pathlib.Path, pngs: list[str]) -> str:
    md = (out / "results.md").read_text()
    assert "SMOKE RUN" in md and "Wall time" in md and "Command" in md
    for png in pngs:
        p = out / png
        assert p.is_file() and 0 < p.stat().st_size < 300_000, png
    return md


def test_three_moons_smoke(tmp_path):
    res = _driver("three_moons").main(["--smoke", "--out", str(tmp_path)])
    _check_outputs(tmp_path, ["generation_error.png", "attention_maps.png", "w_maps.png", "training_loss.png"])
    assert set(res["best"]) == {1, 3}


def test_regbench_smoke(tmp_path):
    res = _driver("regbench").main(["--smoke", "--out", str(tmp_path)])
    md = _check_outputs(tmp_path, ["regbench.png"])
    assert "L1 = 2·TVD" in md
    for m in res["results"].values():
        assert 0.0 <= m["accuracy"] <= 1.0 and 0.0 <= m["tvd"] <= 1.0
        assert m["l1"] == pytest.approx(2 * m["tvd"])


def test_lm_by_depth_and_attention_consistency_smoke(tmp_path):
    """Language modelling by depth (training CLI, byte tokens, 3 steps, depth 1), then the attention analysis
    on the same two runs."""
    lm = _driver("lm_by_depth").main(["--smoke", "--out", str(tmp_path / "lm")])
    _check_outputs(tmp_path / "lm", ["loss_curves.png", "per_position_loss.png"])
    assert {k for k in lm["per_position"]} == {("mosaic", 1), ("gpt2", 1)}
    att = _driver("attention_consistency").main(["--smoke", "--runs", lm["runs_root"], "--out", str(tmp_path / "att")])
    _check_outputs(tmp_path / "att", ["inconsistency_vs_distance.png", "score_vs_distance.png",
                                      "attention_maps_depth1.png"])
    assert len(att["rows"]) == 2


def test_full_scale_smoke(tmp_path):
    res = _driver("full_scale").main(["--smoke", "--out", str(tmp_path), "--lm-runs", str(tmp_path / "none")])
    md = (tmp_path / "results.md").read_text()
    assert "launch/tpu_pod.sh" in md and "launch/slurm_gpu.sbatch" in md
    assert res["info"]["mosaic"]["params"] == 123_588_336 and res["info"]["gpt2"]["params"] == 123_980_544
    assert res["info"]["mosaic"]["tokens"] == 80_000 * 512 * 512


def test_recorded_commands_name_no_path_of_this_machine():
    """Results files are committed: a recorded command must run from a fresh clone elsewhere."""
    util = _driver("_util")
    cmd = util.command_line([sys.executable, "-m", "mosaic_jax.train", f"--workdir={util.REPO / 'runs' / 'x'}",
                             f"--text={util.SHARED / 'data' / 'a.txt'}"])
    assert cmd == "python -m mosaic_jax.train --workdir=runs/x --text=../shared/data/a.txt"
