"""The offer catalog in process: read from Redis in the background, never on the request path.

The source of truth is the catalog hash and its version key, read and written by
:class:`~infra.catalog_store.CatalogStore` (keys in ``infra/redis_layout.py``). Every write (admin API)
changes the hash and then bumps the version; every replica polls the version key each
``catalog_poll_seconds`` and, when it changed, rebuilds :class:`OfferTable` and
:class:`EligibilityTable` and swaps a new immutable :class:`CatalogSnapshot` in with one assignment.

Aggregate statistics (smoothed click/claim priors, budget spent) and inventory reserved so far are
refreshed on the same timer into a new snapshot. Between two refreshes eligibility may let a just-sold-
out offer through for up to one poll interval: the claim itself is the atomic gate (Lua reserve), so
this never oversells, it only shows an offer that will answer "sold out".

``CatalogStore`` is re-exported here for the modules that import it from ``service.catalog``.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np
import orjson

from features.context import ContextVocabulary
from features.demo_catalog import demo_catalog
from features.eligibility import EligibilityTable
from features.lifecycle import LifecycleConfig
from features.offer_stats import OfferCounters, merge_all
from features.offers import Offer
from features.projection import DEFAULT_SPEC, OfferTable
from features.spec import FeatureSpec
from features.taxonomy import DEMO_TAXONOMY, Taxonomy, parse_catalog
from infra.catalog_store import CatalogStore
from infra.money_store import MoneyStore
from infra.redis_layout import MemberStore

log = logging.getLogger(__name__)

__all__ = ["CatalogHolder", "CatalogSnapshot", "CatalogStore", "build_snapshot", "load_seed"]


@dataclass(frozen=True)
class CatalogSnapshot:
    """One catalog version with its column tables and usage arrays; immutable once published."""

    version: int
    offers: list[Offer]
    table: OfferTable
    elig: EligibilityTable
    #: Units reserved per offer (inventory), aligned with ``offers``.
    claimed: np.ndarray
    #: Budget spent per offer, aligned with ``offers``.
    cost_used: np.ndarray
    #: Share of the budget not yet spent, in [0, 1] (1 for unbudgeted offers); feeds the pacing of
    #: ``service.objective``.
    budget_left: np.ndarray
    #: Campaign end and 1 / campaign length per offer (both 0 without a window): the time left that
    #: pacing compares with the budget left (``service.objective.time_left_share``).
    campaign_end: np.ndarray
    campaign_inv_duration: np.ndarray
    #: offer value scaled to [0, 1] by the catalog maximum (value-aware score).
    value_norm: np.ndarray
    pinned: np.ndarray
    #: Aggregate impressions and claims per offer (all replicas' statistics): premises of reasons.
    impressions: np.ndarray
    claims: np.ndarray
    loaded_at: float = field(default_factory=time.time)

    def __len__(self) -> int:
        return len(self.offers)


def build_snapshot(
    version: int,
    offers: list[Offer],
    now: float,
    stats: dict[str, OfferCounters] | None = None,
    reserved: dict[str, int] | None = None,
    spec: FeatureSpec = DEFAULT_SPEC,
    lifecycle: LifecycleConfig | None = None,
) -> CatalogSnapshot:
    """Column tables for ``offers`` (sorted by id so every replica has the same order).

    ``lifecycle`` (default: the specification's, which the service sets from settings) is the
    programme configuration eligibility reads the state with, in ranking and in claims alike."""
    offers = sorted(offers, key=lambda o: o.offer_id)
    table = OfferTable(offers, spec)
    elig = EligibilityTable(offers, lifecycle or spec.lifecycle_config)
    return _with_usage(version, offers, table, elig, now, stats or {}, reserved or {})


def _with_usage(
    version: int,
    offers: list[Offer],
    table: OfferTable,
    elig: EligibilityTable,
    now: float,
    stats: dict[str, OfferCounters],
    reserved: dict[str, int],
) -> CatalogSnapshot:
    n = len(offers)
    claimed = np.zeros(n, dtype=np.float64)
    cost_used = np.zeros(n, dtype=np.float64)
    for oid, used in reserved.items():
        i = table.index.get(oid)
        if i is not None:
            claimed[i] = used
    for oid, c in stats.items():
        i = table.index.get(oid)
        if i is not None:
            cost_used[i] = c.cost_used
    if stats or reserved:
        # with_stats mutates the table: work on a copy so a request holding the old snapshot is untouched.
        table = copy.copy(table)
        table.static = table.static.copy()
        table.with_stats(stats, reserved)
    budget_left = np.ones(n, dtype=np.float64)
    for i, o in enumerate(offers):
        if o.budget is not None:
            budget_left[i] = max(0.0, 1.0 - cost_used[i] / o.budget) if o.budget > 0 else 0.0
    end = np.zeros(n, dtype=np.float64)
    inv_duration = np.zeros(n, dtype=np.float64)
    for i, o in enumerate(offers):
        if o.campaign_start_ts is not None and o.campaign_end_ts is not None:
            end[i] = o.campaign_end_ts
            inv_duration[i] = 1.0 / (o.campaign_end_ts - o.campaign_start_ts)  # validated end > start
    impressions = np.zeros(n, dtype=np.float64)
    claims = np.zeros(n, dtype=np.float64)
    for oid, c in stats.items():
        i = table.index.get(oid)
        if i is not None:
            impressions[i], claims[i] = c.impressions, c.claims
    max_value = float(table.value.max()) if n else 0.0
    value_norm = table.value / max_value if max_value > 0 else np.zeros(n)
    pinned = np.array([o.pinned for o in offers], dtype=bool)
    return CatalogSnapshot(
        version=version,
        offers=offers,
        table=table,
        elig=elig,
        claimed=claimed,
        cost_used=cost_used,
        budget_left=budget_left,
        campaign_end=end,
        campaign_inv_duration=inv_duration,
        value_norm=value_norm,
        pinned=pinned,
        impressions=impressions,
        claims=claims,
    )


def load_seed(path: Path | None, now: float, taxonomy: Taxonomy | None = None) -> list[Offer]:
    """Offers to seed an empty catalog: the catalogue file at ``path`` (checked against ``taxonomy``
    when given, else against the file's own), else the demo catalog."""
    if path is None:
        # Campaigns started a day ago so the demo catalog is valid right away.
        return demo_catalog(start_ts=float(int(now // 86400) * 86400 - 86400))
    declared, offers = parse_catalog(orjson.loads(Path(path).read_bytes()), str(path))
    if taxonomy is not None and taxonomy != declared:
        for o in offers:
            taxonomy.check(o)
    return offers


class CatalogHolder:
    """The current :class:`CatalogSnapshot` of this process, refreshed by a background poller."""

    def __init__(
        self,
        store: CatalogStore,
        members: MemberStore,
        spec: FeatureSpec = DEFAULT_SPEC,
        taxonomy: Taxonomy = DEMO_TAXONOMY,
        money: MoneyStore | None = None,
        lifecycle: LifecycleConfig | None = None,
    ) -> None:
        self.store = store
        self.members = members
        #: The feature specification the tables are built for, and the operator's taxonomy.
        self.spec = spec
        #: The programme configuration of every snapshot's eligibility table (the one claims and
        #: ranking evaluate with); the specification's unless given.
        self.lifecycle = lifecycle or spec.lifecycle_config
        self.taxonomy = taxonomy
        self.context_vocabulary = ContextVocabulary.of(spec, taxonomy)
        #: Stock and budget use come from the claim script's own counters when given (exact and
        #: immediate); without it (tools, benchmarks) from the stream's statistics.
        self.money = money
        self.current: CatalogSnapshot | None = None
        self._stats: dict[str, OfferCounters] = {}
        self._reserved: dict[str, int] = {}
        self._last_touch = 0.0

    @property
    def stats(self) -> dict[str, OfferCounters]:
        """The per-offer statistics of the last usage refresh (summed over the stream's partials)."""
        return self._stats

    async def refresh(self, now: float | None = None) -> bool:
        """Reload when the version key changed; returns True when a new version was installed."""
        now = time.time() if now is None else now
        version = await self.store.version()
        current = self.current
        if current is not None and version == current.version:
            return False
        version, offers = await self.store.read_all()
        if not offers and current is not None and len(current) > 0:
            # Offers are retired, never deleted, so an empty store means it lost its data (a Redis
            # restarted without persistence, a flush). Installing that would serve empty slates until
            # someone re-seeds: keep the live catalog and write it back (seed-if-empty is atomic, so
            # one replica wins and the others load its copy on their next poll).
            if await self.store.seed_if_empty(list(current.offers)):
                log.warning("catalog store was empty: re-seeded it with %d offers in process", len(current))
            return False
        self.current = build_snapshot(
            version, offers, now, self._stats, self._reserved, self.spec, self.lifecycle
        )
        log.info("catalog version %d installed (%d offers)", version, len(offers))
        return True

    async def refresh_usage(self, now: float | None = None) -> None:
        """Re-read per-offer statistics and reserved inventory into a new snapshot of the same version."""
        now = time.time() if now is None else now
        snap = self.current
        if snap is None:
            return
        parts = await self.members.all_offer_stats()
        stats = merge_all([p.counters for p in parts])
        if self.money is not None:
            usage = await self.money.usage(
                o.offer_id for o in snap.offers if o.inventory is not None or o.budget is not None
            )
            self._reserved = {oid: u.units for oid, u in usage.items()}
            for oid, u in usage.items():
                stats[oid] = msgspec.structs.replace(stats.get(oid) or OfferCounters(), cost_used=u.cost)
        else:
            limited = [o.offer_id for o in snap.offers if o.inventory is not None]
            self._reserved = await self.members.reserved(limited)
        self._stats = stats
        snap = self.current  # may have been replaced while we awaited
        if snap is not None:
            self.current = _with_usage(
                snap.version, snap.offers, snap.table, snap.elig, now, self._stats, self._reserved
            )
        if now - self._last_touch > 3600:
            await self.store.touch()
            self._last_touch = now
