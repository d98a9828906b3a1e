"""The wheel (issue 16, item 5): built from a copy of the sources, installed into a fresh venv, it carries the
LICENSE and the presets, and every console script answers `--help`; `--config=tiny_cpu` loads from the wheel.

Offline and fast: `pip wheel --no-build-isolation` (setuptools of this environment), and the fresh venv sees this
environment's packages through a .pth line (a plain path: the editable install's hooks here are not run, so
`import mosaic_jax` can only find the wheel's copy)."""
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _sh(*cmd, **kw):
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kw)
    assert res.returncode == 0, (cmd, res.stdout[-2000:], res.stderr[-2000:])
    return res


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_its_console_scripts_work(tmp_path):
    src = tmp_path / "src"   # a copy, so the build's build/ and *.egg-info never land in the checkout
    shutil.copytree(REPO / "mosaic_jax", src / "mosaic_jax", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    _sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
        "-w", tmp_path / "dist", src)
    wheel, = (tmp_path / "dist").glob("mosaic_jax-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "mosaic_jax/presets/tiny_cpu.py" in names and "mosaic_jax/cli_util.py" in names

    venv = tmp_path / "venv"
    _sh(sys.executable, "-m", "venv", "--without-pip", venv)
    py = venv / "bin" / "python"
    site = pathlib.Path(_sh(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    (site / "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _sh(sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", "-q", wheel)

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(JAX_PLATFORMS="cpu", PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    where = _sh(py, "-c", "import mosaic_jax; print(mosaic_jax.__file__)", cwd=tmp_path, env=env).stdout
    assert where.startswith(str(venv)), where
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    for script in scripts:
        res = _sh(venv / "bin" / script, "--help", cwd=tmp_path, env=env)
        assert "(default: " in res.stdout, script
    # a preset name resolves inside the installed package: the run stops at the (missing) data, not the config
    res = subprocess.run([venv / "bin" / "mosaic-train", "--config=tiny_cpu", f"--workdir={tmp_path / 'run'}",
                          f"--config.data.path={tmp_path / 'no_data'}"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stderr[-2000:]
    assert res.stderr.strip() == f"mosaic-train: error: {tmp_path / 'no_data'}: prepared-data folder not found " \
                                 "(run python -m mosaic_jax.prepare_data)"
