"""ONNX export parity and refusal, registry layout, promote/rollback, end-to-end train_command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import onnx
import pandas as pd
import pytest

from features.calibration import Calibration
from features.projection import DEFAULT_SPEC, FEATURE_NAMES, N_FEATURES
from features.spec import parse_spec
from infra.registry import LGB_FILE, METADATA_FILE, MODEL_FILE, Registry
from infra.settings import Settings
from training import dataset, export, pipeline
from training.simulate import load_catalog


@pytest.fixture(scope="module")
def rows(sim_dir: Path) -> np.ndarray:
    imp = pd.read_parquet(sim_dir / "impressions.parquet")
    ts = dataset.build(
        imp, dataset.load_events(sim_dir / "events.jsonl"), load_catalog(sim_dir / "catalog.json")
    )
    return ts.X


def test_onnx_matches_lightgbm_on_varied_rows(trained: pipeline.Outcome, rows: np.ndarray) -> None:
    path = trained.path
    booster = lgb.Booster(model_file=str(path / LGB_FILE))
    sess = export.session((path / MODEL_FILE).read_bytes())
    # The served graph outputs the calibrated probability: LightGBM's, through the map in the metadata.
    cal = Calibration.from_dict(trained.metadata["calibration"]["map"])
    x = export.parity_rows(rows, n=3000, seed=1)
    assert len(np.unique(x, axis=0)) == len(x) > 1000
    want = cal.apply(booster.predict(x))
    np.testing.assert_allclose(export.onnx_predict(sess, x), want, rtol=0, atol=1e-5)
    # Also rows the model never saw: perturbed copies spanning the feature ranges.
    rng = np.random.default_rng(0)
    noisy = (x * rng.uniform(0.5, 1.5, x.shape)).astype(np.float32)
    want = cal.apply(booster.predict(noisy))
    np.testing.assert_allclose(export.onnx_predict(sess, noisy), want, rtol=0, atol=1e-5)


def test_onnx_signature_and_metadata(trained: pipeline.Outcome) -> None:
    model = onnx.load(str(trained.path / MODEL_FILE))
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["feature_names"]) == list(FEATURE_NAMES)
    assert props["feature_spec_hash"] == DEFAULT_SPEC.hash
    # The specification travels with the model and hashes back to the same value.
    assert parse_spec(props["feature_spec"]).hash == DEFAULT_SPEC.hash
    assert props["model_version"] == trained.version
    assert [o.name for o in model.graph.output] == [export.OUTPUT_NAME]
    assert [i.name for i in model.graph.input] == [export.INPUT_NAME]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[1].dim_value == N_FEATURES
    meta = json.loads((trained.path / METADATA_FILE).read_text())
    for key in (
        "feature_names",
        "feature_spec_hash",
        "feature_spec",
        "training_window",
        "metrics",
        "code_version",
        "parity",
    ):
        assert key in meta
    assert meta["data"]["hash"] and meta["parity"]["max_abs_diff"] <= 1e-5


def test_service_accepts_the_exported_model(trained: pipeline.Outcome) -> None:
    from service.model import load_model

    model = load_model(trained.path / MODEL_FILE, trained.version)
    p = model.predict(np.zeros((3, N_FEATURES), dtype=np.float32))
    assert p.shape == (3,)


def test_export_refused_when_onnx_and_lightgbm_disagree(trained: pipeline.Outcome, rows: np.ndarray) -> None:
    booster = lgb.Booster(model_file=str(trained.path / LGB_FILE))
    good, _ = export.export_model(booster, rows, "v-good")
    # Tamper: shift every leaf of the first tree in the ONNX graph; LightGBM still has the original.
    model = onnx.load_from_string(good)
    node = next(n for n in model.graph.node if n.op_type == "TreeEnsembleClassifier")
    weights = next(a for a in node.attribute if a.name == "class_weights")
    weights.floats[:] = [w + 0.05 for w in weights.floats]
    with pytest.raises(export.ExportError, match="disagree"):
        export.check_parity(booster, model.SerializeToString(), export.parity_rows(rows))


def test_export_refused_at_zero_tolerance_when_not_bit_exact(
    trained: pipeline.Outcome, rows: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    booster = lgb.Booster(model_file=str(trained.path / LGB_FILE))
    data, diff = export.export_model(booster, rows, "v-probe")
    assert 0 < diff <= export.PARITY_TOLERANCE  # float32 sums differ from double in the last bits
    monkeypatch.setattr(export, "PARITY_TOLERANCE", 0.0)
    with pytest.raises(export.ExportError):
        export.check_parity(booster, data, export.parity_rows(rows), tolerance=export.PARITY_TOLERANCE)


def test_float32_thresholds_do_not_change_predictions(trained: pipeline.Outcome, rows: np.ndarray) -> None:
    booster = lgb.Booster(model_file=str(trained.path / LGB_FILE))
    again = export.float32_thresholds(booster)
    np.testing.assert_array_equal(again.predict(rows), booster.predict(rows))


def test_registry_promote_and_rollback(trained: pipeline.Outcome, sim_dir: Path) -> None:
    registry = Registry(trained.path.parent.parent)
    first = trained.version
    assert trained.promoted and registry.promoted() == first
    # A worse model (depth-1 trees, a crawling learning rate, few features) on the same data: compared
    # with the promoted one on the same held-out rows, it is refused.
    worse_params = {"num_leaves": 2, "max_depth": 1, "learning_rate": 0.001, "feature_fraction": 0.1}
    second = pipeline.run(registry.root, sim_dir, promote=True, progress=False, params=worse_params)
    assert second.version != first
    assert second.metadata["compared_with_promoted"] == first
    assert "promoted" in second.result["overall"]
    assert second.result["overall"]["model"]["auc"] < second.result["overall"]["promoted"]["auc"]
    assert not second.promoted and registry.promoted() == first
    assert f"beats the promoted {first} by -" in second.metadata["promotion"]["reason"]
    last = registry.history()[-1]
    assert last["action"] == "not_promoted" and last["version"] == second.version
    assert registry.versions() == sorted([first, second.version])
    registry.promote(second.version)
    assert registry.promoted() == second.version
    ptr = registry.rollback()
    assert ptr["version"] == first and registry.promoted() == first
    assert registry.rollback(to=second.version)["version"] == second.version


def test_promotion_decision_needs_popularity_and_the_margin_over_the_promoted() -> None:
    def result(pop: float, promoted: float | None) -> dict[str, Any]:
        margins: dict[str, Any] = {"popularity": {"auc": pop}}
        if promoted is not None:
            margins["promoted"] = {"auc": promoted}
        return {"margins": margins}

    decide = pipeline.promotion_decision
    assert decide(result(0.05, None), None, False, 0.002)[0]  # first model: popularity is the bar
    assert not decide(result(-0.01, None), None, False, 0.002)[0]
    assert decide(result(0.05, 0.004), "v1", True, 0.002)[0]
    ok, why = decide(result(0.05, 0.001), "v1", True, 0.002)  # better, but not by the margin
    assert not ok and "less than the required 0.002" in why
    assert not decide(result(0.05, -0.018), "v1", True, 0.002)[0]  # 0.703 vs the promoted 0.721
    ok, why = decide(result(0.05, None), "v1", False, 0.002)  # promoted model not comparable
    assert not ok and "could not be scored on the same held-out rows" in why


def test_train_command_end_to_end(sim_dir: Path, tmp_path: Path) -> None:
    settings = Settings(registry_dir=tmp_path / "reg")
    version = pipeline.train_command(settings, data=sim_dir, events=None, promote=True)
    registry = Registry(tmp_path / "reg")
    assert registry.promoted() == version
    vdir = registry.version_dir(version)
    for name in (MODEL_FILE, LGB_FILE, METADATA_FILE, export.REPORT_FILE):
        assert (vdir / name).stat().st_size > 0
    meta = registry.metadata(version)
    # The model must beat popularity and random on held-out data; the oracle bounds it from above.
    m = meta["metrics"]
    assert m["model"]["auc"] > m["popularity"]["auc"] > m["random"]["auc"] - 0.05
    assert m["oracle"]["auc"] >= m["model"]["auc"] - 0.02
    assert '<img src="data:image/png;base64,' in (vdir / export.REPORT_FILE).read_text()


def test_train_command_bring_your_own_csv(sim_dir: Path, tmp_path: Path) -> None:
    imp = pd.read_parquet(sim_dir / "impressions.parquet")
    (tmp_path / "catalog.json").write_text((sim_dir / "catalog.json").read_text())
    table = tmp_path / "impressions.csv"
    imp[["member_id", "offer_id", "event_ts", "page_type", "category", "device", "channel", "label"]].to_csv(
        table, index=False
    )
    out = pipeline.run(
        tmp_path / "reg", table, events=sim_dir / "events.jsonl", promote=False, progress=False
    )
    assert out.metadata["data"]["kind"] == "bring_your_own"
    assert out.result["overall"]["model"]["auc"] > 0.6
