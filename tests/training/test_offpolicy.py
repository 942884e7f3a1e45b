"""Off-policy estimators against a synthetic logged bandit whose true target value is known exactly,
and the experiment report's statistics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmarks.obd import N_ITEMS, evaluate_uniform_from
from training.abtest import report, required_per_arm
from training.offpolicy import (
    SlotLog,
    SlotTarget,
    all_estimates,
    dr_estimate,
    ips_estimate,
    slot_estimates,
    view_difference,
    view_estimates,
)
from training.pl_marginals import position_marginals


def logged(n: int, seed: int) -> tuple[np.ndarray, ...]:
    """Contexts with 10 actions, a softmax logging policy, a different deterministic-ish target."""
    rng = np.random.default_rng(seed)
    k = 10
    ctx = rng.integers(0, 5, n)
    truth = 0.02 + 0.3 * ((np.arange(k)[None, :] + np.arange(5)[:, None]) % k) / k  # (ctx, action)
    logits = np.arange(k)[None, :] * 0.0 + rng.normal(0, 1, (5, k))
    p_log_all = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    target_all = np.full((5, k), 0.02)
    target_all[np.arange(5), truth.argmax(axis=1)] += 1 - 0.02 * k  # mostly the best action
    a = np.array([rng.choice(k, p=p_log_all[c]) for c in ctx])
    r = (rng.random(n) < truth[ctx, a]).astype(np.float64)
    true_value = float(np.mean((target_all * truth).sum(axis=1)[ctx]))
    return ctx, a, r, p_log_all[ctx, a], target_all[ctx, a], truth, target_all, true_value


def test_estimates_cover_the_true_value_and_dr_is_tighter_with_a_good_model() -> None:
    ctx, a, r, p_log, p_target, truth, target_all, true_value = logged(20_000, seed=3)
    # A reward model with the right shape but noisy: DR should still cover and be tighter than IPS.
    model = truth + np.random.default_rng(9).normal(0, 0.02, truth.shape)
    q_logged = model[ctx, a]
    q_target = (target_all * model).sum(axis=1)[ctx]
    est = all_estimates(p_log, r, p_target, q_logged, q_target)
    for name, e in est.items():
        assert e.low <= true_value <= e.high, (name, e, true_value)
    assert (est["dr"].high - est["dr"].low) < (est["ips"].high - est["ips"].low)
    # The naive logged mean is far off: the estimators are doing the work.
    assert abs(r.mean() - true_value) > est["dr"].high - est["dr"].low


def test_interval_coverage_over_repeated_logs() -> None:
    covered = 0
    runs = 40
    for seed in range(runs):
        _, _, r, p_log, p_target, _, _, true_value = logged(3000, seed=100 + seed)
        e = ips_estimate(p_log, r, p_target)
        covered += e.low <= true_value <= e.high
    assert covered >= 0.85 * runs  # nominal 95 %, with slack for 40 runs


def test_bad_propensities_are_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="zero propensity"):
        dr_estimate(np.array([0.0]), np.array([1.0]), np.array([0.5]), np.array([0.1]), np.array([0.1]))


def test_obd_style_log_recovers_the_uniform_policy_rate() -> None:
    """The benchmark's own code path on a synthetic OBD-shaped log (80 items x 3 positions)."""
    rng = np.random.default_rng(5)
    n = 60_000
    ctr = rng.uniform(0.002, 0.05, (N_ITEMS, 3))
    pref = rng.dirichlet(np.full(N_ITEMS, 0.5), size=3)  # a skewed logging policy per position
    pos = rng.integers(1, 4, n)
    items = np.array([rng.choice(N_ITEMS, p=pref[p - 1]) for p in pos])
    click = (rng.random(n) < ctr[items, pos - 1]).astype(int)
    df = pd.DataFrame(
        {"item_id": items, "position": pos, "click": click, "propensity_score": pref[pos - 1, items]}
    )
    truth = float(ctr.mean())
    est = evaluate_uniform_from(df)
    for name in ("ips", "dr"):
        assert est[name]["ci_low"] <= truth <= est[name]["ci_high"], (name, est[name], truth)


def test_report_refuses_an_early_winner_and_calls_a_clear_one() -> None:
    need = required_per_arm(0.05, 0.1)
    assert 25_000 < need < 40_000  # textbook: ~31k per arm for 5 % -> 5.5 %
    early = {"control": {"views": 2000, "claims": 100}, "t": {"views": 2000, "claims": 140}}
    out = report(early, "control", mde_relative=0.1)
    assert out["comparisons"]["t"]["p_value"] < 0.05  # "significant" already ...
    assert out["comparisons"]["t"]["verdict"].startswith("keep running")  # ... but no call
    late = {"control": {"views": 40_000, "claims": 2000}, "t": {"views": 40_000, "claims": 2300}}
    out = report(late, "control", mde_relative=0.1)
    assert out["comparisons"]["t"]["verdict"] == "t beats control"
    lo, hi = out["comparisons"]["t"]["ci"]
    assert lo < 0.3 / 40 < hi
    same = {"control": {"views": 40_000, "claims": 2000}, "t": {"views": 40_000, "claims": 2010}}
    assert "no detectable" in report(same, "control")["comparisons"]["t"]["verdict"]
    with pytest.raises(ValueError, match="control arm"):
        report(same, "nope")


def slate_log(n_views: int, seed: int) -> tuple[SlotLog, SlotTarget, float]:
    """Views of 3 slots drawn by Plackett-Luce from 12 offers per context; claims depend on the offer
    and the context only. The target shows each context's best 3 (greedy); its true value is known."""
    rng = np.random.default_rng(seed)
    n_ctx, n_items, k = 4, 12, 3
    truth = rng.uniform(0.01, 0.3, (n_ctx, n_items))
    weights = rng.dirichlet(np.full(n_items, 1.0), n_ctx)
    marg = np.stack(
        [
            np.stack(
                [position_marginals(weights[c], np.arange(n_items), np.full(n_items, j)) for j in range(k)], 1
            )
            for c in range(n_ctx)
        ]
    )  # (ctx, item, slot)
    best = np.argsort(-truth, axis=1)[:, :k]  # the target's slate per context
    ctx = rng.integers(0, n_ctx, n_views)
    keys = np.log(weights[ctx]) + rng.gumbel(size=(n_views, n_items))
    shown = np.argsort(-keys, axis=1)[:, :k]
    view = np.repeat(np.arange(n_views), k)
    slot = np.tile(np.arange(k), n_views)
    items, c = shown.ravel(), ctx[view]
    reward = (rng.random(len(items)) < truth[c, items]).astype(np.float64)
    p_log = marg[c, items, slot]
    p_target = (best[c, slot] == items).astype(np.float64)
    model = truth + rng.normal(0, 0.03, truth.shape)  # a decent, imperfect reward model
    target = SlotTarget(p_target, model[c, items], model[c, best[c, slot]])
    true_value = float(np.mean(np.take_along_axis(truth, best, 1).sum(axis=1)[ctx]))
    return SlotLog(view, slot, reward, p_log, n_views), target, true_value


def test_per_view_estimates_cover_the_target_value_and_agree_with_the_library() -> None:
    log, target, true_value = slate_log(20_000, seed=11)
    est = view_estimates(log, target)
    for name, e in est.items():
        assert e.low <= true_value <= e.high, (name, e, true_value)
    assert (est["dr"].high - est["dr"].low) < (est["ips"].high - est["ips"].low)
    # Per view = the sum over slots of vw-estimators' per-slot IPS and SNIPS (every view has 3 slots).
    per_slot = slot_estimates(log, target)
    assert abs(sum(s["ips"]["estimate"] for s in per_slot) - est["ips"].value) < 1e-9
    assert abs(sum(s["snips"]["estimate"] for s in per_slot) - est["snips"].value) < 1e-9
    # A policy against itself: exactly no difference, and an interval of no width.
    same = view_difference(log, target, target)
    assert all(d.value == 0.0 and d.low == d.high == 0.0 for d in same.values())


def test_interval_coverage_of_the_per_view_estimators_over_repeated_logs() -> None:
    covered = {"ips": 0, "snips": 0, "dr": 0}
    runs = 30
    for seed in range(runs):
        log, target, true_value = slate_log(3000, seed=200 + seed)
        for name, e in view_estimates(log, target).items():
            covered[name] += e.low <= true_value <= e.high
    assert all(c >= 0.8 * runs for c in covered.values()), covered  # nominal 95 %


def test_slot_log_refuses_unusable_propensities() -> None:
    with pytest.raises(ValueError, match="zero propensity"):
        SlotLog(np.array([0]), np.array([0]), np.array([1.0]), np.array([np.nan]), 1)
    with pytest.raises(ValueError, match="n_views"):
        SlotLog(np.array([3]), np.array([0]), np.array([1.0]), np.array([0.5]), 2)
