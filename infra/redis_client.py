"""The one factory for Redis clients: the stream worker and the API both call :func:`connect`.

Same code, two deployments: ``cluster=False`` gives a plain ``redis.asyncio.Redis`` (one server, or a
proxy in front of many); ``cluster=True`` gives a ``redis.asyncio.RedisCluster`` that reads the slot
map from the node named in ``url`` and talks to every master directly. :class:`MemberStore
<infra.redis_layout.MemberStore>` works unchanged on both because the layout keeps each member in
one hash slot (``{member_id}`` tag) and never uses a cross-slot transaction (tested in
``tests/cluster/``).

Why these options:

- ``socket_timeout`` / ``socket_connect_timeout`` from ``redis_timeout_ms``: the request path has a
  deadline of tens of milliseconds, so a hung node must fail fast and the service degrades to default
  features instead of queueing behind it. The worker retries failed batches itself (with backoff).
- ``decode_responses=False``: member blobs are msgpack bytes; decoding to str would corrupt them.
- ``health_check_interval``: a connection idle for longer than this is PINGed before reuse, so a
  connection cut by a load balancer or a failover is found on checkout, not on the first real read.
- ``retry``: a small bounded retry with jittered exponential backoff for connection errors and
  timeouts. On a cluster the same object bounds retries on ``ClusterDownError`` / connection errors
  while the client refreshes its slot map. ``MOVED``/``ASK`` redirects (resharding, failover) are
  followed by ``RedisCluster`` itself, independent of ``retry``.
- ``reinitialize_steps=0``: on ``MOVED`` the cluster client patches the one slot instead of reloading
  the whole map every N redirects. Measured here with redis-py 8.1: the periodic full reload calls
  ``aclose()``, which disconnects connections *in use* by other coroutines, and those commands fail
  with ``AttributeError: 'NoneType' object has no attribute 'writelines'`` (not a redis error, so
  nothing retries it). Connection errors and ``CLUSTERDOWN`` still trigger a full reload.
- ``require_full_coverage=True``: refuse to start against a cluster that does not cover every slot;
  a half-built cluster would fail some members' reads and not others.
- ``max_connections``: per node on a cluster, for the whole pool on a single server. Sized for the
  API's ``max_in_flight`` concurrency per process.

Hazards:

- Call :func:`open_client` (or ``await client.initialize()``) before concurrent use of a cluster
  client. Until the slot map is loaded, redis-py 8.1 sends key commands such as ``GET`` and
  ``EVALSHA`` to an arbitrary node; a burst of them on a fresh client (the API's first requests,
  60 concurrent reservations in ``tests/cluster``) earns ``MOVED`` replies and, without the setting
  above, fails commands. With the map loaded first there are no redirects at all.
- Reads go to masters only (no ``load_balancing_strategy``): a replica can lag behind the worker's
  writes, which would show a member a ranking older than their own last click.
- ``RedisCluster`` does not support ``db`` other than 0: cluster URLs must end in ``/0`` or nothing.
- The clients are not fork safe: create them inside the process (the lifespan / worker start), after
  uvicorn or Faust have forked.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from infra.redis_failures import RecordingRetry

#: Either client; both expose the same command API used by MemberStore.
AnyRedis = aioredis.Redis | aioredis.RedisCluster

#: Retries after the first attempt; each waits base * 2^n with full jitter, capped.
RETRIES = 2
BACKOFF_BASE_S = 0.005
BACKOFF_CAP_S = 0.1
#: Seconds a pooled connection may sit idle before it is PINGed on checkout.
HEALTH_CHECK_INTERVAL_S = 15
#: Connections per node (cluster) or per pool (single server).
MAX_CONNECTIONS = 512
#: MOVED replies before the cluster client reloads the full slot map; 0 = never, patch the slot
#: (see the module docstring for why).
REINITIALIZE_STEPS = 0


def _retry(retries: int) -> Retry:
    # Recording: the cause of a failure hidden behind the caller's deadline (infra.redis_failures).
    return RecordingRetry(ExponentialWithJitterBackoff(base=BACKOFF_BASE_S, cap=BACKOFF_CAP_S), retries)


def connect(
    url: str, *, cluster: bool, timeout_ms: int, retries: int = RETRIES
) -> aioredis.Redis | aioredis.RedisCluster:
    """A client for ``url`` (``redis://`` or ``rediss://``); a cluster client when ``cluster``.

    ``retries=0`` for money (claims, ``infra.money_store``): a timed-out script may still run on the
    server, so the caller must see the timeout and decide (retry with the same idempotency key, or answer
    "outcome unknown"); a hidden retry once reserved a unit per attempt (issue 12).

    No I/O happens here: the connection (and, on a cluster, the slot-map discovery) happens on the
    first command. Close with ``await client.aclose()``.
    """
    timeout_s = timeout_ms / 1000.0
    common: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "decode_responses": False,
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
        "retry": _retry(retries),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        "max_connections": MAX_CONNECTIONS,
    }
    if cluster:
        return aioredis.RedisCluster.from_url(
            url, require_full_coverage=True, reinitialize_steps=REINITIALIZE_STEPS, **common
        )
    return aioredis.Redis.from_url(url, **common)


async def open_client(
    url: str, *, cluster: bool, timeout_ms: int, retries: int = RETRIES
) -> aioredis.Redis | aioredis.RedisCluster:
    """:func:`connect`, then load the cluster's slot map (cluster) or PING (single server), so the
    first burst of commands is routed right. Raises the client's connection error if unreachable
    (the caller decides whether to start degraded); the client is closed before raising.
    """
    client = connect(url, cluster=cluster, timeout_ms=timeout_ms, retries=retries)
    try:
        if isinstance(client, aioredis.RedisCluster):
            await client.initialize()
        else:
            await client.ping()
    except BaseException:
        await client.aclose()
        raise
    return client
