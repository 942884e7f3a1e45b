"""The served ONNX model: load from the registry, refuse what does not fit the code, hot-swap on promotion.

A :class:`LoadedModel` is immutable; :class:`ModelHolder` keeps a reference to the current one and
replaces it in a single assignment. A request takes the reference once at its start, so a swap never
drops or mixes a request: in-flight requests finish on the old session, later ones use the new.

Refusals (the old model keeps serving): file missing, corrupt or truncated (onnxruntime cannot build a
session), a ``feature_spec_hash`` different from the hash of the feature specification the service runs
(:class:`features.spec.FeatureSpec`; a model from before declared specifications, carrying only the v1
``feature_schema``, is accepted when the service runs the default specification, which reproduces those
columns), feature names different from the specification's, an input that is not ``[N, len(spec)]``
float, no probability output, or a smoke prediction that is not finite in [0, 1].

Runtime (``BENEFITS_SCORER_RUNTIME``): ``auto`` scores with the same trees compiled to native code
(:mod:`service.scorer`) once they match onnxruntime on varied rows, and falls back to onnxruntime with
a log line and ``benefits_scorer_fallback_total{reason}`` when they cannot be compiled or do not match;
``compiled`` refuses such a model instead (reason ``compile_failed``); ``onnx`` never compiles. A
calibrated model (the ``calibration`` map in its metadata, also inside its graph) is served by the
compiled trees followed by that map, checked against the calibrated graph.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

from features.calibration import Calibration
from features.projection import DEFAULT_SPEC
from features.spec import FeatureSpec, spec_mismatch
from infra.registry import LGB_FILE, Registry, RegistryError
from service.errors import ModelRefused
from service.scorer import CompiledScorer, ScorerUnavailable, compile_scorer

ScorerRuntime = Literal["auto", "onnx", "compiled"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    version: str
    session: ort.InferenceSession
    input_name: str
    output_name: str
    metadata: dict[str, str]
    #: the native scorer when it passed its parity check; None: onnxruntime scores
    compiled: CompiledScorer | None = None
    #: why the compiled scorer is not used (``auto`` fell back), e.g. ``no_source``; None otherwise
    fallback_reason: str | None = None

    @property
    def runtime(self) -> str:
        return self.compiled.engine if self.compiled is not None else "onnxruntime"

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Positive-class probability per row of ``x`` (float32, shape (n, len(spec)))."""
        if self.compiled is not None:
            return self.compiled.predict(x)
        return self.predict_onnx(x)

    def predict_onnx(self, x: np.ndarray) -> np.ndarray:
        """The reference: onnxruntime on the registered graph."""
        out = self.session.run([self.output_name], {self.input_name: x})[0]
        return _positive_column(np.asarray(out))


def _positive_column(out: np.ndarray) -> np.ndarray:
    # LightGBM classifiers export [N, 2] (class 0, class 1); regressors / custom heads give [N] or [N, 1].
    if out.ndim == 2 and out.shape[1] == 2:
        return out[:, 1]
    if out.ndim == 2 and out.shape[1] == 1:
        return out[:, 0]
    return out.reshape(-1)


def session_options() -> ort.SessionOptions:
    opts = ort.SessionOptions()
    # The default pool spins threads per core and oversubscribes a small machine shared with uvicorn;
    # one thread per request-path session is both faster and predictable (field notes).
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # 3 = errors only: the LightGBM converter's "label" output has a mismatched declared shape and
    # onnxruntime would otherwise warn on every run.
    opts.log_severity_level = 3
    return opts


def check_spec(meta: dict[str, str], spec: FeatureSpec) -> None:
    """Refuse (:class:`ModelRefused` ``schema_mismatch``) a model built for another specification."""
    why = spec_mismatch(meta, spec)
    if why is not None:
        raise ModelRefused("schema_mismatch", why)


def load_model(
    path: Path,
    version: str,
    runtime: ScorerRuntime = "onnx",
    cache_dir: Path | None = None,
    spec: FeatureSpec = DEFAULT_SPEC,
) -> LoadedModel:
    """Build a session for ``path`` and check it against ``spec``; raise :class:`ModelRefused`.

    With ``runtime`` ``auto`` or ``compiled``, also compile the LightGBM text beside it (``model.lgb.txt``)
    into a :class:`~service.scorer.CompiledScorer` (object code cached in ``cache_dir``). Blocking: from
    milliseconds (cached) to seconds (a first compile).
    """
    if not path.exists():
        raise ModelRefused("missing", f"{path} does not exist")
    if path.stat().st_size == 0:
        raise ModelRefused("corrupt", f"{path} is empty")
    try:
        session = ort.InferenceSession(
            str(path), sess_options=session_options(), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises several types for bad protobufs / graphs
        raise ModelRefused("corrupt", f"onnxruntime cannot load {path.name}: {str(exc)[:300]}") from None
    meta = dict(session.get_modelmeta().custom_metadata_map)
    check_spec(meta, spec)
    n_features = len(spec)
    try:
        names = json.loads(meta.get("feature_names", "null"))
    except json.JSONDecodeError:
        names = None
    if names is not None and tuple(names) != spec.names:
        raise ModelRefused("schema_mismatch", "model feature_names differ from the specification's names")
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelRefused("bad_signature", f"expected one input, found {len(inputs)}")
    shape = inputs[0].shape
    if len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != n_features):
        raise ModelRefused("bad_signature", f"input shape {shape} is not [N, {n_features}]")
    output = _probability_output(session)
    model = LoadedModel(version, session, inputs[0].name, output, meta)
    try:
        probe = model.predict(np.zeros((2, n_features), dtype=np.float32))
    except Exception as exc:
        raise ModelRefused("bad_signature", f"smoke prediction failed: {str(exc)[:300]}") from None
    if probe.shape != (2,) or not np.all(np.isfinite(probe)) or probe.min() < 0.0 or probe.max() > 1.0:
        raise ModelRefused("bad_output", f"smoke prediction is not a probability per row: {probe!r}")
    if runtime == "onnx":
        return model
    try:
        calibration = _calibration(meta)
        compiled = compile_scorer(
            path.with_name(LGB_FILE), model.predict_onnx, n_features, cache_dir, calibration=calibration
        )
    except ScorerUnavailable as exc:
        if runtime == "compiled":
            detail = f"compiled scorer unavailable ({exc.reason}): {exc.detail}"
            raise ModelRefused("compile_failed", detail) from None
        log.warning(
            "model %s: compiled scorer unavailable (%s: %s); scoring with onnxruntime",
            version, exc.reason, exc.detail,
        )  # fmt: skip
        return replace(model, fallback_reason=exc.reason)
    log.info(
        "model %s: scoring with compiled trees (%s, compile %.1f s, load %.3f s, key %s)",
        version, compiled.engine, compiled.compile_seconds, compiled.load_seconds, compiled.key,
    )  # fmt: skip
    return replace(model, compiled=compiled)


def _calibration(meta: dict[str, str]) -> Calibration | None:
    """The calibration map the exporter wrote beside the graph (``calibration`` metadata, JSON; null or
    absent when the model is not calibrated). The compiled trees are followed by the same map."""
    raw = meta.get("calibration")
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        return Calibration.from_dict(data) if data is not None else None
    except (ValueError, KeyError, TypeError) as exc:
        raise ScorerUnavailable("bad_calibration", f"calibration metadata unreadable: {exc}") from None


def _probability_output(session: ort.InferenceSession) -> str:
    outputs = session.get_outputs()
    for o in outputs:
        if "prob" in o.name.lower():
            return str(o.name)
    floats = [o for o in outputs if "float" in o.type]
    if not floats:
        raise ModelRefused("bad_signature", "no float probability output")
    return str(floats[-1].name)


@dataclass
class ModelHolder:
    """The current model and what the registry poller has refused. One per process."""

    registry: Registry
    runtime: ScorerRuntime = "onnx"
    cache_dir: Path | None = None
    current: LoadedModel | None = None
    #: The feature specification this service computes; a model built for another is refused.
    spec: FeatureSpec = DEFAULT_SPEC
    #: (version, mtime_ns) -> refusal; a refused file is not retried until it changes on disk.
    refused: dict[tuple[str, int], ModelRefused] = field(default_factory=dict)
    swaps: int = 0
    #: Set while the registry pointer names a version this process refused: which, why, and what it
    #: serves instead (``/readyz`` shows it as ``model_pointer_refused``).
    pointer_refused: dict[str, Any] | None = None

    @property
    def version(self) -> str | None:
        model = self.current
        return model.version if model is not None else None

    def _mtime(self, version: str) -> int:
        try:
            return os.stat(self.registry.model_path(version)).st_mtime_ns
        except (OSError, RegistryError):
            return 0

    def check(self, version: str) -> LoadedModel:
        """Load ``version`` without installing it (raises :class:`ModelRefused`)."""
        try:
            path = self.registry.model_path(version)
        except RegistryError as exc:
            raise ModelRefused("missing", str(exc)) from None
        return load_model(path, version, self.runtime, self.cache_dir, self.spec)

    def install(self, model: LoadedModel) -> None:
        # A single reference assignment: atomic for every reader (see module docstring).
        self.current = model
        self.swaps += 1

    def refresh(self) -> bool:
        """Follow the registry pointer; returns True when a new model was installed. Blocking (file I/O)."""
        version = self.registry.promoted()
        if version is None or version == self.version:
            if version is not None:
                self.pointer_refused = None
            return False
        key = (version, self._mtime(version))
        if key in self.refused:
            return False
        try:
            model = self.check(version)
        except ModelRefused as exc:
            self.refused[key] = exc
            installed = self.current is None and self._install_last_good(version)
            log.error(
                "model %s refused (%s): %s; serving %s%s", version, exc.reason, exc.detail, self.version,
                " (the last good version in the promotion history)" if installed else "",
            )  # fmt: skip
            self.pointer_refused = {
                "version": version, "reason": exc.reason, "detail": exc.detail, "serving": self.version,
            }  # fmt: skip
            return installed
        previous = self.version
        self.install(model)
        self.pointer_refused = None
        log.info("model %s installed (previous %s)", version, previous)
        return True

    def _install_last_good(self, refused: str) -> bool:
        """A process with no model meets a bad pointer: serve the newest version the pointer held
        before that still loads (the promotion history), rather than no model at all."""
        for candidate in self.registry.promoted_versions():
            if candidate == refused:
                continue
            try:
                model = self.check(candidate)
            except ModelRefused as exc:
                log.warning("earlier version %s does not load either (%s)", candidate, exc.reason)
                continue
            self.install(model)
            return True
        return False

    def status(self) -> dict[str, Any]:
        model = self.current
        return {
            "serving": self.version,
            "runtime": model.runtime if model is not None else None,
            "scorer_fallback": model.fallback_reason if model is not None else None,
            "promoted": self.registry.promoted(),
            "previous": (self.registry.pointer() or {}).get("previous"),
            "pointer_refused": self.pointer_refused,
            "refused": [
                {"version": v, "reason": e.reason, "detail": e.detail} for (v, _), e in self.refused.items()
            ],
        }
