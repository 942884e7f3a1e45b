"""One recommend request end to end: read the member's state (one Redis GET, under the deadline), pick the
ranking mode, rank in process, account for it (metrics, one structured log line), return the answer.

Degradation, never a 5xx for a valid request:

============================  ==============================================  ====================
situation                     answer                                          ``degraded_cause``
============================  ==============================================  ====================
Redis slow (over deadline)    non-personalised ranking of offers eligible     ``state_timeout``
                              for an anonymous regular member
Redis refusing / unreachable  same                                            ``state_unavailable``
breaker open                  same, Redis not tried                           cause that opened it
stored blob undecodable       same                                            ``state_corrupt``
no model loaded               non-personalised ranking (member's eligibility) ``no_model``
model raised                  same                                            ``model_error``
no catalog yet                empty list                                      ``no_catalog``
over max_in_flight (shed)     cached ranking for an anonymous member, default ``overloaded``
                              page context (``shed_answer``; no Redis, no model)
store lost its data           unknown members ranked as cold starts, flagged   ``state_lost``
                              (the store epoch marker vanished; infra.epoch_store)
============================  ==============================================  ====================

Unknown member: the model ranks an empty state (``cold_start``), not degraded. Consent off: priors
only (``non_personalised``), not degraded.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import orjson
from redis.exceptions import RedisError

from features.lifecycle import paid_active
from features.projection import Context
from features.state import MemberState, new_state
from infra.redis_failures import failure_cause
from infra.redis_layout import MemberStore, decode_member
from service.catalog import CatalogHolder, CatalogSnapshot
from service.experiment_runtime import ExperimentRuntime
from service.metrics import Metrics
from service.model import ModelHolder
from service.ranking import Mode, Policy, Ranking, rank
from service.request_log import sampled
from service.shadow import ShadowItem, ShadowScorer

log = logging.getLogger(__name__)
request_log = logging.getLogger("service.requests")


class Breaker:
    """Skip Redis for ``open_seconds`` after ``threshold`` consecutive failures.

    Without it a Redis that hangs costs every request its full read budget; with it most requests
    answer the fallback at once and one probe per interval finds out when Redis is back.

    Tuned on the load test: a stall of the event loop (not of Redis) times out a handful of
    concurrent reads at once; with 3 failures and 1 s open that turned ~500 answers at 500 rps into the
    fallback. 5 failures and 0.25 s keep a real outage cheap (a probe every 250 ms) and a stall small.
    """

    def __init__(self, threshold: int = 5, open_seconds: float = 0.25) -> None:
        self.threshold = threshold
        self.open_seconds = open_seconds
        self.failures = 0
        self.open_until = 0.0
        #: Degraded cause of the latest failure: what an answer skipped while open reports.
        self.cause = "state_unavailable"

    def allow(self, now: float) -> bool:
        return now >= self.open_until

    def success(self) -> None:
        self.failures = 0

    def failure(self, now: float, cause: str = "state_unavailable") -> None:
        self.cause = cause
        self.failures += 1
        if self.failures >= self.threshold:
            self.open_until = now + self.open_seconds
            self.failures = self.threshold - 1  # one more failure after the pause re-opens it


@dataclass(frozen=True)
class RecommendQuery:
    member_id: str
    context: Context
    limit: int
    explain: bool = False
    #: The language of reason and exclusion sentences (a supported tag of service.i18n.LOCALES).
    locale: str = "en"


def member_hash(salt: bytes, member_id: str) -> str:
    """Salted hash of a member id: the only form a member id takes in logs."""
    return hmac.new(salt, member_id.encode(), hashlib.sha256).hexdigest()[:16]


def response_body(
    request_id: str,
    model_version: str | None,
    mode: Mode,
    cause: str | None,
    snap: CatalogSnapshot | None,
    ranking: Ranking | None,
    explain: bool,
    arm: str | None = None,
) -> dict[str, Any]:
    """The one builder of a recommend answer (``service.schemas.RecommendResponse`` documents it)."""
    body: dict[str, Any] = {
        "request_id": request_id,
        "arm": arm,
        "model_version": model_version,
        "mode": mode.value,
        "degraded": cause is not None,
        "degraded_cause": cause,
        "catalog_version": snap.version if snap is not None else None,
        "candidates": ranking.candidates if ranking else 0,
        "eligible": ranking.eligible if ranking else 0,
        "offers": [it.as_dict() for it in ranking.items] if ranking else [],
    }
    if explain:
        body["excluded"] = ranking.excluded if ranking else []
    return body


class Recommender:
    def __init__(
        self,
        store: MemberStore,
        catalog: CatalogHolder,
        models: ModelHolder,
        metrics: Metrics,
        policy: Policy,
        deadline_ms: float,
        hash_salt: bytes,
        seed: int | None = None,
        default_limit: int = 5,
        default_locale: str = "en",
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.models = models
        self.metrics = metrics
        self.policy = policy
        self.deadline_s = deadline_ms / 1e3
        # The state read may use most of the deadline; the rest is for ranking (about a millisecond).
        self.read_budget_s = max(0.001, self.deadline_s * 0.8)
        self.salt = hash_salt
        self.breaker = Breaker()
        #: Set by the store epoch check (service.app) once Redis is found to have lost its data.
        self.state_lost = False
        self.rng = np.random.default_rng(seed)
        self.default_limit = default_limit
        self.default_locale = default_locale
        #: Share of ordinary (not degraded, not slow) requests that get a log line (service.request_log).
        self.log_sample_rate = 1.0
        #: (catalog version, minute) -> the shed answer's bytes; rebuilt when either changes.
        self._shed: tuple[tuple[int, int], bytes] | None = None
        #: The running experiment (set by the app's lifespan); None = every member gets the promoted model.
        self.experiments: ExperimentRuntime | None = None
        #: Scores the experiment's shadow model off the answer (set by the lifespan when logging is on).
        self.shadow: ShadowScorer | None = None

    def shed_answer(self) -> bytes:
        """The answer given to a recommend request refused by the in-flight limit: a 200 with the
        non-personalised ranking for an anonymous member on the home page, flagged ``overloaded``.

        Built once per catalog version and minute (validity windows move), so a shed costs a dict
        lookup and no I/O: under overload the storefront still fills its slots instead of getting 503s.
        Per-member caps are unknown here, which is the price of answering without reading the state.
        """
        snap = self.catalog.current
        now = time.time()
        key = (snap.version if snap is not None else -1, int(now // 60))
        if self._shed is not None and self._shed[0] == key:
            return self._shed[1]
        ranking = None
        if snap is not None:
            ranking = rank(
                snap, new_state("anonymous"), Context(), now, self.default_limit,
                model=None, mode=Mode.FALLBACK, policy=self.policy, locale=self.default_locale,
            )  # fmt: skip
        body = orjson.dumps(
            response_body("shed", None, Mode.FALLBACK, "overloaded", snap, ranking, explain=False)
        )
        self._shed = (key, body)
        return body

    async def read_state(self, member_id: str) -> tuple[MemberState | None, str | None]:
        """(state or None for an unknown member, degraded cause or None)."""
        now = time.monotonic()
        if not self.breaker.allow(now):
            # Not tried: the answer carries the cause of the failures that opened the breaker.
            return None, self.breaker.cause
        try:
            async with asyncio.timeout(self.read_budget_s):
                raw = await self.store.get_member_raw(member_id)
        except (TimeoutError, RedisError, OSError) as exc:
            # The deadline's TimeoutError may hide refused connections retried into it: classify by
            # what the attempts met (infra.redis_failures), not by which exception surfaced.
            cause = f"state_{failure_cause(self.store, exc, now)}"
            self.breaker.failure(time.monotonic(), cause)
            log.debug("state read failed (%s): %r", cause, exc)
            return None, cause
        self.breaker.success()
        if raw is None:
            return None, None
        try:
            return decode_member(raw).state, None
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None, "state_corrupt"

    async def recommend(
        self, q: RecommendQuery, now: float | None = None, *, account: bool = True
    ) -> dict[str, Any]:
        """The answer for ``q``; ``account=False`` (an operator's preview) skips metrics and the log line."""
        t0 = time.perf_counter()
        request_id = uuid.uuid4().hex
        now = time.time() if now is None else now
        state, cause = await self.read_state(q.member_id)
        # The member's groups as ranking saw them, for the fairness audit (benefits fairness): two coarse
        # programme attributes, no region, segment or declared attribute (those are joined offline).
        group = None if state is None else {"tier": state.tier, "paid": paid_active(state, now)}
        t_read = time.perf_counter()
        model = self.models.current  # one reference for the whole request (hot-swap safe)
        snap = self.catalog.current

        if cause is not None:
            mode, state = Mode.FALLBACK, new_state(q.member_id)
        elif model is None:
            mode, cause = Mode.FALLBACK, "no_model"
        elif state is None:
            mode = Mode.COLD_START
            if self.state_lost:
                cause = "state_lost"  # not really unknown: Redis came back empty (infra.epoch_store)
        elif not state.personalization_consent:
            mode = Mode.NON_PERSONALISED
        else:
            mode = Mode.PERSONALISED
        if state is None:
            state = new_state(q.member_id)
        # The member's experiment arm (sticky hash, in process) may swap the model or use a baseline.
        choice = self.experiments.choose(q.member_id, model) if self.experiments is not None else None
        rules_only = False
        if choice is not None and mode in (Mode.PERSONALISED, Mode.COLD_START):
            model, rules_only = choice.model, choice.baseline == "rules_only"

        ranking: Ranking | None = None
        if snap is None:
            cause = cause or "no_catalog"
        else:
            try:
                ranking = rank(
                    snap, state, q.context, now, q.limit,
                    model=model, mode=mode, policy=self.policy, explain=q.explain, rng=self.rng,
                    locale=q.locale,
                    rules_only=rules_only,
                )  # fmt: skip
            except Exception:
                # A model that passed its load checks can still fail on live rows: answer the fallback.
                log.exception("ranking failed; answering the non-personalised fallback")
                mode, cause = Mode.FALLBACK, "model_error"
                ranking = rank(
                    snap, state, q.context, now, q.limit,
                    model=None, mode=mode, policy=self.policy, explain=q.explain, locale=q.locale,
                )  # fmt: skip
        total_ms = (time.perf_counter() - t0) * 1e3
        read_ms = (t_read - t0) * 1e3
        # The version that scored this answer; None when no model was used (fallback, consent off).
        version = (
            model.version if model is not None and mode in (Mode.PERSONALISED, Mode.COLD_START) else None
        )

        arm = choice.name if choice is not None else None
        body = response_body(request_id, version, mode, cause, snap, ranking, explain=q.explain, arm=arm)
        if account:
            self._account(q, body, ranking, read_ms, total_ms, group)
            if arm is not None and self.experiments is not None:
                self.experiments.count(arm, "views")
        if self.shadow is not None and ranking is not None and snap is not None and cause is None:
            self._offer_shadow(request_id, now, arm, snap, state, q, mode, version, ranking)
        return body

    def _offer_shadow(
        self, request_id: str, now: float, arm: str | None, snap: CatalogSnapshot, state: MemberState,
        q: RecommendQuery, mode: Mode, version: str | None, ranking: Ranking,
    ) -> None:  # fmt: skip
        shadow = self.experiments.shadow if self.experiments is not None else None
        if shadow is None or self.shadow is None or mode not in (Mode.PERSONALISED, Mode.COLD_START):
            return
        model, share = shadow
        if self.shadow.sampled(share):
            items = ranking.items
            self.shadow.offer(
                ShadowItem(
                    request_id, now, arm, snap, state, q.context, q.limit, mode, model, version,
                    [it.offer_id for it in items], [it.score for it in items],
                    ranking.eligible_idx, ranking.x,
                )
            )  # fmt: skip

    def _account(
        self,
        q: RecommendQuery,
        body: dict[str, Any],
        ranking: Ranking | None,
        read_ms: float,
        total_ms: float,
        group: dict[str, Any] | None = None,
    ) -> None:
        m = self.metrics
        stages = {"state_read": read_ms, **(ranking.timings_ms if ranking else {}), "total": total_ms}
        for stage, ms in stages.items():
            m.observe_stage(stage, ms)
        m.mode.labels(mode=body["mode"]).inc()
        if body["degraded_cause"] is not None:
            m.degraded.labels(cause=body["degraded_cause"]).inc()
        if ranking is not None and ranking.guard_blocked:
            m.fairness_guard_blocked.inc(ranking.guard_blocked)
        m.candidates.observe(body["candidates"])
        m.eligible.observe(body["eligible"])
        slow = total_ms > self.deadline_s * 1e3
        if slow:
            m.deadline_exceeded.inc()
        # Sampled, except degraded and slow answers, which are always logged (service.request_log).
        always = slow or body["degraded_cause"] is not None
        if request_log.isEnabledFor(logging.INFO) and (always or sampled(self.log_sample_rate)):
            items = body["offers"]
            # One structured line per request; infra.logs.JsonFormatter merges "fields" into it.
            request_log.info(
                "recommend",
                extra={
                    "fields": {
                        "request_id": body["request_id"],
                        "member": member_hash(self.salt, q.member_id),
                        "model_version": body["model_version"],
                        "arm": body["arm"],
                        "catalog_version": body["catalog_version"],
                        "mode": body["mode"],
                        "degraded_cause": body["degraded_cause"],
                        "page_type": q.context.page_type,
                        # None when the member's state was not read (unknown member, degraded answer).
                        "group": group,
                        "candidates": body["candidates"],
                        "eligible": body["eligible"],
                        "slate": [it["offer_id"] for it in items],
                        "scores": [it["score"] for it in items],
                        "propensities": [it["propensity"] for it in items],
                        "slate_propensity": math.prod(it["propensity"] for it in items),
                        "reasons": [[r["code"] for r in it["reasons"]] for it in items],
                        "ms": {k: round(v, 3) for k, v in stages.items()},
                        # The share of such lines kept (1.0 for degraded / slow ones): weight by 1/rate.
                        "sample_rate": 1.0 if always else self.log_sample_rate,
                    }
                },
            )
