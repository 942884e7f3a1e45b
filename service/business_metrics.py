"""Business metrics: stock, budget and claims per offer, with bounded label cardinality.

Prometheus (one series per label set, forever) cannot take one series per offer of a 10,000-offer
catalogue, and most offers are unlimited and unbudgeted, so there is nothing to watch. The rules:

- per-offer series exist only for **limited or budgeted** offers (stock or money to run out), and for at
  most ``max_offers`` of them (default 50);
- gauges (``benefits_offer_inventory_left``, ``..._inventory_total``, ``benefits_offer_budget_spent``,
  ``..._budget_total``, ``benefits_offer_pacing``) are read from the catalogue snapshot at scrape time;
  when more than ``max_offers`` qualify, the ones closest to running out (highest share of stock or
  budget used) are exported and ``benefits_offer_series_dropped`` says how many were left out;
- claim counters (``benefits_offer_claims_total{offer_id, outcome}``: ``accepted`` or a refusal reason)
  label the first ``max_offers`` limited/budgeted offers claimed in this process; every other claim
  counts under ``offer_id="_other"``, so the outcome totals stay complete.

The same object samples claim totals over time for the console's "claims per minute" (cluster-wide:
claims folded by the stream worker plus units reserved, both read from Redis by the catalogue poller).
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from features.offer_stats import OfferCounters
from features.offers import Offer
from service.objective import Objective, pacing, time_left_share

if TYPE_CHECKING:
    from service.catalog import CatalogSnapshot

OTHER = "_other"
#: Window of the claims-per-minute rate.
RATE_WINDOW_SECONDS = 300.0


def watched(offer: Offer) -> bool:
    """An offer with stock or budget to run out: worth a per-offer series."""
    return offer.inventory is not None or offer.budget is not None


def pacing_now(snap: CatalogSnapshot, now: float, objective: Objective) -> np.ndarray:
    """The pacing factor of every offer of ``snap`` at ``now`` (1 for unbudgeted offers), as ranking
    applies it (``service.objective``)."""
    return pacing(
        snap.budget_left, time_left_share(snap.campaign_end, snap.campaign_inv_duration, now), objective
    )


def used_share(snap: CatalogSnapshot, i: int) -> float:
    o = snap.offers[i]
    shares = [0.0]
    if o.inventory:
        shares.append(float(snap.claimed[i]) / o.inventory)
    if o.budget:
        shares.append(float(snap.cost_used[i]) / o.budget)
    return max(shares)


class BusinessMetrics(Collector):
    def __init__(self, registry: CollectorRegistry, max_offers: int = 50) -> None:
        self.max_offers = max_offers
        self._source: Callable[[], CatalogSnapshot | None] = lambda: None
        self._objective = Objective()
        self.claims = Counter(
            "benefits_offer_claims_total",
            "Claims per offer by outcome (accepted or the refusal reason); limited/budgeted offers only, "
            "at most max_offers labelled, the rest under offer_id=_other",
            ["offer_id", "outcome"],
            registry=registry,
        )
        self._labelled: set[str] = set()
        #: offer_id -> outcome -> count, for the console (all offers; bounded by the catalogue).
        self.outcomes: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._samples: deque[tuple[float, dict[str, float]]] = deque()
        registry.register(self)

    def bind(self, source: Callable[[], CatalogSnapshot | None], objective: Objective) -> None:
        """Where the gauges read the live catalogue snapshot from (the app's catalogue holder), and the
        objective whose pacing they report."""
        self._source = source
        self._objective = objective

    # -- claims ----------------------------------------------------------------------------------------
    def claim(self, offer: Offer, outcome: str) -> None:
        """Count one claim of ``offer``: ``accepted`` or a refusal reason (``sold_out``, ...)."""
        oid = offer.offer_id
        self.outcomes[oid][outcome] += 1
        label = OTHER
        if watched(offer) and (oid in self._labelled or len(self._labelled) < self.max_offers):
            self._labelled.add(oid)
            label = oid
        self.claims.labels(offer_id=label, outcome=outcome).inc()

    def sample(
        self, snap: CatalogSnapshot | None, stats: dict[str, OfferCounters], now: float | None = None
    ) -> None:
        """Record claim totals (claims folded by the stream worker, or units reserved when higher: the
        worker lags the reservation) for :meth:`per_minute`."""
        if snap is None:
            return
        now = time.time() if now is None else now
        totals = {}
        for i, o in enumerate(snap.offers):
            c = stats.get(o.offer_id)
            totals[o.offer_id] = max(float(c.claims) if c is not None else 0.0, float(snap.claimed[i]))
        self._samples.append((now, totals))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW_SECONDS:
            self._samples.popleft()

    def per_minute(self) -> dict[str, float]:
        """Claims per minute per offer over the sampled window (empty until two samples exist)."""
        if len(self._samples) < 2:
            return {}
        (t0, first), (t1, last) = self._samples[0], self._samples[-1]
        dt = t1 - t0
        if dt <= 0:
            return {}
        return {oid: max(0.0, (n - first.get(oid, 0.0)) * 60.0 / dt) for oid, n in last.items()}

    # -- scrape ----------------------------------------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        snap = self._source()
        labels = ["offer_id"]
        inv_left = GaugeMetricFamily(
            "benefits_offer_inventory_left", "Units left of a limited offer", labels=labels
        )
        inv_total = GaugeMetricFamily(
            "benefits_offer_inventory_total", "Units of a limited offer in all", labels=labels
        )
        spent = GaugeMetricFamily(
            "benefits_offer_budget_spent", "Budget spent on a budgeted offer (currency)", labels=labels
        )
        budget = GaugeMetricFamily(
            "benefits_offer_budget_total", "Budget of a budgeted offer (currency)", labels=labels
        )
        pacing = GaugeMetricFamily(
            "benefits_offer_pacing", "Pacing multiplier of a budgeted offer (1 = on schedule)", labels=labels
        )
        dropped = GaugeMetricFamily(
            "benefits_offer_series_dropped",
            "Limited/budgeted offers without per-offer series (over max_offers)",
        )
        n_dropped = 0
        if snap is not None:
            pace = pacing_now(snap, time.time(), self._objective)
            idx = [i for i, o in enumerate(snap.offers) if watched(o) and o.active]
            idx.sort(key=lambda i: (-used_share(snap, i), snap.offers[i].offer_id))
            n_dropped = max(0, len(idx) - self.max_offers)
            for i in idx[: self.max_offers]:
                o = snap.offers[i]
                lv = [o.offer_id]
                if o.inventory is not None:
                    inv_total.add_metric(lv, float(o.inventory))
                    inv_left.add_metric(lv, max(0.0, o.inventory - float(snap.claimed[i])))
                if o.budget is not None:
                    budget.add_metric(lv, float(o.budget))
                    spent.add_metric(lv, float(snap.cost_used[i]))
                    pacing.add_metric(lv, float(pace[i]))
        dropped.add_metric([], float(n_dropped))
        yield from (inv_left, inv_total, spent, budget, pacing, dropped)
