"""Fixtures shared by the training tests: one small simulation and one trained, registered model."""

from __future__ import annotations

from pathlib import Path

import pytest

from training import pipeline
from training.simulate import simulate_to_dir

SIM_MEMBERS = 400
SIM_DAYS = 7.0


@pytest.fixture(scope="session")
def sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim")
    simulate_to_dir(out, n_members=SIM_MEMBERS, days=SIM_DAYS, n_offers=120, seed=3, progress=False)
    return out


@pytest.fixture(scope="session")
def trained(sim_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> pipeline.Outcome:
    registry = tmp_path_factory.mktemp("registry")
    return pipeline.run(registry, sim_dir, promote=True, progress=False)
