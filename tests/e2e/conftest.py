"""A tiny trained model in a temporary registry, shared by the end-to-end tests of this directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.registry import Registry
from infra.settings import Settings

# The single-Redis / Redis-Cluster ``backend`` fixture: the end-to-end test runs on both stores.
from tests.cluster.conftest import backend, redis_cluster  # noqa: F401


@pytest.fixture(scope="session")
def trained_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.pipeline import train_command
    from training.simulate import simulate_to_dir

    root = tmp_path_factory.mktemp("e2e")
    simulate_to_dir(root / "sim", n_members=300, days=7.0, n_offers=120, seed=3, progress=False)
    settings = Settings(environment="test", registry_dir=root / "registry")
    train_command(settings, data=root / "sim", events=None, promote=True)
    assert Registry(root / "registry").promoted() is not None
    return root / "registry"
