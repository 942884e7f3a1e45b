"""What every feature computation shares: the per-request inputs (:class:`Request`), the computation
types of the three scopes, the registry entry (:class:`Kind`) and the parameter checks.

The registry itself (name -> computation) is :data:`features.computations.KINDS`; the lifecycle kinds
live in :mod:`features.computations_lifecycle`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from features.decay import HOUR
from features.state import MemberState

if TYPE_CHECKING:
    from features.offers import Offer
    from features.projection import Context, OfferTable
    from features.spec import FeatureSpec

NEVER_HOURS = 24.0 * 365  # "hours since" for something that never happened

MemberFn = Callable[[MemberState, float], float]
OfferFn = Callable[["list[Offer]"], np.ndarray]
RowFn = Callable[["Request"], "np.ndarray | float"]


def hours_since(now: float, ts: float) -> float:
    if ts <= 0.0:
        return NEVER_HOURS
    return min(NEVER_HOURS, max(0.0, (now - ts) / HOUR))


def smoothed(num: float, den: float, prior: float, weight: float) -> float:
    """A rate that starts at ``prior`` and needs evidence (``weight`` trials) to move far from it."""
    return (num + prior * weight) / (den + weight)


class Request:
    """One request's inputs with the per-request intermediates the row computations share (lazy).

    With ``only`` (indices into the table) the rows are those offers alone, in that order: ``value``,
    ``threshold``, ``category_idx`` are the selected offers' columns and ``n`` their number.
    """

    __slots__ = (
        "_cats",
        "_mo",
        "category_idx",
        "context",
        "cost",
        "n",
        "now",
        "only",
        "state",
        "table",
        "threshold",
        "value",
    )

    def __init__(
        self,
        state: MemberState,
        table: OfferTable,
        context: Context,
        now: float,
        only: np.ndarray | None = None,
    ) -> None:
        self.state, self.table, self.context, self.now, self.only = state, table, context, now, only
        if only is None:
            self.value, self.threshold, self.cost = table.value, table.threshold, table.cost
            self.category_idx = table.category_idx
            self.n = len(table)
        else:
            self.value, self.threshold, self.cost = table.value[only], table.threshold[only], table.cost[only]
            self.category_idx = table.category_idx[only]
            self.n = len(only)
        self._cats: np.ndarray | None = None
        self._mo: np.ndarray | None = None

    def categories(self) -> np.ndarray:
        """(len(table.categories) + 1, 4): interest at each half-life, then orders 30d; per category the
        table knows (row order of ``table.categories``); last row is "no category" (zeros). Row 0..n-1
        plus a column-sum helper: ``interest_total`` over *all* the member's categories, known or not."""
        if self._cats is None:
            index = self.table.category_index
            m = np.zeros((len(index) + 1, 5), dtype=np.float64)
            for cat, counter in self.state.cat_interest.items():
                i = index.get(cat)
                if i is not None:
                    sums = counter.at(self.now)
                    m[i, 0:4] = sums
            for cat, counter in self.state.cat_orders.items():
                i = index.get(cat)
                if i is not None:
                    m[i, 4] = counter.at_index(self.now, 3)
            self._cats = m
        return self._cats

    def interest_total(self, hl: int) -> float:
        """The member's interest over every category (including ones no offer has), at one half-life."""
        return float(sum(c.at_index(self.now, hl) for c in self.state.cat_interest.values()))

    def member_offer(self) -> np.ndarray:
        """(n, 6): shown, hours since shown, clicks, claims, dismisses, impressions since last action."""
        if self._mo is None:
            m = np.zeros((self.n, 6), dtype=np.float64)
            m[:, 1] = NEVER_HOURS
            index = self.table.index
            pos: np.ndarray | None = None
            if self.only is not None:
                pos = np.full(len(self.table), -1, dtype=np.int64)  # table index -> row, -1 left out
                pos[self.only] = np.arange(len(self.only))
            now = self.now
            for offer_id, inter in self.state.offers.items():
                i = index.get(offer_id)
                if i is not None and pos is not None:
                    i = int(pos[i]) if pos[i] >= 0 else None
                if i is None:
                    continue
                m[i] = (
                    inter.shown,
                    hours_since(now, inter.last_shown_ts),
                    inter.clicks,
                    inter.claims,
                    inter.dismisses,
                    inter.impressions_since_action(),
                )
            self._mo = m
        return self._mo

    def avg_basket(self) -> float:
        s = self.state
        return s.spend_total / s.orders_total if s.orders_total else 0.0


# --- parameter helpers -------------------------------------------------------------------------


def param(params: dict[str, Any], key: str) -> Any:
    if key not in params:
        raise ValueError(f"missing parameter {key!r}")
    return params[key]


def one_of(params: dict[str, Any], key: str, allowed: tuple[str, ...] | list[str]) -> str:
    v = param(params, key)
    if v not in allowed:
        raise ValueError(f"{key} {v!r} is not one of {list(allowed)}")
    return str(v)


def number(params: dict[str, Any], key: str, default: float) -> float:
    v = params.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ValueError(f"{key} must be a finite number, not {v!r}")
    return float(v)


def half_life(params: dict[str, Any]) -> int:
    from features.spec import half_life_index

    return half_life_index(str(param(params, "half_life")))


def only_params(params: dict[str, Any], *keys: str) -> None:
    extra = set(params) - set(keys)
    if extra:
        raise ValueError(f"unknown parameters {sorted(extra)} (allowed: {list(keys)})")


@dataclass(frozen=True)
class Kind:
    """A registry entry: the scope of a computation and its builder ``(params, spec) -> computation``
    (which raises ``ValueError`` on bad parameters)."""

    scope: Literal["member", "offer", "row"]
    build: Callable[[dict[str, Any], FeatureSpec], Callable[..., Any]]
    #: Reads the programme configuration (``spec.lifecycle_config``): the spec's hash then covers it.
    lifecycle: bool = False
