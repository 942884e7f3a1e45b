"""One store contract, two stores: every test in this package runs against a single Redis (the
session's ``redis_server``) and against a three-master Redis Cluster started here on free loopback
ports. Each test gets its own key prefix, so the two session-wide servers are shared safely.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from harness.embedded import ClusterService, Service, start_redis_cluster


@dataclass(frozen=True)
class Backend:
    name: str
    url: str
    cluster: bool
    #: Every server of the store, for checks that must not trust the client under test.
    node_urls: tuple[str, ...]


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[ClusterService]:
    svc = start_redis_cluster(n_masters=3)
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture(params=["single", "cluster"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "single":
        single: Service = request.getfixturevalue("redis_server")
        return Backend("single", single.url, cluster=False, node_urls=(single.url,))
    cluster: ClusterService = request.getfixturevalue("redis_cluster")
    return Backend("cluster", cluster.url, cluster=True, node_urls=tuple(n.url for n in cluster.nodes))
