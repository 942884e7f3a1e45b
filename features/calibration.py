"""Calibration of the model's score into a probability, fitted on the validation window.

The service multiplies the probability by the offer's value, so a miscalibrated score misorders offers
of different values. The map is a tiny piecewise-linear function (``x`` breakpoints of the raw score,
``y`` calibrated probabilities), from isotonic regression (default) or Platt scaling sampled at
breakpoints, fitted on the validation slice (never the test slice).

One definition, applied identically everywhere: :meth:`Calibration.apply` (numpy, float32, used by
training's evaluation and the parity check) and :meth:`Calibration.onnx_nodes` (the same arithmetic
appended to the exported graph, so the served model outputs the calibrated probability)::

    out = y[0] + sum_k slope[k] * (min(max(s, x[k]), x[k+1]) - x[k])

which is linear interpolation between breakpoints, constant beyond the ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Method = Literal["isotonic", "platt", "none"]
MAX_POINTS = 64


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
        lo, hi, slope, y0 = self._arrays()
        s32 = np.asarray(s, dtype=np.float32).reshape(-1, 1)
        seg = (np.minimum(np.maximum(s32, lo[None, :]), hi[None, :]) - lo[None, :]) * slope[None, :]
        return (y0 + seg.sum(axis=1, dtype=np.float32)).astype(np.float64)

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


def fit(scores: np.ndarray, y: np.ndarray, method: Method = "isotonic") -> Calibration | None:
    """Fit on validation scores; None when there is nothing to fit (no positives or negatives)."""
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

        z = np.log(np.clip(scores, 1e-6, 1 - 1e-6) / (1 - np.clip(scores, 1e-6, 1 - 1e-6)))
        lr = LogisticRegression(C=1e6).fit(z.reshape(-1, 1), y)
        x = np.quantile(scores, np.linspace(0, 1, MAX_POINTS))
        zx = np.log(np.clip(x, 1e-6, 1 - 1e-6) / (1 - np.clip(x, 1e-6, 1 - 1e-6)))
        v = lr.predict_proba(zx.reshape(-1, 1))[:, 1]
    x, v = _thin(np.asarray(x, dtype=np.float64), np.asarray(v, dtype=np.float64))
    x32 = x.astype(np.float32)
    keep = np.r_[True, np.diff(x32) > 0]  # breakpoints must stay distinct in float32
    return Calibration(method, tuple(float(a) for a in x32[keep]), tuple(float(b) for b in v[keep]))
