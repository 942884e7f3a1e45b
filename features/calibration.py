"""Calibration of the model's score into a probability, fitted on the validation window.

The service multiplies the probability by the offer's value, so a miscalibrated score misorders offers
of different values. The map is a tiny piecewise-linear function (``x`` breakpoints of the raw score,
``y`` calibrated probabilities), from isotonic regression (default) or Platt scaling sampled at
breakpoints, fitted on the validation slice (never the test slice).

One definition, applied identically everywhere: :meth:`Calibration.apply` (numpy, float32, used by
training's evaluation and the parity check) and :meth:`Calibration.onnx_nodes` (the same arithmetic
appended to the exported graph, so the served model outputs the calibrated probability)::

    out = y[0] + sum_k slope[k] * (min(max(s, x[k]), x[k+1]) - x[k])

which is linear interpolation between breakpoints, constant beyond the ends. No segment rises faster
than :data:`MAX_SLOPE` (see :func:`_limit_slope`): the compiled scorer applies the map after trees that
round differently from onnxruntime's in the last float32 bit, and a near-vertical step would amplify that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Method = Literal["isotonic", "platt", "none"]
MAX_POINTS = 64
#: Steepest rise of the map, in probability per unit of score (see :func:`_limit_slope`).
MAX_SLOPE = 25.0


@dataclass(frozen=True)
class Calibration:
    method: str
    x: tuple[float, ...]
    y: tuple[float, ...]

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.float32]:
        x = np.asarray(self.x, dtype=np.float32)
        y = np.asarray(self.y, dtype=np.float32)
        lo, hi = x[:-1], x[1:]
        width = hi - lo
        slope = np.where(width > 0, (y[1:] - y[:-1]) / np.where(width > 0, width, 1), 0).astype(np.float32)
        return lo, hi, slope, np.float32(y[0])

    def apply(self, s: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of raw scores ``s`` (float32 arithmetic, as in the graph)."""
        return self.mapper()(s).astype(np.float64)

    def mapper(self) -> Callable[[np.ndarray], np.ndarray]:
        """The map as a function float32 scores -> float32 probabilities, its arrays computed once (the
        compiled scorer applies it after the native trees on every request, vectorised over rows)."""
        lo1, hi1, slope1, y0 = self._arrays()
        lo, hi, slope = lo1[None, :], hi1[None, :], slope1[None, :]

        def run(s: np.ndarray) -> np.ndarray:
            s32 = np.asarray(s, dtype=np.float32).reshape(-1, 1)
            seg = (np.minimum(np.maximum(s32, lo), hi) - lo) * slope
            return y0 + seg.sum(axis=1, dtype=np.float32)

        return run

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "x": list(self.x), "y": list(self.y)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        return cls(str(d["method"]), tuple(map(float, d["x"])), tuple(map(float, d["y"])))

    def onnx_nodes(self, score: str, output: str) -> tuple[list[Any], list[Any]]:
        """(nodes, initializers) computing ``output`` = calibrated(``score``), shapes [N] -> [N]."""
        from onnx import helper, numpy_helper

        lo, hi, slope, y0 = self._arrays()
        inits = [
            numpy_helper.from_array(lo.reshape(1, -1), "calib_lo"),
            numpy_helper.from_array(hi.reshape(1, -1), "calib_hi"),
            numpy_helper.from_array(slope.reshape(1, -1), "calib_slope"),
            numpy_helper.from_array(np.array(y0, dtype=np.float32), "calib_y0"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "calib_axis"),
        ]
        nodes = [
            helper.make_node("Unsqueeze", [score, "calib_axis"], ["calib_s"]),
            helper.make_node("Max", ["calib_s", "calib_lo"], ["calib_a"]),
            helper.make_node("Min", ["calib_a", "calib_hi"], ["calib_b"]),
            helper.make_node("Sub", ["calib_b", "calib_lo"], ["calib_c"]),
            helper.make_node("Mul", ["calib_c", "calib_slope"], ["calib_d"]),
            helper.make_node("ReduceSum", ["calib_d", "calib_axis"], ["calib_e"], keepdims=0),
            helper.make_node("Add", ["calib_e", "calib_y0"], [output]),
        ]
        return nodes, inits


def _thin(x: np.ndarray, y: np.ndarray, n: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most ``n`` breakpoints, keeping the ends, chosen at quantiles of the breakpoint list."""
    if len(x) <= n:
        return x, y
    idx = np.unique(np.round(np.linspace(0, len(x) - 1, n)).astype(int))
    return x[idx], y[idx]


def _limit_slope(x: np.ndarray, y: np.ndarray, max_slope: float = MAX_SLOPE) -> tuple[np.ndarray, np.ndarray]:
    """Drop interior breakpoints until no segment rises faster than ``max_slope``.

    Why: isotonic regression steps between two validation scores a few 1e-6 apart (measured: slopes of
    7,000). The served model's score is float32 and the compiled trees and onnxruntime round it
    differently by up to ~1e-7; through such a step that becomes 1e-3 of probability, and the compiled
    scorer fails its 1e-5 parity with the graph. Merging a too-steep segment with a neighbour widens the
    step into a ramp (a rounding then moves the probability by at most ``max_slope`` times it).
    """
    xs, ys = [float(a) for a in x], [float(b) for b in y]

    def slope(i: int, j: int) -> float:
        dx, dy = xs[j] - xs[i], ys[j] - ys[i]
        return dy / dx if dx > 0 else (float("inf") if dy > 0 else 0.0)

    while len(xs) > 2:
        slopes = [slope(i, i + 1) for i in range(len(xs) - 1)]
        k = int(np.argmax(slopes))
        if slopes[k] <= max_slope:
            break
        # Remove the interior end of the steepest segment whose removal leaves the gentler merged slope.
        cands = [i for i in (k, k + 1) if 0 < i < len(xs) - 1]
        drop = min(cands, key=lambda i: slope(i - 1, i + 1))
        del xs[drop], ys[drop]
    return np.asarray(xs), np.asarray(ys)


def fit(
    scores: np.ndarray,
    y: np.ndarray,
    method: Method = "isotonic",
    *,
    probabilities: bool = True,
) -> Calibration | None:
    """Fit on validation scores; None when there is nothing to fit (no positives or negatives).

    ``probabilities``: the scores are probabilities (a binary model), so Platt scaling works on their
    logit; otherwise (a ranking score, any real number) on the scores themselves.
    """
    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if method == "none" or len(y) < 20 or y.min() == y.max():
        return None
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(scores, y)
        x, v = np.asarray(iso.X_thresholds_), np.asarray(iso.y_thresholds_)
        # Keep a small floor/ceiling off 0 and 1: a probability of exactly 0 makes log loss infinite.
        v = np.clip(v, 1e-4, 1 - 1e-4)
    else:
        from sklearn.linear_model import LogisticRegression

        def logit(p: np.ndarray) -> np.ndarray:
            if not probabilities:
                return p
            q = np.clip(p, 1e-6, 1 - 1e-6)
            return np.log(q / (1 - q))

        lr = LogisticRegression(C=1e6).fit(logit(scores).reshape(-1, 1), y)
        x = np.unique(np.quantile(scores, np.linspace(0, 1, MAX_POINTS)))
        v = lr.predict_proba(logit(x).reshape(-1, 1))[:, 1]
    x, v = _thin(np.asarray(x, dtype=np.float64), np.asarray(v, dtype=np.float64))
    x, v = _limit_slope(x, v)
    x32 = x.astype(np.float32)
    keep = np.r_[True, np.diff(x32) > 0]  # breakpoints must stay distinct in float32
    return Calibration(method, tuple(float(a) for a in x32[keep]), tuple(float(b) for b in v[keep]))
