"""The experiment report's statistics: per-arm rates with intervals, differences against the control,
the sample size a stated minimum detectable effect needs, and a verdict that refuses to call a winner
before that size is reached (statsmodels).

The unit here is a *view* (a recommend answer): ``claims / views`` and so on. Views of one member are
correlated, so the intervals are somewhat too narrow when members return often; the sample-size gate
(rather than the p-value alone) is what stops an early call, and peeking at a running experiment does
not change the verdict until every arm has the required views.
"""

from __future__ import annotations

from typing import Any

from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_confint,
    proportion_effectsize,
    test_proportions_2indep,
)

#: rate name -> (numerator counter, denominator counter)
RATES: dict[str, tuple[str, str]] = {
    "claims_per_view": ("claims", "views"),
    "clicks_per_view": ("clicks", "views"),
    "clicks_per_impression": ("clicks", "impressions"),
    "redemptions_per_claim": ("redemptions", "claims"),
}


def required_per_arm(base_rate: float, mde_relative: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Views per arm to detect a relative change of ``mde_relative`` from ``base_rate`` (two-sided)."""
    if not 0.0 < base_rate < 1.0:
        return -1  # no baseline rate yet: unknown
    other = min(max(base_rate * (1.0 + mde_relative), 1e-9), 1 - 1e-9)
    effect = abs(proportion_effectsize(other, base_rate))
    if effect == 0:
        return -1
    n = NormalIndPower().solve_power(effect_size=effect, alpha=alpha, power=power, ratio=1.0)
    return int(n) + 1


def report(
    counts: dict[str, dict[str, float]],
    control: str,
    metric: str = "claims_per_view",
    mde_relative: float = 0.1,
    alpha: float = 0.05,
    power: float = 0.8,
) -> dict[str, Any]:
    """Rates per arm, each other arm against ``control``, and a verdict per comparison."""
    if metric not in RATES:
        raise ValueError(f"unknown metric {metric!r}; one of {sorted(RATES)}")
    if control not in counts:
        raise ValueError(f"control arm {control!r} has no counts; arms: {sorted(counts)}")
    num, den = RATES[metric]
    arms: dict[str, Any] = {}
    for arm, c in sorted(counts.items()):
        x, n = int(c.get(num, 0)), int(c.get(den, 0))
        low, high = proportion_confint(x, n, alpha=alpha, method="wilson") if n > 0 else (0.0, 1.0)
        arms[arm] = {
            **{k: c.get(k, 0.0) for k in ("views", "impressions", "clicks", "claims", "redemptions", "cost")},
            metric: x / n if n else None,
            "ci": [float(low), float(high)],
            "cost_per_view": c.get("cost", 0.0) / c["views"] if c.get("views") else None,
        }
    cx, cn = int(counts[control].get(num, 0)), int(counts[control].get(den, 0))
    base = cx / cn if cn else 0.0
    need = required_per_arm(base, mde_relative, alpha, power)
    comparisons: dict[str, Any] = {}
    for arm, c in sorted(counts.items()):
        if arm == control:
            continue
        x, n = int(c.get(num, 0)), int(c.get(den, 0))
        comp: dict[str, Any] = {"required_per_arm": need, "have": min(n, cn)}
        if n == 0 or cn == 0:
            comp["verdict"] = "not enough data"
            comparisons[arm] = comp
            continue
        low, high = confint_proportions_2indep(x, n, cx, cn, method="newcomb", compare="diff", alpha=alpha)
        p = float(test_proportions_2indep(x, n, cx, cn, method="wald", compare="diff").pvalue)
        comp.update({"difference": x / n - base, "ci": [float(low), float(high)], "p_value": p})
        if need < 0 or min(n, cn) < need:
            comp["verdict"] = (
                f"keep running: {min(n, cn)} of {need if need > 0 else '?'} {den} per arm needed to detect "
                f"a {mde_relative:.0%} change; no winner is called before that"
            )
        elif p < alpha:
            comp["verdict"] = f"{arm} {'beats' if x / n > base else 'loses to'} {control}"
        else:
            comp["verdict"] = f"no detectable difference at a {mde_relative:.0%} minimum effect"
        comparisons[arm] = comp
    return {
        "metric": metric,
        "control": control,
        "alpha": alpha,
        "power": power,
        "mde_relative": mde_relative,
        "arms": arms,
        "comparisons": comparisons,
    }
