"""The stream worker's entry point: folds ``member-events`` into member state in Redis, exactly once
in effect. ``run_worker(settings, engine=...)`` runs one of two engines over the same
:class:`~stream.batch.BatchProcessor`:

- ``batch`` (default, what ``benefits worker`` runs): an aiokafka consumer-group member that takes
  whole fetched batches and commits offsets itself, after the writes (``stream/kafka_engine.py``).
- ``faust``: a Faust app whose agent batches with ``stream.take_events`` (``stream/faust_engine.py``);
  slower (~7k events/s here), kept for deployments that want Faust's tooling.

The package: ``batch.py`` (the steps of one batch and the hazards of exactly-once in effect),
``records.py`` (raw records, dead letters), ``metrics.py``, ``timings.py``, the two engines, and this
module. The names below are re-exported so that ``from stream.worker import ...`` keeps working.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from prometheus_client import start_http_server

from infra.settings import Settings
from stream.batch import OFFER_EVENT_TYPES, BatchOutcome, BatchProcessor, CostRefresher
from stream.faust_engine import FaustRuntime, faust_broker_url
from stream.kafka_engine import BatchConsumerWorker
from stream.metrics import BATCH_SIZE_BUCKETS, FRESHNESS_BUCKETS, StreamMetrics, observe_many
from stream.records import DeadLetter, RawRecord, decode_dead_letter, make_dead_letter
from stream.timings import (
    BROKER_HEARTBEAT_INTERVAL_S,
    BROKER_REBALANCE_TIMEOUT_S,
    BROKER_SESSION_TIMEOUT_S,
    COMMIT_INTERVAL_S,
    REDIS_RETRY_MAX_BACKOFF_S,
    SHUTDOWN_WRITE_GRACE_S,
    WORKER_REDIS_TIMEOUT_MS,
)

__all__ = [
    "BATCH_SIZE_BUCKETS",
    "BROKER_HEARTBEAT_INTERVAL_S",
    "BROKER_REBALANCE_TIMEOUT_S",
    "BROKER_SESSION_TIMEOUT_S",
    "COMMIT_INTERVAL_S",
    "ENGINES",
    "FRESHNESS_BUCKETS",
    "OFFER_EVENT_TYPES",
    "REDIS_RETRY_MAX_BACKOFF_S",
    "SHUTDOWN_WRITE_GRACE_S",
    "WORKER_REDIS_TIMEOUT_MS",
    "BatchConsumerWorker",
    "BatchOutcome",
    "BatchProcessor",
    "CostRefresher",
    "DeadLetter",
    "FaustRuntime",
    "RawRecord",
    "StreamMetrics",
    "decode_dead_letter",
    "faust_broker_url",
    "make_dead_letter",
    "observe_many",
    "run_worker",
]

log = logging.getLogger(__name__)

ENGINES = ("batch", "faust")


def run_worker(settings: Settings, engine: str = "batch") -> None:
    """Run one stream worker until SIGTERM/SIGINT (blocking). Used by ``benefits worker``.

    ``engine="batch"`` (default) is the aiokafka batch consumer; ``"faust"`` the Faust app. Both fold
    through :class:`BatchProcessor` with the same exactly-once-in-effect guarantees.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}")
    metrics = StreamMetrics()
    if settings.worker_metrics_port:
        start_http_server(settings.worker_metrics_port, addr=settings.host, registry=metrics.registry)
        log.info("worker metrics on http://%s:%d/metrics", settings.host, settings.worker_metrics_port)
    log.info(
        "worker starting: engine=%s topic=%s group=%s batch_max=%d within_ms=%d",
        engine,
        settings.events_topic,
        settings.consumer_group,
        settings.worker_batch_max,
        settings.worker_batch_within_ms,
    )
    if engine == "faust":
        _run_faust(settings, metrics)
    else:
        asyncio.run(_run_batch(settings, metrics))


async def _run_batch(settings: Settings, metrics: StreamMetrics) -> None:
    worker = BatchConsumerWorker(settings, metrics)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop_event.set)
    await worker.run()


def _run_faust(settings: Settings, metrics: StreamMetrics) -> None:
    import faust

    runtime = FaustRuntime(settings, metrics)
    worker = faust.Worker(runtime.app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    finally:
        runtime.cleanup()
