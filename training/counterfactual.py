"""``benefits evaluate``: a model version's online value estimated from logged slates, and the promotion
gate built on it.

What it reads (``--logs``, the same inputs as ``benefits train``, through ``training.sources.load_source``):

- a **simulation directory** (``benefits simulate --offpolicy-log`` adds what the best estimates need:
  each impression's ``propensity_marginal`` and ``candidates.parquet`` with every eligible offer and its
  true claim probability, the oracle);
- a **bring-your-own impressions table** (CSV/Parquet) with a ``propensity`` column (and optionally
  ``propensity_marginal``), with its event log (``--events``);
- an **archive directory** (``benefits archive``): impression events carry position and propensity,
  but not the page context, so rows get the default context (a weaker evaluation).

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
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from features import objective as obj
from features import slate
from features.eligibility import EligibilityTable, evaluate
from features.projection import OfferTable, rows
from features.spec import spec_mismatch
from infra.registry import Registry
from infra.settings import Settings
from training import counterfactual_policy as cp
from training import dataset, export
from training.offpolicy import (
    Estimate,
    SlotLog,
    SlotTarget,
    slot_estimates,
    unmatched_slots,
    view_difference,
    view_estimates,
)
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


def _check_propensities(df: pd.DataFrame, column: str, source: str) -> None:
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


def _load(logs: Path, options: Options) -> tuple[Any, pd.DataFrame | None]:
    from training.sources import load_source

    src = load_source(Path(logs), options.events, catalog=options.catalog)
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
    _check_propensities(imp, PROPENSITY, str(logs))
    if MARGINAL in imp.columns:
        _check_propensities(imp, MARGINAL, str(logs))
    src.impressions = imp
    cand_path = Path(logs) / CANDIDATES_FILE
    candidates = pd.read_parquet(cand_path) if Path(logs).is_dir() and cand_path.exists() else None
    return src, candidates


def _mean_interval(x: np.ndarray, alpha: float) -> dict[str, float]:
    n = len(x)
    mean = float(x.mean()) if n else float("nan")
    se = float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    z = float(stats.norm.ppf(1 - alpha / 2))
    return {"estimate": mean, "ci_low": mean - z * se, "ci_high": mean + z * se, "n": n}


def run(
    settings: Settings, logs: Path, candidate: str, baseline: str = "promoted", options: Options | None = None
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
    src, cand_table = _load(logs, o)
    spec = src.spec
    scorers = {
        "candidate": _scorer(registry, versions["candidate"], spec, "policy"),
        "baseline": _scorer(registry, versions["baseline"], spec, "baseline"),
    }
    offers = sorted(src.offers, key=lambda x: x.offer_id)  # the service's snapshot order (ties)
    notes: list[str] = []

    # Pass 1: the logged rows, as training builds them; the reward model on them.
    ts = dataset.build(src.impressions, src.events, offers, spec=spec)
    frame = ts.frame
    slot_all = frame.groupby("group").cumcount().to_numpy()
    members = frame["member_id"].astype(str).to_numpy()
    folds = np.array([cp.member_fold(m) for m in members])
    reward = cp.RewardModel(ts.X, ts.y, folds, slot_all)
    sequential = MARGINAL not in frame.columns
    if sequential:
        notes.append(
            f"no {MARGINAL!r} column: the sequential (per-decision) estimator, from the conditional "
            "propensities; for a greedy policy only views whose logged offers above a slot are the "
            "policy's own count for that slot, so slots below the first are noisy. Log each shown "
            "offer's marginal probability at its position for the position-based estimator."
        )

    # Pass 2: every view's eligible offers, scored by both policies and the reward model.
    table = OfferTable(offers, spec)
    elig_table = EligibilityTable(offers)
    replay = dataset.Replay(frame, src.events, table)
    offer_idx = frame["offer_id"].map(table.index).to_numpy(dtype=np.int64)
    by_request: dict[str, np.ndarray] = {}
    truth: dict[str, np.ndarray] = {}
    if cand_table is not None:
        known = cand_table[cand_table["offer_id"].isin(table.index)]
        rid_col = known["request_id"].astype(str).to_numpy()
        off_col = known["offer_id"].map(table.index).to_numpy(dtype=np.int64)
        tp_col = known["true_p"].to_numpy(dtype=np.float64) if "true_p" in known.columns else None
        order = np.lexsort((off_col, rid_col))
        rid_col, off_col = rid_col[order], off_col[order]
        cuts = np.flatnonzero(np.r_[True, rid_col[1:] != rid_col[:-1], True])
        for a, b in zip(cuts[:-1].tolist(), cuts[1:].tolist(), strict=True):
            by_request[str(rid_col[a])] = off_col[a:b]
            if tp_col is not None:
                truth[str(rid_col[a])] = tp_col[order[a:b]]
        notes.append(f"eligible offers per view as logged in {CANDIDATES_FILE}")
    request_ids = frame["request_id"].astype(str).to_numpy()
    prior = table.prior_column("claim")
    prior = table.prior_column("ctr") if prior is None else prior
    end, inv_duration = obj.campaign_windows(offers)
    budget_cache: dict[float, np.ndarray] = {}
    objective = obj.Objective(
        claim_value=settings.objective_claim_value,
        value_weight=settings.value_weight,
        cost_weight=settings.cost_weight,
        pacing_floor=settings.pacing_floor,
        pacing_reserve_fraction=settings.pacing_reserve_fraction,
    )
    worth_all = (
        objective.claim_value + objective.value_weight * table.value - objective.cost_weight * table.cost
    )
    views: list[dict[str, Any]] = [{} for _ in range(len(replay))]
    chunk: list[tuple[int, np.ndarray]] = []
    chunk_rows = 0

    def score_chunk() -> None:
        if not chunk:
            return
        X = np.concatenate([x for _, x in chunk])
        sizes = np.cumsum([0, *[len(x) for _, x in chunk]])
        preds = {}
        for role, sc in scorers.items():
            if sc.session is not None:
                preds[role] = export.onnx_predict(sc.session, X)
        fold_rows = np.concatenate([np.full(len(x), views[r]["fold"]) for r, x in chunk])
        q0 = np.zeros(len(X))
        for f in range(len(reward.models)):
            m = fold_rows == f
            q0[m] = reward.predict(f, X[m])
        for (r, _), a, b in zip(chunk, sizes[:-1], sizes[1:], strict=True):
            v = views[r]
            v["q0"] = q0[a:b]
            for role, sc in scorers.items():
                v[role] = preds[role][a:b] if sc.session is not None else v["prior"]
        chunk.clear()

    for r, state in replay:
        t, ctx, bucket = float(replay.ts[r]), replay.contexts[r], float(replay.bucket[r])
        s, e = int(replay.starts[r]), int(replay.ends[r])
        claims = replay.claims[bucket]
        if bucket not in budget_cache:
            budget_cache[bucket] = obj.shares_left(offers, claims * table.cost)
        rid = request_ids[s]
        if rid in by_request:
            eligible = by_request[rid]
        else:
            reason = evaluate(elig_table, table.index, state, ctx, t, claims, claims * table.cost)
            eligible = np.flatnonzero(reason < 0)
        need = np.union1d(eligible, offer_idx[s:e])
        pace = obj.pacing(
            budget_cache[bucket][need], obj.time_left_share(end[need], inv_duration[need], t), objective
        )
        views[r] = {
            "need": need,
            "eligible": np.isin(need, eligible),
            "pace": pace,
            "prior": table.static[need, prior].astype(np.float64)
            if prior is not None
            else np.full(len(need), 0.02),
            "fold": cp.member_fold(str(replay.member[r])),
            "rid": rid,
        }
        chunk.append((r, rows(state, table, ctx, t, only=need)))
        chunk_rows += len(need)
        if chunk_rows >= CHUNK_ROWS:
            score_chunk()
            chunk_rows = 0
    score_chunk()

    # The policies' probabilities of the logged slots, per view.
    policy = slate.SlatePolicy(
        max_per_category=settings.slate_max_per_category,
        min_kinds=settings.slate_min_kinds,
        exploration="softmax" if o.temperature is not None else "epsilon",
        temperature=o.temperature if o.temperature is not None else 0.5,
    )
    explore = o.temperature is not None
    if settings.fairness_guard_enabled:
        notes.append("the fairness guard is on in the settings but not applied here: slates may differ")
    rng = np.random.default_rng(o.seed)
    pinned = np.array([x.pinned for x in offers], dtype=bool)
    rows_view, rows_slot, rows_claim, rows_value, rows_plog = [], [], [], [], []
    targets: dict[str, dict[str, list[np.ndarray]]] = {
        role: {"p": [], "qc": [], "qv": [], "dc": [], "dv": []} for role in scorers
    }
    oracle: dict[str, list[tuple[float, float]]] = {role: [] for role in scorers}
    logged_truth: list[float] = []
    has_truth = bool(truth) and len(truth) == len(views)
    true_col = frame["true_p"].to_numpy(dtype=np.float64) if "true_p" in frame.columns else None
    label = frame["label"].to_numpy(dtype=np.float64)
    p_cond_all = frame[PROPENSITY].to_numpy(dtype=np.float64)
    p_marg_all = None if sequential else frame[MARGINAL].to_numpy(dtype=np.float64)
    capped = 0
    for r, v in enumerate(views):
        s, e = int(replay.starts[r]), int(replay.ends[r])
        n_slots = e - s if o.k is None else min(o.k, e - s)
        capped += (e - s) - n_slots
        e = s + n_slots
        need, elig = v["need"], v["eligible"]
        el = need[elig]
        pos_in_el = {int(i): j for j, i in enumerate(el.tolist())}
        logged = [pos_in_el.get(int(i), -1) for i in offer_idx[s:e]]
        need_pos = np.searchsorted(need, offer_idx[s:e])
        factor = reward.slot_factor(v["fold"], n_slots)
        q_logged = v["q0"][need_pos] * factor
        worth_logged = worth_all[offer_idx[s:e]]
        tp = truth[v["rid"]] if has_truth else None  # aligned with el: both the logged set, sorted
        for role in scorers:
            score = obj.score(v[role][elig], table.value[el], table.cost[el], v["pace"][elig], objective)
            cand = slate.Candidates(
                score=score,
                pinned=pinned[el],
                kinds=table.kind_idx[el],
                categories=table.category_idx[el],
                families=elig_table.family_idx[el],
            )
            vt = cp.view_targets(
                cand, logged, p_cond_all[s:e], policy, explore, sequential,
                v["q0"][elig], worth_all[el], factor, rng, tp,
            )  # fmt: skip
            tg = targets[role]
            tg["p"].append(vt.p_target)
            tg["qc"].append(q_logged)
            tg["qv"].append(q_logged * worth_logged)
            tg["dc"].append(vt.dm_claims)
            tg["dv"].append(vt.dm_value)
            if vt.oracle is not None:
                oracle[role].append(vt.oracle)
        rows_view.append(np.full(n_slots, r))
        rows_slot.append(np.arange(n_slots))
        rows_claim.append(label[s:e])
        rows_value.append(label[s:e] * worth_logged)
        rows_plog.append(np.cumprod(p_cond_all[s:e]) if p_marg_all is None else p_marg_all[s:e])
        if true_col is not None:
            logged_truth.append(float(true_col[s:e].sum()))
    if capped:
        notes.append(
            f"--k {o.k}: {capped} logged slots below position {o.k} left out (the policy shows {o.k})"
        )

    n_views = len(views)
    cat = np.concatenate
    view_idx, slots = cat(rows_view), cat(rows_slot)
    out: dict[str, Any] = {
        "logs": str(logs),
        "views": n_views,
        "slots": len(view_idx),
        "estimator": "sequential" if sequential else "position-based (marginal propensities)",
        "policy": {
            "exploration": "softmax" if explore else "greedy",
            "temperature": o.temperature,
            "k": o.k if o.k is not None else "as logged",
            "max_per_category": policy.max_per_category,
            "min_kinds": policy.min_kinds,
        },
        "alpha": o.alpha,
    }
    per_metric: dict[str, SlotLog] = {
        "claims_per_view": SlotLog(view_idx, slots, cat(rows_claim), cat(rows_plog), n_views),
        "value_per_view": SlotLog(view_idx, slots, cat(rows_value), cat(rows_plog), n_views),
    }
    tgt: dict[str, dict[str, SlotTarget]] = {}
    for role, tg in targets.items():
        tgt[role] = {
            "claims_per_view": SlotTarget(cat(tg["p"]), cat(tg["qc"]), cat(tg["dc"])),
            "value_per_view": SlotTarget(cat(tg["p"]), cat(tg["qv"]), cat(tg["dv"])),
        }

    def as_dict(est: dict[str, Estimate]) -> dict[str, Any]:
        return {k: e.as_dict() for k, e in est.items()}

    for role, sc in scorers.items():
        empty = unmatched_slots(per_metric["claims_per_view"], tgt[role]["claims_per_view"])
        if empty:
            notes.append(
                f"{role} {sc.label}: no logged slot at positions {empty} carries its weight (0 there)"
            )
        block: dict[str, Any] = {"policy": sc.label}
        for metric, sl in per_metric.items():
            block[metric] = as_dict(view_estimates(sl, tgt[role][metric], o.alpha))
        if oracle[role]:
            orc = np.asarray(oracle[role])
            block["oracle"] = {
                "claims_per_view": float(orc[:, 0].mean()),
                "value_per_view": float(orc[:, 1].mean()),
            }
        out[role] = block
    diff: dict[str, Any] = {}
    for metric, sl in per_metric.items():
        diff[metric] = as_dict(
            view_difference(sl, tgt["candidate"][metric], tgt["baseline"][metric], o.alpha)
        )
    if "oracle" in out["candidate"] and "oracle" in out["baseline"]:
        diff["oracle"] = {m: out["candidate"]["oracle"][m] - out["baseline"]["oracle"][m] for m in per_metric}
    out["difference"] = diff
    logging_policy: dict[str, Any] = {
        metric: _mean_interval(np.bincount(sl.view, weights=sl.reward, minlength=n_views), o.alpha)
        for metric, sl in per_metric.items()
    }
    if logged_truth:
        logging_policy["oracle"] = {"claims_per_view": float(np.mean(logged_truth))}
    out["logging_policy"] = logging_policy
    out["per_slot"] = slot_estimates(
        per_metric["claims_per_view"], tgt["candidate"]["claims_per_view"], o.alpha
    )
    out["notes"] = notes
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out
