"""Erasure of one member everywhere the project keeps them, with a report of what was removed where.

``DELETE /v1/members/{id}`` (:class:`Eraser`), in this order:

1. **Redis, member state**: every key under ``P:m:{MEMBER_ID}:`` (``infra.redis_layout``), and the
   member's claim outcomes kept for retries (``P:money:{o:OFFER}:idem:MEMBER:EVENT``). Unreachable:
   503, nothing claimed as erased (a retry redoes everything: each step is idempotent).
2. **Redis, money state**: the per-offer claim counters naming the member (``P:money:{o:OFFER}:members``
   field ``MEMBER_ID`` = claims and last claim time) are **kept**. They are the obligation record of
   each offer's per-member cap and cool-down: removing them would let an erased account claim a limited
   coupon again, and stock and budget already count those claims. They hold a count and a time, nothing
   else, and expire with the campaign (its end plus ``money_retention_seconds``).
3. **Kafka**: a tombstone (null value, key = member id, header ``benefits-erasure: 1``) tells the stream
   workers and the archiver to forget the member. Not published: 503 (Redis was erased; retry). The
   member's events stay in the topic until its retention passes (``retention.ms``, read from the broker
   when it answers, else ``events_retention_seconds``): the topic is keyed by member, but its values are
   events, so log compaction (which keeps only the latest value per key and drops a key at its tombstone)
   would keep one event per member instead of the log replay and the archiver need.
4. **Event archive**: when the API sees the archive directory (``archive_dir`` holds one), it removes the
   member's rows itself (``infra.archive.erase_member_rows``) and reports files and rows; otherwise the
   report says "pending" and the archiver does it when it reaches the tombstone. Rows the archiver had
   not written yet are removed by that same pass.
5. **Derived training sets**: none are kept. ``benefits train`` builds its rows in memory; the registry
   keeps models, metadata and reports with aggregate metrics only, and the next training run reads the
   archive without the member. Input files passed to ``benefits train`` are the caller's to erase.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict
from redis.exceptions import RedisError

from infra.archive import erase_member_rows, is_archive
from infra.money_store import MoneyStore
from infra.redis_layout import MemberStore
from service.errors import Unavailable
from service.publisher import Publisher

log = logging.getLogger(__name__)

ERASURE_HEADER = ("benefits-erasure", b"1")
#: How long the API waits for the broker's answer about the topic's retention before using the setting.
RETENTION_LOOKUP_S = 2.0


class _Part(BaseModel):
    model_config = ConfigDict(frozen=True)

    detail: str


class RedisErasure(_Part):
    status: Literal["removed", "nothing_stored"]
    #: member keys deleted (state blob and anything else under the member's namespace)
    keys_deleted: int
    #: stored claim outcomes (idempotency records) deleted
    claim_outcomes_deleted: int


class MoneyErasure(_Part):
    status: Literal["kept", "nothing_stored"]
    #: offers whose per-member claim counter names the member (kept: see ``reason``)
    claim_counters_kept: int
    offers: list[str]
    reason: str


class ArchiveErasure(_Part):
    status: Literal["removed", "nothing_stored", "pending"]
    archive_dir: str | None
    files_rewritten: int
    rows_removed: int


class TrainingSetsErasure(_Part):
    status: Literal["none_kept"]


class KafkaErasure(_Part):
    status: Literal["until_retention"]
    topic: str
    tombstone_published: bool
    #: None: the topic keeps events without a time limit (retention.ms = -1)
    retention_seconds: int | None
    #: "broker": the topic's retention.ms as the broker reported it; "settings": events_retention_seconds
    retention_source: Literal["broker", "settings"]
    #: by when every event the member had in the topic has expired (erasure time + retention)
    gone_by: str | None


class ErasureReport(BaseModel):
    """What ``DELETE /v1/members/{id}`` removed, where, and what remains (and why)."""

    model_config = ConfigDict(frozen=True)

    status: Literal["erased"]
    member_id: str
    erased_at: str
    #: same as ``redis.keys_deleted`` (the answer's first version had only this and ``tombstone``)
    keys_deleted: int
    tombstone: bool
    redis: RedisErasure
    money_state: MoneyErasure
    archive: ArchiveErasure
    training_sets: TrainingSetsErasure
    kafka: KafkaErasure
    #: places this call does not reach, said plainly
    not_covered: list[str]


_CAP_REASON = (
    "per-member claim counters are the record of each offer's per-member cap and cool-down: erasing them "
    "would let this member claim a limited offer again, and stock and budget already count the claims; "
    "they hold a count and a time only and expire with the campaign (end + money_retention_seconds)"
)
_NOT_COVERED = [
    "request logs (stdout): a salted hash of the member id, kept for the platform's log retention",
    "models already trained: aggregate trees, no member rows; the next training run excludes the member",
    "files given to benefits train by hand (bring-your-own tables, --events logs): the caller's to erase",
]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


class Eraser:
    def __init__(
        self,
        store: MemberStore,
        money: MoneyStore,
        publisher: Publisher,
        *,
        archive_dir: Path | None,
        retention_seconds: int,
        registry_dir: Path,
    ) -> None:
        self.store = store
        self.money = money
        self.publisher = publisher
        self.archive_dir = archive_dir
        self.retention_seconds = retention_seconds
        self.registry_dir = registry_dir

    async def erase(self, member_id: str) -> ErasureReport:
        """Erase the member (see the module docstring); idempotent, safe to retry."""
        now = time.time()
        try:
            deleted = await self.store.erase_member(member_id)
            outcomes = await self.money.erase_idempotency_records(member_id)
            offers = await self.money.claim_record_offers(member_id)
        except (RedisError, OSError):
            raise Unavailable("member store unreachable; nothing was erased, retry") from None
        try:
            await self.publisher.send(member_id, None, headers=[ERASURE_HEADER])
        except Unavailable as exc:
            raise Unavailable(
                f"member data erased from Redis ({deleted} keys) but the tombstone was not published: "
                f"{exc.message}"
            ) from None
        archive = await self._archive(member_id)
        kafka = await self._kafka(now)
        log.info(
            "erased a member: %d keys, %d claim outcomes, archive %s (%d rows), %d claim counters kept",
            deleted, outcomes, archive.status, archive.rows_removed, len(offers),
        )  # fmt: skip
        return ErasureReport(
            status="erased",
            member_id=member_id,
            erased_at=_iso(now),
            keys_deleted=deleted,
            tombstone=True,
            redis=RedisErasure(
                status="removed" if deleted or outcomes else "nothing_stored",
                keys_deleted=deleted,
                claim_outcomes_deleted=outcomes,
                detail="the member's state and every key under its namespace, and its stored claim outcomes",
            ),
            money_state=MoneyErasure(
                status="kept" if offers else "nothing_stored",
                claim_counters_kept=len(offers),
                offers=offers,
                reason=_CAP_REASON,
                detail="stock and budget totals carry no member id",
            ),
            archive=archive,
            training_sets=TrainingSetsErasure(
                status="none_kept",
                detail=(
                    "benefits train builds its rows in memory; the registry "
                    f"({self.registry_dir}) keeps models, metadata and reports with aggregate metrics only"
                ),
            ),
            kafka=kafka,
            not_covered=list(_NOT_COVERED),
        )

    async def _archive(self, member_id: str) -> ArchiveErasure:
        root = self.archive_dir
        if root is None or not is_archive(root):
            return ArchiveErasure(
                status="pending",
                archive_dir=None,
                files_rewritten=0,
                rows_removed=0,
                detail="this API process does not see the archive: tombstone published, the archiver "
                "removes the member's rows when it reaches it",
            )
        try:
            done = await asyncio.to_thread(erase_member_rows, root, member_id)
        except OSError as exc:
            log.warning("archive erasure failed (%r): left to the archiver", exc)
            return ArchiveErasure(
                status="pending",
                archive_dir=str(root),
                files_rewritten=0,
                rows_removed=0,
                detail=f"could not rewrite the archive here ({exc.__class__.__name__}): tombstone published, "
                "the archiver removes the member's rows when it reaches it",
            )
        return ArchiveErasure(
            status="removed" if done.rows_removed else "nothing_stored",
            archive_dir=str(root),
            files_rewritten=len(done.files_rewritten),
            rows_removed=done.rows_removed,
            detail="rows the archiver has not written yet are removed when it reaches the tombstone",
        )

    async def _kafka(self, now: float) -> KafkaErasure:
        retention_ms = await self._topic_retention_ms()
        source: Literal["broker", "settings"] = "broker" if retention_ms is not None else "settings"
        seconds = self.retention_seconds if retention_ms is None else retention_ms // 1000
        unlimited = retention_ms is not None and retention_ms < 0
        return KafkaErasure(
            status="until_retention",
            topic=self.publisher.topic,
            tombstone_published=True,
            retention_seconds=None if unlimited else seconds,
            retention_source=source,
            gone_by=None if unlimited else _iso(now + seconds),
            detail=(
                "the member's events stay in the topic until its retention passes (the tombstone tells "
                "consumers to forget them; it deletes nothing); shorten the topic's retention.ms to "
                "shorten this (see docs/deployment.md)"
                + (". This topic has no time limit (retention.ms=-1): set one" if unlimited else "")
            ),
        )

    async def _topic_retention_ms(self) -> int | None:
        """The topic's retention.ms as the broker reports it; None when it does not answer in time."""
        if self.publisher.bootstrap is None:
            return None
        from aiokafka.admin import AIOKafkaAdminClient
        from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.publisher.bootstrap, request_timeout_ms=int(RETENTION_LOOKUP_S * 1000)
        )
        try:
            async with asyncio.timeout(RETENTION_LOOKUP_S):
                await admin.start()
                answer = await admin.describe_configs(
                    [ConfigResource(ConfigResourceType.TOPIC, self.publisher.topic)]
                )
            for response in answer:
                for resource in response.resources:
                    for entry in resource[4]:
                        if entry[0] == "retention.ms" and entry[1] not in (None, ""):
                            return int(entry[1])
        except Exception as exc:  # any broker or protocol trouble: fall back to the setting
            log.info("topic retention lookup failed (%r): reporting events_retention_seconds", exc)
        finally:
            with contextlib.suppress(Exception):  # closing a client that never started
                await admin.close()
        return None
