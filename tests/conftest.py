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
