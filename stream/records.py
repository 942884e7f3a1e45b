"""What the worker consumes and what it dead-letters: the raw broker record and the JSON envelope of
the dead-letter topic."""

from __future__ import annotations

import base64

import msgspec


class RawRecord(msgspec.Struct, array_like=True, gc=False):
    """One consumed message, as the broker gave it."""

    partition: int
    offset: int
    key: bytes | None
    #: None is a Kafka tombstone: the API publishes one per erased member (see service/feedback.py).
    value: bytes | None


class DeadLetter(msgspec.Struct, omit_defaults=True):
    """The JSON envelope on the dead-letter topic. ``payload_text`` when the payload is UTF-8, else
    ``payload_b64``; ``source_partition``/``source_offset`` identify it (a redelivery after a crash
    can dead-letter the same message twice: deduplicate on them)."""

    reason: str
    detail: str
    source_topic: str
    source_partition: int
    source_offset: int
    dead_lettered_ts: float
    key: str | None = None
    payload_text: str | None = None
    payload_b64: str | None = None
    payload_bytes: int = 0
    v: int = 1


_dl_encoder = msgspec.json.Encoder()
_dl_decoder = msgspec.json.Decoder(DeadLetter)


def encode_dead_letter(envelope: DeadLetter) -> bytes:
    return _dl_encoder.encode(envelope)


def decode_dead_letter(raw: bytes) -> DeadLetter:
    return _dl_decoder.decode(raw)


def text_or_none(raw: bytes | None) -> str | None:
    """``raw`` as UTF-8 text, or None when it is absent or not UTF-8."""
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def make_dead_letter(rec: RawRecord, topic: str, reason: str, detail: str, now: float) -> DeadLetter:
    text = text_or_none(rec.value)
    return DeadLetter(
        reason=reason,
        detail=detail[:1000],
        source_topic=topic,
        source_partition=rec.partition,
        source_offset=rec.offset,
        dead_lettered_ts=now,
        key=text_or_none(rec.key) if rec.key is not None else None,
        payload_text=text,
        payload_b64=None
        if text is not None or rec.value is None
        else base64.b64encode(rec.value).decode("ascii"),
        payload_bytes=len(rec.value) if rec.value is not None else 0,
    )
