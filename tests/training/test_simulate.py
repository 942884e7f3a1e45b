"""The simulator: files, shapes, invariants and determinism by seed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from features import events as ev
from features.offers import Offer
from training.simulate import SEGMENTS, simulate_to_dir


def test_output_files_and_shapes(sim_dir: Path) -> None:
    meta = json.loads((sim_dir / "meta.json").read_text())
    imp = pd.read_parquet(sim_dir / "impressions.parquet")
    members = pd.read_parquet(sim_dir / "members.parquet")
    catalog = [Offer.model_validate(o) for o in json.loads((sim_dir / "catalog.json").read_text())]
    assert len(catalog) == 120
    assert len(members) == 400 and set(members["segment"]) == set(SEGMENTS)
    assert len(imp) == meta["impressions"] > 5000
    for col in (
        "request_id",
        "member_id",
        "offer_id",
        "event_ts",
        "page_type",
        "category",
        "device",
        "channel",
    ):
        assert col in imp.columns
    for col in ("propensity", "label", "true_p", "segment"):
        assert col in imp.columns
    assert imp["propensity"].between(0, 1, inclusive="right").all()
    assert imp["true_p"].between(0, 1, inclusive="neither").all()
    assert set(imp["offer_id"]) <= {o.offer_id for o in catalog}
    # Outcomes follow the latent truth: the observed rate tracks the mean true probability.
    assert abs(imp["label"].mean() - imp["true_p"].mean()) < 0.01
    # Slates: at most 6 items, positions 0..k-1.
    sizes = imp.groupby("request_id").size()
    assert sizes.max() <= 6 and (imp.groupby("request_id")["position"].max() + 1 == sizes).all()


def test_event_log_is_valid_and_sorted(sim_dir: Path) -> None:
    lines = (sim_dir / "events.jsonl").read_bytes().splitlines()
    events = [ev.decode(raw) for raw in lines]
    ts = np.array([e.event_ts for e in events])
    assert (np.diff(ts) >= 0).all()
    kinds = {ev.event_type(e) for e in events}
    for k in ("page_view", "search", "add_to_cart", "order", "impression", "click", "coupon_claim"):
        assert k in kinds
    for k in ("profile_updated", "tier_changed", "points_changed", "paid_membership_started"):
        assert k in kinds
    imp = pd.read_parquet(sim_dir / "impressions.parquet")
    assert sum(1 for e in events if isinstance(e, ev.Impression)) == len(imp)
    claims = sum(1 for e in events if isinstance(e, ev.CouponClaim | ev.BenefitUse | ev.ConsultBooked))
    assert claims == int(imp["label"].sum())


def test_logged_offers_respect_caps(sim_dir: Path) -> None:
    # Each offer is claimable once per member (catalog caps): the eligibility filter must have
    # stopped showing it after the claim.
    imp = pd.read_parquet(sim_dir / "impressions.parquet")
    per = imp.groupby(["member_id", "offer_id"])["label"].sum()
    assert per.max() <= 1


def test_deterministic_by_seed(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    simulate_to_dir(a, n_members=60, days=3, n_offers=60, seed=5, progress=False)
    simulate_to_dir(b, n_members=60, days=3, n_offers=60, seed=5, progress=False)
    simulate_to_dir(c, n_members=60, days=3, n_offers=60, seed=6, progress=False)
    assert (a / "events.jsonl").read_bytes() == (b / "events.jsonl").read_bytes()
    pd.testing.assert_frame_equal(
        pd.read_parquet(a / "impressions.parquet"), pd.read_parquet(b / "impressions.parquet")
    )
    assert (a / "events.jsonl").read_bytes() != (c / "events.jsonl").read_bytes()
