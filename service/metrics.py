"""Prometheus metrics of one app instance.

Each :class:`Metrics` has its own ``CollectorRegistry`` (not the global one) so that several app
instances in one process (tests, a blue/green swap) do not collide on metric names.

Several processes on one port (``benefits serve --workers N``, :mod:`service.server`): a scrape reaches
one of them, so each process writes its values to files in a shared directory (prometheus_client's
multi-process mode, switched on by the server before the worker imports this module) and
:meth:`Metrics.render` answers the aggregate: counters and histograms summed over the processes, each
gauge by the rule its ``multiprocess_mode`` names (ignored in a single process). The business gauges are
computed at scrape time from shared state (Redis), so any process answers them whole.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

from service.business_metrics import BusinessMetrics

STAGES = ("state_read", "features", "model", "rerank", "total")
# Sub-millisecond resolution where the budget is (target p50 <= 1 ms), up to the deadline and beyond.
_LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.00075,
    0.001,
    0.0015,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)
_CANDIDATE_BUCKETS = (0, 10, 25, 50, 100, 200, 300, 500, 1000, 2000, 5000)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        #: Set when this process is one of several sharing a port (see the module docstring).
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry()
        r = self.registry
        self.stage_seconds = Histogram(
            "benefits_recommend_stage_seconds",
            "Recommend latency per stage",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._stage = {s: self.stage_seconds.labels(stage=s) for s in STAGES}
        self.degraded = Counter(
            "benefits_recommend_degraded_total", "Degraded (fallback) answers by cause", ["cause"], registry=r
        )
        self.mode = Counter(
            "benefits_recommend_total", "Recommend answers by ranking mode", ["mode"], registry=r
        )
        self.claim_seconds = Histogram(
            "benefits_claim_seconds",
            "Claim latency in the service (eligibility, claim script, publish), accepted or refused",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.candidates = Histogram(
            "benefits_recommend_candidates",
            "Candidate offers per request",
            buckets=_CANDIDATE_BUCKETS,
            registry=r,
        )
        self.eligible = Histogram(
            "benefits_recommend_eligible",
            "Eligible offers per request",
            buckets=_CANDIDATE_BUCKETS,
            registry=r,
        )
        self.fairness_guard_blocked = Counter(
            "benefits_fairness_guard_blocked_total",
            "Offers withheld by the fairness guard (a lower tier gets a better version of the family)",
            registry=r,
        )
        self.deadline_exceeded = Counter(
            "benefits_recommend_deadline_exceeded_total", "Answers later than deadline_ms", registry=r
        )
        # Across processes: 1 for a version while any live process serves it.
        self.model_info = Gauge(
            "benefits_model_info",
            "The model version being served (value 1)",
            ["version"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.model_refused = Counter(
            "benefits_model_refused_total",
            "Model versions refused on load, by reason",
            ["reason"],
            registry=r,
        )
        self.scorer_fallback = Counter(
            "benefits_scorer_fallback_total",
            "Model versions served by onnxruntime because the compiled scorer was unavailable, by reason",
            ["reason"],
            registry=r,
        )
        # Across processes the weakest one counts: compiled only if all are, the oldest catalogue version.
        self.model_compiled = Gauge(
            "benefits_model_compiled",
            "1 while the served model scores with compiled trees",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.catalog_version = Gauge(
            "benefits_catalog_version", "Catalog version in process", registry=r, multiprocess_mode="livemin"
        )
        self.catalog_offers = Gauge(
            "benefits_catalog_offers",
            "Offers in the catalog in process",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.feedback = Counter(
            "benefits_feedback_total", "Feedback events by type and outcome", ["type", "outcome"], registry=r
        )
        self.rejected = Counter(
            "benefits_http_rejected_total", "Requests refused by the edge middleware", ["cause"], registry=r
        )
        self.state_lost = Gauge(
            "benefits_store_state_lost",
            "1 when the store epoch marker vanished or changed: Redis lost its data (infra.epoch_store)",
            registry=r,
            multiprocess_mode="livemax",
        )
        # Per-arm experiment counts: views are recommend answers, the rest come from feedback.
        self.experiment_events = Counter(
            "benefits_experiment_events_total",
            "Experiment counts per arm: views, impressions, clicks, claims, redemptions, dismisses",
            ["experiment", "arm", "event"],
            registry=r,
        )
        self.experiment_cost = Counter(
            "benefits_experiment_cost_total",
            "Cost of the claims made in each arm (the offers' cost per claim)",
            ["experiment", "arm"],
            registry=r,
        )
        #: Stock, budget and claims per offer (bounded labels; service.business_metrics).
        self.business = BusinessMetrics(r)
        self.shadow = Counter(
            "benefits_shadow_total",
            "Shadow-model rankings by outcome (scored, skipped: queue full, error)",
            ["outcome"],
            registry=r,
        )
        self.context_unknown = Counter(
            "benefits_context_value_unknown_total",
            "Recommend context values outside the declared vocabularies (ranked as 'other'), by field",
            ["field"],
            registry=r,
        )
        self._model_version: str | None = None

    def observe_stage(self, stage: str, ms: float) -> None:
        self._stage[stage].observe(ms / 1e3)

    def set_model(self, version: str | None) -> None:
        if version == self._model_version:
            return
        if self._model_version is not None:
            # Zero first: in multi-process mode remove() forgets the series here but not in its file.
            self.model_info.labels(version=self._model_version).set(0)
            self.model_info.remove(self._model_version)
        if version is not None:
            self.model_info.labels(version=version).set(1)
        self._model_version = version

    def render(self) -> bytes:
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=str(self.multiprocess_dir))
        merged.register(self.business)  # computed from shared state at scrape time: whole in any process
        return generate_latest(merged)
