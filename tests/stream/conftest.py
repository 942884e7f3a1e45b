"""Fixtures for the stream tests: a worker configuration bound to the session's private Redis and
broker, with a unique key prefix, topic pair and consumer group per test."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from features.state import MemberState
from harness.embedded import Service, free_port
from harness.stream_driver import WorkerConfig

# The single-Redis / Redis-Cluster ``backend`` fixture of the store contract suite, for the batch path.
from tests.cluster.conftest import backend, redis_cluster  # noqa: F401


@pytest.fixture
def worker_cfg(redis_server: Service, broker: Service, topics: dict[str, str], unique: str) -> WorkerConfig:
    return WorkerConfig(
        redis_url=redis_server.url,
        bootstrap=broker.url,
        events_topic=topics["events"],
        dead_letter_topic=topics["dlq"],
        prefix=f"s{unique}",
        group=f"g-{unique}",
        partitions=4,
        metrics_port=free_port(),
        log_level="INFO",
    )


@pytest.fixture
def worker_log(tmp_path: Path) -> Path:
    return tmp_path / "worker.log"


def state_diff(a: MemberState, b: MemberState) -> str:
    """First differing top-level fields of two states, for readable failures."""
    da, db = msgspec.to_builtins(a), msgspec.to_builtins(b)
    keys = sorted(set(da) | set(db))
    diffs = [f"{k}: {da.get(k)!r} != {db.get(k)!r}" for k in keys if da.get(k) != db.get(k)]
    return "; ".join(diffs[:3])
