"""Shared fixtures: a private Redis and a private Kafka-protocol broker per test session, on free
loopback ports, started here and stopped here. Tests never touch servers they did not start.

Each test gets a unique Redis key prefix and unique topic names / consumer group, so tests sharing the
session-wide servers cannot see each other's data.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from harness.embedded import Service, create_topics, start_broker, start_redis

# Property tests: a bounded run in `make test` ("ci", the default) and a long one in `make property`
# (`pytest --hypothesis-profile=long`). No deadline: the shared 2-core box stalls now and then.
hypothesis_settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=False
)
hypothesis_settings.register_profile(
    "long", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
hypothesis_settings.load_profile("ci")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Service]:
    svc = start_redis()
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="session")
def broker() -> Iterator[Service]:
    svc = start_broker()
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture
def unique() -> str:
    """A short unique token for key prefixes, topic names and consumer groups."""
    return uuid.uuid4().hex[:8]


@pytest.fixture
def topics(broker: Service, unique: str) -> dict[str, str]:
    names = {"events": f"member-events-{unique}", "dlq": f"member-events-dlq-{unique}"}
    asyncio.run(create_topics(broker.url, {names["events"]: 4, names["dlq"]: 1}))
    return names


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--console-screenshots",
        default=None,
        metavar="DIR",
        help="tests/browser: write a screenshot of every console page to DIR (docs/console).",
    )
