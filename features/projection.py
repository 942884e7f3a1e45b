"""Projection of (member state, offers, page context, now) to the model's feature matrix.

``rows(state, table, context, now)`` returns one float32 row per offer in ``table`` with the columns of
the table's :class:`~features.spec.FeatureSpec` (the shipped default unless the table was built with
another). Serving and training call this same function (training at each impression's time over a
replayed state), so the model never sees features computed two ways.

Every column is bound to its computation by name (:mod:`features.computations`); nothing here knows a
column's position. The specification's hash travels with every exported model and is checked by the
service on load.

Speed: the offer-side columns are computed once per catalogue version in :class:`OfferTable`; a
request computes the member columns once (a few dozen numbers), then fills the member x offer and
context columns with numpy over all offers at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np

from features import computations as comp
from features.offer_stats import OfferCounters
from features.offers import OFFER_KINDS, Offer
from features.spec import LEGACY_SCHEMA_V1, Feature, FeatureSpec, default_spec
from features.state import MemberState

DEFAULT_SPEC: FeatureSpec = default_spec()
#: The default specification's columns, in order (kept as names for tests and tools).
FEATURE_NAMES: tuple[str, ...] = DEFAULT_SPEC.names
N_FEATURES = len(FEATURE_NAMES)
FEATURE_INDEX = {n: i for i, n in enumerate(FEATURE_NAMES)}
#: The hash of the default specification (what ``feature_spec_hash`` in a model must equal).
FEATURE_SPEC_HASH = DEFAULT_SPEC.hash
#: Before declared specifications, models carried ``feature_schema`` = "v1:" + a hash of the names of
#: its 62 columns (re-exported from :mod:`features.spec`, which accepts such a model only under the
#: specification that reproduces those columns).
LEGACY_FEATURE_SCHEMA_V1 = LEGACY_SCHEMA_V1


def _scope_names(spec: FeatureSpec, scope: str) -> tuple[str, ...]:
    return tuple(f.name for f in spec.features if comp.kind_of(f).scope == scope)


MEMBER_FEATURES: tuple[str, ...] = _scope_names(DEFAULT_SPEC, "member")
OFFER_FEATURES: tuple[str, ...] = _scope_names(DEFAULT_SPEC, "offer")

DEVICES: tuple[str, ...] = tuple(DEFAULT_SPEC.vocabulary("device"))


class Context(msgspec.Struct, frozen=True, kw_only=True):
    """Where the request comes from. Validated at the HTTP edge."""

    page_type: str = "home"
    category: str | None = None
    device: str = "other"
    channel: str = "app"


def _cols(idx: list[int]) -> slice | np.ndarray:
    """A slice when the columns are contiguous (numpy copies a block faster than a fancy index)."""
    if idx and idx == list(range(idx[0], idx[0] + len(idx))):
        return slice(idx[0], idx[0] + len(idx))
    return np.asarray(idx, dtype=np.int64)


class Projection:
    """A specification compiled into computations: member, offer-static and per-request columns."""

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec
        self.n = len(spec)
        member: list[tuple[int, Feature, Any]] = []
        offer: list[tuple[int, Feature, Any]] = []
        row: list[tuple[int, Feature, Any]] = []
        for i, f in enumerate(spec.features):
            kind = comp.kind_of(f)
            fn = comp.build(f, spec)
            {"member": member, "offer": offer, "row": row}[kind.scope].append((i, f, fn))
        self.member_fns: list[comp.MemberFn] = [fn for _, _, fn in member]
        self.member_names: list[str] = [f.name for _, f, _ in member]
        self.member_cols = _cols([i for i, _, _ in member])
        self.offer_features = [f for _, f, _ in offer]
        self.offer_fns: list[comp.OfferFn] = [fn for _, _, fn in offer]
        self.offer_cols = _cols([i for i, _, _ in offer])
        self.row_fns: list[tuple[int, comp.RowFn]] = [(i, fn) for i, _, fn in row]
        self.static_index = {f.name: j for j, f in enumerate(self.offer_features)}

    def member_vector(self, state: MemberState, now: float) -> list[float]:
        return [fn(state, now) for fn in self.member_fns]


_PROJECTIONS: dict[str, Projection] = {}


def projection_for(spec: FeatureSpec) -> Projection:
    """The compiled projection of ``spec`` (cached by hash)."""
    p = _PROJECTIONS.get(spec.hash)
    if p is None:
        p = _PROJECTIONS[spec.hash] = Projection(spec)
    return p


@dataclass
class OfferTable:
    """Column arrays of a catalog, built once per catalog version (and when statistics refresh)."""

    offers: list[Offer]
    spec: FeatureSpec = field(default_factory=lambda: DEFAULT_SPEC)
    projection: Projection = field(init=False)
    offer_ids: list[str] = field(init=False)
    index: dict[str, int] = field(init=False)
    #: (n, number of offer-scope features) float32, in the specification's order of those features.
    static: np.ndarray = field(init=False)
    #: The catalogue's own categories (sorted); ``category_idx`` indexes them, ``no_category`` = none.
    categories: list[str] = field(init=False)
    category_index: dict[str, int] = field(init=False)
    category_idx: np.ndarray = field(init=False)
    no_category: int = field(init=False)
    kind_idx: np.ndarray = field(init=False)
    value: np.ndarray = field(init=False)
    threshold: np.ndarray = field(init=False)
    cost: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        n = len(self.offers)
        self.projection = projection_for(self.spec)
        self.offer_ids = [o.offer_id for o in self.offers]
        self.index = {oid: i for i, oid in enumerate(self.offer_ids)}
        self.kind_idx = np.array([OFFER_KINDS.index(o.kind) for o in self.offers], dtype=np.int64)
        self.categories = sorted({o.category for o in self.offers if o.category})
        self.category_index = {c: i for i, c in enumerate(self.categories)}
        self.no_category = len(self.categories)
        self.category_idx = np.array(
            [self.category_index[o.category] if o.category else self.no_category for o in self.offers],
            dtype=np.int64,
        )
        self.value = np.array([o.value for o in self.offers], dtype=np.float64)
        self.threshold = np.array([o.threshold for o in self.offers], dtype=np.float64)
        self.cost = np.array([o.cost for o in self.offers], dtype=np.float64)
        fns = self.projection.offer_fns
        s = np.zeros((n, len(fns)), dtype=np.float32)
        for j, fn in enumerate(fns):
            if n:
                s[:, j] = fn(self.offers)
        self.static = s

    def __len__(self) -> int:
        return len(self.offers)

    def static_column(self, name: str) -> int | None:
        """Column of :attr:`static` holding the offer feature ``name`` (None if the spec lacks it)."""
        return self.projection.static_index.get(name)

    def prior_column(self, rate: str) -> int | None:
        """Column of :attr:`static` with the smoothed ``ctr`` or ``claim`` prior, if the spec has one."""
        for j, f in enumerate(self.projection.offer_features):
            if f.kind == "offer_prior" and f.params.get("rate") == rate:
                return j
        return None

    def with_stats(self, stats: dict[str, OfferCounters], claimed: dict[str, int] | None = None) -> None:
        """Refresh the prior and inventory columns from aggregate statistics (in place)."""
        priors: list[tuple[int, str, float, float]] = []
        inventory: list[int] = []
        for j, f in enumerate(self.projection.offer_features):
            if f.kind == "offer_prior":
                p = f.params
                priors.append((j, str(p["rate"]), float(p.get("prior", 0.0)), float(p.get("weight", 1.0))))
            elif f.kind == "offer_inventory_left":
                inventory.append(j)
        for oid, c in stats.items():
            i = self.index.get(oid)
            if i is None:
                continue
            for j, rate, prior, weight in priors:
                num = c.clicks if rate == "ctr" else c.claims
                self.static[i, j] = comp.smoothed(num, c.impressions, prior, weight)
        if claimed is not None and inventory:
            for oid, used in claimed.items():
                i = self.index.get(oid)
                if i is None:
                    continue
                inv = self.offers[i].inventory
                if inv:
                    for j in inventory:
                        self.static[i, j] = max(0.0, 1.0 - used / inv)


def rows(
    state: MemberState, table: OfferTable, context: Context, now: float, only: np.ndarray | None = None
) -> np.ndarray:
    """Feature matrix (n, len(spec)) float32 for ``state`` against the offers in ``table``: every offer,
    or with ``only`` (indices into ``table``, e.g. the eligible offers) those alone, in that order; row
    ``k`` of the result is then row ``only[k]`` of the full matrix, at a fraction of the cost."""
    p = table.projection
    req = comp.Request(state, table, context, now, only)
    out = np.empty((req.n, p.n), dtype=np.float32)
    out[:, p.member_cols] = p.member_vector(state, now)
    out[:, p.offer_cols] = table.static if only is None else table.static[only]
    for i, fn in p.row_fns:
        out[:, i] = fn(req)
    return out
