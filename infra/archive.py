"""The event archive: the member-events topic as Parquet files partitioned by event date.

Layout (``ROOT`` is ``benefits archive --out``)::

    ROOT/event_date=YYYY-MM-DD/part-p{partition:04d}-o{first:012d}-{last:012d}.parquet
    ROOT/_offsets.json      {"topic": ..., "next": {"<partition>": next offset to read}}

Columns: ``member_id``, ``event_id``, ``type``, ``event_ts`` (Unix seconds UTC), ``partition``,
``offset``, ``event`` (the record's JSON bytes, exactly as published: training decodes it with the same
schema the worker uses, so archived and streamed events cannot differ).

Exactly once in effect: a batch is written as files (temp file, then an atomic rename), and only then
are its offsets recorded (same way). A crash between the two leaves files whose names carry their
offset ranges; on restart :meth:`ArchiveWriter.next_offsets` takes the maximum of the recorded offsets
and the highest offset found in file names, so the re-read resumes after the last written record and
nothing is archived twice. :func:`read_archive` also drops duplicate (partition, offset) pairs, so even
a hand-copied file cannot double a row.

Erasure: a tombstone (null value) for a member removes that member's rows from every file
(:meth:`ArchiveWriter.erase_member` rewrites the affected files in place, keeping their names) and
their rows after it are archived as usual (a member may come back after erasure). The erasure API
(``DELETE /v1/members/{id}``) also calls :func:`erase_member_rows` itself when it can see the archive
directory, so the answer can say what was removed; the archiver's own pass at the tombstone then removes
rows it had not written yet. Rewrites and batch writes take an exclusive lock on ``ROOT/.lock``
(``flock``): two erasures rewriting one file at once would otherwise put back each other's member.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from features import events as ev

log = logging.getLogger(__name__)

OFFSETS_FILE = "_offsets.json"
LOCK_FILE = ".lock"
_PART = re.compile(r"^part-p(\d{4})-o(\d{12})-(\d{12})\.parquet$")
SCHEMA = pa.schema(
    [
        ("member_id", pa.string()),
        ("event_id", pa.string()),
        ("type", pa.string()),
        ("event_ts", pa.float64()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("event", pa.binary()),
    ]
)


@dataclass(frozen=True)
class Record:
    """One archived record: where it came from and its decoded event (raw bytes kept verbatim)."""

    partition: int
    offset: int
    raw: bytes
    event: ev.Event


def event_date(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def _atomic_write(path: Path, write: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    os.close(fd)
    try:
        write(tmp)  # type: ignore[operator]
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def parts(root: Path) -> list[Path]:
    return sorted(Path(root).glob("event_date=*/part-*.parquet"))


def is_archive(root: Path) -> bool:
    """True when ``root`` holds an archive (its offsets file or a part file)."""
    root = Path(root)
    return root.is_dir() and ((root / OFFSETS_FILE).exists() or bool(parts(root)))


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """Exclusive lock of the archive for a rewrite or a batch write (blocks until it is free)."""
    with (Path(root) / LOCK_FILE).open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass(frozen=True)
class ArchiveErasure:
    """What removing a member from the archive changed."""

    files_rewritten: list[Path]
    rows_removed: int


def erase_member_rows(root: Path, member_id: str) -> ArchiveErasure:
    """Remove every row of ``member_id`` from the archive at ``root`` (rewrites only the files that have
    one, keeping their names; an emptied file stays, its name records an offset range). Idempotent."""
    changed: list[Path] = []
    removed = 0
    with locked(root):
        for f in parts(root):
            members = pq.read_table(f, columns=["member_id"]).column("member_id").to_pylist()
            hits = sum(1 for m in members if m == member_id)
            if not hits:
                continue
            table = pq.read_table(f)
            rest = table.filter(pa.array([m != member_id for m in members]))
            if rest.num_rows == 0:
                rest = table.schema.empty_table()
            _atomic_write(f, lambda tmp, t=rest: pq.write_table(t, tmp))
            changed.append(f)
            removed += hits
    if changed:
        log.info("erased member from %d archive files (%d rows)", len(changed), removed)
    return ArchiveErasure(changed, removed)


class ArchiveWriter:
    """Writes batches of records into ``root`` (see the module docstring). One writer per archive."""

    def __init__(self, root: Path, topic: str) -> None:
        self.root = Path(root)
        self.topic = topic
        self.root.mkdir(parents=True, exist_ok=True)

    def _recorded(self) -> dict[int, int]:
        path = self.root / OFFSETS_FILE
        if not path.exists():
            return {}
        data = json.loads(path.read_text())
        if data.get("topic") != self.topic:
            raise ValueError(f"{path} records topic {data.get('topic')!r}, not {self.topic!r}")
        return {int(p): int(o) for p, o in data.get("next", {}).items()}

    def next_offsets(self) -> dict[int, int]:
        """Per partition, the next offset to archive: after both the recorded offsets and every file."""
        out = self._recorded()
        for f in parts(self.root):
            m = _PART.match(f.name)
            if m:
                p, last = int(m.group(1)), int(m.group(3))
                out[p] = max(out.get(p, 0), last + 1)
        return out

    def _record_offsets(self, offsets: dict[int, int]) -> None:
        merged = {**self._recorded(), **offsets}
        body = json.dumps({"topic": self.topic, "next": {str(p): o for p, o in sorted(merged.items())}})
        _atomic_write(self.root / OFFSETS_FILE, lambda tmp: Path(tmp).write_text(body))

    def write(self, records: list[Record], next_offsets: dict[int, int]) -> list[Path]:
        """Archive ``records`` (one file per event date and partition), then record ``next_offsets``."""
        with locked(self.root):
            return self._write(records, next_offsets)

    def _write(self, records: list[Record], next_offsets: dict[int, int]) -> list[Path]:
        groups: dict[tuple[str, int], list[Record]] = {}
        for r in records:
            groups.setdefault((event_date(r.event.event_ts), r.partition), []).append(r)
        written = []
        for (day, partition), rs in sorted(groups.items()):
            rs.sort(key=lambda r: r.offset)
            name = f"part-p{partition:04d}-o{rs[0].offset:012d}-{rs[-1].offset:012d}.parquet"
            path = self.root / f"event_date={day}" / name
            table = pa.table(
                {
                    "member_id": [r.event.member_id for r in rs],
                    "event_id": [r.event.event_id for r in rs],
                    "type": [ev.event_type(r.event) for r in rs],
                    "event_ts": [r.event.event_ts for r in rs],
                    "partition": [r.partition for r in rs],
                    "offset": [r.offset for r in rs],
                    "event": [r.raw for r in rs],
                },
                schema=SCHEMA,
            )
            _atomic_write(path, lambda tmp, t=table: pq.write_table(t, tmp))
            written.append(path)
        if next_offsets:
            self._record_offsets(next_offsets)
        return written

    def erase_member(self, member_id: str) -> list[Path]:
        """Remove every row of ``member_id`` (:func:`erase_member_rows`); the files rewritten."""
        return erase_member_rows(self.root, member_id).files_rewritten


def read_archive(root: Path) -> list[ev.Event]:
    """Every archived event (decoded with the event schema), each (partition, offset) once."""
    root = Path(root)
    files = parts(root)
    if not files:
        raise FileNotFoundError(f"{root}: no archive files (event_date=*/part-*.parquet)")
    seen: set[tuple[int, int]] = set()
    out: list[ev.Event] = []
    bad = 0
    for f in files:
        t = pq.read_table(f, columns=["partition", "offset", "event"])
        for p, o, raw in zip(
            t.column("partition").to_pylist(),
            t.column("offset").to_pylist(),
            t.column("event").to_pylist(),
            strict=True,
        ):
            if (p, o) in seen:
                continue
            seen.add((p, o))
            try:
                out.append(ev.decode(raw))
            except ev.InvalidEvent:
                bad += 1
    if bad:
        log.warning("%s: %d archived records do not decode: skipped", root, bad)
    return out
