"""The Complete Journey model declares its three campaign x household columns (member_offer_attribute
features in a CJ specification derived from the default), so it carries that specification's hash, is
registered with a parity-checked ONNX graph, and loads (compiled, calibrated) in a service running the
CJ specification, while a service on the default specification refuses it."""

from __future__ import annotations

from pathlib import Path

import pytest

from features.spec import default_spec
from infra.registry import Registry
from service.errors import ModelRefused
from service.model import load_model
from training import completejourney


@pytest.fixture(scope="module")
def cj(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, object], Path]:
    root = tmp_path_factory.mktemp("cj-registry")
    return completejourney.run(registry_dir=root, promote=True), root


def test_the_cj_model_is_registered_and_served_under_its_specification(
    cj: tuple[dict[str, object], Path], tmp_path: Path
) -> None:
    summary, root = cj
    spec = completejourney.cj_spec()
    assert spec.names[: len(default_spec())] == default_spec().names
    assert spec.names[len(default_spec()) :] == completejourney.EXTRA_FEATURES
    registry = Registry(root)
    version = str(summary["version"])
    assert registry.promoted() == version
    meta = registry.metadata(version)
    assert meta["feature_spec_hash"] == spec.hash == summary["feature_spec_hash"]
    assert meta["parity"]["max_abs_diff"] <= 1e-5
    model = load_model(registry.model_path(version), version, "auto", tmp_path / "cache", spec)
    assert model.runtime == "lleaves" and model.fallback_reason is None
    with pytest.raises(ModelRefused, match="feature_spec_hash"):
        load_model(registry.model_path(version), version, "onnx", tmp_path / "cache", default_spec())


def test_the_declared_columns_are_used_and_calibration_is_reported(
    cj: tuple[dict[str, object], Path],
) -> None:
    summary, root = cj
    meta = Registry(root).metadata(str(summary["version"]))
    top = [name for name, _ in meta["importance"][:10]]
    metrics = summary["metrics"]
    assert isinstance(metrics, dict) and metrics["model"]["auc"] > metrics["popularity"]["auc"] + 0.1
    cal = summary["calibration"]
    assert isinstance(cal, dict) and {"model_before", "model_after", "popularity"} <= set(cal)
    assert meta["calibration"]["method"] == "platt" and "map" in meta["calibration"]
    # The declared campaign x household columns carry the model (as the positional ones did).
    assert set(completejourney.EXTRA_FEATURES) & set(top), top
