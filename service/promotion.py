"""What a model version must pass before the registry pointer moves to it.

One function, :func:`check_version`, used by ``benefits promote``, ``benefits rollback`` and the admin
API's promote route, so every way of moving the pointer checks the same things:

1. the registry has the version and its metadata's feature specification hash is the service's
   (:func:`features.spec.spec_mismatch`);
2. it loads as the service loads it (:func:`service.model.load_model`: onnxruntime builds a session,
   the schema and feature names in the file match the code, one ``[N, n_features]`` input, a
   probability output, a finite smoke prediction);
3. it predicts a probability per row on batches of several sizes of varied rows (a graph that only
   works for the smoke probe's shape is caught here, not by members);
4. parity: on the same rows its predictions agree with the LightGBM model it was exported from
   (``model.lgb.txt``), through the calibration map the metadata records, within the tolerance recorded
   at export (when the LightGBM text is there).

A refusal is a :class:`~service.errors.ModelRefused` with a reason code and a sentence; the pointer
does not move.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from features.calibration import Calibration
from features.projection import DEFAULT_SPEC
from features.spec import FeatureSpec, spec_mismatch
from infra.registry import LGB_FILE, Registry, RegistryError
from service.errors import ModelRefused
from service.model import LoadedModel, ScorerRuntime, load_model

#: Rows of the parity sample, and the batch sizes predictions are checked on.
SAMPLE_ROWS = 512
BATCH_SIZES = (1, 7, 64, SAMPLE_ROWS)
#: Tolerance when the version's metadata records none (training.export.PARITY_TOLERANCE).
DEFAULT_PARITY_TOLERANCE = 1e-5


def sample_rows(n: int = SAMPLE_ROWS, seed: int = 12, n_features: int = len(DEFAULT_SPEC)) -> np.ndarray:
    """Varied feature rows (counts-like gamma values, some zero, some large), float32."""
    rng = np.random.default_rng(seed)
    x = rng.gamma(1.0, 2.0, size=(n, n_features)).astype(np.float32)
    x[rng.random((n, n_features)) < 0.3] = 0.0  # sparse, like real member histories
    x[: n // 8] *= 50.0  # and a tail of heavy members / high values
    return x


def check_version(
    registry: Registry,
    version: str,
    runtime: ScorerRuntime = "onnx",
    cache_dir: Path | None = None,
    spec: FeatureSpec = DEFAULT_SPEC,
) -> tuple[LoadedModel, list[str]]:
    """Load and check ``version``: (the loaded model, the checks passed, in words). Raises
    :class:`ModelRefused` with the first check that failed."""
    try:
        path = registry.model_path(version)
        meta = registry.metadata(version)
    except RegistryError as exc:
        raise ModelRefused("missing", str(exc)) from None
    except ValueError as exc:  # metadata.json is not JSON
        raise ModelRefused("corrupt", f"metadata.json of {version} is unreadable: {exc}") from None
    if "feature_spec_hash" in meta or "feature_schema" in meta:
        why = spec_mismatch(
            {k: str(meta[k]) for k in ("feature_spec_hash", "feature_schema") if k in meta}, spec
        )
        if why is not None:
            raise ModelRefused("schema_mismatch", f"metadata: {why}")
    model = load_model(path, version, runtime, cache_dir, spec)
    checks = [f"loads ({model.runtime})", f"feature specification {spec.hash}"]
    x = sample_rows(n_features=len(spec))
    for n in BATCH_SIZES:
        try:
            p = np.asarray(model.predict(x[:n]), dtype=np.float64)
        except Exception as exc:
            raise ModelRefused("bad_output", f"prediction on {n} rows failed: {str(exc)[:300]}") from None
        if p.shape != (n,) or not np.all(np.isfinite(p)) or p.min() < 0.0 or p.max() > 1.0:
            raise ModelRefused("bad_output", f"prediction on {n} rows is not one probability per row")
    checks.append(f"one probability per row on batches of {', '.join(map(str, BATCH_SIZES))} rows")
    checks.append(_parity(path.with_name(LGB_FILE), model, x, meta))
    return model, checks


def _parity(lgb_path: Path, model: LoadedModel, x: np.ndarray, meta: dict[str, object]) -> str:
    if not lgb_path.exists():
        return f"parity not checked: no {LGB_FILE} beside the ONNX file"
    import lightgbm as lgb  # only when promoting: a heavy import the request path never needs

    try:
        booster = lgb.Booster(model_file=str(lgb_path))
        want = np.asarray(booster.predict(x.astype(np.float64)), dtype=np.float64)
        calibration = meta.get("calibration")
        if isinstance(calibration, dict) and isinstance(calibration.get("map"), dict):
            want = Calibration.from_dict(calibration["map"]).apply(want)
    except Exception as exc:
        raise ModelRefused("parity", f"{LGB_FILE} cannot be read or scored: {str(exc)[:300]}") from None
    got = np.asarray(model.predict_onnx(x), dtype=np.float64)
    recorded = meta.get("parity")
    tolerance = DEFAULT_PARITY_TOLERANCE
    if isinstance(recorded, dict) and isinstance(recorded.get("tolerance"), int | float):
        tolerance = float(recorded["tolerance"])
    diff = float(np.max(np.abs(np.asarray(want).reshape(-1) - got)))
    if not diff <= tolerance:
        raise ModelRefused(
            "parity", f"ONNX and LightGBM differ by {diff:.2e} on {len(x)} rows (tolerance {tolerance:g})"
        )
    return f"parity with LightGBM: max abs diff {diff:.1e} <= {tolerance:g} on {len(x)} rows"
