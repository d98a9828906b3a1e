"""The documentation (guides in docs/ and the API reference generated from the docstrings) builds with
`mkdocs build --strict`: a broken link, a cross-reference that does not resolve or a module that griffe cannot
load fails the build, so it fails here and in CI."""
import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None,
                                reason="mkdocs is not installed (requirements-dev.txt, extra [docs])")


def test_mkdocs_build_strict(tmp_path):
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")  # material's end-of-life banner is noise here
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # The API page of mosaic_jax.ops.memory is rendered from the module's docstrings: its functions are there.
    memory_html = (site / "api" / "memory" / "index.html").read_text()
    assert 'id="mosaic_jax.ops.memory.leaky_average_scan"' in memory_html
    assert "Associative scan of the recurrence" in memory_html  # the function's docstring text
    # The top-level page documents the lazily re-exported functions (griffe cannot follow __getattr__).
    index_html = (site / "api" / "index.html").read_text()
    for name in ("models.lm.init_params", "models.lm.apply", "models.lm.param_axes",
                 "models.mosaic.reference.load_reference", "models.mosaic.reference.export_reference",
                 "models.mosaic.layers.MemoryFns"):
        assert f'id="mosaic_jax.{name}"' in index_html, name
    # Files outside docs/ that the guides link to are published, so those links work in the site too.
    assert (site / "repo" / "benchmarks" / "results" / "cpu_train.png").is_file()
    perf_html = (site / "performance" / "index.html").read_text()
    assert 'src="../repo/benchmarks/results/cpu_train.png"' in perf_html


def test_strict_build_rejects_broken_links_and_anchors(tmp_path):
    """The repo's settings (mkdocs.yml, inherited here) turn a missing page and a missing anchor into errors."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\n[gone](missing.md) and [no anchor](other.md#no-such-heading)\n")
    (docs / "other.md").write_text("# Other\n\n## A heading\n")
    config = tmp_path / "mkdocs.yml"
    config.write_text(f"INHERIT: {REPO / 'mkdocs.yml'}\ndocs_dir: {docs}\n"
                      f"hooks: [{REPO / 'scripts' / 'mkdocs_repo_files.py'}]\nnav: [index.md, other.md]\n")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config),
                           "--site-dir", str(tmp_path / "site")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("WARNING")]
    assert any("'missing.md'" in w for w in warnings), proc.stderr[-3000:]
    assert any("'#no-such-heading'" in w for w in warnings), proc.stderr[-3000:]  # MkDocs' default: INFO only
