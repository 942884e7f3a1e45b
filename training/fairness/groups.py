"""Group metrics (fairlearn's ``MetricFrame``), signed gaps and the operator's thresholds.

Rows are slates (one member, one context, one group level); each row carries the per-slate measures of
:mod:`training.fairness.slates` and a weight. ``MetricFrame`` splits the rows by the attribute's level
(and, for the per-segment view, by segment as a control feature) and takes the weighted mean of each
measure, ignoring NaN (a slate without coupons has no offered value).

Direction matters. For an **ordered** attribute (tier: regular < silver < gold < diamond; paid
membership: no < yes) the worry is the higher group getting less, so every pair (higher, lower) is
compared and the worst one reported with its **signed** gap ``higher - lower``: negative means the
loyal or paying group got the worse deal. For an **unordered** attribute (region, a declared segment)
the worst-off level is compared with the best-off one (signed, so always <= 0).

Checks (thresholds from flags or a config file, per attribute if wanted; ``None`` = reported only):

- ``offered_value`` and ``discount_depth``: the worst pair's ratio must be >= ``min_value_ratio`` /
  ``min_depth_ratio``;
- ``exposure_<kind>``: the worst pair's absolute difference in slot share must be <=
  ``max_exposure_diff``;
- ``worse_version_net`` (counterfactual only): of the offer families both groups were shown, the share
  where the higher group got a strictly worse version, net of the share where it got a strictly better
  one, must be <= ``max_worse_version_net`` unless a one-sided sign test (worse vs better, scipy's
  ``binomtest``) finds no direction at ``version_test_alpha``. A model that reads tier trades versions
  both ways by chance (a few percent each way, measured on the simulator); a discriminating one only
  one way.

Levels with fewer than ``min_group_rows`` rows are reported but not judged (a logged audit may see a
handful of diamond members).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from scipy.stats import binomtest

from training.fairness.slates import METRICS, VALUE_METRICS, VersionCount


class Thresholds(BaseModel):
    """What the operator accepts. A ``None`` threshold reports its gap without judging it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The worse-off group's mean offered coupon value over the better-off one's, at least.
    min_value_ratio: float | None = Field(0.9, gt=0)
    #: Same for discount depth (value / threshold).
    min_depth_ratio: float | None = Field(0.9, gt=0)
    #: Shared offer families where the higher group got a strictly worse version, net of those where it
    #: got a strictly better one (a share of the shared families), at most ...
    max_worse_version_net: float | None = Field(0.02, ge=0, le=1)
    #: ... unless the sign test (worse vs better) finds no direction at this level.
    version_test_alpha: float = Field(0.05, gt=0, lt=1)
    #: Difference in the share of slots per offer kind, at most (None: reported, not judged).
    max_exposure_diff: float | None = Field(None, ge=0, le=1)
    #: Levels with fewer rows are reported, not judged.
    min_group_rows: int = Field(30, ge=1)


class AuditConfig(Thresholds):
    """A config file: the thresholds, and per-attribute overrides of any of them."""

    attributes: dict[str, Thresholds] = {}

    def for_attribute(self, name: str) -> Thresholds:
        base = Thresholds(**{k: getattr(self, k) for k in Thresholds.model_fields})
        override = self.attributes.get(name)
        if override is None:
            return base
        return base.model_copy(update={k: getattr(override, k) for k in override.model_fields_set})


def load_config(path: Path | None, overrides: Mapping[str, Any]) -> AuditConfig:
    """The config file (JSON; defaults when ``path`` is None) with ``overrides`` (flags) on top.
    Raises ValueError naming the file and field."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"fairness config {path}: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"fairness config {path}: expected a JSON object")
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return AuditConfig.model_validate(data)
    except ValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) + f": {e['msg']}" for e in exc.errors())
        raise ValueError(f"fairness config{f' {path}' if path else ''}: {fields}") from None


@dataclass(frozen=True)
class AttributeSpec:
    name: str
    levels: tuple[str, ...]
    ordered: bool


def _weighted_nanmean(y_true: Any, y_pred: Any, values: Any, weights: Any) -> float:
    v = np.asarray(values, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    ok = ~np.isnan(v)
    if not ok.any() or w[ok].sum() <= 0:
        return math.nan
    return float(np.average(v[ok], weights=w[ok]))


def metric_frame(
    values: np.ndarray, weights: np.ndarray, groups: pd.Series, control: pd.Series | None = None
) -> MetricFrame:
    """``MetricFrame`` of the weighted NaN-ignoring mean of each measure, by ``groups`` (and control)."""
    n = len(values)
    metrics = {m: _weighted_nanmean for m in METRICS}
    params = {m: {"values": values[:, j], "weights": weights} for j, m in enumerate(METRICS)}
    return MetricFrame(
        metrics=metrics,
        y_true=np.zeros(n),
        y_pred=np.zeros(n),
        sensitive_features=groups,
        control_features=control,
        sample_params=params,
    )


def _finite(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _pairs(attr: AttributeSpec, levels: Sequence[str]) -> list[tuple[str, str]]:
    """(group, versus) pairs to compare: (higher, lower) when ordered, every pair otherwise."""
    order = [lv for lv in attr.levels if lv in levels]
    if attr.ordered:
        return [(h, lo) for i, lo in enumerate(order) for h in order[i + 1 :]]
    return [(a, b) for a in order for b in order if a != b]


def _check_ratio(
    metric: str, attr: AttributeSpec, by: Mapping[str, float], threshold: float | None
) -> dict[str, Any]:
    best: tuple[float, str, str] | None = None
    for g, v in _pairs(attr, list(by)):
        a, b = by[g], by[v]
        if not (math.isfinite(a) and math.isfinite(b)):
            continue
        ratio = a / b if b > 0 else (1.0 if a == 0 else math.inf)
        if best is None or ratio < best[0]:
            best = (ratio, g, v)
    if best is None:
        return {"metric": metric, "test": "ratio", "threshold": threshold, "pass": None,
                "note": "not enough groups with a value"}  # fmt: skip
    ratio, g, v = best
    return {
        "metric": metric, "test": "ratio", "group": g, "versus": v,
        "group_value": by[g], "versus_value": by[v], "gap": by[g] - by[v], "ratio": _finite(ratio),
        "threshold": threshold, "pass": None if threshold is None else bool(ratio >= threshold),
    }  # fmt: skip


def _check_diff(
    metric: str, attr: AttributeSpec, by: Mapping[str, float], threshold: float | None
) -> dict[str, Any]:
    best: tuple[float, str, str] | None = None
    for g, v in _pairs(attr, list(by)):
        a, b = by[g], by[v]
        if not (math.isfinite(a) and math.isfinite(b)):
            continue
        if best is None or abs(a - b) > abs(best[0]):
            best = (a - b, g, v)
    if best is None:
        return {"metric": metric, "test": "abs_diff", "threshold": threshold, "pass": None,
                "note": "not enough groups with a value"}  # fmt: skip
    gap, g, v = best
    if not attr.ordered and gap > 0:  # report the worse-off level first: signed gap <= 0
        gap, g, v = -gap, v, g
    return {
        "metric": metric, "test": "abs_diff", "group": g, "versus": v,
        "group_value": by[g], "versus_value": by[v], "gap": gap,
        "threshold": threshold, "pass": None if threshold is None else bool(abs(gap) <= threshold + 1e-12),
    }  # fmt: skip


def _check_versions(
    attr: AttributeSpec, versions: Mapping[tuple[str, str], VersionCount], thresholds: Thresholds
) -> dict[str, Any]:
    threshold = thresholds.max_worse_version_net
    pairs = {p: c for p, c in versions.items() if c.matched}
    if not pairs:
        return {"metric": "worse_version_net", "test": "net_share", "threshold": threshold,
                "pass": None, "note": "no offer family was shown to both groups"}  # fmt: skip
    (g, v), c = max(pairs.items(), key=lambda kv: (kv[1].net, kv[1].worse))
    p_value = _sign_test(c.worse, c.better)
    verdict = None
    if threshold is not None:
        verdict = not (c.net > threshold and p_value < thresholds.version_test_alpha)
    return {
        "metric": "worse_version_net", "test": "net_share", "group": g, "versus": v,
        "matched_families": c.matched, "worse": c.worse, "better": c.better, "gap": c.net,
        "p_value": p_value, "mean_value_diff": c.value_diff / c.matched,
        "threshold": threshold, "pass": verdict,
        "pairs": {f"{a}>{b}": {"matched": x.matched, "worse": x.worse, "better": x.better,
                               "net": _finite(x.net)} for (a, b), x in versions.items()},
    }  # fmt: skip


def _sign_test(worse: int, better: int) -> float:
    """One-sided: is "worse" likelier than "better" among the families where versions differ?"""
    if worse + better == 0:
        return 1.0
    return float(binomtest(worse, worse + better, 0.5, alternative="greater").pvalue)


def _num(x: float | None) -> float:
    return math.nan if x is None else x


def _series_dict(s: pd.Series) -> dict[str, float | None]:
    return {str(k): _finite(v) for k, v in s.items()}


def judge(
    attr: AttributeSpec,
    values: np.ndarray,
    weights: np.ndarray,
    levels: Sequence[str],
    thresholds: Thresholds,
    control: Sequence[str] | None = None,
    versions: Mapping[tuple[str, str], VersionCount] | None = None,
) -> dict[str, Any]:
    """The attribute's section of the report: per-level means (overall and per control group), the
    fairlearn differences and ratios, the checks and whether all judged checks pass."""
    groups = pd.Series(np.asarray(levels, dtype=object), name=attr.name)
    rows = groups.value_counts().to_dict()
    mf = metric_frame(values, weights, groups)
    by_group = {m: _series_dict(mf.by_group[m]) for m in METRICS}
    judged = [lv for lv in attr.levels if rows.get(lv, 0) >= thresholds.min_group_rows]
    checks = []
    for m in METRICS:
        by = {lv: _num(by_group[m].get(lv)) for lv in judged}
        if m in VALUE_METRICS:
            t = thresholds.min_value_ratio if m == "offered_value" else thresholds.min_depth_ratio
            checks.append(_check_ratio(m, attr, by, t))
        else:
            checks.append(_check_diff(m, attr, by, thresholds.max_exposure_diff))
    if versions is not None:
        kept = {p: c for p, c in versions.items() if p[0] in judged and p[1] in judged}
        checks.append(_check_versions(attr, kept, thresholds))
    section: dict[str, Any] = {
        "attribute": attr.name,
        "ordered": attr.ordered,
        "levels": list(attr.levels),
        "rows": {lv: int(rows.get(lv, 0)) for lv in attr.levels},
        "not_judged": [lv for lv in attr.levels if lv not in judged],
        "by_group": by_group,
        "fairlearn": {
            m: {"difference": _finite(mf.difference()[m]), "ratio": _finite(mf.ratio()[m])} for m in METRICS
        },
        "thresholds": thresholds.model_dump(),
        "checks": checks,
    }
    if control is not None:
        seg = pd.Series(np.asarray(control, dtype=object), name="segment")
        cf = metric_frame(values, weights, groups, seg)
        per: dict[str, dict[str, dict[str, float | None]]] = {}
        for (s, lv), row in cf.by_group.iterrows():
            for m in METRICS:
                per.setdefault(str(s), {}).setdefault(m, {})[str(lv)] = _finite(row[m])
        section["by_segment"] = per
        # The worst offered-value pair inside each segment (the probe compared tiers within a
        # segment): reported, not judged (segments are small; the overall check is the judged one).
        worst = []
        for seg_name, metrics in per.items():
            c = _check_ratio("offered_value", attr, {lv: _num(v) for lv, v in metrics["offered_value"].items()
                                                     if lv in judged}, None)  # fmt: skip
            if c.get("ratio") is not None:
                worst.append({"segment": seg_name, **{k: c[k] for k in ("group", "versus", "gap", "ratio")}})
        section["segment_offered_value"] = sorted(worst, key=lambda c: c["ratio"])
    verdicts = [c["pass"] for c in checks if c["pass"] is not None]
    section["pass"] = all(verdicts) if verdicts else None
    return section
