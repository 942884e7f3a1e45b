"""The served ONNX model: load from the registry, refuse what does not fit the code, hot-swap on promotion.

A :class:`LoadedModel` is immutable; :class:`ModelHolder` keeps a reference to the current one and
replaces it in a single assignment. A request takes the reference once at its start, so a swap never
drops or mixes a request: in-flight requests finish on the old session, later ones use the new.

Refusals (the old model keeps serving): file missing, corrupt or truncated (onnxruntime cannot build a
session), feature schema or feature names different from :data:`features.projection.FEATURE_SCHEMA` /
``FEATURE_NAMES``, an input that is not ``[N, len(FEATURE_NAMES)]`` float, no probability output, or a
smoke prediction that is not finite in [0, 1].
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from features.projection import FEATURE_NAMES, FEATURE_SCHEMA, N_FEATURES
from infra.registry import Registry, RegistryError
from service.errors import ModelRefused

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    version: str
    session: ort.InferenceSession
    input_name: str
    output_name: str
    metadata: dict[str, str]

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Positive-class probability per row of ``x`` (float32, shape (n, N_FEATURES))."""
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


def load_model(path: Path, version: str) -> LoadedModel:
    """Build a session for ``path`` and check it against the running code; raise :class:`ModelRefused`."""
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
    schema = meta.get("feature_schema")
    if schema != FEATURE_SCHEMA:
        raise ModelRefused("schema_mismatch", f"model feature_schema {schema!r} != code {FEATURE_SCHEMA!r}")
    try:
        names = json.loads(meta.get("feature_names", "null"))
    except json.JSONDecodeError:
        names = None
    if names is not None and tuple(names) != FEATURE_NAMES:
        raise ModelRefused("schema_mismatch", "model feature_names differ from the code's FEATURE_NAMES")
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelRefused("bad_signature", f"expected one input, found {len(inputs)}")
    shape = inputs[0].shape
    if len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != N_FEATURES):
        raise ModelRefused("bad_signature", f"input shape {shape} is not [N, {N_FEATURES}]")
    output = _probability_output(session)
    model = LoadedModel(version, session, inputs[0].name, output, meta)
    try:
        probe = model.predict(np.zeros((2, N_FEATURES), dtype=np.float32))
    except Exception as exc:
        raise ModelRefused("bad_signature", f"smoke prediction failed: {str(exc)[:300]}") from None
    if probe.shape != (2,) or not np.all(np.isfinite(probe)) or probe.min() < 0.0 or probe.max() > 1.0:
        raise ModelRefused("bad_output", f"smoke prediction is not a probability per row: {probe!r}")
    return model


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
    current: LoadedModel | None = None
    #: (version, mtime_ns) -> refusal; a refused file is not retried until it changes on disk.
    refused: dict[tuple[str, int], ModelRefused] = field(default_factory=dict)
    swaps: int = 0

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
        return load_model(path, version)

    def install(self, model: LoadedModel) -> None:
        # A single reference assignment: atomic for every reader (see module docstring).
        self.current = model
        self.swaps += 1

    def refresh(self) -> bool:
        """Follow the registry pointer; returns True when a new model was installed. Blocking (file I/O)."""
        version = self.registry.promoted()
        if version is None or version == self.version:
            return False
        key = (version, self._mtime(version))
        if key in self.refused:
            return False
        try:
            model = self.check(version)
        except ModelRefused as exc:
            self.refused[key] = exc
            log.error(
                "model %s refused (%s): %s; still serving %s", version, exc.reason, exc.detail, self.version
            )
            return False
        previous = self.version
        self.install(model)
        log.info("model %s installed (previous %s)", version, previous)
        return True

    def status(self) -> dict[str, Any]:
        return {
            "serving": self.version,
            "promoted": self.registry.promoted(),
            "refused": [
                {"version": v, "reason": e.reason, "detail": e.detail} for (v, _), e in self.refused.items()
            ],
        }
