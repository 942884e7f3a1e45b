"""The ranking pipeline, pure apart from the ONNX call: no web framework, no Redis, no clock.

    candidates (the catalog snapshot)
      -> eligibility (features.eligibility.evaluate: a reason code per offer)
      -> feature rows (features.projection.rows; the model only sees eligible rows)
      -> ONNX scores p(claim | shown)                       [personalised modes]
         or the offer's smoothed prior claim rate                [non-personalised / fallback]
      -> the objective (service.objective): p * member value * pacing - cost_weight * p * cost
      -> slate rules: pinned first; at most one offer per family (``Offer.family_key``); at most
         ``max_per_category`` per category (offers without one count as one more category); at least
         ``min_kinds`` kinds (coupon / benefit / consult) when the eligible set has them
      -> top-k, each with reason codes and a sentence, and its propensity (probability of being shown
         at that position given the items above it, under epsilon-greedy or softmax (Plackett-Luce)
         exploration; 1.0 when exploration is off). A slate's propensity is the product.

Reasons (service.reasons) are emitted only when their premise holds of the member's state, the page,
the offer and its statistics; sensitive categories are never quoted back.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from features import slate
from features.eligibility import RULES, evaluate
from features.projection import Context, rows
from features.state import MemberState
from service import fairness_guard as fg
from service import objective as obj
from service.catalog import CatalogSnapshot
from service.i18n import exclusion_text
from service.model import LoadedModel
from service.reasons import OfferFacts, ReasonRules, reasons


class Mode(enum.StrEnum):
    PERSONALISED = "personalised"
    COLD_START = "cold_start"  # unknown member: the model scores an empty state
    NON_PERSONALISED = "non_personalised"  # consent off: priors only, nothing learned from the member
    FALLBACK = "fallback"  # degraded: Redis or model unavailable


@dataclass(frozen=True)
class Policy:
    max_per_category: int = 2
    min_kinds: int = 2
    epsilon: float = 0.0
    objective: obj.Objective = field(default_factory=obj.Objective)
    reasons: ReasonRules = field(default_factory=ReasonRules)
    #: Withhold strictly worse versions of an offer family than a lower tier gets (service.fairness_guard).
    fairness_guard: bool = False
    #: "epsilon": greedy, a uniform pick w.p. ``epsilon``; "softmax": Plackett-Luce sampling, each position
    #: drawn w.p. exp(score / temperature) among the offers the slate rules still allow.
    exploration: str = "epsilon"
    #: Softmax temperature in score units (objective scores, currency per view: ~0.1-10 by default).
    temperature: float = 0.5

    @cached_property
    def slate_policy(self) -> slate.SlatePolicy:
        """The slate rules and exploration of this policy (``features.slate``)."""
        return slate.SlatePolicy(
            max_per_category=self.max_per_category,
            min_kinds=self.min_kinds,
            exploration=self.exploration,
            epsilon=self.epsilon,
            temperature=self.temperature,
        )


@dataclass
class RankedOffer:
    offer_id: str
    kind: str
    subtype: str
    title: str
    category: str | None
    value: float
    score: float
    position: int
    propensity: float
    reasons: list[dict[str, str]]
    #: What the storefront renders: threshold, validity end, display text, image key.
    display: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.display,
            "offer_id": self.offer_id,
            "kind": self.kind,
            "subtype": self.subtype,
            "title": self.title,
            "category": self.category,
            "value": self.value,
            "score": self.score,
            "position": self.position,
            "propensity": self.propensity,
            "reasons": self.reasons,
        }


@dataclass
class Ranking:
    items: list[RankedOffer]
    candidates: int
    eligible: int
    excluded: list[dict[str, str]] | None = None
    #: Eligible offers the fairness guard withheld.
    guard_blocked: int = 0
    #: stage -> milliseconds (features, model, rerank)
    timings_ms: dict[str, float] = field(default_factory=dict)
    #: The offers ranked (indices into the snapshot) and their feature rows when a model scored them: a
    #: shadow model under the same feature specification rescores these rows (service.shadow).
    eligible_idx: np.ndarray | None = None
    x: np.ndarray | None = None


#: The English "why not shown" sentences (the catalogue in service/locales has every locale).
EXCLUSION_SENTENCES: dict[str, str] = {code: exclusion_text(code, "en") for code in RULES}
assert set(EXCLUSION_SENTENCES) == set(RULES)

_NONE = np.zeros(0, dtype=np.int64)


def _prior_scores(snap: CatalogSnapshot, eligible: np.ndarray) -> np.ndarray:
    """P(claim) without a model: the offer's smoothed claim-rate prior when the feature specification
    has one (the click-rate prior otherwise, else a constant)."""
    j = snap.table.prior_column("claim")
    if j is None:
        j = snap.table.prior_column("ctr")
    if j is None:
        return np.full(len(eligible), 0.02)
    return snap.table.static[eligible, j].astype(np.float64)


def rank(
    snap: CatalogSnapshot,
    state: MemberState,
    context: Context,
    now: float,
    limit: int,
    *,
    model: LoadedModel | None,
    mode: Mode,
    policy: Policy,
    explain: bool = False,
    rng: np.random.Generator | None = None,
    locale: str = "en",
    rules_only: bool = False,
) -> Ranking:
    """Rank the snapshot's offers for one member. ``model`` is used only in the personalised modes.

    ``rules_only`` (an experiment baseline): no learned or prior score, only value, pacing and the rules.
    """
    t0 = time.perf_counter()
    reason = evaluate(
        snap.elig,
        snap.table.index,
        state,
        context,
        now,
        snap.claimed,
        snap.cost_used,
    )
    eligible = np.flatnonzero(reason < 0)
    guarded = fg.blocked(snap, reason, eligible, state, context, now) if policy.fairness_guard else _NONE
    if len(guarded):
        eligible = np.setdiff1d(eligible, guarded, assume_unique=True)
    personal = mode in (Mode.PERSONALISED, Mode.COLD_START) and model is not None
    x: np.ndarray | None = None
    if personal and len(eligible):
        x = rows(state, snap.table, context, now, only=eligible)  # eligible offers' rows alone
    t1 = time.perf_counter()
    if rules_only:
        base = np.ones(len(eligible))
    elif x is not None and model is not None:
        base = model.predict(x).astype(np.float64)
    else:
        base = _prior_scores(snap, eligible)
    t2 = time.perf_counter()
    score = objective_scores(snap, eligible, base, now, policy.objective)
    picks = _slate(snap, eligible, score, limit, policy, rng)
    items = []
    for pos, (j, prop) in enumerate(picks):
        i = int(eligible[j])
        o = snap.offers[i]
        facts = OfferFacts(
            float(snap.value_norm[i]),
            float(snap.claimed[i]),
            float(snap.impressions[i]),
            float(snap.claims[i]),
        )
        items.append(
            RankedOffer(
                offer_id=o.offer_id,
                kind=o.kind,
                subtype=o.subtype,
                title=o.title,
                category=o.category,
                value=o.value,
                score=round(float(score[j]), 6),
                position=pos,
                # Six significant digits, not decimals: a softmax propensity can be far below 1e-6.
                propensity=float(f"{prop:.6g}"),
                reasons=reasons(o, facts, state if personal else None, context, now, policy.reasons, locale),
                display=o.storefront_fields(),
            )
        )
    excluded = None
    if explain:
        excluded = [
            {
                "offer_id": snap.offers[i].offer_id,
                "reason": RULES[r],
                "text": exclusion_text(RULES[r], locale),
            }
            for i, r in enumerate(reason.tolist())
            if r >= 0
        ]
        text = exclusion_text("fairness_guard", locale)
        excluded += [
            {"offer_id": snap.offers[i].offer_id, "reason": "fairness_guard", "text": text}
            for i in guarded.tolist()
        ]
    t3 = time.perf_counter()
    return Ranking(
        items=items,
        candidates=len(snap),
        eligible=len(eligible),
        excluded=excluded,
        guard_blocked=len(guarded),
        timings_ms={"features": (t1 - t0) * 1e3, "model": (t2 - t1) * 1e3, "rerank": (t3 - t2) * 1e3},
        eligible_idx=eligible,
        x=x,
    )


def rescore(
    snap: CatalogSnapshot, eligible: np.ndarray, p: np.ndarray, now: float, limit: int, policy: Policy
) -> list[tuple[str, float]]:
    """The greedy slate (offer id, score) of another model's probabilities ``p`` for the offers
    ``eligible`` that a ranking already found eligible: the objective and the slate rules, no reasons."""
    score = objective_scores(snap, eligible, p.astype(np.float64), now, policy.objective)
    return [
        (snap.offers[int(eligible[j])].offer_id, round(float(score[j]), 6))
        for j, _ in _slate(snap, eligible, score, limit, policy, None)
    ]


def objective_scores(
    snap: CatalogSnapshot, eligible: np.ndarray, p: np.ndarray, now: float, objective: obj.Objective
) -> np.ndarray:
    """The objective (``service.objective.score``) of the ``eligible`` offers, claim probability ``p``."""
    time_left = obj.time_left_share(snap.campaign_end[eligible], snap.campaign_inv_duration[eligible], now)
    pace = obj.pacing(snap.budget_left[eligible], time_left, objective)
    return obj.score(p, snap.table.value[eligible], snap.table.cost[eligible], pace, objective)


def _slate(
    snap: CatalogSnapshot,
    eligible: np.ndarray,
    score: np.ndarray,
    limit: int,
    policy: Policy,
    rng: np.random.Generator | None,
) -> list[tuple[int, float]]:
    """The slate (``features.slate``): (index into ``eligible``, propensity) per position."""
    cand = slate.Candidates(
        score=score,
        pinned=snap.pinned[eligible],
        kinds=snap.table.kind_idx[eligible],
        categories=snap.table.category_idx[eligible],
        families=snap.elig.family_idx[eligible],
    )
    return slate.select(cand, limit, policy.slate_policy, rng)
