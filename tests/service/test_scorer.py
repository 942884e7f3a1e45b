"""The compiled scorer behind the ONNX contract: parity with onnxruntime, the on-disk cache, and every
fallback (no LightGBM text, lleaves missing, a compile failure, a parity failure) seen from outside."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from features import calibration as calibrate
from features.calibration import Calibration, Method
from features.projection import DEFAULT_SPEC, FEATURE_NAMES, N_FEATURES
from harness.testmodel import random_rows, train_booster
from infra.registry import LGB_FILE, METADATA_FILE, MODEL_FILE, Registry
from infra.settings import Settings
from service.app import create_app
from service.errors import ModelRefused
from service.model import LoadedModel, load_model
from service.scorer import parity_rows
from tests.service.conftest import ADMIN, SF, make_settings, running
from training.export import set_metadata, spec_props, to_onnx

TOLERANCE = 1e-5


def _calibrated(seed: int, method: Method) -> Calibration:
    """A calibration map fitted, as training fits it, on outcomes the model is miscalibrated for."""
    rng = np.random.default_rng(seed)
    x = random_rows(4000, rng)
    p = train_booster(seed).predict(x.astype(np.float64))
    cal = calibrate.fit(p, (rng.random(len(p)) < np.sqrt(p)).astype(np.float64), method)
    assert cal is not None
    return cal


def _write(
    root: Path, version: str, onnx_seed: int, lgb_seed: int | None, calibration: Calibration | None = None
) -> Path:
    """A registry version: the ONNX of ``onnx_seed``'s model (with ``calibration`` in its graph and
    metadata, as the exporter writes it) and the LightGBM text of ``lgb_seed``'s."""
    d = root / "models" / version
    d.mkdir(parents=True, exist_ok=True)
    graph = to_onnx(train_booster(onnx_seed), calibration=calibration)
    set_metadata(
        graph,
        {
            **spec_props(DEFAULT_SPEC),
            "calibration": json.dumps(calibration.as_dict() if calibration is not None else None),
        },
    )
    (d / MODEL_FILE).write_bytes(graph.SerializeToString())
    meta: dict[str, object] = {"feature_spec_hash": DEFAULT_SPEC.hash, "feature_names": list(FEATURE_NAMES)}
    if calibration is not None:
        meta["calibration"] = {"method": calibration.method, "map": calibration.as_dict()}
    (d / METADATA_FILE).write_text(json.dumps(meta))
    if lgb_seed is not None:
        (d / LGB_FILE).write_text(train_booster(lgb_seed).model_to_string())
    return d / MODEL_FILE


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("scorer-cache")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> LoadedModel:
    path = _write(tmp_path_factory.mktemp("reg"), "v1", 1, 1)
    model = load_model(path, "v1", "auto", cache_dir)
    assert model.compiled is not None and model.runtime == "lleaves", model.fallback_reason
    return model


def test_compiled_trees_match_onnxruntime_on_varied_rows(compiled: LoadedModel) -> None:
    rng = np.random.default_rng(7)
    lgb_text = train_booster(1).model_to_string()
    for x in (
        random_rows(3000, rng),
        parity_rows(lgb_text, N_FEATURES, 3000, seed=11),  # on and next to every split threshold
        np.zeros((5, N_FEATURES), dtype=np.float32),
        random_rows(1, rng),
    ):
        got = compiled.predict(x)
        want = compiled.predict_onnx(x)
        assert got.shape == want.shape == (len(x),)
        assert float(np.max(np.abs(got.astype(np.float64) - want))) <= TOLERANCE
    assert compiled.predict(np.empty((0, N_FEATURES), dtype=np.float32)).shape == (0,)


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_a_calibrated_model_is_compiled_with_its_calibration(
    tmp_path: Path, cache_dir: Path, method: Method
) -> None:
    """The served graph ends in the calibration map: the compiled trees are followed by the same map, so
    ``auto`` does not fall back and ``compiled`` does not refuse."""
    cal = _calibrated(1, method)
    path = _write(tmp_path, "cal", 1, 1, calibration=cal)
    for runtime in ("auto", "compiled"):
        model = load_model(path, "cal", runtime, cache_dir)  # type: ignore[arg-type]
        assert model.runtime == "lleaves" and model.fallback_reason is None
    rng = np.random.default_rng(3)
    booster = train_booster(1)
    for x in (random_rows(3000, rng), parity_rows(booster.model_to_string(), N_FEATURES, 2000, seed=5)):
        got = model.predict(x).astype(np.float64)
        want = model.predict_onnx(x)
        assert float(np.max(np.abs(got - want))) <= TOLERANCE
        # ... and it is the calibrated probability, not the trees' own.
        raw = booster.predict(x.astype(np.float64))
        np.testing.assert_allclose(got, cal.apply(raw), atol=TOLERANCE)
        assert float(np.max(np.abs(got - raw))) > 0.01


def test_calibration_metadata_unlike_the_graph_is_caught(tmp_path: Path, cache_dir: Path) -> None:
    path = _write(tmp_path, "lie", 1, 1, calibration=_calibrated(1, "platt"))
    model = onnx.load(path)
    props = {p.key: p.value for p in model.metadata_props}
    set_metadata(model, {**props, "calibration": json.dumps(_calibrated(2, "isotonic").as_dict())})
    path.write_bytes(model.SerializeToString())
    assert load_model(path, "lie", "auto", cache_dir).fallback_reason == "parity_failed"


@settings(max_examples=60, deadline=None)
@given(
    arrays(
        np.float32,
        st.tuples(st.integers(1, 40), st.just(N_FEATURES)),
        elements=st.floats(-1e6, 1e6, width=32, allow_nan=False),
    )
)
def test_compiled_equals_onnx_for_any_finite_rows(compiled: LoadedModel, x: np.ndarray) -> None:
    diff = np.abs(compiled.predict(x).astype(np.float64) - compiled.predict_onnx(x))
    assert float(diff.max()) <= TOLERANCE


def test_a_second_process_loads_the_cached_object_without_compiling(
    compiled: LoadedModel, tmp_path: Path, cache_dir: Path
) -> None:
    # Same model text in another registry: same cache key, so nothing is compiled again.
    again = load_model(_write(tmp_path, "copy", 1, 1), "copy", "compiled", cache_dir)
    assert again.compiled is not None and again.compiled.compile_seconds == 0.0
    assert again.compiled.key == compiled.compiled.key  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("lgb", "reason"),
    [
        (None, "no_source"),  # registered before the LightGBM text was kept
        (2, "parity_failed"),  # the text of another model: compiled, then caught by the parity check
        ("corrupt", "compile_failed"),
    ],
)
def test_auto_falls_back_to_onnxruntime_with_a_reason(
    tmp_path: Path, cache_dir: Path, lgb: int | str | None, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = _write(tmp_path, "v", 1, lgb if isinstance(lgb, int) else None)
    if lgb == "corrupt":
        (path.parent / LGB_FILE).write_text("tree\nversion=v4\nnum_class=1\nthis is not a model\n")
    model = load_model(path, "v", "auto", cache_dir)
    assert model.compiled is None and model.runtime == "onnxruntime"
    assert model.fallback_reason == reason
    assert "scoring with onnxruntime" in caplog.text and reason in caplog.text
    x = random_rows(50, np.random.default_rng(0))
    np.testing.assert_array_equal(model.predict(x), model.predict_onnx(x))
    with pytest.raises(ModelRefused, match="compile_failed"):
        load_model(path, "v", "compiled", cache_dir)


def test_lleaves_not_installed_falls_back(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "lleaves", None)  # `import lleaves` now raises ImportError
    model = load_model(_write(tmp_path, "v", 1, 1), "v", "auto", cache_dir)
    assert model.compiled is None and model.fallback_reason == "unavailable"


def test_onnx_runtime_setting_never_compiles(tmp_path: Path, cache_dir: Path) -> None:
    model = load_model(_write(tmp_path, "v", 1, 1), "v", "onnx", cache_dir)
    assert model.compiled is None and model.fallback_reason is None


@pytest.mark.integration
@pytest.mark.anyio
async def test_the_service_reports_its_runtime_and_counts_fallbacks(
    redis_server: object, tmp_path: Path, unique: str, cache_dir: Path
) -> None:
    root = tmp_path / "registry"
    _write(root, "compiled", 1, 1)
    _write(root, "plain", 2, None)
    _write(root, "calibrated", 1, 1, calibration=_calibrated(1, "platt"))
    reg = Registry(root)
    reg.promote("plain")
    cfg: Settings = make_settings(
        redis_server.url,  # type: ignore[attr-defined]
        root,
        unique,
        scorer_cache_dir=cache_dir,
    )
    async with running(create_app(cfg)) as c:
        status = (await c.get("/v1/admin/models", headers=ADMIN)).json()
        assert status["runtime"] == "onnxruntime" and status["scorer_fallback"] == "no_source"
        text = (await c.get("/metrics")).text
        assert 'benefits_scorer_fallback_total{reason="no_source"} 1.0' in text
        assert "benefits_model_compiled 0.0" in text
        r = await c.post("/v1/admin/models/compiled/promote", headers=ADMIN)
        assert r.status_code == 200, r.text
        status = (await c.get("/v1/admin/models", headers=ADMIN)).json()
        assert status["runtime"] == "lleaves" and status["scorer_fallback"] is None
        r = await c.post("/v1/recommend", json={"member_id": "m1"}, headers=SF)
        assert r.status_code == 200 and r.json()["model_version"] == "compiled"
        # A calibrated model (the default of `benefits train`) is compiled too: no fallback counted.
        r = await c.post("/v1/admin/models/calibrated/promote", headers=ADMIN)
        assert r.status_code == 200, r.text
        status = (await c.get("/v1/admin/models", headers=ADMIN)).json()
        assert status["runtime"] == "lleaves" and status["scorer_fallback"] is None
        text = (await c.get("/metrics")).text
        assert 'benefits_scorer_fallback_total{reason="no_source"} 1.0' in text
        assert "parity_failed" not in text
        r = await c.post("/v1/recommend", json={"member_id": "m1"}, headers=SF)
        assert r.status_code == 200 and r.json()["model_version"] == "calibrated"
