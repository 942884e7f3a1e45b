"""Per offer family evaluation: the DeLong interval, claim rate at the top, the family table, and that the
trained model's report, metadata and ``benefits train`` output state the per-family margins."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from features.demo_catalog import LIFECYCLE_FAMILIES
from training import evaluate, pipeline
from training.export import REPORT_FILE


def test_delong_matches_the_auc_and_the_bootstrap_spread() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random(800) < 0.2).astype(int)
    a, b = y + rng.normal(0, 1.5, 800), y + rng.normal(0, 2.5, 800)
    auc_a, auc_b, se = evaluate.delong(y, a, b)
    assert auc_a == pytest.approx(roc_auc_score(y, a)) and auc_b == pytest.approx(roc_auc_score(y, b))
    diffs = []
    for _ in range(300):
        i = rng.integers(0, 800, 800)
        diffs.append(roc_auc_score(y[i], a[i]) - roc_auc_score(y[i], b[i]))
    assert 0.7 * np.std(diffs) < se < 1.3 * np.std(diffs)
    assert all(np.isnan(v) for v in evaluate.delong(np.zeros(5, dtype=int), a[:5], b[:5]))


def test_by_family_margins_over_a_constant_popularity() -> None:
    rng = np.random.default_rng(2)
    n = 4000
    fam = np.where(rng.random(n) < 0.25, "wake_up", "coupon").astype(object)
    x = rng.normal(size=n)
    p = 1 / (1 + np.exp(-(-2.0 + 1.5 * x)))
    y = (rng.random(n) < p).astype(int)
    scores = {"model": p, "popularity": np.where(fam == "wake_up", 0.1, 0.05), "oracle": p}
    out = evaluate.by_family(y, scores, fam)
    assert list(out) == ["wake_up", "coupon"]  # named families first, then kinds
    w = out["wake_up"]
    assert w["rows"] == int((fam == "wake_up").sum()) and w["claims"] == int(y[fam == "wake_up"].sum())
    assert w["scorers"]["popularity"]["auc"] == 0.5  # one score for every row of the family
    margin = w["margins"]["popularity"]
    assert margin["auc"] > 0.2 and margin["auc_ci"][0] > 0.1
    assert w["scorers"]["model"]["claim_rate@top"] > 2 * w["claim_rate"]
    assert w["margins"]["oracle"]["auc"] == 0.0
    lines = evaluate.family_lines(out)
    assert len(lines) == 3 and "wake_up" in lines[1] and f"{margin['auc']:+.3f}" in lines[1]


def test_claim_rate_at_breaks_ties_at_random() -> None:
    y = np.array([1, 0] * 500)
    assert evaluate.claim_rate_at(y, y.astype(float), 0.2) == 1.0
    assert 0.35 < evaluate.claim_rate_at(y, np.zeros(1000), 0.2) < 0.65


def test_trained_model_reports_per_family_margins(trained: pipeline.Outcome) -> None:
    families = trained.result["families"]
    assert set(LIFECYCLE_FAMILIES) <= set(families)
    assert trained.metadata["families"] == families
    for e in families.values():
        assert {"model", "popularity", "oracle"} <= set(e["scorers"]) and "popularity" in e["margins"]
    html = (trained.path / REPORT_FILE).read_text()
    section = html.split("<h2>Per offer family</h2>")[1].split("<h2>")[0]
    assert "model - popularity AUC (95% CI)" in section and all(f in section for f in LIFECYCLE_FAMILIES)
