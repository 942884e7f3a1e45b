"""The logged-slate audit: what members were actually shown, measured per group.

Sources:

- the API's request log (``service.requests`` lines with ``"msg": "recommend"``, one JSON object per
  line as ``infra.logs`` writes them; other lines are skipped). Each line names the slate's offer ids,
  the catalogue version, the member as a salted hash, its ``sample_rate`` (rows are weighted by its
  inverse) and ``group``: the member's tier and paid membership as the ranking saw them. Offer values
  come from the catalogue (the line carries none); offers it no longer has are counted and left out.
  Region and segment are **not** on the line: they are joined here from a members table or the live
  member states, by hashing their member ids with the same salt (``BENEFITS_MEMBER_HASH_SALT``), in
  memory only;
- a simulation's ``impressions.parquet`` (the slates its logging policy showed) with
  ``members.parquet`` for the groups.

These are observations: groups differ in what they browse and when, so a logged gap mixes the
attribute's effect with everything else about the group. The counterfactual audit isolates the
attribute; this one says what members actually got.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.events import TIERS
from training.fairness.groups import AttributeSpec, AuditConfig, judge
from training.fairness.slates import METRICS, OfferFacts, slate_metrics

log = logging.getLogger(__name__)


def member_hash(salt: bytes, member_id: str) -> str:
    """The request log's form of a member id (``service.recommend.member_hash``; a test keeps them equal)."""
    return hmac.new(salt, member_id.encode(), hashlib.sha256).hexdigest()[:16]


def read_request_log(path: Path) -> Iterator[dict[str, Any]]:
    """The recommend lines of a request log (JSON lines; anything else on the stream is skipped)."""
    with Path(path).open("rb") as f:
        for raw in f:
            raw = raw.strip()
            if not raw.startswith(b"{"):
                continue
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if (
                isinstance(line, dict)
                and line.get("msg") == "recommend"
                and isinstance(line.get("slate"), list)
            ):
                yield line


@dataclass
class Logged:
    """One row per logged slate: measures, weight and group columns."""

    values: np.ndarray
    weights: np.ndarray
    groups: pd.DataFrame
    info: dict[str, Any]


def from_request_log(
    path: Path,
    facts: Mapping[str, OfferFacts],
    joined: Mapping[str, Mapping[str, str]] | None = None,
    catalog_version: int | None = None,
) -> Logged:
    """Rows from a request log. ``joined``: member hash -> extra group columns (region, segment)."""
    rows: list[np.ndarray] = []
    weights: list[float] = []
    groups: list[dict[str, str]] = []
    unknown_offers = no_group = unmatched = 0
    versions: set[Any] = set()
    modes: dict[str, int] = {}
    for line in read_request_log(path):
        values, unknown = slate_metrics([str(o) for o in line["slate"]], facts)
        unknown_offers += unknown
        versions.add(line.get("catalog_version"))
        mode = str(line.get("mode"))
        modes[mode] = modes.get(mode, 0) + 1
        group = line.get("group")
        row: dict[str, str] = {}
        if isinstance(group, dict):
            row["tier"] = str(group.get("tier", ""))
            row["paid"] = "yes" if group.get("paid") else "no"
        else:
            no_group += 1  # a line from before the field, or an answer given without the member's state
        if joined is not None:
            extra = joined.get(str(line.get("member", "")))
            if extra is None:
                unmatched += 1
            else:
                row.update(extra)
        rows.append(values)
        rate = float(line.get("sample_rate") or 1.0)
        weights.append(1.0 / rate if rate > 0 else 1.0)
        groups.append(row)
    if unknown_offers:
        log.warning("%d logged offers are not in the catalogue (retired?): left out", unknown_offers)
    if no_group:
        log.warning(
            "%d log lines carry no group (older lines, or answers without the member's state)", no_group
        )
    if joined is not None and unmatched:
        log.warning("%d log lines name members the members table / store does not have", unmatched)
    if catalog_version is not None and versions - {catalog_version}:
        log.warning(
            "log lines from catalogue versions %s; offer values are those of version %s",
            sorted(v for v in versions if v is not None), catalog_version,
        )  # fmt: skip
    info = {
        "kind": "request_log",
        "path": str(path),
        "lines": len(rows),
        "modes": modes,
        "unknown_offers": unknown_offers,
        "lines_without_group": no_group,
        "lines_unmatched_in_join": unmatched if joined is not None else None,
        "catalog_versions": sorted((v for v in versions if v is not None), key=str),
    }
    return Logged(_matrix(rows), np.asarray(weights), pd.DataFrame(groups), info)


def _matrix(rows: list[np.ndarray]) -> np.ndarray:
    return np.vstack(rows) if rows else np.empty((0, len(METRICS)))


def from_impressions(data: Path, facts: Mapping[str, OfferFacts]) -> Logged:
    """Rows from a simulation's impressions (one slate per request id) and its members table."""
    imp = pd.read_parquet(Path(data) / "impressions.parquet", columns=["request_id", "member_id", "offer_id",
                                                                          "position"])  # fmt: skip
    members = pd.read_parquet(Path(data) / "members.parquet")
    imp = imp.sort_values(["request_id", "position"], kind="stable")
    slates = imp.groupby("request_id", sort=False).agg(member_id=("member_id", "first"),
                                                       offers=("offer_id", list))  # fmt: skip
    attrs = members.set_index("member_id")
    rows, groups = [], []
    unknown_offers = 0
    for member_id, offers in zip(slates["member_id"], slates["offers"], strict=True):
        values, unknown = slate_metrics(offers, facts)
        unknown_offers += unknown
        rows.append(values)
        m = attrs.loc[member_id]
        row = {"tier": str(m["tier"]), "paid": "yes" if bool(m["paid_member"]) else "no"}
        for col in ("region", "segment"):
            if col in attrs.columns:
                row[col] = str(m[col])
        groups.append(row)
    info = {"kind": "impressions", "path": str(data), "lines": len(rows), "unknown_offers": unknown_offers,
            "note": "slates the simulation's logging policy showed, not the audited model's"}  # fmt: skip
    return Logged(_matrix(rows), np.ones(len(rows)), pd.DataFrame(groups), info)


def join_table(frame: pd.DataFrame, salt: bytes, columns: tuple[str, ...] = ("region", "segment")) -> dict:
    """member hash -> the table's group columns, for joining request log lines (in memory only)."""
    cols = [c for c in columns if c in frame.columns]
    if not cols:
        return {}
    return {
        member_hash(salt, str(mid)): {c: str(v) for c, v in zip(cols, vals, strict=True)}
        for mid, *vals in frame[["member_id", *cols]].itertuples(index=False)
    }


def _spec(name: str, seen: list[str]) -> AttributeSpec:
    if name == "tier":
        return AttributeSpec("tier", tuple(TIERS), ordered=True)
    if name == "paid":
        return AttributeSpec("paid", ("no", "yes"), ordered=True)
    return AttributeSpec(name, tuple(sorted(seen)), ordered=False)


def run(logged: Logged, attributes: list[str], config: AuditConfig) -> dict[str, Any]:
    """The logged part of the report: one section per attribute the rows carry."""
    sections = []
    for name in attributes:
        if name not in logged.groups.columns:
            log.warning("logged slates carry no %s: not audited from the log", name)
            continue
        col = logged.groups[name].fillna("").astype(str)
        keep = (col != "").to_numpy()
        seen = sorted(set(col[keep]))
        if len(seen) < 2:
            log.warning("logged slates: fewer than two %s groups; not audited", name)
            continue
        attr = _spec(name, seen)
        section = judge(
            attr,
            logged.values[keep],
            logged.weights[keep],
            col[keep].tolist(),
            config.for_attribute(name),
            control=(logged.groups["segment"].astype(str)[keep].tolist()
                     if "segment" in logged.groups.columns and name != "segment" else None),
        )  # fmt: skip
        sections.append(section)
    return {"source": logged.info, "attributes": sections}
