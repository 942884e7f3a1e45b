"""``benefits archive`` against a real broker: published -> archived (own consumer group, resumable,
erasure-aware) -> the same events back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from features import events as ev
from harness.embedded import Service
from infra.archive import OFFSETS_FILE, parts, read_archive
from infra.settings import Settings
from stream.archiver import run_archiver

pytestmark = pytest.mark.integration

T0 = 1_760_000_000.0


def _events(n: int) -> list[ev.Event]:
    return [
        ev.PageView(
            event_id=f"e{i}",
            member_id=f"m{i % 7}",
            event_ts=T0 + i * 20_000.0,
            page_type="category",
            category="coffee",
        )
        for i in range(n)
    ]


async def _publish(bootstrap: str, topic: str, records: list[tuple[str, bytes | None]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key.encode())
    finally:
        await producer.stop()


def test_archive_resumes_without_doubles_and_erases(
    broker: Service, topics: dict[str, str], unique: str, tmp_path: Path
) -> None:
    settings = Settings(
        kafka_bootstrap=broker.url,
        events_topic=topics["events"],
        archive_consumer_group=f"arch-{unique}",
        archive_flush_seconds=0.2,
    )
    out = tmp_path / "archive"
    first, second = _events(40), _events(70)[40:]

    async def main() -> None:
        await _publish(broker.url, topics["events"], [(e.member_id, ev.encode(e)) for e in first])
        await _publish(broker.url, topics["events"], [("m0", b'{"type":"nope"}')])  # not archived
        s1 = await run_archiver(settings, out, idle_exit_seconds=3.0)
        assert s1.archived == 40 and s1.invalid == 1
        # Offsets recorded: a second run (even under a new consumer group) resumes after them.
        await _publish(broker.url, topics["events"], [(e.member_id, ev.encode(e)) for e in second])
        again = settings.model_copy(update={"archive_consumer_group": f"arch2-{unique}"})
        s2 = await run_archiver(again, out, idle_exit_seconds=3.0)
        assert s2.archived == 30
        await _publish(broker.url, topics["events"], [("m3", None)])  # erasure tombstone
        s3 = await run_archiver(settings, out, idle_exit_seconds=3.0)
        assert s3.erased == 1

    asyncio.run(main())
    assert (out / OFFSETS_FILE).exists()
    assert len({p.parent.name for p in parts(out)}) > 1  # partitioned by event date
    back = read_archive(out)
    want = [e for e in first + second if e.member_id != "m3"]
    assert sorted(ev.encode(e) for e in back) == sorted(ev.encode(e) for e in want)
