"""The CPU-scale extrapolation experiment runs end to end (--smoke: tiny models, a few steps)."""
import importlib.util
import json
import math
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_v2_extrapolation_smoke(tmp_path: pathlib.Path, data_dir: pathlib.Path) -> None:
    spec = importlib.util.spec_from_file_location("v2_extrapolation", REPO / "experiments" / "v2_extrapolation.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod          # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    mod.main(["--smoke", "--out", str(tmp_path)])
    out = json.loads((tmp_path / "results.json").read_text())
    assert {"MM v2", "MM v1", "GPT-2"} <= set(out["results"])
    assert any("without long-term memory" in name for name in out["results"])
    for r in out["results"].values():
        assert all(0.0 <= a <= 1.0 for a in r["retrieval"].values())
        assert all(math.isfinite(x) for x in r["loss_at"].values())
    assert (tmp_path / "extrapolation.png").stat().st_size > 0
    assert "| MM v2 |" in (tmp_path / "results.md").read_text()
