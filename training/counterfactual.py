"""``benefits evaluate``: a model version's online value estimated from logged slates, and the promotion
gate built on it.

What it reads (``--logs``, the same inputs as ``benefits train``, through ``training.sources.load_source``):

- a **simulation directory** (``benefits simulate --offpolicy-log`` adds what the best estimates need:
  each impression's ``propensity_marginal`` and ``candidates.parquet`` with every eligible offer and its
  true claim probability, the oracle);
- a **bring-your-own impressions table** (CSV/Parquet) with a ``propensity`` column (and optionally
  ``propensity_marginal``), with its event log (``--events``);
- an **archive directory** (``benefits archive``): its impression events carry position, propensity
  and the page context the storefront reported (an impression without a propensity is refused).

The service's ``recommend`` log line is *not* accepted: it is sampled, it names the member only by a
salted hash (no point-in-time state can be rebuilt for it), and it has neither the page's category nor
the outcomes. The impression events the storefront reports (``POST /v1/feedback``, archived) carry what
is needed.

How: the point-in-time state of every logged view is rebuilt by the training code
(:class:`training.dataset.Replay`, the shared fold); the eligible offers are the logged candidates when
the log has them, else eligibility is evaluated on that state (stock and budget from the claims before
the statistics refresh, as the service sees them); the candidate version (and the baseline) score them
through onnxruntime from the registry, as serving does; scores become the service's objective
(``features.objective``) and its slate policy (``features.slate``: greedy top-k, or ``--temperature``
Plackett-Luce sampling, with the slate rules); the policy's probabilities of the logged slots
(:mod:`training.counterfactual_policy`) feed IPS, SNIPS and doubly robust estimates per view with
intervals over views (:mod:`training.offpolicy`), for claims per view and value per view, for the
candidate, the baseline and their paired difference.

Slot-aware: with ``propensity_marginal`` every position is its own decision with its marginal
probability (position-based estimator); with the conditional ``propensity`` only (what the service
logs), the sequential per-decision estimator, exact but noisy below the first slot for a greedy
candidate (a note says so).

Value per view: each claim is worth ``objective_claim_value + value_weight * value - cost_weight * cost``
(the objective's own currency, without pacing).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features import objective as obj
from features import slate
from features.eligibility import EligibilityTable, evaluate
from features.projection import OfferTable, rows
from features.spec import load_spec, spec_mismatch
from infra.registry import Registry
from infra.settings import Settings
from training import counterfactual_policy as cp
from training import dataset, export
from training.counterfactual_estimates import Slots, estimates
from training.sim_offpolicy import CANDIDATES_FILE

log = logging.getLogger(__name__)

PROPENSITY = "propensity"
MARGINAL = "propensity_marginal"
#: Rows scored per ONNX / reward-model call.
CHUNK_ROWS = 50_000


class EvaluationError(ValueError):
    """Logs, versions or options that cannot be evaluated, with what and where."""


@dataclass(frozen=True)
class Options:
    k: int | None = None
    temperature: float | None = None
    alpha: float = 0.05
    seed: int = 0
    events: Path | None = None
    catalog: Path | None = None


@dataclass
class _Scorer:
    label: str
    version: str | None  # None: the popularity baseline (the offer's smoothed claim prior)
    session: Any = None


def _resolve(registry: Registry, which: str, role: str) -> str | None:
    """The model version ``which`` names (None for the popularity baseline), checked to exist."""
    if which == "popularity":
        return None
    version = which
    if which == "promoted":
        promoted = registry.promoted()
        if promoted is None:
            raise EvaluationError(
                f"--{role} promoted: no model is promoted in {registry.root}; pass a version or popularity"
            )
        version = promoted
    if version not in registry.versions():
        raise EvaluationError(f"--{role}: model version {version!r} is not in the registry ({registry.root})")
    return version


def _scorer(registry: Registry, version: str | None, spec: Any, role: str) -> _Scorer:
    if version is None:
        return _Scorer("popularity", None)
    sess = export.session(registry.model_path(version).read_bytes())
    why = spec_mismatch(dict(sess.get_modelmeta().custom_metadata_map), spec)
    if why is not None:
        raise EvaluationError(f"--{role}: model {version} does not fit these logs' features: {why}")
    return _Scorer(version, version, sess)


def check_propensities(df: pd.DataFrame, column: str, source: str) -> None:
    values = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values) | (values <= 0) | (values > 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise EvaluationError(
            f"{source}: column {column!r} must be a probability in (0, 1] on every impression; "
            f"{int(bad.sum())} of {len(df)} are missing, zero, NaN or above 1 (first: request "
            f"{df['request_id'].iloc[i]!r}, offer {df['offer_id'].iloc[i]!r}, value {df[column].iloc[i]!r}); "
            "a shown offer with no known probability cannot be reweighted"
        )


def _load(settings: Settings, logs: Path, options: Options) -> tuple[Any, pd.DataFrame | None]:
    from training.sources import load_source

    # The service's feature specification (settings, the programme's lifecycle configuration; the
    # catalogue's taxonomy is applied by load_source): a version built for another one is refused.
    spec = load_spec(settings.feature_spec_path).with_lifecycle(settings.lifecycle)
    src = load_source(Path(logs), options.events, catalog=options.catalog, spec=spec)
    imp = src.impressions
    if len(imp) == 0:
        raise EvaluationError(f"{logs}: no logged impressions")
    if PROPENSITY not in imp.columns:
        raise EvaluationError(
            f"{logs}: the logged impressions have no {PROPENSITY!r} column (the logging policy's probability "
            "of each shown offer at its position given the offers above it, as the service logs it on "
            "impression events); counterfactual estimates need it"
        )
    if "request_id" not in imp.columns:
        imp = dataset.prepare_impressions(imp, src.offers).drop(columns=["group"])
    check_propensities(imp, PROPENSITY, str(logs))
    if MARGINAL in imp.columns:
        check_propensities(imp, MARGINAL, str(logs))
    src.impressions = imp
    cand_path = Path(logs) / CANDIDATES_FILE
    candidates = pd.read_parquet(cand_path) if Path(logs).is_dir() and cand_path.exists() else None
    return src, candidates


def _objective(settings: Settings) -> obj.Objective:
    return obj.Objective(
        claim_value=settings.objective_claim_value,
        value_weight=settings.value_weight,
        cost_weight=settings.cost_weight,
        pacing_floor=settings.pacing_floor,
        pacing_reserve_fraction=settings.pacing_reserve_fraction,
    )


def _logged_candidates(
    cand_table: pd.DataFrame, table: OfferTable
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per request id: its eligible offers as logged (indices into ``table``, sorted) and, when the log
    has them, their true claim probabilities (aligned)."""
    by_request: dict[str, np.ndarray] = {}
    truth: dict[str, np.ndarray] = {}
    known = cand_table[cand_table["offer_id"].isin(table.index)]
    rid = known["request_id"].astype(str).to_numpy()
    off = known["offer_id"].map(table.index).to_numpy(dtype=np.int64)
    tp = known["true_p"].to_numpy(dtype=np.float64) if "true_p" in known.columns else None
    order = np.lexsort((off, rid))
    rid, off = rid[order], off[order]
    cuts = np.flatnonzero(np.r_[True, rid[1:] != rid[:-1], True])
    for a, b in zip(cuts[:-1].tolist(), cuts[1:].tolist(), strict=True):
        by_request[str(rid[a])] = off[a:b]
        if tp is not None:
            truth[str(rid[a])] = tp[order[a:b]]
    return by_request, truth


@dataclass
class _Scored:
    """Pass 2's output: per view, the offers it needs (eligible and logged, sorted indices into the
    table), which of them are eligible, their pacing, the popularity prior, the reward model's claim
    probability (``q0``) and each scorer's probability (by role), and the member's fold."""

    views: list[dict[str, Any]]
    replay: dataset.Replay
    offer_idx: np.ndarray


def _score_views(
    settings: Settings,
    frame: pd.DataFrame,
    src: Any,
    offers: list[Any],
    table: OfferTable,
    elig_table: EligibilityTable,
    scorers: dict[str, _Scorer],
    reward: cp.RewardModel,
    by_request: dict[str, np.ndarray],
) -> _Scored:
    """Replay every logged view (training's point-in-time state), find its eligible offers (as logged,
    else by eligibility on that state), build their feature rows and score them in chunks."""
    replay = dataset.Replay(frame, src.events, table)
    offer_idx = frame["offer_id"].map(table.index).to_numpy(dtype=np.int64)
    request_ids = frame["request_id"].astype(str).to_numpy()
    prior = table.prior_column("claim")
    prior = table.prior_column("ctr") if prior is None else prior
    end, inv_duration = obj.campaign_windows(offers)
    objective = _objective(settings)
    budget_cache: dict[float, np.ndarray] = {}
    views: list[dict[str, Any]] = [{} for _ in range(len(replay))]
    chunk: list[tuple[int, np.ndarray]] = []

    def score_chunk() -> None:
        if not chunk:
            return
        X = np.concatenate([x for _, x in chunk])
        sizes = np.cumsum([0, *[len(x) for _, x in chunk]])
        preds = {role: export.onnx_predict(sc.session, X) for role, sc in scorers.items() if sc.session}
        fold_rows = np.concatenate([np.full(len(x), views[r]["fold"]) for r, x in chunk])
        q0 = np.zeros(len(X))
        for f in range(len(reward.models)):
            m = fold_rows == f
            q0[m] = reward.predict(f, X[m])
        for (r, _), a, b in zip(chunk, sizes[:-1], sizes[1:], strict=True):
            v = views[r]
            v["q0"] = q0[a:b]
            for role in scorers:
                v[role] = preds[role][a:b] if role in preds else v["prior"]
        chunk.clear()

    rows_pending = 0
    for r, state in replay:
        t, ctx, bucket = float(replay.ts[r]), replay.contexts[r], float(replay.bucket[r])
        s, e = int(replay.starts[r]), int(replay.ends[r])
        claims = replay.claims[bucket]  # stock and budget use as of the statistics refresh
        if bucket not in budget_cache:
            budget_cache[bucket] = obj.shares_left(offers, claims * table.cost)
        rid = request_ids[s]
        if rid in by_request:
            eligible = by_request[rid]
        else:
            reason = evaluate(elig_table, table.index, state, ctx, t, claims, claims * table.cost)
            eligible = np.flatnonzero(reason < 0)
        need = np.union1d(eligible, offer_idx[s:e])
        time_left = obj.time_left_share(end[need], inv_duration[need], t)
        views[r] = {
            "need": need,
            "eligible": np.isin(need, eligible),
            "pace": obj.pacing(budget_cache[bucket][need], time_left, objective),
            "prior": (
                table.static[need, prior].astype(np.float64)
                if prior is not None
                else np.full(len(need), 0.02)
            ),
            "fold": cp.member_fold(str(replay.member[r])),
            "rid": rid,
        }
        chunk.append((r, rows(state, table, ctx, t, only=need)))
        rows_pending += len(need)
        if rows_pending >= CHUNK_ROWS:
            score_chunk()
            rows_pending = 0
    score_chunk()
    return _Scored(views, replay, offer_idx)


def _policy_slots(
    settings: Settings,
    o: Options,
    frame: pd.DataFrame,
    offers: list[Any],
    table: OfferTable,
    elig_table: EligibilityTable,
    scored: _Scored,
    roles: list[str],
    reward: cp.RewardModel,
    truth: dict[str, np.ndarray],
    policy: slate.SlatePolicy,
    sequential: bool,
) -> Slots:
    """Each role's policy on each logged view (the objective of its scores, the slate rules): its
    probabilities of the logged slots and the reward model's value of its slate."""
    objective = _objective(settings)
    worth = objective.claim_value + objective.value_weight * table.value - objective.cost_weight * table.cost
    explore = o.temperature is not None
    rng = np.random.default_rng(o.seed)
    pinned = np.array([x.pinned for x in offers], dtype=bool)
    has_truth = bool(truth) and len(truth) == len(scored.views)
    true_col = frame["true_p"].to_numpy(dtype=np.float64) if "true_p" in frame.columns else None
    label = frame["label"].to_numpy(dtype=np.float64)
    p_cond = frame[PROPENSITY].to_numpy(dtype=np.float64)
    p_marg = None if sequential else frame[MARGINAL].to_numpy(dtype=np.float64)
    out = Slots([], [], [], [], [], {r: {k: [] for k in ("p", "qc", "qv", "dc", "dv")} for r in roles},
                 {r: [] for r in roles}, [])  # fmt: skip
    for r, v in enumerate(scored.views):
        s, e = int(scored.replay.starts[r]), int(scored.replay.ends[r])
        n_slots = e - s if o.k is None else min(o.k, e - s)
        out.capped += (e - s) - n_slots
        e = s + n_slots
        shown = scored.offer_idx[s:e]
        need, elig = v["need"], v["eligible"]
        el = need[elig]
        pos_in_el = {int(i): j for j, i in enumerate(el.tolist())}
        logged = [pos_in_el.get(int(i), -1) for i in shown]
        factor = reward.slot_factor(v["fold"], n_slots)
        q_logged = v["q0"][np.searchsorted(need, shown)] * factor
        tp = truth[v["rid"]] if has_truth else None  # aligned with el: both the logged set, sorted
        for role in roles:
            cand = slate.Candidates(
                score=obj.score(v[role][elig], table.value[el], table.cost[el], v["pace"][elig], objective),
                pinned=pinned[el],
                kinds=table.kind_idx[el],
                categories=table.category_idx[el],
                families=elig_table.family_idx[el],
            )
            vt = cp.view_targets(
                cand,
                logged,
                p_cond[s:e],
                policy,
                explore,
                sequential,
                v["q0"][elig],
                worth[el],
                factor,
                rng,
                tp,
            )
            tg = out.targets[role]
            tg["p"].append(vt.p_target)
            tg["qc"].append(q_logged)
            tg["qv"].append(q_logged * worth[shown])
            tg["dc"].append(vt.dm_claims)
            tg["dv"].append(vt.dm_value)
            if vt.oracle is not None:
                out.oracle[role].append(vt.oracle)
        out.view.append(np.full(n_slots, r))
        out.slot.append(np.arange(n_slots))
        out.claim.append(label[s:e])
        out.value.append(label[s:e] * worth[shown])
        out.p_log.append(np.cumprod(p_cond[s:e]) if p_marg is None else p_marg[s:e])
        if true_col is not None:
            out.logged_truth.append(float(true_col[s:e].sum()))
    return out


def run(
    settings: Settings,
    logs: Path,
    candidate: str,
    baseline: str = "promoted",
    options: Options | None = None,
) -> dict[str, Any]:
    """Estimates for ``candidate`` and ``baseline`` (a version, ``promoted`` or ``popularity``) from
    ``logs`` (see the module docstring); the result as a JSON-able dict."""
    o = options or Options()
    t0 = time.perf_counter()
    if o.k is not None and o.k < 1:
        raise EvaluationError("--k must be at least 1")
    if o.temperature is not None and not o.temperature > 0:
        raise EvaluationError("--temperature must be above 0")
    registry = Registry(settings.registry_dir)
    versions = {
        "candidate": _resolve(registry, candidate, "policy"),
        "baseline": _resolve(registry, baseline, "baseline"),
    }
    src, cand_table = _load(settings, logs, o)
    scorers = {
        role: _scorer(registry, v, src.spec, "policy" if role == "candidate" else role)
        for role, v in versions.items()
    }
    offers = sorted(src.offers, key=lambda x: x.offer_id)  # the service's snapshot order (ties)
    notes: list[str] = []

    # Pass 1: the logged rows, as training builds them; the reward model on them.
    ts = dataset.build(src.impressions, src.events, offers, spec=src.spec)
    frame = ts.frame
    folds = np.array([cp.member_fold(m) for m in frame["member_id"].astype(str).tolist()])
    reward = cp.RewardModel(ts.X, ts.y, folds, frame.groupby("group").cumcount().to_numpy())
    sequential = MARGINAL not in frame.columns
    if sequential:
        notes.append(
            f"no {MARGINAL!r} column: the sequential estimator, from the conditional propensities; for a "
            "greedy policy only views whose logged offers above a slot are the policy's own count for "
            "that slot, so slots below the first are noisy. Log each shown offer's marginal probability "
            "at its position for the position-based estimator."
        )
    if settings.fairness_guard_enabled:
        notes.append("the fairness guard is on in the settings but not applied here: slates may differ")

    # Pass 2: every view's eligible offers, scored by both policies and the reward model.
    table = OfferTable(offers, src.spec)
    elig_table = EligibilityTable(offers, lifecycle=settings.lifecycle)
    by_request, truth = _logged_candidates(cand_table, table) if cand_table is not None else ({}, {})
    if cand_table is not None:
        notes.append(f"eligible offers per view as logged in {CANDIDATES_FILE}")
    scored = _score_views(settings, frame, src, offers, table, elig_table, scorers, reward, by_request)

    # The policies' probabilities of the logged slots, and the estimates.
    policy = slate.SlatePolicy(
        max_per_category=settings.slate_max_per_category,
        min_kinds=settings.slate_min_kinds,
        exploration="softmax" if o.temperature is not None else "epsilon",
        temperature=o.temperature if o.temperature is not None else 0.5,
    )
    roles = list(scorers)
    sl = _policy_slots(
        settings, o, frame, offers, table, elig_table, scored, roles, reward, truth, policy, sequential
    )
    if sl.capped:
        notes.append(
            f"--k {o.k}: {sl.capped} logged slots below position {o.k} left out (the policy shows {o.k})"
        )
    out: dict[str, Any] = {
        "logs": str(logs),
        "views": len(scored.views),
        "slots": int(sum(len(x) for x in sl.view)),
        "estimator": "sequential" if sequential else "position-based (marginal propensities)",
        "policy": {
            "exploration": "softmax" if o.temperature is not None else "greedy",
            "temperature": o.temperature,
            "k": o.k if o.k is not None else "as logged",
            "max_per_category": policy.max_per_category,
            "min_kinds": policy.min_kinds,
        },
        "alpha": o.alpha,
    }
    out.update(estimates(sl, {r: sc.label for r, sc in scorers.items()}, o.alpha, notes))
    out["notes"] = notes
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out
