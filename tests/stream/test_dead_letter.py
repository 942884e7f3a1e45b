"""Bad input never stops the worker: malformed, oversized, unknown-type, schema-violating and mis-keyed
messages end on the dead-letter topic with their reason, the counts match, and good events around them
are folded."""

from __future__ import annotations

import asyncio
import base64
import json
from collections import Counter
from pathlib import Path

import pytest

from features import events as ev
from harness import stream_driver as h
from stream.records import decode_dead_letter

pytestmark = pytest.mark.integration


def _bad_messages() -> list[tuple[bytes | None, bytes, str]]:
    """(key, value, expected reason)."""
    good = json.loads(ev.encode(h.synthetic_events(1, 1, prefix="bad")[0]))
    out: list[tuple[bytes | None, bytes, str]] = []
    for i in range(5):
        out.append((b"bad1", b"{not json" + bytes([i]), "malformed"))
        out.append((b"bad2", b"\xff\xfe\x00binary" + bytes([i]), "malformed"))
        out.append(
            (b"bad3", json.dumps({**good, "member_id": "bad3", "pad": "x" * 20_000}).encode(), "oversized")
        )
        out.append(
            (b"bad4", json.dumps({**good, "member_id": "bad4", "type": "teleport"}).encode(), "unknown_type")
        )
        out.append(
            (b"bad5", json.dumps({**good, "member_id": "bad5", "event_ts": "yesterday"}).encode(), "schema")
        )
        wrong_key = {**good, "member_id": "bad6", "event_id": f"k{i}"}
        out.append((b"someone-else", json.dumps(wrong_key).encode(), "key_mismatch"))
        missing = {k: v for k, v in good.items() if k != "type"}
        out.append((b"bad7", json.dumps({**missing, "member_id": "bad7"}).encode(), "missing_type"))
    return out


def test_bad_events_go_to_the_dead_letter_topic(worker_cfg: h.WorkerConfig, worker_log: Path) -> None:
    good_before = h.synthetic_events(3000, 100, seed=21, prefix="a")
    good_after = h.synthetic_events(3000, 100, seed=22, prefix="b", start_ts=1_700_900_000.0)
    bad = _bad_messages()
    expected = Counter(reason for _, _, reason in bad)
    # Bad messages are interleaved with good ones so the worker must keep going past each of them.
    messages = h.keyed(good_before) + [(k, v) for k, v, _ in bad] + h.keyed(good_after)
    good = good_before + good_after
    mids = sorted({e.member_id for e in good})

    with h.worker_process(worker_cfg, worker_log) as proc:
        asyncio.run(h.produce(worker_cfg.bootstrap, worker_cfg.events_topic, messages))
        seen = asyncio.run(h.wait_folded(worker_cfg.redis_url, worker_cfg.prefix, mids, len(good), 60))
        assert seen == len(good), worker_log.read_text()[-3000:]
        letters = [
            decode_dead_letter(raw)
            for raw in asyncio.run(
                h.consume_all(worker_cfg.bootstrap, worker_cfg.dead_letter_topic, len(bad))
            )
        ]
        metrics = h.scrape_metrics(worker_cfg.metrics_port)
        assert proc.poll() is None, "the worker must survive bad input"

    assert Counter(d.reason for d in letters) == expected
    counted = {
        dict(labels)["reason"]: v
        for (name, labels), v in metrics.items()
        if name == "benefits_stream_dead_letters_total"
    }
    assert counted == {r: float(n) for r, n in expected.items()}
    # Each envelope carries the original payload and where it came from.
    originals = {v for _, v, _ in bad}
    for d in letters:
        payload = (
            d.payload_text.encode() if d.payload_text is not None else base64.b64decode(d.payload_b64 or "")
        )
        assert payload in originals
        assert d.source_topic == worker_cfg.events_topic and d.source_offset >= 0 and d.detail
    # The good events on both sides of the bad ones were folded exactly once.
    stored = asyncio.run(h.read_members(worker_cfg.redis_url, worker_cfg.prefix, mids))
    reference = h.offline_fold(good)
    assert all(stored[m].state == reference[m] for m in mids)
    assert not any(m in stored for m in ("bad1", "bad2", "bad3", "bad4", "bad5", "bad6", "bad7"))
