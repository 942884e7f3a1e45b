"""Where the audited members come from, and the contexts they are ranked in.

- a simulation directory (``benefits simulate``): ``members.parquet`` (segment, device, channel per
  member), the member states folded from ``events.jsonl`` with the stream's own fold, the time = the
  end of the simulated horizon (``meta.json``), the catalogue ``catalog.json``;
- a live stack's Redis: member ids sampled by a SCAN of the member keys, their stored states (what the
  API reads), the time = now; segments from an optional members table.

Contexts: each member is ranked on each of the chosen page types; category and product pages carry
the member's strongest recent category interest (a random catalogue category when there is none), so
the page matches what the member would browse; device and channel are the member's own when known.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from features import events as ev
from features.projection import Context
from features.state import MemberState, apply, new_state
from infra.redis_layout import MemberStore
from training.fairness.counterfactual import Sample

log = logging.getLogger(__name__)

#: Pages that carry a category in the context.
CATEGORY_PAGES = frozenset({"category", "product"})
DEFAULT_PAGES: tuple[str, ...] = ("home", "category", "product", "member_center")
#: Member states read per pipelined round trip when scanning a live stack.
READ_BATCH = 1000


def check_pages(pages: Sequence[str]) -> list[str]:
    unknown = [p for p in pages if p not in ev.PAGE_TYPES]
    if unknown or not pages:
        raise ValueError(f"pages: unknown page types {unknown}; known: {', '.join(ev.PAGE_TYPES)}")
    return list(pages)


def read_members_table(path: Path) -> pd.DataFrame:
    """A members table (CSV or Parquet) with a ``member_id`` column; ValueError naming what is wrong."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"members table {p} does not exist")
    try:
        frame = pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p)
    except (OSError, ValueError) as exc:
        raise ValueError(f"members table {p}: {exc}") from None
    if "member_id" not in frame.columns:
        raise ValueError(f"members table {p}: no member_id column (columns: {list(frame.columns)})")
    frame["member_id"] = frame["member_id"].astype(str)
    return frame


def contexts_for(
    state: MemberState,
    pages: Sequence[str],
    categories: Sequence[str],
    now: float,
    rng: np.random.Generator,
    device: str = "other",
    channel: str = "app",
) -> list[Context]:
    top = None
    if state.cat_interest:
        top = max(state.cat_interest.items(), key=lambda kv: (kv[1].at_index(now, 2), kv[0]))[0]
    out = []
    for page in pages:
        category = None
        if page in CATEGORY_PAGES:
            category = top or (str(rng.choice(list(categories))) if categories else None)
        out.append(Context(page_type=page, category=category, device=device, channel=channel))
    return out


def _segments(frame: pd.DataFrame | None, ids: Sequence[str]) -> list[str] | None:
    if frame is None or "segment" not in frame.columns:
        return None
    seg = frame.set_index("member_id")["segment"].astype(str).to_dict()
    return [seg.get(m, "unknown") for m in ids]


def _column(frame: pd.DataFrame | None, name: str, ids: Sequence[str], default: str) -> list[str]:
    if frame is None or name not in frame.columns:
        return [default] * len(ids)
    values = frame.set_index("member_id")[name].astype(str).to_dict()
    return [values.get(m, default) for m in ids]


def fold_members(events: Path, member_ids: set[str]) -> tuple[dict[str, MemberState], int]:
    """States of ``member_ids`` folded from a JSONL event log (other members' lines are skipped);
    returns the states and the number of undecodable lines."""
    states = {m: new_state(m) for m in member_ids}
    bad = 0
    with Path(events).open("rb") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                e = ev.decode(line.rstrip(b"\n"))
            except ev.InvalidEvent:
                bad += 1
                continue
            s = states.get(e.member_id)
            if s is not None:
                apply(s, e)
    return states, bad


def from_data_dir(
    data: Path, n: int, pages: Sequence[str], categories: Sequence[str], seed: int = 0
) -> Sample:
    """``n`` members sampled from a simulation (or any directory with members.parquet and events.jsonl)."""
    data = Path(data)
    for name in ("members.parquet", "events.jsonl"):
        if not (data / name).exists():
            raise ValueError(f"--data {data}: no {name} (expected a `benefits simulate` directory)")
    members = read_members_table(data / "members.parquet")
    rng = np.random.default_rng(seed)
    ids = members["member_id"].tolist()
    picked = sorted(rng.choice(ids, size=min(n, len(ids)), replace=False).tolist())
    t0 = time.perf_counter()
    states, bad = fold_members(data / "events.jsonl", set(picked))
    if bad:
        log.warning("%s: %d undecodable event lines skipped", data / "events.jsonl", bad)
    meta_path = data / "meta.json"
    if meta_path.exists():
        now = float(json.loads(meta_path.read_text())["end_ts"])
    else:
        now = max((s.last_event_ts for s in states.values()), default=time.time())
    log.info("folded %d members from %s in %.1fs", len(picked), data, time.perf_counter() - t0)
    chosen = [states[m] for m in picked]
    devices = _column(members, "device", picked, "other")
    channels = _column(members, "channel", picked, "app")
    contexts = [
        contexts_for(s, pages, categories, now, rng, d, c)
        for s, d, c in zip(chosen, devices, channels, strict=True)
    ]
    return Sample(chosen, contexts, now, _segments(members, picked), {"kind": "data_dir", "path": str(data)})


async def from_redis(
    store: MemberStore,
    n: int,
    pages: Sequence[str],
    categories: Sequence[str],
    now: float,
    members: pd.DataFrame | None = None,
    seed: int = 0,
    scan_limit: int = 100_000,
) -> Sample:
    """``n`` members sampled from the member states a live stack keeps in Redis (up to ``scan_limit``
    scanned; every scanned member's region is kept for joining log lines)."""
    rng = np.random.default_rng(seed)
    ids = await store.member_ids(limit=scan_limit)
    if not ids:
        raise ValueError(f"no member states under prefix {store.layout.prefix!r} in Redis")
    states: dict[str, MemberState] = {}
    for i in range(0, len(ids), READ_BATCH):
        part = ids[i : i + READ_BATCH]
        for mid, stored in zip(part, await store.get_members(part), strict=True):
            if stored is not None:
                states[mid] = stored.state
    if len(states) < len(ids):
        log.warning("%d scanned members vanished or have another layout version", len(ids) - len(states))
    known = sorted(states)
    got = sorted(rng.choice(known, size=min(n, len(known)), replace=False).tolist()) if known else []
    chosen = [states[m] for m in got]
    devices = _column(members, "device", got, "other")
    channels = _column(members, "channel", got, "app")
    contexts = [
        contexts_for(s, pages, categories, now, rng, d, c)
        for s, d, c in zip(chosen, devices, channels, strict=True)
    ]
    source = {"kind": "redis", "prefix": store.layout.prefix, "scanned": len(ids)}
    regions = {m: s.region for m, s in states.items()}
    return Sample(chosen, contexts, now, _segments(members, got), source, regions)
