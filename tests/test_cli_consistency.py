"""Every CLI of mosaic_jax behaves alike (issue 16, item 6): `--help` exits 0 and shows the defaults, an unknown
flag is one line `<command>: error: ...` with exit 2, and a missing file is one line naming it (exit 1 or 2), with
no traceback. The list of CLIs is the package's console scripts, and every module with a `__main__` must be one."""
import importlib
import importlib.util
import os
import pathlib
import re
import subprocess
import sys
import tomllib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
MODULES = {name: target.split(":")[0].removeprefix("mosaic_jax.") for name, target in SCRIPTS.items()}
MISSING = "/nonexistent_mosaic_path"
# per CLI: arguments naming a missing file or folder, and the exit status expected (1 runtime, 2 usage)
MISSING_FILE = {
    "train": ([f"--config={MISSING}/cfg.py", "--workdir=unused"], 1),
    "prepare_data": ([f"--input={MISSING}/in.txt", "--out=unused"], 1),
    "generate": ([f"--workdir={MISSING}/run"], 1),
    "evaluate": ([f"--workdir={MISSING}/run", "--input=x.txt"], 1),
    "sweep": (["gather", f"{MISSING}/sweep"], 2),
    "aot": ([f"--config={MISSING}/cfg.py"], 1),
    "bench": ([f"--out={MISSING}/rows.jsonl"], 1),
    "bench_decode": ([f"--out={MISSING}/rows.json"], 1),
    "bench_data": ([f"--prepared={MISSING}/prepared"], 1),
    "v2_counts": ([f"--out={MISSING}/table.md"], 1),
    "export": ([f"--workdir={MISSING}/run", "--out=unused"], 1),
}


# The command name each CLI reports is its module's basename; the tools live in subpackages.
MODULE_PATH = {"sweep": "tools.sweep", "aot": "tools.aot", "bench": "tools.bench", "bench_decode": "tools.bench_decode",
               "bench_data": "tools.bench_data", "v2_counts": "models.mosaic_v2.counts"}


def _run(module, *args, cwd=REPO):
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", f"mosaic_jax.{MODULE_PATH.get(module, module)}", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _one_error_line(res, module):
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{module}: error: "), res.stderr[-2000:]
    return lines[0]


def test_every_cli_module_is_a_console_script():
    # hf/ holds the Hugging Face tools (lm_eval's own command line, the GPT-2 importer), documented in docs/ and
    # not console scripts of this package; every other module with a __main__ must be one.
    mains = sorted(".".join(p.relative_to(REPO / "mosaic_jax").with_suffix("").parts)
                   for p in (REPO / "mosaic_jax").rglob("*.py") if "__main__" in p.read_text() and p.parent.name != "hf")
    assert sorted(MODULES.values()) == mains
    assert sorted(MODULE_PATH.get(command, command) for command in MISSING_FILE) == mains
    assert {"mosaic-train", "mosaic-prepare", "mosaic-generate", "mosaic-evaluate", "mosaic-bench"} <= set(SCRIPTS)
    for target in SCRIPTS.values():
        assert target.endswith(":cli")


@pytest.mark.parametrize("module", sorted(MISSING_FILE))
def test_help_bad_flag_and_missing_file(module, tmp_path):
    res = _run(module, "--help")
    assert res.returncode == 0 and res.stderr == "", res.stderr[-2000:]
    assert "flags (default in parentheses):" in res.stdout and "(default: " in res.stdout
    assert not re.search(r"--\w+-\w", res.stdout.split("flags (default in parentheses):")[1])   # snake_case

    res = _run(module, "--no_such_flag=1")
    assert res.returncode == 2
    assert "--no_such_flag" in _one_error_line(res, module)

    args, code = MISSING_FILE[module]
    res = _run(module, *args, cwd=tmp_path)
    assert res.returncode == code
    assert MISSING in _one_error_line(res, module)
    assert not list(tmp_path.iterdir())   # nothing written


def test_train_names_a_misspelled_config_field_with_the_suggestion():
    """Issue 13 item 6: `train: error: \\'stepz\\'\\nDid you mean "steps"...` with literal escapes before."""
    res = _run("train", "--config=tiny_cpu", "--config.train.stepz=5", "--workdir=unused")
    assert res.returncode == 2
    line = _one_error_line(res, "train")
    assert line == 'train: error: --config.train.stepz: no such config field (did you mean "steps"?)'


def test_preset_names_and_paths_are_the_same_config():
    from mosaic_jax import presets
    assert {"tiny_cpu", "babistories_mm", "babistories_gpt2", "lm_by_depth", "v2_small", "v2_large"} <= \
        set(presets.names())
    assert presets.resolve("tiny_cpu") == presets.path("tiny_cpu")
    assert presets.resolve("experiments/configs/tiny_cpu.py") == "experiments/configs/tiny_cpu.py"
    assert presets.resolve_config_args(["--config", "v2_small", "--config.x=1"])[1] == presets.path("v2_small")
    for name in presets.names():   # the old paths are thin aliases of the packaged presets
        spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / "configs" / f"{name}.py")
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)
        new = importlib.import_module(f"mosaic_jax.presets.{name}")
        assert old.get_config().to_dict() == new.get_config().to_dict()



def test_every_cli_imports_beside_every_other_in_one_process():
    """Tests import CLIs in-process (`from mosaic_jax import train`), and pytest-xdist puts any two test files on one
    worker: two modules defining the same flag on absl's global FLAGS break whichever comes second. The CI failure
    this guards: mosaic_jax.hf.import_gpt2 and mosaic_jax.train both defining --workdir globally."""
    mains = sorted("mosaic_jax." + ".".join(p.relative_to(REPO / "mosaic_jax").with_suffix("").parts)
                   for p in (REPO / "mosaic_jax").rglob("*.py") if "__main__" in p.read_text())
    assert "mosaic_jax.hf.import_gpt2" in mains and "mosaic_jax.train" in mains
    code = "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)\n"
    for order in (mains, mains[::-1]):   # each module both before and after the others
        res = subprocess.run([sys.executable, "-c", code, *order], cwd=REPO, capture_output=True, text=True,
                             env=dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu"), timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
