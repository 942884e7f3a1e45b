"""Why a Redis call failed: ``unavailable`` (nothing answers: refused, reset, unreachable, connect timed
out) or ``timeout`` (a server that accepted the connection is too slow to answer).

The distinction is not in the exception the caller sees. The request path wraps a read in its own
deadline (``asyncio.timeout``), and the client retries connection errors with a backoff, so a Redis
that *refuses* connections fails each attempt in a fraction of a millisecond and then spends the rest
of the deadline in backoff sleeps: the caller sees only its own ``TimeoutError`` (this was answered
``state_timeout``; issue 12). redis-py also reports a *connect* timeout as ``redis.TimeoutError``
("Timeout connecting to server"), which is an unreachable server, not a slow one.

So every client made by :func:`infra.redis_client.connect` carries a :class:`RecordingRetry` that
remembers the latest error any attempt met, and :func:`failure_cause` classifies a failure by that
error when the caller's own deadline is what surfaced. Concurrent calls share the record; in an
outage they all meet the same kind of error, which is all the cause needs.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

from redis.asyncio.retry import Retry
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

T = TypeVar("T")
Cause = Literal["timeout", "unavailable"]


class FailureLog:
    """The latest error any attempt of one client met, and when (``time.monotonic()``)."""

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.at = 0.0


class RecordingRetry(Retry):
    """redis-py's async :class:`Retry`, writing each attempt's error to a :class:`FailureLog`.

    redis-py deep-copies the retry object into every connection; the copies share one log, so the log
    of the client is the log of all its connections.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log = FailureLog()

    def __deepcopy__(self, memo: dict[int, Any]) -> RecordingRetry:
        new = copy.copy(self)
        new._backoff = copy.deepcopy(self._backoff, memo)  # backoff state is per connection
        return new  # ... and the log is shared

    async def call_with_retry(
        self,
        do: Callable[[], Awaitable[T]],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        log = self.log

        async def record(error: Exception, *count: int) -> None:
            log.error, log.at = error, time.monotonic()
            await fail(error, *count)

        return await super().call_with_retry(do, record, is_retryable, with_failure_count)


def _recorder(client: Any) -> RecordingRetry | None:
    """The recorder of a client, or of the client of a store (``MemberStore.r``)."""
    client = getattr(client, "r", client)
    retry = getattr(client, "retry", None)
    if not isinstance(retry, RecordingRetry):
        pool = getattr(client, "connection_pool", None)
        retry = getattr(pool, "connection_kwargs", {}).get("retry") if pool is not None else None
    return retry if isinstance(retry, RecordingRetry) else None


def error_cause(error: BaseException) -> Cause:
    """The cause of one client error (not the caller's own deadline)."""
    if isinstance(error, RedisTimeoutError):
        # redis-py raises TimeoutError for a connect that did not complete: nobody is there to be slow.
        return "unavailable" if "connecting" in str(error).lower() else "timeout"
    return "unavailable"


def failure_cause(client: Any, error: BaseException, started: float) -> Cause:
    """Why a call on ``client`` (a client, or a store of this package holding one) begun at
    ``started`` (``time.monotonic()``) failed with ``error``.

    ``error`` is the client's exception, or the caller's ``TimeoutError`` when its deadline ran out
    first: then the latest error an attempt of any call met since ``started`` decides (a refused
    connection retried into the deadline is ``unavailable``); none means the server accepted the
    command and did not answer in time (``timeout``).
    """
    if isinstance(error, RedisError):
        return error_cause(error)
    if isinstance(error, TimeoutError):
        rec = _recorder(client)
        if rec is not None and rec.log.error is not None and rec.log.at >= started:
            return error_cause(rec.log.error)
        return "timeout"
    return "unavailable"  # OSError: the socket itself failed
