"""Export a LightGBM booster to ONNX, prove parity, and write a registry version.

The ONNX graph has one input, ``features`` (float32, ``[None, len(spec)]``), and one output,
``probability`` (float32, ``[None]``, the positive-class probability; for a ``lambdarank`` model, its
score through the calibration map, which such a model must have). The converter's ``label``
output is removed: its declared shape does not match what onnxruntime computes, which makes
onnxruntime log a warning on every run (field notes), and the service has no use for it.

Parity gate: the export is refused (:class:`ExportError`) unless onnxruntime and LightGBM agree on
varied held-out rows within :data:`PARITY_TOLERANCE` (max absolute difference of the probability).
Varied means real rows from the held-out slice, de-duplicated, not one batch repeated.

``metadata_props`` carry ``feature_names`` (JSON list), ``feature_spec_hash`` (the hash of the
:class:`features.spec.FeatureSpec` the rows were built with), ``feature_spec`` (that specification's
JSON), ``schema_version`` (the specification's version), ``event_schema_version``, ``model_version``
and ``output``; the service refuses a model whose specification hash differs from the one it runs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from features.calibration import Calibration
from features.events import SCHEMA_VERSION as EVENT_SCHEMA_VERSION
from features.projection import DEFAULT_SPEC
from features.spec import FeatureSpec
from infra.registry import LGB_FILE, METADATA_FILE, MODEL_FILE, Registry, RegistryError

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-5
INPUT_NAME = "features"
OUTPUT_NAME = "probability"
REPORT_FILE = "report.html"
PARITY_ROWS = 5000


class ExportError(Exception):
    """The model cannot be exported (conversion failed or ONNX and LightGBM disagree)."""


def float32_thresholds(booster: lgb.Booster) -> lgb.Booster:
    """The same model with every split threshold rounded *down* to a float32 value.

    LightGBM compares ``x <= threshold`` in double precision; the ONNX tree ensemble stores thresholds
    as float32 (rounded to nearest) and compares in float32. A float32 input lying between the two
    roundings takes different branches (measured: 3 rows in 5,000 off by up to 4e-3). For a float32
    ``x``, ``x <= t`` holds exactly when ``x <= f`` for ``f`` the largest float32 not above ``t``; with
    thresholds replaced by that ``f`` both runtimes take the same branch for every float32 input, and
    LightGBM's predictions on float32 data do not change.
    """
    lines = booster.model_to_string().split("\n")
    for i, line in enumerate(lines):
        if line.startswith("tree_sizes="):
            # Byte sizes of the tree blocks, which the rewrite changes; without it LightGBM parses
            # the trees sequentially.
            lines[i] = ""
            continue
        if not line.startswith("threshold="):
            continue
        t = np.array([float(v) for v in line[len("threshold=") :].split()], dtype=np.float64)
        f = t.astype(np.float32)
        above = f.astype(np.float64) > t
        f[above] = np.nextafter(f[above], np.float32(-np.inf))
        lines[i] = "threshold=" + " ".join(repr(float(v)) for v in f)
    return lgb.Booster(model_str="\n".join(lines))


def version_metadata(version: str, spec: FeatureSpec) -> dict[str, Any]:
    """The registry metadata every version starts with (trained, Complete Journey or imported): its id,
    when, and the feature specification it was built for (what serving checks on load)."""
    return {
        "version": version,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "feature_names": list(spec.names),
        "n_features": len(spec),
        "feature_spec_hash": spec.hash,
        "feature_spec": spec.canonical(),
        "schema_version": spec.version,
        "event_schema_version": EVENT_SCHEMA_VERSION,
        "onnx": {"input": INPUT_NAME, "output": OUTPUT_NAME, "shape": [None, len(spec)]},
    }


def spec_props(spec: FeatureSpec) -> dict[str, str]:
    """The metadata that binds a model to its feature specification (checked by the service)."""
    return {
        "feature_names": json.dumps(list(spec.names)),
        "feature_spec_hash": spec.hash,
        "feature_spec": json.dumps(spec.canonical(), sort_keys=True, separators=(",", ":")),
        "schema_version": str(spec.version),
    }


def to_onnx(
    booster: lgb.Booster, n_features: int = len(DEFAULT_SPEC), calibration: Calibration | None = None
) -> onnx.ModelProto:
    """Convert; keep only the positive-class probability as a 1-D output named ``probability``
    (calibrated by ``calibration`` inside the graph when given)."""
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    model = convert_lightgbm(
        booster,
        initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
        zipmap=False,
        target_opset=15,
    )
    graph = model.graph
    raw = OUTPUT_NAME if calibration is None else "uncalibrated_probability"
    objective = booster_objective(booster)
    if objective == "binary":
        prob = next((o.name for o in graph.output if "prob" in o.name.lower()), None)
        if prob is None:
            raise ExportError(f"converter produced no probability output: {[o.name for o in graph.output]}")
        # Column 1 of [N, 2] -> [N]: Gather on axis 1 with a scalar index.
        graph.initializer.append(helper.make_tensor("positive_class", TensorProto.INT64, [], [1]))
        graph.node.append(helper.make_node("Gather", [prob, "positive_class"], [raw], axis=1))
    else:
        # A ranking (or regression) score, [N, 1]: not a probability, so only a calibration map may turn
        # it into the ``probability`` the service multiplies by value.
        if calibration is None:
            raise ExportError(
                f"a {objective} model's score is not a probability: it needs a calibration map "
                "(--calibration platt or isotonic)"
            )
        raw = "raw_score"
        graph.initializer.append(helper.make_tensor("flat_shape", TensorProto.INT64, [1], [-1]))
        graph.node.append(helper.make_node("Reshape", [graph.output[0].name, "flat_shape"], [raw]))
    if calibration is not None:
        nodes, inits = calibration.onnx_nodes(raw, OUTPUT_NAME)
        graph.node.extend(nodes)
        graph.initializer.extend(inits)
        # The calibration uses opset-13 forms (Unsqueeze / ReduceSum with axes as an input).
        for op in model.opset_import:
            if op.domain in ("", "ai.onnx") and op.version < 13:
                op.version = 13
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [None]))
    # Drop nodes whose outputs nobody reads any more (the label branch), so the graph stays clean.
    _prune(graph)
    onnx.checker.check_model(model)
    return model


def booster_objective(booster: lgb.Booster) -> str:
    """The booster's objective without its parameters (``binary``, ``lambdarank``, ...)."""
    text = booster.model_to_string(num_iteration=1)
    for line in text.splitlines():
        if line.startswith("objective="):
            words = line.split("=", 1)[1].split()
            return words[0] if words else "binary"
    return "binary"


def _prune(graph: onnx.GraphProto) -> None:
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    keep.reverse()
    # A tree-ensemble classifier node produces both label and probabilities; it stays (it feeds the
    # probability) and its unused label output is harmless once it is no longer a graph output.
    del graph.node[:]
    graph.node.extend(keep)


def set_metadata(model: onnx.ModelProto, props: dict[str, str]) -> None:
    del model.metadata_props[:]
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v


def session(model_bytes: bytes) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model_bytes, sess_options=opts, providers=["CPUExecutionProvider"])


def onnx_predict(sess: ort.InferenceSession, X: np.ndarray) -> np.ndarray:
    out = sess.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(X, dtype=np.float32)})[0]
    return np.asarray(out, dtype=np.float64).reshape(-1)


def parity_rows(X: np.ndarray, n: int = PARITY_ROWS, seed: int = 0) -> np.ndarray:
    """Up to ``n`` distinct rows of ``X`` in random order (varied rows, not one batch repeated)."""
    uniq = np.unique(np.asarray(X, dtype=np.float32), axis=0)
    rng = np.random.default_rng(seed)
    return uniq[rng.permutation(len(uniq))[:n]]


def check_parity(
    booster: lgb.Booster,
    model_bytes: bytes,
    X: np.ndarray,
    tolerance: float = PARITY_TOLERANCE,
    calibration: Calibration | None = None,
) -> float:
    """Max |LightGBM (then the calibration map) - onnxruntime| over ``X``; raise :class:`ExportError`
    above ``tolerance``."""
    if len(X) == 0:
        raise ExportError("no rows to check parity on")
    want = booster.predict(X.astype(np.float64))
    if calibration is not None:
        want = calibration.apply(np.asarray(want, dtype=np.float64))
    got = onnx_predict(session(model_bytes), X)
    diff = float(np.max(np.abs(want - got)))
    try:
        np.testing.assert_allclose(got, want, rtol=0.0, atol=tolerance)
    except AssertionError as exc:
        raise ExportError(
            f"ONNX and LightGBM disagree: max abs diff {diff:.3g} > {tolerance:g}\n{exc}"
        ) from None
    return diff


def code_version() -> str:
    """The git revision of this checkout (with ``-dirty`` when it has local changes), or ``unknown``."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "-C",
                str(root),
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                "features",
                "training",
            ],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{rev}-dirty" if dirty else rev


def new_version(model_text: str, now: datetime | None = None) -> str:
    """``YYYYmmddTHHMMSS-<8 hex of the model's hash>``: sortable by time, unique per model."""
    import hashlib

    now = now or datetime.now(UTC)
    return f"{now.strftime('%Y%m%dT%H%M%S')}-{hashlib.sha256(model_text.encode()).hexdigest()[:8]}"


def export_model(
    booster: lgb.Booster,
    X_heldout: np.ndarray,
    version: str,
    extra_props: dict[str, str] | None = None,
    tolerance: float = PARITY_TOLERANCE,
    spec: FeatureSpec = DEFAULT_SPEC,
    calibration: Calibration | None = None,
) -> tuple[bytes, float]:
    """ONNX bytes with metadata, and the parity max diff (raises :class:`ExportError`)."""
    check_booster(booster, spec)
    model = to_onnx(booster, len(spec), calibration)
    props: dict[str, str] = {
        **spec_props(spec),
        "event_schema_version": str(EVENT_SCHEMA_VERSION),
        "model_version": version,
        "output": OUTPUT_NAME,
        "calibration": json.dumps(calibration.as_dict() if calibration is not None else None),
        **(extra_props or {}),
    }
    set_metadata(model, props)
    model.producer_name = "benefits-training"
    data = model.SerializeToString()
    diff = check_parity(booster, data, parity_rows(X_heldout), tolerance, calibration)
    log.info(
        "exported %s: parity max abs diff %.3g on %d rows", version, diff, min(len(X_heldout), PARITY_ROWS)
    )
    return data, diff


def check_booster(booster: lgb.Booster, spec: FeatureSpec) -> None:
    """Refuse a booster whose features are not the specification's columns, in order."""
    n = booster.num_feature()
    if n != len(spec):
        raise ExportError(f"booster has {n} features, the specification ({spec.hash}) has {len(spec)}")
    names = booster.feature_name()
    generic = all(name == f"Column_{i}" for i, name in enumerate(names))
    if not generic and tuple(names) != spec.names:
        diff = [
            f"{i}: {a!r} != {b!r}" for i, (a, b) in enumerate(zip(names, spec.names, strict=True)) if a != b
        ]
        raise ExportError(f"booster feature names differ from the specification's: {diff[:5]}")


def register(
    registry: Registry,
    version: str,
    model_bytes: bytes,
    booster: lgb.Booster,
    metadata: dict[str, Any],
    report_html: str | None = None,
) -> Path:
    """Write ``models/VERSION/`` atomically (a temp dir renamed into place): a reader never sees half."""
    final = registry.version_dir(version)
    if final.exists():
        raise RegistryError(f"model version {version!r} already exists")
    registry.models_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=registry.models_dir, prefix=f".{version}-"))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; API replicas may run as another user
        (tmp / MODEL_FILE).write_bytes(model_bytes)
        booster.save_model(str(tmp / LGB_FILE))
        (tmp / METADATA_FILE).write_text(
            json.dumps(metadata, indent=2, sort_keys=True, default=_json_default)
        )
        if report_html is not None:
            (tmp / REPORT_FILE).write_text(report_html)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")
