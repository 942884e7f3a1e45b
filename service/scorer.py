"""Compiled trees behind the ONNX contract: the same LightGBM trees as native code (lleaves + LLVM).

The registered ONNX model stays the artifact of record (registry, export parity gate, onnxruntime as the
reference and the fallback). The registry keeps the LightGBM text model it was exported from beside it
(``model.lgb.txt``); at load that text is compiled to machine code for this host, checked against the
ONNX session on varied rows, and only then used to score.

Why lleaves and not treelite/tl2cgen: measured on this box (field notes, ``benchmarks.inference``) it is
the fastest (~0.1 ms for 200 rows x 150 trees vs ~0.28 ms for tl2cgen's gcc build and ~0.4 ms for
onnxruntime), and it needs no C compiler at run time: llvmlite's wheel carries LLVM, so the slim
production image can compile. tl2cgen shells out to gcc, which the slim image does not have.

Compiling costs seconds (a 150-tree x 31-leaf model: 7-11 s on this shared box), so:

- it runs in a **child process** (``python -m service.scorer``): the LLVM work and lleaves' pure-Python
  IR builder never hold the serving process's GIL, and a crash in LLVM cannot take the server down;
- the object code is **cached on disk**, keyed by the model text's hash, the lleaves/llvmlite versions,
  the compile flags and the host CPU (the code is tuned for it); loading a cached object takes ~10 ms;
- an **exclusive file lock** per key makes N processes on a host compile once: the first compiles, the
  others wait for it and load the cached object.

Parity rows are built from the model's own split thresholds (each feature at a threshold, just above
it, or anywhere in its range): the places where float32/float64 and ``<`` vs ``<=`` disagreements show.
Held-out data does not travel with the model, and random rows rarely land on a boundary.

Calibration: a trained model's graph ends in its calibration map (:mod:`features.calibration`); the
compiled scorer applies the same map (from the model's ``calibration`` metadata) after the native trees,
vectorised over rows, and the parity check compares that with the calibrated graph (rows near each
breakpoint of the map included), so a metadata map that is not the graph's is caught.

Hazard: lleaves is compiled with ``use_fp64=False``: inputs and thresholds are float32, as in the ONNX
tree ensemble (the exporter rounds thresholds down to float32 values, so both take the same branches),
and the float32 feature matrix is passed without a copy.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import importlib.metadata
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from features.calibration import Calibration

log = logging.getLogger(__name__)

#: Max |compiled - onnxruntime| over the parity rows before the compiled scorer is refused.
PARITY_TOLERANCE = 1e-5
PARITY_ROWS = 2000
#: A compile that takes longer is abandoned (a 150 x 31 model took ~11 s at load average 8 here).
COMPILE_TIMEOUT_SECONDS = 300.0
_FLAGS = "fp32-inline-large-v1"


class ScorerUnavailable(Exception):
    """The compiled scorer cannot be used for this model; ``reason`` is a short code for metrics."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class CompiledScorer:
    """Native code for one model. ``predict`` takes the float32 ``(n, n_features)`` matrix the service
    builds and returns the positive-class probability per row (float32)."""

    engine: str
    key: str
    n_features: int
    #: seconds this process spent waiting for a compile (0.0: the object was already cached)
    compile_seconds: float
    load_seconds: float
    _model: Any  # the lleaves.Model: keeps the execution engine (the machine code) alive
    _entry: Callable[..., None]
    #: The model's calibration map (float32 scores -> float32 probabilities), applied after the trees
    #: exactly as the exported graph applies it after its tree ensemble; None: the trees' output is served.
    _calibrate: Callable[[np.ndarray], np.ndarray] | None = None

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected (n, {self.n_features}) rows, got {x.shape}")
        n = x.shape[0]
        out = np.empty(n, dtype=np.float32)
        # Straight into the compiled entry point (start, end row): lleaves' own predict() re-checks and
        # converts its input on every call, about half the cost of the trees at 200 rows.
        self._entry(x.ctypes.data_as(_F32P), out.ctypes.data_as(_F32P), 0, n)
        if self._calibrate is not None and n:
            return self._calibrate(out)
        return out


_F32P = ctypes.POINTER(ctypes.c_float)


def _versions() -> str:
    parts = []
    for dist in ("lleaves", "llvmlite"):
        try:
            parts.append(f"{dist}={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            raise ScorerUnavailable("unavailable", f"{dist} is not installed") from None
    return ",".join(parts)


def _host_cpu() -> str:
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    try:
        features = llvm.get_host_cpu_features().flatten()
    except RuntimeError:
        features = ""
    return f"{llvm.get_host_cpu_name()}:{features}"


def cache_key(model_text: bytes) -> str:
    """Hash of everything the object code depends on: the model, the compiler, its flags, the CPU."""
    h = hashlib.sha256(model_text)
    h.update(f"|{_versions()}|{_FLAGS}|{_host_cpu()}".encode())
    return h.hexdigest()[:32]


def default_cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"benefits-scorer-cache-{os.getuid()}"


def _lock(path: Path, timeout_s: float) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise ScorerUnavailable("compile_timeout", "another process held the compile lock") from None
            time.sleep(0.05)


def ensure_object(
    lgb_path: Path, cache_dir: Path, timeout_s: float = COMPILE_TIMEOUT_SECONDS
) -> tuple[Path, float]:
    """The cached object file for ``lgb_path`` (compiling it in a child process if needed) and the seconds
    this call spent compiling or waiting for another process's compile. Blocking."""
    try:
        text = lgb_path.read_bytes()
    except OSError as exc:
        raise ScorerUnavailable("no_source", f"cannot read {lgb_path.name}: {exc.strerror}") from None
    key = cache_key(text)
    obj = cache_dir / f"{key}.o"
    if obj.exists():
        return obj, 0.0
    t0 = time.perf_counter()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd = _lock(cache_dir / f"{key}.lock", timeout_s)
    except OSError as exc:
        raise ScorerUnavailable("cache_unwritable", f"{cache_dir}: {exc}") from None
    try:
        if obj.exists():  # another process compiled it while this one waited for the lock
            return obj, time.perf_counter() - t0
        tmp = cache_dir / f".{key}.{os.getpid()}.tmp"
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "service.scorer", str(lgb_path), str(tmp)],
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ScorerUnavailable("compile_timeout", f"compiling took over {timeout_s:.0f} s") from None
        if proc.returncode != 0 or not tmp.exists():
            tail = (proc.stderr or "").strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise ScorerUnavailable("compile_failed", tail[0][:300])
        os.replace(tmp, obj)  # readers see the whole object or none
        return obj, time.perf_counter() - t0
    finally:
        os.close(fd)


def _load(lgb_path: Path, obj: Path) -> tuple[Any, Callable[..., None]]:
    import lleaves

    model = lleaves.Model(model_file=str(lgb_path))
    model.compile(cache=str(obj), use_fp64=False)  # an existing cache file is loaded, not compiled
    return model, model._c_entry_func


def parity_rows(model_text: str, n_features: int, n: int = PARITY_ROWS, seed: int = 0) -> np.ndarray:
    """``n`` float32 rows whose values sit on, just above, or between the model's split thresholds."""
    thresholds: list[list[float]] = [[] for _ in range(n_features)]
    feats: list[int] = []
    for line in model_text.splitlines():
        if line.startswith("split_feature="):
            feats = [int(v) for v in line.split("=", 1)[1].split()]
        elif line.startswith("threshold=") and feats:
            for f, raw in zip(feats, line.split("=", 1)[1].split(), strict=False):
                if 0 <= f < n_features:
                    thresholds[f].append(float(raw))
            feats = []
    rng = np.random.default_rng(seed)
    x = np.zeros((n, n_features), dtype=np.float32)
    for f, values in enumerate(thresholds):
        if not values:
            x[:, f] = rng.gamma(1.0, 2.0, n)
            continue
        t = np.array(values, dtype=np.float32)
        lo, hi = float(t.min()) - 1.0, float(t.max()) + 1.0
        pick = t[rng.integers(len(t), size=n)]
        where = rng.integers(3, size=n)
        x[:, f] = np.where(
            where == 0,
            pick,
            np.where(where == 1, np.nextafter(pick, np.float32(np.inf)), rng.uniform(lo, hi, n)),
        )
    return x


def compile_scorer(
    lgb_path: Path,
    reference: Callable[[np.ndarray], np.ndarray],
    n_features: int,
    cache_dir: Path | None = None,
    tolerance: float = PARITY_TOLERANCE,
    calibration: Calibration | None = None,
) -> CompiledScorer:
    """Compile (or load from the cache) the trees in ``lgb_path``, follow them with ``calibration`` (the
    map the exported graph applies after its trees, from the model's metadata), and check the result
    against ``reference`` (the ONNX session's predict) on varied rows. Raises :class:`ScorerUnavailable`
    with a reason."""
    try:
        import lleaves  # noqa: F401
    except Exception as exc:  # ImportError, or an llvmlite too new for lleaves (AttributeError)
        raise ScorerUnavailable("unavailable", f"lleaves cannot be imported: {str(exc)[:200]}") from None
    cache_dir = cache_dir or default_cache_dir()
    obj, compile_s = ensure_object(lgb_path, cache_dir)
    t0 = time.perf_counter()
    try:
        model, entry = _load(lgb_path, obj)
    except Exception as exc:
        # A truncated or foreign object in the cache: drop it so the next load compiles afresh.
        with contextlib.suppress(OSError):
            obj.unlink()
        raise ScorerUnavailable("load_failed", f"{type(exc).__name__}: {str(exc)[:200]}") from None
    if model.num_feature() != n_features:
        raise ScorerUnavailable("bad_signature", f"LightGBM model has {model.num_feature()} features")
    if model.num_model_per_iteration() != 1:
        raise ScorerUnavailable("bad_signature", "not a single-output (binary) model")
    scorer = CompiledScorer(
        "lleaves",
        obj.stem,
        n_features,
        compile_s,
        time.perf_counter() - t0,
        model,
        entry,
        calibration.mapper() if calibration is not None else None,
    )
    text = lgb_path.read_text()
    x = parity_rows(text, n_features)
    if calibration is not None:
        # Rows whose tree output lands on and around each breakpoint of the map, where a float32
        # rounding difference would show, beside the threshold rows.
        x = np.concatenate([x, _rows_near_breakpoints(scorer, x, calibration)])
    want = np.asarray(reference(x), dtype=np.float64)
    got = scorer.predict(x).astype(np.float64)
    diff = float(np.max(np.abs(want - got))) if len(x) else 0.0
    if not np.isfinite(diff) or diff > tolerance:
        raise ScorerUnavailable(
            "parity_failed",
            f"max abs diff {diff:.3g} vs onnxruntime on {len(x)} rows > {tolerance:g}"
            + (f" (calibration {calibration.method} applied)" if calibration is not None else ""),
        )
    return scorer


def _rows_near_breakpoints(scorer: CompiledScorer, x: np.ndarray, calibration: Calibration) -> np.ndarray:
    """For each breakpoint of the map, the parity row whose uncalibrated tree output is nearest to it."""
    raw = replace(scorer, _calibrate=None).predict(x)
    idx = np.abs(raw[:, None] - np.asarray(calibration.x, dtype=np.float32)[None, :]).argmin(axis=0)
    return x[np.unique(idx)]


def _compile_main(argv: list[str]) -> int:
    """Child process: compile ``argv[0]`` (LightGBM text) to the object file ``argv[1]``."""
    import lleaves

    lgb_path, out = argv
    model = lleaves.Model(model_file=lgb_path)
    model.compile(cache=out, use_fp64=False)
    return 0


if __name__ == "__main__":
    sys.exit(_compile_main(sys.argv[1:]))
