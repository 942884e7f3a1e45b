"""The simulation run: walk the timeline, fold every event into the members' states, ask the logging
policy for slates (on pages and in CRM pushes), draw outcomes from the truth, and write the directory."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from features import events as ev
from features import lifecycle as lc
from features.decay import DAY, HOUR
from features.demo_catalog import LIFECYCLE_FAMILIES, demo_catalog
from features.eligibility import EligibilityTable, evaluate
from features.projection import Context, OfferTable
from features.state import MemberState, apply, new_state
from training import sim_truth as truth
from training.evaluate import offer_group
from training.sim_membership import Programme, Schedule, Sink
from training.sim_population import (
    DEVICES,
    LIFECYCLE,
    SEGMENTS,
    SHOP_CATEGORIES,
    SIM_CHANNELS,
    START_STAGES,
    make_members,
)
from training.sim_timeline import PUSH_MIN_IDLE_DAYS, make_timeline

log = logging.getLogger(__name__)

#: 2025-03-01T00:00:00Z: a fixed epoch keeps runs reproducible (the clock is never read).
DEFAULT_START_TS = 1740787200.0
#: The logging policy's preference (logit) for a lifecycle offer on a page: the programme promotes them.
LIFECYCLE_BOOST = 2.0
PUSH_SLATE = 1

IMPRESSION_COLUMNS = (
    "request_id",
    "member_id",
    "offer_id",
    "event_ts",
    "position",
    "page_type",
    "category",
    "device",
    "channel",
    "propensity",
    "label",
    "clicked",
    "true_p",
    "segment",
    "source",
    "family",
    "stage",
)


@dataclass
class SimConfig:
    n_members: int = 2000
    days: float = 14.0
    n_offers: int = 200
    seed: int = 1
    start_ts: float = DEFAULT_START_TS
    request_p: float = 0.45
    slate_size: int = 4
    progress: bool = True
    #: Also write what counterfactual evaluation needs (training.sim_offpolicy): each impression's
    #: marginal propensity and candidates.parquet (every eligible offer's true claim probability).
    offpolicy_log: bool = False


class _Run:
    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.rng = rng = np.random.default_rng(cfg.seed)
        self.sales_day = int(cfg.days * 0.6) if cfg.days >= 3 else -1
        self.end_ts = cfg.start_ts + cfg.days * DAY
        self.catalog = catalog = demo_catalog(cfg.start_ts, cfg.n_offers, days=max(60.0, cfg.days + 1.0))
        self.table = table = OfferTable(catalog)
        self.elig = EligibilityTable(catalog)
        self.members = make_members(cfg.n_members, cfg.start_ts, cfg.days, rng)
        self.tl = make_timeline(self.members, cfg.start_ts, cfg.days, cfg.request_p, rng, self.sales_day)
        n_off = len(catalog)
        self.kind_idx = table.kind_idx
        self.sub_idx = np.array([truth.SUB[o.subtype] for o in catalog])
        self.cat_idx = np.array([SHOP_CATEGORIES.index(o.category) if o.category else -1 for o in catalog])
        self.life_family: list[str | None] = [
            o.family if o.family in truth.LIFECYCLE_LOGIT_FAMILIES else None for o in catalog
        ]
        self.is_life = np.array([o.family in LIFECYCLE_FAMILIES for o in catalog], dtype=bool)
        self.group = [offer_group(o) for o in catalog]
        self.fam_idx = self.elig.family_idx
        kinds = {"coupon": ev.CouponClaim, "benefit": ev.BenefitUse, "consult": ev.ConsultBooked}
        self.claim_cls: list[Any] = [kinds[o.kind] for o in catalog]
        self.claimed = np.zeros(n_off)
        self.cost_used = np.zeros(n_off)
        self.wallets: dict[int, list[int]] = {}  # member -> claimed, unredeemed coupon offers
        self.sink = Sink()
        self.schedule = Schedule()
        self.states: list[MemberState] = [new_state(mid) for mid in self.members.member_id]
        self.programme = Programme(
            self.members, self.states, self.sink, self.schedule, rng, cfg.start_ts, self.end_ts
        )
        self.programme.place_order = self.order
        self.imp: dict[str, list[Any]] = {k: [] for k in IMPRESSION_COLUMNS}
        self.n_req = 0
        self.n_push = 0
        self.offlog: Any = None
        if cfg.offpolicy_log:
            from training.sim_offpolicy import OffPolicyLog

            self.offlog = OffPolicyLog()

    # --- the loop ------------------------------------------------------------------------------------
    def loop(self) -> None:
        tl, m = self.tl, self.members
        self.programme.open()
        n_pages = len(tl.ts)
        progress = Progress(
            TextColumn("simulate"),
            BarColumn(),
            TextColumn("{task.completed:,}/{task.total:,} pages"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            disable=not self.cfg.progress,
            transient=True,
        )
        ts_arr, mem_arr, push_arr = tl.ts, tl.member, tl.is_push
        active_from, active_until = m.active_from, m.active_until
        with progress:
            task = progress.add_task("pages", total=n_pages)
            for p in range(n_pages):
                if p % 20_000 == 0:
                    progress.update(task, completed=p)
                t = float(ts_arr[p])
                # Everything due before this page is folded now, so the logging policy only sees the past.
                self.schedule.run_until(t, self.states)
                mi = int(mem_arr[p])
                if push_arr[p]:
                    self._push(mi, t)
                elif active_from[mi] <= t < active_until[mi]:
                    self._page(p, mi, t)
            progress.update(task, completed=n_pages)
        self.schedule.run_until(self.end_ts, self.states)

    def _context(self, mi: int, page_type: str, category: str | None) -> Context:
        m = self.members
        return Context(
            page_type=page_type,
            category=category,
            device=DEVICES[m.device[mi]],
            channel=SIM_CHANNELS[m.channel[mi]],
        )

    def _page(self, p: int, mi: int, t: float) -> None:
        tl, st, sink = self.tl, self.states[mi], self.sink
        mid = self.members.member_id[mi]
        ptype = ev.PAGE_TYPES[int(tl.page_type[p])]
        c = int(tl.category[p])
        cname = SHOP_CATEGORIES[c] if c >= 0 else None
        idle = lc.days_since_visit(st, t)
        e: ev.Event
        if ptype == "search":
            e = ev.Search(event_id=sink.eid(), member_id=mid, event_ts=t, category=cname, query_len=8)
        else:
            e = ev.PageView(event_id=sink.eid(), member_id=mid, event_ts=t, page_type=ptype, category=cname)  # type: ignore[arg-type]
        sink.add(e)
        apply(st, e)
        if tl.is_request[p]:
            rt = t + 0.2  # the storefront asks for a slate just after the page view
            ctx = self._context(mi, ptype, cname)
            reason = evaluate(self.elig, self.table.index, st, ctx, rt, self.claimed, self.cost_used)
            cand = np.flatnonzero(reason < 0)
            if len(cand):
                k = self.cfg.slate_size + (2 if ptype == "member_center" else 0)
                h = np.exp(
                    1.0 * (self.cat_idx[cand] == c)
                    + 0.3 * (self.kind_idx[cand] == 0)
                    + LIFECYCLE_BOOST * self.is_life[cand]
                )
                self._request(mi, rt, ctx, cand, h, k, "page", idle, c)
        amount = float(tl.cart_amount[p])
        if amount > 0:
            ce = ev.AddToCart(
                event_id=sink.eid(),
                member_id=mid,
                event_ts=t + 20.0,
                category=cname or "other",
                amount=amount,
            )
            sink.add(ce)
            apply(st, ce)
        amount = float(tl.order_amount[p])
        if amount > 0:
            self.schedule.call_at(t + 60.0, mi, partial(self.order, mi, amount, c))

    def _push(self, mi: int, t: float) -> None:
        """A CRM push slot: a member away for a few days gets one lifecycle offer they qualify for."""
        st = self.states[mi]
        if not st.events_total or lc.days_since_visit(st, t) < PUSH_MIN_IDLE_DAYS:
            return
        ctx = self._context(mi, "home", None)
        reason = evaluate(self.elig, self.table.index, st, ctx, t, self.claimed, self.cost_used)
        cand = np.flatnonzero((reason < 0) & self.is_life)
        if len(cand):
            self.n_push += 1
            self._request(
                mi, t, ctx, cand, np.ones(len(cand)), PUSH_SLATE, "push", lc.days_since_visit(st, t), -1
            )

    def _slate(self, cand: np.ndarray, h: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The logging policy: 30% uniform + 70% softmax of ``h``, Plackett-Luce sampled (Gumbel top-k).
        Returns the policy's weights over ``cand``, the positions in ``cand`` drawn (top first) and each
        one's propensity at its slot (given the offers above it)."""
        pi = 0.3 / len(cand) + 0.7 * h / h.sum()
        keys = np.log(pi) + self.rng.gumbel(size=len(cand))  # Gumbel-top-k = Plackett-Luce
        top = np.argsort(-keys)[:k]
        pc = pi[top]
        return pi, top, pc / np.maximum(1.0 - (np.cumsum(pc) - pc), 1e-12)

    def _truth(self, mi: int, rt: float, offers: np.ndarray, c: int, idle: float) -> np.ndarray:
        """True claim probabilities of ``offers`` shown to member ``mi`` at ``rt`` (no random draws)."""
        m, st = self.members, self.states[mi]
        seg = int(m.segment[mi])
        n = len(offers)
        interest = np.zeros(n)
        shown = np.zeros(n)
        offer_ids = self.table.offer_ids
        for j, oi in enumerate(offers.tolist()):
            fc = self.catalog[oi].category
            counter = st.cat_interest.get(fc) if fc is not None else None
            if counter is not None:
                interest[j] = counter.at_index(rt, 1)
            inter = st.offers.get(offer_ids[oi])
            if inter is not None:
                shown[j] = inter.shown
        hour = int((rt % DAY) // HOUR)
        cat_idx = self.cat_idx[offers]
        z = truth.true_logit(
            seg,
            float(m.intercept[mi]),
            float(m.basket[mi]),
            self.sub_idx[offers],
            self.kind_idx[offers],
            cat_idx,
            self.table.value[offers],
            self.table.threshold[offers],
            interest,
            (cat_idx == c) & (c >= 0),
            shown,
            birthday=int(m.birth_month[mi]) == time.gmtime(rt).tm_mon,
            sales=int((rt - self.cfg.start_ts) // DAY) == self.sales_day,
            evening=hour >= 18,
        )
        fams = [self.life_family[oi] for oi in offers.tolist()]
        facts = truth.life_facts(st, rt, idle) if any(f is not None for f in fams) else None
        z = truth.offer_logits(
            seg, float(m.intercept[mi]), float(m.basket[mi]), z, fams, self.table.value[offers], shown,
            hour >= 18, facts,
        )  # fmt: skip
        return np.asarray(1.0 / (1.0 + np.exp(-z)))

    def _request(
        self,
        mi: int,
        rt: float,
        ctx: Context,
        cand: np.ndarray,
        h: np.ndarray,
        k: int,
        source: str,
        idle: float,
        c: int,
    ) -> None:
        m, st, sink = self.members, self.states[mi], self.sink
        mid = m.member_id[mi]
        pi, top, prop = self._slate(cand, h, k)
        chosen = cand[top]
        k = len(chosen)
        self.n_req += 1
        rid = f"r{self.n_req:09d}"
        seg = int(m.segment[mi])
        offer_ids = self.table.offer_ids
        tp = self._truth(mi, rt, chosen, c, idle)
        if self.offlog is not None:
            # Every eligible offer's truth too (the oracle of counterfactual evaluation), computed apart
            # and without random draws, so that the shown offers' values, and the run, are the same.
            cand_ids = [offer_ids[oi] for oi in cand.tolist()]
            self.offlog.add(rid, cand_ids, self._truth(mi, rt, cand, c, idle), pi, top)
        u = self.rng.random((k, 3))
        claim = u[:, 0] < tp
        click = claim | (u[:, 1] < np.minimum(0.5, 1.5 * tp))
        dismiss = ~click & (u[:, 2] < 0.02)
        stage = lc.stage(st, rt, LIFECYCLE)
        imp = self.imp
        for j in range(k):
            oi = int(chosen[j])
            oid = offer_ids[oi]
            ie = ev.Impression(
                event_id=sink.eid(),
                member_id=mid,
                event_ts=rt,
                request_id=rid,
                offer_id=oid,
                position=j,
                propensity=float(min(1.0, max(prop[j], 1e-9))),
            )
            sink.add(ie)
            apply(st, ie)
            outcome: list[ev.Event] = []
            if click[j]:
                ct = rt + 2.0 + 3.0 * j + float(u[j, 1]) * 10.0
                outcome.append(
                    ev.Click(event_id=sink.eid(), member_id=mid, event_ts=ct, request_id=rid, offer_id=oid)
                )
                if claim[j]:
                    outcome.append(
                        self.claim_cls[oi](
                            event_id=sink.eid(), member_id=mid, event_ts=ct + 4.0, offer_id=oid
                        )
                    )
                    self.claimed[oi] += 1
                    self.cost_used[oi] += self.table.cost[oi]
                    if self.kind_idx[oi] == 0:
                        self.wallets.setdefault(mi, []).append(oi)
                    fam = self.catalog[oi].family
                    if fam in LIFECYCLE_FAMILIES:
                        self.programme.claimed(mi, str(fam), ct + 4.0, st)
            elif dismiss[j]:
                outcome.append(
                    ev.Dismiss(
                        event_id=sink.eid(), member_id=mid, event_ts=rt + 3.0, request_id=rid, offer_id=oid
                    )
                )
            for oe in outcome:
                sink.add(oe)
                self.schedule.fold_at(mi, oe)
            for col, v in (
                ("request_id", rid),
                ("member_id", mid),
                ("offer_id", oid),
                ("event_ts", rt),
                ("position", j),
                ("page_type", ctx.page_type),
                ("category", ctx.category),
                ("device", ctx.device),
                ("channel", ctx.channel),
                ("propensity", float(prop[j])),
                ("label", int(claim[j])),
                ("clicked", int(click[j])),
                ("true_p", float(tp[j])),
                ("segment", SEGMENTS[seg]),
                ("source", source),
                ("family", self.group[oi]),
                ("stage", stage),
            ):
                imp[col].append(v)

    def order(self, mi: int, amount: float, c: int, ot: float) -> None:
        """An order placed now (``ot``): maybe redeeming a claimed coupon; points and tier follow."""
        rng, st, sink = self.rng, self.states[mi], self.sink
        m = self.members
        mid = m.member_id[mi]
        coupon, discount = None, 0.0
        wallet = self.wallets.get(mi)
        if wallet:
            usable = [o for o in wallet if self.table.threshold[o] <= amount]
            if usable and rng.random() < 0.7:
                oi = usable[0]
                wallet.remove(oi)
                coupon, discount = self.table.offer_ids[oi], float(self.table.value[oi])
        cname = SHOP_CATEGORIES[c] if c >= 0 else None
        cats = [cname or "other"]
        if rng.random() < 0.3:
            cats.append(SHOP_CATEGORIES[int(rng.integers(0, len(SHOP_CATEGORIES)))])
        parent_now = m.parent_ts[mi] > 0 and ot >= m.parent_ts[mi]
        if cname == "baby" or (parent_now and rng.random() < 0.3):
            cats.append("baby")
        order = ev.Order(
            event_id=sink.eid(),
            member_id=mid,
            event_ts=ot,
            amount=amount,
            categories=sorted(set(cats)),
            items=int(1 + rng.poisson(2)),
            coupon_id=coupon,
            discount=discount,
        )
        sink.add(order)
        apply(st, order)
        if coupon is not None:
            redeem = ev.CouponRedeem(
                event_id=sink.eid(), member_id=mid, event_ts=ot + 0.5, offer_id=coupon, discount=discount
            )
            sink.add(redeem)
            self.schedule.fold_at(mi, redeem)
        self.schedule.call_at(ot + 0.6, mi, partial(self.programme.tier_check, mi))
        self.schedule.call_at(ot + 1.0, mi, partial(self.programme.earn, mi, amount))

    # --- output ----------------------------------------------------------------------------------------
    def impressions(self) -> pd.DataFrame:
        df = pd.DataFrame(self.imp)
        df["label"] = df["label"].astype(np.int8)
        df["clicked"] = df["clicked"].astype(np.int8)
        df["position"] = df["position"].astype(np.int16)
        if self.offlog is not None:
            df["propensity_marginal"] = self.offlog.marginal_column()
        return df


def simulate(cfg: SimConfig, out: Path | None = None) -> dict[str, Any]:
    """Run the simulation; write the output directory when ``out`` is given. Returns meta."""
    t_start = time.perf_counter()
    run = _Run(cfg)
    t_gen = time.perf_counter()
    run.loop()
    t_loop = time.perf_counter()
    impressions = run.impressions()
    members, tl = run.members, run.tl
    by_family = impressions.groupby("family")["label"].agg(["size", "sum"])
    meta: dict[str, Any] = {
        "kind": "simulation",
        "n_members": cfg.n_members,
        "days": cfg.days,
        "n_offers": len(run.catalog),
        "seed": cfg.seed,
        "start_ts": cfg.start_ts,
        "end_ts": run.end_ts,
        "sales_day": run.sales_day,
        "sessions": int(tl.extra["sessions"]),
        "pages": int((~tl.is_push).sum()),
        "push_slots": int(tl.extra["push_slots"]),
        "push_requests": run.n_push,
        "requests": run.n_req,
        "impressions": len(impressions),
        "events": len(run.sink.ts),
        "claim_rate": float(impressions["label"].mean()) if len(impressions) else 0.0,
        "segments": list(SEGMENTS),
        "start_stages": {s: int((members.start_stage == i).sum()) for i, s in enumerate(START_STAGES)},
        "families": {
            str(f): {"impressions": int(r["size"]), "claims": int(r["sum"])} for f, r in by_family.iterrows()
        },
        "programme": vars(run.programme.counters),
        "slate_size": cfg.slate_size,
        "request_p": cfg.request_p,
        "offpolicy_log": cfg.offpolicy_log,
        "seconds_generate": round(t_gen - t_start, 3),
        "seconds_loop": round(t_loop - t_gen, 3),
    }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        run.sink.write(out / "events.jsonl")
        impressions.to_parquet(out / "impressions.parquet", index=False)
        members.frame().to_parquet(out / "members.parquet", index=False)
        (out / "catalog.json").write_text(json.dumps([o.model_dump(mode="json") for o in run.catalog]))
        if run.offlog is not None:
            run.offlog.write(out)
        meta["seconds_write"] = round(time.perf_counter() - t_loop, 3)
        (out / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    meta["seconds_total"] = round(time.perf_counter() - t_start, 3)
    log.info(
        "simulated %d members x %.1f days: %d impressions, %d events in %.1fs",
        cfg.n_members,
        cfg.days,
        len(impressions),
        len(run.sink.ts),
        meta["seconds_total"],
    )
    return meta
