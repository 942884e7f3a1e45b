"""The simulator's lifecycles (issue 19): lifecycle offers logged only where their rules hold, silent
members who come back after a wake-up coupon, renewals after a renewal offer, tier moves under the tier
rules, points lots that expire. Statistical checks use one fixed seed and generous margins."""

from __future__ import annotations

import itertools
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features import events as ev
from features import lifecycle as lc
from features.decay import DAY
from features.demo_catalog import LIFECYCLE_FAMILIES
from features.eligibility import RULES, EligibilityTable, evaluate
from features.offers import Offer
from features.projection import Context
from features.state import MemberState, fold
from training.simulate import simulate_to_dir


@dataclass
class Sim:
    imp: pd.DataFrame
    members: pd.DataFrame
    meta: dict[str, object]
    catalog: list[Offer]
    by_member: dict[str, list[ev.Event]]

    def state(self, member_id: str, before: float) -> MemberState:
        return fold([e for e in self.by_member[member_id] if e.event_ts < before])


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Sim:
    out: Path = tmp_path_factory.mktemp("lifesim")
    simulate_to_dir(out, n_members=2000, days=10.0, n_offers=60, seed=4, progress=False)
    # Every line must decode: the schema validates each event (timestamps, expiries, lots).
    events = [ev.decode(line) for line in (out / "events.jsonl").read_bytes().splitlines()]
    by_member: dict[str, list[ev.Event]] = defaultdict(list)
    for e in events:
        by_member[e.member_id].append(e)
    catalog = [Offer.model_validate(o) for o in json.loads((out / "catalog.json").read_text())]
    return Sim(
        pd.read_parquet(out / "impressions.parquet"),
        pd.read_parquet(out / "members.parquet"),
        json.loads((out / "meta.json").read_text()),
        catalog,
        by_member,
    )


def two_proportions(hits_a: int, n_a: int, hits_b: int, n_b: int) -> tuple[float, float]:
    """(rate a - rate b, z statistic of the difference with the pooled rate)."""
    pa, pb = hits_a / n_a, hits_b / n_b
    pooled = (hits_a + hits_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    return pa - pb, (pa - pb) / se if se > 0 else 0.0


def test_every_lifecycle_family_is_logged_and_the_oracle_holds(sim: Sim) -> None:
    imp = sim.imp
    for fam in LIFECYCLE_FAMILIES:
        rows = imp[imp["family"] == fam]
        assert len(rows) >= 100, fam
        # The outcomes follow the truth in each family (4 standard errors).
        se = math.sqrt(float((rows["true_p"] * (1 - rows["true_p"])).sum())) / len(rows)
        assert abs(rows["label"].mean() - rows["true_p"].mean()) < 4 * se + 1e-3, fam
    assert set(imp["source"]) == {"page", "push"}
    assert set(imp.loc[imp["source"] == "push", "family"]) <= set(LIFECYCLE_FAMILIES)
    # Targeted offers convert better than the rest of the catalogue.
    life = imp["family"].isin(LIFECYCLE_FAMILIES)
    assert imp.loc[life, "true_p"].mean() > 2 * imp.loc[~life, "true_p"].mean()


def test_lifecycle_offers_are_shown_only_where_their_rules_hold(sim: Sim) -> None:
    table = EligibilityTable(sim.catalog)
    index = {o.offer_id: i for i, o in enumerate(sim.catalog)}
    life = sim.imp[sim.imp["family"].isin(LIFECYCLE_FAMILIES)]
    sample = life.sample(n=min(400, len(life)), random_state=0)
    for row in sample.itertuples():
        # The policy saw the state just after the page view (0.2 s before the request) or at the push.
        before = float(row.event_ts) - (0.1 if row.source == "page" else 0.0)
        state = sim.state(str(row.member_id), before)
        ctx = Context(
            page_type=str(row.page_type), category=row.category, device=row.device, channel=row.channel
        )
        reason = evaluate(table, index, state, ctx, float(row.event_ts))
        code = int(reason[index[str(row.offer_id)]])
        assert code < 0, (row.offer_id, RULES[code])
        assert lc.stage(state, float(row.event_ts)) == row.stage


def test_silent_members_come_back_after_a_wake_up_claim(sim: Sim) -> None:
    away = set(sim.members.loc[sim.members["start_stage"].isin(["silent", "lapsing"]), "member_id"])
    pushed = sim.imp[(sim.imp["family"] == "wake_up") & (sim.imp["source"] == "push")]
    pushed = pushed[pushed["member_id"].isin(away)]
    first = pushed.groupby("member_id").agg(ts=("event_ts", "min"), claimed=("label", "max"))

    def visited(member_id: str, ts: float) -> bool:
        return any(
            isinstance(e, ev.PageView | ev.Search) and ts < e.event_ts <= ts + 5 * DAY
            for e in sim.by_member[member_id]
        )

    back = np.array([visited(str(m), float(t)) for m, t in zip(first.index, first["ts"], strict=True)])
    claimed = first["claimed"].to_numpy() == 1
    assert claimed.sum() >= 30 and (~claimed).sum() >= 30
    diff, z = two_proportions(
        int(back[claimed].sum()), int(claimed.sum()), int(back[~claimed].sum()), int((~claimed).sum())
    )
    assert diff > 0.15 and z > 3, (diff, z)


def test_renewal_offers_raise_renewals(sim: Sim) -> None:
    end = float(sim.meta["end_ts"])  # type: ignore[arg-type]
    m = sim.members
    expiring = set(m.loc[(m["paid_expires_ts"] > 0) & (m["paid_expires_ts"] < end - DAY), "member_id"])
    offer = sim.imp[(sim.imp["offer_id"] == "renewal-offer") & sim.imp["member_id"].isin(expiring)]
    claimed_by = offer.groupby("member_id")["label"].max()
    renewed = {
        e.member_id for es in sim.by_member.values() for e in es if isinstance(e, ev.PaidMembershipRenewed)
    }
    got = np.array([mid in renewed for mid in claimed_by.index])
    claimed = claimed_by.to_numpy() == 1
    assert claimed.sum() >= 15 and (~claimed).sum() >= 15
    diff, z = two_proportions(
        int(got[claimed].sum()), int(claimed.sum()), int(got[~claimed].sum()), int((~claimed).sum())
    )
    assert diff > 0.2 and z > 2.5, (diff, z)
    # An unrenewed membership ends at its expiry, with an event the fold turns into "lapsed".
    for mid in sorted(expiring - renewed)[:20]:
        (ended,) = [e for e in sim.by_member[mid] if isinstance(e, ev.PaidMembershipEnded)]
        exp = float(m.loc[m["member_id"] == mid, "paid_expires_ts"].iloc[0])
        assert ended.event_ts == pytest.approx(exp)
        assert lc.paid_days_since_lapse(sim.state(mid, exp + DAY), exp + DAY) == pytest.approx(1.0)


def test_tier_moves_follow_the_tier_rules_and_the_nudge(sim: Sim) -> None:
    moves = 0
    for member_id, events in sim.by_member.items():
        changes = sorted((e for e in events if isinstance(e, ev.TierChanged)), key=lambda e: e.event_ts)
        for prev, change in itertools.pairwise(changes):
            state = sim.state(member_id, change.event_ts + 1e-3)
            growth = lc.growth_value(state, change.event_ts)
            assert change.tier == lc.implied_tier(growth) != prev.tier, (member_id, growth)
            moves += 1
    assert moves >= 50
    nudged = (
        sim.imp[sim.imp["family"] == "tier_nudge"]
        .groupby("member_id")
        .agg(ts=("event_ts", "min"), claimed=("label", "max"))
    )

    def moved_up(member_id: str, ts: float) -> bool:
        return any(
            isinstance(e, ev.TierChanged) and ts < e.event_ts <= ts + 3 * DAY
            for e in sim.by_member[member_id]
        )

    up = np.array([moved_up(str(m), float(t)) for m, t in zip(nudged.index, nudged["ts"], strict=True)])
    claimed = nudged["claimed"].to_numpy() == 1
    diff, z = two_proportions(
        int(up[claimed].sum()), int(claimed.sum()), int(up[~claimed].sum()), int((~claimed).sum())
    )
    assert diff > 0.15 and z > 3, (diff, z)


def test_paid_memberships_and_points_lots_carry_their_expiry(sim: Sim) -> None:
    events = [e for es in sim.by_member.values() for e in es]
    paid = [e for e in events if isinstance(e, ev.PaidMembershipStarted | ev.PaidMembershipRenewed)]
    assert paid and all(e.expires_at is not None and e.expires_at > e.event_ts for e in paid)
    assert all(e.plan == "PLUS" for e in paid)
    lots = [e for e in events if isinstance(e, ev.PointsChanged) and e.expiring]
    assert len(lots) > 500
    # A lot that expires unspent leaves the balance then.
    m = sim.members
    due = m[(m["points_expiring"] > 0) & (m["points_expire_ts"] < float(sim.meta["end_ts"]))]  # type: ignore[arg-type]
    checked = 0
    for row in due.head(200).itertuples():
        at = float(row.points_expire_ts)
        snapshot = [
            e
            for e in sim.by_member[str(row.member_id)]
            if isinstance(e, ev.PointsChanged) and e.event_ts == at
        ]
        if not snapshot:
            continue  # spent before on the points-expiry offer
        before = sim.state(str(row.member_id), at)
        assert snapshot[0].points == max(0, before.points - int(row.points_expiring))
        assert all(lot.expires_at > at for lot in snapshot[0].expiring)
        checked += 1
    assert checked >= 20
