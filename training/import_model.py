"""``benefits import-model``: register a LightGBM booster trained elsewhere.

The booster's feature names must be the specification's columns, in order (so the service's rows mean
to it what they meant in its training); its objective must be binary (the service multiplies the
probability by the offer's value). It is exported to ONNX with the same parity gate as a trained
model, on rows built from the booster's own split thresholds (each feature at, just below and just
above the thresholds the trees test, plus values between and beyond them): those are the inputs where
float rounding could send LightGBM and onnxruntime down different branches.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from features.lifecycle import LifecycleConfig
from features.spec import FeatureSpec, load_spec
from features.taxonomy import load_catalog_file, spec_for_taxonomy
from infra.registry import Registry
from training import export

log = logging.getLogger(__name__)


def _thresholds(booster: lgb.Booster) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}

    def walk(node: dict[str, Any]) -> None:
        if "split_feature" in node:
            out.setdefault(int(node["split_feature"]), []).append(float(node["threshold"]))
            walk(node["left_child"])
            walk(node["right_child"])

    for tree in booster.dump_model()["tree_info"]:
        walk(tree["tree_structure"])
    return out


def threshold_rows(booster: lgb.Booster, n: int = export.PARITY_ROWS, seed: int = 0) -> np.ndarray:
    """Varied float32 rows around the booster's split thresholds (see the module docstring)."""
    rng = np.random.default_rng(seed)
    n_features = booster.num_feature()
    x = rng.normal(0.0, 1.0, size=(n, n_features)).astype(np.float32)
    for j, ts in _thresholds(booster).items():
        t = np.asarray(ts, dtype=np.float32)
        cand = np.concatenate(
            [
                t,
                np.nextafter(t, np.float32(np.inf)),
                np.nextafter(t, np.float32(-np.inf)),
                rng.uniform(float(t.min()) - 1.0, float(t.max()) + 1.0, size=len(t)).astype(np.float32),
            ]
        )
        x[:, j] = rng.choice(cand, size=n)
    return x


def import_booster(
    registry_dir: Path,
    booster_path: Path,
    spec_path: Path | None = None,
    catalog: Path | None = None,
    promote: bool = False,
    lifecycle: LifecycleConfig | None = None,
) -> str:
    """Check, export (parity-gated) and register the booster; returns the new version. ``lifecycle``
    (the settings' programme configuration) is the one its lifecycle columns were computed under."""
    if not Path(booster_path).exists():
        raise ValueError(f"{booster_path} does not exist")
    try:
        booster = lgb.Booster(model_file=str(booster_path))
    except lgb.basic.LightGBMError as exc:
        raise ValueError(f"{booster_path} is not a LightGBM model: {exc}") from None
    spec: FeatureSpec = load_spec(spec_path)
    if catalog is not None:
        spec = spec_for_taxonomy(spec, load_catalog_file(catalog)[0])
    if lifecycle is not None:
        spec = spec.with_lifecycle(lifecycle)
    objective = str(booster.dump_model().get("objective", ""))
    if not objective.startswith(("binary", "cross_entropy")):
        raise ValueError(f"objective {objective!r}: the service needs a probability (binary objective)")
    names = list(booster.feature_name())
    if names != list(spec.names):
        missing = [n for n in spec.names if n not in names]
        extra = [n for n in names if n not in spec.names]
        order = "" if missing or extra else " (same names, another order)"
        raise ValueError(
            f"booster features do not match specification {spec.hash}{order}: "
            f"missing {missing[:10]}, not in the specification {extra[:10]}"
        )
    booster = export.float32_thresholds(booster)
    version = export.new_version(booster.model_to_string())
    rows = threshold_rows(booster)
    model_bytes, parity = export.export_model(booster, rows, version, spec=spec)
    metadata: dict[str, Any] = {
        **export.version_metadata(version, spec),
        "imported_from": str(booster_path),
        "objective": objective,
        "calibration": {"method": "none"},
        "code_version": export.code_version(),
        "parity": {"max_abs_diff": parity, "tolerance": export.PARITY_TOLERANCE, "rows": len(rows)},
    }
    registry = Registry(registry_dir)
    path = export.register(registry, version, model_bytes, booster, metadata)
    if promote:
        registry.promote(version)
    log.info("imported %s as %s at %s (parity %.2e)", booster_path, version, path, parity)
    return version
