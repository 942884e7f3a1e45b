"""The one settings object. Built once at start-up (``Settings()``) and passed down; nothing else reads
the environment. Every field is documented in the README ("Settings"); units are in the names.

Environment variables use the ``BENEFITS_`` prefix, e.g. ``BENEFITS_REDIS_URL``. List values are JSON
(``BENEFITS_ADMIN_API_KEYS='["k1","k2"]'``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from features.lifecycle import DEFAULT_CONFIG as DEFAULT_LIFECYCLE
from features.lifecycle import ConfigError, LifecycleConfig, load_config
from infra.redis_layout import RedisLayout

_DEV_KEYS = {"dev-storefront-key", "dev-admin-key"}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BENEFITS_", extra="forbid", frozen=True)

    # --- deployment
    environment: Literal["dev", "test", "prod"] = "dev"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # --- infrastructure (None = start embedded ones, demo/dev only)
    redis_url: str | None = None
    redis_cluster: bool = False
    redis_prefix: Annotated[str, Field(pattern=r"^[a-z0-9_]{1,16}$")] = "bn"
    redis_timeout_ms: Annotated[int, Field(ge=1, le=10_000)] = 50
    #: dev only (no redis_url): where the embedded Redis keeps its append-only file; None = not persisted
    embedded_redis_dir: Path | None = Path("var/redis")
    kafka_bootstrap: str | None = None
    events_topic: str = "member-events"
    dead_letter_topic: str = "member-events-dlq"
    events_partitions: Annotated[int, Field(ge=1, le=1024)] = 4
    #: How long the broker keeps member events (the topic's retention.ms where the project creates it):
    #: an erased member's events stay in the topic until then. Replay from the topic reaches this far.
    events_retention_seconds: Annotated[int, Field(ge=3600, le=10 * 365 * 24 * 3600)] = 7 * 24 * 3600
    consumer_group: str = "benefits-features"
    #: The archiver's own consumer group (it resumes from the archive's recorded offsets).
    archive_consumer_group: str = "benefits-archiver"
    archive_dir: Path = Path("var/archive")
    archive_batch_max: Annotated[int, Field(ge=1, le=1_000_000)] = 50_000
    archive_flush_seconds: Annotated[float, Field(gt=0, le=3600)] = 10.0

    # --- retention (every Redis key has a TTL)
    member_ttl_seconds: Annotated[int, Field(ge=60)] = 90 * 24 * 3600
    stats_ttl_seconds: Annotated[int, Field(ge=60)] = 90 * 24 * 3600
    catalog_ttl_seconds: Annotated[int, Field(ge=3600)] = 365 * 24 * 3600

    # --- claims and idempotency (infra/money_store.py)
    #: how long the first outcome of an idempotency key (claims and feedback) is kept for retries
    idempotency_ttl_seconds: Annotated[int, Field(ge=60, le=30 * 24 * 3600)] = 24 * 3600
    #: money state (stock, budget used, per-member claims) outlives its campaign's end by this much
    money_retention_seconds: Annotated[int, Field(ge=3600)] = 90 * 24 * 3600
    #: socket timeout of one claim-script call; the money client never retries by itself
    claim_redis_timeout_ms: Annotated[int, Field(ge=1, le=10_000)] = 250
    #: a claim retries its script (same key, so safe) until this deadline, then answers 503 "unknown"
    claim_deadline_ms: Annotated[int, Field(ge=1, le=60_000)] = 1000

    # --- stream worker
    #: "batch": an aiokafka consumer-group member folding whole fetched batches (default; ~4x Faust's
    #: throughput here). "faust": the same BatchProcessor inside a Faust agent (stream.take_events).
    worker_engine: Literal["batch", "faust"] = "batch"
    worker_batch_max: Annotated[int, Field(ge=1, le=100_000)] = 2000
    worker_batch_within_ms: Annotated[int, Field(ge=1, le=10_000)] = 20
    worker_web_port: Annotated[int, Field(ge=0, le=65535)] = 0
    worker_metrics_port: Annotated[int, Field(ge=0, le=65535)] = 0
    #: The worker dead-letters (``event_ts_expired``) events older than this; None: no lower bound, so
    #: the demo and backfills of historical events fold. Production sets it to member_ttl_seconds
    #: (deploy/). Events more than event_max_future_skew_seconds ahead are always dead-lettered.
    worker_max_event_age_seconds: Annotated[int, Field(ge=60)] | None = None

    # --- model registry and catalog
    registry_dir: Path = Path("var/registry")
    #: Held-out AUC a newly trained model must gain over the promoted one, on the same rows, for
    #: ``benefits train`` to promote it (it must also beat popularity).
    promotion_min_auc_gain: Annotated[float, Field(ge=0, le=1)] = 0.002
    #: Logged slates (a ``benefits evaluate --logs`` input) that promotion must also win on: when set,
    #: ``benefits train`` and ``benefits promote`` refuse a version unless the off-policy estimate of its
    #: claims per view minus the promoted model's has its lower bound above
    #: ``promotion_offpolicy_margin`` (training.counterfactual). None: no off-policy gate.
    promotion_offpolicy_logs: Path | None = None
    promotion_offpolicy_margin: Annotated[float, Field(ge=-1, le=10)] = 0.0
    promotion_offpolicy_estimator: Literal["dr", "snips"] = "dr"
    model_poll_seconds: Annotated[float, Field(gt=0, le=3600)] = 1.0
    #: "auto": the promoted model's trees compiled to native code once they match onnxruntime, else
    #: onnxruntime (logged and counted); "compiled": refuse a model that cannot be compiled; "onnx": never.
    scorer_runtime: Literal["auto", "onnx", "compiled"] = "auto"
    #: where compiled object code is cached by model hash (None: a per-user directory under the temp dir)
    scorer_cache_dir: Path | None = None
    catalog_poll_seconds: Annotated[float, Field(gt=0, le=3600)] = 1.0
    catalog_seed_path: Path | None = None
    #: The operator's catalogue configuration: a catalogue file ({"taxonomy": ..., "offers": ...}) or a
    #: bare taxonomy; None = the seed file's taxonomy if it declares one, else the demo shop's.
    taxonomy_path: Path | None = None
    #: The feature specification (JSON); None = the shipped default (features/default_spec.json).
    feature_spec_path: Path | None = None
    #: The membership programme (features.lifecycle.LifecycleConfig: stage thresholds, tier rules, the
    #: points-expiry window), as JSON; eligibility in ranking and claims, reasons and the lifecycle
    #: features all read this one object.
    lifecycle: LifecycleConfig = DEFAULT_LIFECYCLE
    #: ... or the same JSON in a file (read once, when the settings are built; not with lifecycle).
    lifecycle_config_path: Path | None = None

    # --- API
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    #: Where the API worker processes of one ``benefits serve --workers N`` keep their metric files, so
    #: that a scrape of the shared port reports all of them summed (prometheus_client's multi-process
    #: mode). None: a fresh temporary directory per ``serve``; ignored with one worker.
    metrics_multiprocess_dir: Path | None = None
    deadline_ms: Annotated[float, Field(gt=0, le=10_000)] = 25.0
    # Little's law: ~1k rps per process x a 25 ms deadline is ~25 requests in flight; beyond that they only
    # queue into each other's deadlines (3x overload measured in docs/reliability.md: 256 gave seconds).
    max_in_flight: Annotated[int, Field(ge=1, le=100_000)] = 32
    max_body_bytes: Annotated[int, Field(ge=256, le=10_000_000)] = 64 * 1024
    # A catalogue file (POST /v1/admin/offers/import): 200 offers are ~40 KB as CSV, ~120 KB as JSON.
    max_import_bytes: Annotated[int, Field(ge=256, le=100_000_000)] = 8 * 1024 * 1024
    #: A request's whole body must arrive within this long of its start, else 408 (service.middleware):
    #: a slow client cannot hold an in-flight slot (a request takes one only once its body is read).
    body_read_timeout_ms: Annotated[int, Field(ge=10, le=120_000)] = 5000
    #: An event (feedback or stream) stamped more than this far in the future is refused (422 at HTTP,
    #: dead-lettered ``event_ts_future`` by the worker); older than member_ttl_seconds: ``event_ts_expired``.
    event_max_future_skew_seconds: Annotated[int, Field(ge=0, le=7 * 24 * 3600)] = 300
    default_limit: Annotated[int, Field(ge=1, le=50)] = 5
    #: Share of ordinary recommend requests that get a ``service.requests`` line; degraded, slow (over
    #: the deadline) and refused (>= 400) requests are always logged (service.request_log).
    request_log_sample_rate: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    #: Never offer a member a strictly worse version of an offer family than a lower tier gets in the
    #: same context (service.fairness_guard); withheld offers are counted and explained.
    fairness_guard_enabled: bool = False
    #: Language of reason and "why not shown" sentences when the request names none (service.i18n).
    default_locale: Literal["zh-CN", "en"] = "zh-CN"
    storefront_api_keys: list[SecretStr] = [SecretStr("dev-storefront-key")]
    admin_api_keys: list[SecretStr] = [SecretStr("dev-admin-key")]
    #: Keys with the support scope: ``POST /v1/recommend`` with ``explain: true`` only (why an offer is
    #: or is not shown, which reveals the member's tier and recent browsing). Empty: none.
    support_api_keys: list[SecretStr] = []
    #: HS256 secret of signed member tokens (``X-Member-Token``, ``sub`` = member_id, ``exp`` required);
    #: when set, a token a storefront request carries is checked (service.member_tokens).
    member_token_secret: SecretStr | None = None
    #: With a secret: every storefront request naming a member (recommend, feedback) must carry a valid
    #: token for that member, else 403.
    member_tokens_required: bool = False
    member_hash_salt: SecretStr = SecretStr("dev-salt")

    # --- ranking policy
    slate_max_per_category: Annotated[int, Field(ge=1, le=50)] = 2
    slate_min_kinds: Annotated[int, Field(ge=1, le=3)] = 2
    exploration_epsilon: Annotated[float, Field(ge=0, le=1)] = 0.0
    #: "epsilon" (greedy with a uniform pick w.p. exploration_epsilon) or "softmax" (Plackett-Luce sampling
    #: at softmax_temperature); both log each shown offer's propensity.
    exploration_mode: Literal["epsilon", "softmax"] = "epsilon"
    softmax_temperature: Annotated[float, Field(gt=0, le=100)] = 0.5

    # --- experiments (service/experiments.py)
    #: A JSON experiment declaration stored at start-up when the store has none (else the stored one
    #: stands; change it with PUT /v1/admin/experiment).
    experiment_path: Path | None = None
    experiment_poll_seconds: Annotated[float, Field(gt=0, le=3600)] = 1.0
    #: JSON lines of shadow-model slates beside the live ones (None: shadow scoring is off).
    shadow_log_path: Path | None = None
    #: Shadow requests waiting to be scored; beyond it a sampled request is skipped (and counted).
    shadow_queue_max: Annotated[int, Field(ge=1, le=100_000)] = 256

    # --- objective (service/objective.py): p * (claim_value + value_weight * value) * pacing
    #     - cost_weight * p * cost
    objective_claim_value: Annotated[float, Field(ge=0, le=1e6)] = 20.0
    value_weight: Annotated[float, Field(ge=0, le=10)] = 0.3
    cost_weight: Annotated[float, Field(ge=0, le=10)] = 1.0
    pacing_floor: Annotated[float, Field(gt=0, le=1)] = 0.1
    pacing_reserve_fraction: Annotated[float, Field(ge=0, le=1)] = 0.1

    # --- reasons (service/reasons.py): premise thresholds and categories never quoted back
    reason_min_browse_weight: Annotated[float, Field(gt=0, le=1000)] = 3.0
    reason_min_category_orders: Annotated[float, Field(gt=0, le=1000)] = 3.0
    reason_min_orders: Annotated[int, Field(ge=1, le=1000)] = 3
    reason_frequent_orders: Annotated[float, Field(gt=0, le=1000)] = 3.0
    reason_near_threshold_share: Annotated[float, Field(gt=0, lt=1)] = 0.8
    reason_coupon_order_share: Annotated[float, Field(gt=0, le=1)] = 0.3
    reason_min_coupon_claims: Annotated[float, Field(gt=0, le=1000)] = 2.0
    reason_high_value_share: Annotated[float, Field(gt=0, le=1)] = 0.5
    reason_limited_share: Annotated[float, Field(gt=0, le=1)] = 0.8
    reason_popular_min_impressions: Annotated[int, Field(ge=1)] = 200
    reason_popular_min_claims: Annotated[int, Field(ge=1)] = 20
    #: Categories whose browsing, purchases or pages are never quoted back (health data, pregnancy).
    sensitive_categories: list[str] = ["health", "baby"]

    @model_validator(mode="before")
    @classmethod
    def _lifecycle_file(cls, data: object) -> object:
        # The file is read here, once, so a bad file stops start-up naming the setting and the field.
        if not isinstance(data, dict) or data.get("lifecycle_config_path") in (None, ""):
            return data
        if data.get("lifecycle") is not None:
            raise ValueError("set BENEFITS_LIFECYCLE or BENEFITS_LIFECYCLE_CONFIG_PATH, not both")
        try:
            return {**data, "lifecycle": load_config(data["lifecycle_config_path"])}
        except ConfigError as exc:
            raise ValueError(f"BENEFITS_LIFECYCLE_CONFIG_PATH: {exc}") from None

    @field_validator("embedded_redis_dir", mode="before")
    @classmethod
    def _empty_is_none(cls, v: object) -> object:
        return None if v == "" else v

    @field_validator("events_topic", "dead_letter_topic", "consumer_group", "archive_consumer_group")
    @classmethod
    def _kafka_name(cls, v: str) -> str:
        if not v or len(v) > 200 or not all(c.isalnum() or c in "._-" for c in v):
            raise ValueError("must be 1-200 characters of letters, digits, '.', '_' or '-'")
        return v

    @field_validator("sensitive_categories")
    @classmethod
    def _category_names(cls, v: list[str]) -> list[str]:
        # Categories are the operator's (the taxonomy is read at start-up, after settings): check the
        # form here; a name the taxonomy does not declare is logged by the app at start.
        bad = [c for c in v if not c or len(c) > 48]
        if bad:
            raise ValueError(f"category names must be 1-48 characters: {bad}")
        return v

    @model_validator(mode="after")
    def _no_dev_secrets_in_prod(self) -> Settings:
        if self.environment == "prod":
            keys = {
                k.get_secret_value()
                for k in [*self.storefront_api_keys, *self.admin_api_keys, *self.support_api_keys]
            }
            if keys & _DEV_KEYS:
                raise ValueError("the development API keys must not be used with environment=prod")
            if self.member_hash_salt.get_secret_value() == "dev-salt":
                raise ValueError("set BENEFITS_MEMBER_HASH_SALT for environment=prod")
            if self.redis_url is None or self.kafka_bootstrap is None:
                raise ValueError("environment=prod needs BENEFITS_REDIS_URL and BENEFITS_KAFKA_BOOTSTRAP")
        for k in [*self.storefront_api_keys, *self.admin_api_keys, *self.support_api_keys]:
            if len(k.get_secret_value()) < 12:
                raise ValueError("API keys must be at least 12 characters")
        if self.member_tokens_required and self.member_token_secret is None:
            raise ValueError("BENEFITS_MEMBER_TOKENS_REQUIRED needs BENEFITS_MEMBER_TOKEN_SECRET")
        if self.member_token_secret is not None and len(self.member_token_secret.get_secret_value()) < 32:
            raise ValueError("BENEFITS_MEMBER_TOKEN_SECRET must be at least 32 characters (HS256)")
        return self

    @property
    def layout(self) -> RedisLayout:
        return RedisLayout(
            prefix=self.redis_prefix,
            member_ttl_seconds=self.member_ttl_seconds,
            stats_ttl_seconds=self.stats_ttl_seconds,
            catalog_ttl_seconds=self.catalog_ttl_seconds,
        )
