"""Topic incarnations: which life of a Kafka topic the stored offset watermarks belong to.

Offsets are only comparable within one incarnation of a topic. A broker that lost its data (memory
storage, a disaster-recovery failover, a cluster migration) and a topic deleted and created again both
restart offsets at 0, while every member blob still holds the old topic's watermarks: without an
identity, the worker would skip the new events as redeliveries (measured: 21 % of accepted feedback).
aiokafka (0.14) does not expose Kafka's topic id (metadata v10+), so the worker keeps its own record.

Key (``P`` the prefix; see ``infra/redis_layout.py``)::

    P:{inc}:TOPIC    hash: partition -> "INCARNATION OFFSET FINGERPRINT", the current incarnation token
                     of the partition ("" is the original one, so blobs written before this existed stay
                     valid), the highest offset processed in it and a fingerprint of that record
                     (timestamp, key, value). Written by the worker that owns the partition after each
                     batch is in Redis (so it never runs ahead of the blobs); no TTL.

The member blobs and offer-stat partials carry the incarnation of each watermark; a watermark of
another incarnation reads as "nothing folded yet" (see ``stream/batch.py``).
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

from infra.redis_client import AnyRedis
from infra.redis_layout import RedisLayout


def record_fingerprint(timestamp: int, key: bytes | None, value: bytes | None) -> str:
    """A short stable identity of one Kafka record (two incarnations' records at one offset differ)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(str(timestamp).encode())
    h.update(b"\x00" if key is None else b"\x01" + key)
    h.update(b"\x00" if value is None else b"\x01" + value)
    return h.hexdigest()


def new_incarnation() -> str:
    return uuid.uuid4().hex[:16]


@dataclass
class PartitionMark:
    """What the worker last recorded for a partition."""

    incarnation: str
    offset: int
    fingerprint: str

    def encode(self) -> str:
        # The original incarnation is "": written as "-" so the three fields always split.
        return f"{self.incarnation or '-'} {self.offset} {self.fingerprint}"

    @classmethod
    def decode(cls, raw: bytes | str) -> PartitionMark:
        text = raw.decode() if isinstance(raw, bytes) else raw
        inc, off, fp = text.split(" ")
        return cls("" if inc == "-" else inc, int(off), fp)


class TopicIncarnations:
    """The per-partition incarnation record of one topic."""

    def __init__(self, client: AnyRedis, layout: RedisLayout, topic: str) -> None:
        self.r = client
        self.key = layout.topic_incarnation_key(topic)

    async def read(self, partitions: list[int]) -> dict[int, PartitionMark]:
        """The recorded marks of ``partitions`` (a partition never recorded is absent)."""
        if not partitions:
            return {}
        raws = await self.r.hmget(self.key, [str(p) for p in partitions])
        return {p: PartitionMark.decode(raw) for p, raw in zip(partitions, raws, strict=True) if raw}

    async def write(self, marks: dict[int, PartitionMark]) -> None:
        if marks:
            await self.r.hset(self.key, mapping={str(p): m.encode() for p, m in marks.items()})
