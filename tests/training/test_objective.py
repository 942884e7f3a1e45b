"""``--objective lambdarank`` beside binary: the ranking score is calibrated into P(claim), exported with
parity, and served (compiled trees + the calibration map) like a binary model."""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from infra.registry import LGB_FILE
from service.model import load_model
from training import export, pipeline


@pytest.fixture(scope="module")
def ranked(sim_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> pipeline.Outcome:
    return pipeline.run(
        tmp_path_factory.mktemp("reg"), sim_dir, promote=False, progress=False, objective="lambdarank"
    )


def test_lambdarank_is_calibrated_into_a_probability(ranked: pipeline.Outcome) -> None:
    meta = ranked.metadata
    assert meta["objective"] == "lambdarank" and meta["params"]["objective"] == "lambdarank"
    cal = meta["calibration"]
    assert cal["method"] == "platt" and cal["test_ece_before"] is None  # a score has no ECE of its own
    assert cal["test_ece_after"] < 0.05
    assert meta["parity"]["max_abs_diff"] <= 1e-5
    m = meta["metrics"]["model"]
    assert m["auc"] > meta["metrics"]["popularity"]["auc"]
    assert 0.0 < m["logloss"] < 0.5  # a probability: log loss is finite and small


def test_lambdarank_model_is_served_compiled(ranked: pipeline.Outcome, tmp_path: Path) -> None:
    path = ranked.path / "model.onnx"
    for runtime in ("auto", "compiled"):
        model = load_model(path, ranked.version, runtime, tmp_path / "cache")  # type: ignore[arg-type]
        assert model.runtime == "lleaves" and model.fallback_reason is None
    x = np.random.default_rng(0).gamma(1.0, 2.0, (500, len(ranked.metadata["feature_names"])))
    x = x.astype(np.float32)
    p = model.predict(x)
    assert p.min() >= 0.0 and p.max() <= 1.0
    assert float(np.max(np.abs(p.astype(np.float64) - model.predict_onnx(x)))) <= 1e-5


def test_lambdarank_without_calibration_is_refused(
    ranked: pipeline.Outcome, sim_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="calibration"):
        pipeline.TrainOptions(objective="lambdarank", calibration="none")
    with pytest.raises(ValueError, match="--objective"):
        pipeline.TrainOptions(params={"objective": "lambdarank"})
    with pytest.raises(ValueError, match="not probabilities"):
        pipeline.run(tmp_path, sim_dir, progress=False, objective="lambdarank", calibration="none")
    # The exporter refuses an uncalibrated ranking model by itself too (its score is no probability).
    booster = lgb.Booster(model_file=str(ranked.path / LGB_FILE))
    assert export.booster_objective(booster) == "lambdarank"
    with pytest.raises(export.ExportError, match="needs a calibration map"):
        export.to_onnx(booster, len(ranked.metadata["feature_names"]))
