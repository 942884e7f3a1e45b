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
from typing import Any

import numpy as np

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
        lifecycle=policy.reasons.lifecycle,
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
    )


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
    """Greedy slate: (index into ``eligible``, propensity) per position."""
    n = len(eligible)
    if n == 0:
        return []
    pinned = snap.pinned[eligible]
    kinds = snap.table.kind_idx[eligible]
    cats = snap.table.category_idx[eligible]
    families = snap.elig.family_idx[eligible]
    # Pinned first, then by score; stable on the catalog order (offer id) for ties.
    order = np.lexsort((-score, ~pinned)).tolist()
    limit = min(limit, n)
    need_kinds = min(policy.min_kinds, limit, len(set(kinds.tolist())))
    kinds_l, cats_l, pinned_l, fam_l = kinds.tolist(), cats.tolist(), pinned.tolist(), families.tolist()
    kinds_in: set[int] = set()
    families_in: set[int] = set()
    per_cat: dict[int, int] = {}
    picks: list[tuple[int, float]] = []
    taken: set[int] = set()

    def allowed(j: int) -> bool:
        if j in taken or fam_l[j] in families_in:
            return False  # one offer per family, pinned or not: two clones are one offer to the member
        if pinned_l[j]:
            return True  # pinned offers bypass the mix and category rules (they still count toward them)
        # "No category" is one more category (table.no_category): it obeys the cap like the others.
        if per_cat.get(cats_l[j], 0) >= policy.max_per_category:
            return False
        missing = need_kinds - len(kinds_in)
        return not (missing > 0 and missing >= limit - len(picks) and kinds_l[j] in kinds_in)

    softmax = policy.exploration == "softmax"
    explore = rng is not None and (softmax or policy.epsilon > 0.0)

    def _take(j: int) -> None:
        taken.add(j)
        families_in.add(fam_l[j])
        kinds_in.add(kinds_l[j])
        c = cats_l[j]
        per_cat[c] = per_cat.get(c, 0) + 1

    while len(picks) < limit:
        best = next((j for j in order if allowed(j)), None)
        if best is None:
            break
        chosen, prop = best, 1.0
        if explore and not pinned_l[best]:
            valid = [j for j in order if allowed(j) and not pinned_l[j]]
            assert rng is not None
            if softmax:
                # Plackett-Luce: this position's draw among what the rules allow; its probability is
                # the propensity given the items above (stable: shift by the maximum first).
                z = score[valid] / policy.temperature
                w = np.exp(z - z.max())
                w /= w.sum()
                k = int(rng.choice(len(valid), p=w))
                picks.append((valid[k], float(w[k])))
                _take(valid[k])
                continue
            if rng.random() < policy.epsilon:
                chosen = valid[int(rng.integers(len(valid)))]
            # P(chosen) under epsilon-greedy: the greedy pick w.p. 1-eps, plus a uniform draw w.p. eps.
            prop = (1.0 - policy.epsilon) * (chosen == best) + policy.epsilon / len(valid)
        picks.append((chosen, prop))
        _take(chosen)
    return picks
