"""Publishing member events to the broker (aiokafka), off the recommend path.

The producer connects in the background and keeps retrying, so the API starts and serves
recommendations while the broker is down. A send either is acknowledged by the broker or raises
:class:`~service.errors.Unavailable`: feedback is never dropped silently.

Sends waiting for the broker are bounded (``max_pending``), and after a failed send the publisher
refuses at once for ``fail_fast_s``: otherwise a dead broker holds every feedback request for the full
send timeout, and at storefront rates those waiting requests fill the API's in-flight limit so that
recommend requests get shed (measured by ``benefits reliability``, broker scenario).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from service.errors import NotPublished, Unavailable

log = logging.getLogger(__name__)


class Publisher:
    def __init__(
        self,
        bootstrap: str | None,
        topic: str,
        send_timeout_s: float = 3.0,
        max_pending: int = 64,
        fail_fast_s: float = 1.0,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.send_timeout_s = send_timeout_s
        self.max_pending = max_pending
        self.fail_fast_s = fail_fast_s
        self._pending = 0
        self._down_until = 0.0
        self.producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return self.producer is not None

    def start(self) -> None:
        if self.bootstrap is not None:
            self._task = asyncio.create_task(self._connect(), name="kafka-producer-connect")

    async def _connect(self) -> None:
        delay = 0.2
        while True:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                acks="all",
                linger_ms=1,
                request_timeout_ms=int(self.send_timeout_s * 1000),
                retry_backoff_ms=100,
            )
            try:
                await producer.start()
            except Exception as exc:  # KafkaConnectionError and friends; keep trying in the background
                with contextlib.suppress(Exception):
                    await producer.stop()
                log.warning(
                    "event broker %s not reachable (%s); retrying in %.1fs", self.bootstrap, exc, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self.producer = producer
            log.info("connected to event broker %s", self.bootstrap)
            return

    async def send(
        self, key: str, value: bytes | None, headers: list[tuple[str, bytes]] | None = None
    ) -> None:
        """Publish one record keyed by member id and wait for the broker's acknowledgement."""
        producer = self.producer
        if producer is None:
            if self.bootstrap is None:
                raise NotPublished(
                    "no event broker is configured (BENEFITS_KAFKA_BOOTSTRAP); nothing was recorded"
                )
            raise NotPublished(
                f"event broker {self.bootstrap} is unreachable; nothing was recorded, retry later"
            )
        if time.monotonic() < self._down_until:
            raise NotPublished(
                "event broker failed to acknowledge recent events; nothing was recorded, retry"
            )
        if self._pending >= self.max_pending:
            raise NotPublished(
                f"{self._pending} events already wait for the event broker; nothing was recorded, retry"
            )
        self._pending += 1
        try:
            async with asyncio.timeout(self.send_timeout_s + 0.5):
                await producer.send_and_wait(self.topic, value, key=key.encode(), headers=headers)
        except (KafkaError, TimeoutError) as exc:
            self._down_until = time.monotonic() + self.fail_fast_s
            raise Unavailable(
                f"event broker did not acknowledge the event ({type(exc).__name__}); retry"
            ) from None
        finally:
            self._pending -= 1

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.producer is not None:
            with contextlib.suppress(Exception):
                await self.producer.stop()
            self.producer = None
