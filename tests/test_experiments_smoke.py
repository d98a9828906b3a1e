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
