"""The counterfactual audit: the same members in the same contexts, ranked again with one group attribute
changed, and nothing else.

For each sampled member and context, the member is ranked as every level of the attribute (a regular
member as silver, gold and diamond too; a paid member as not paid), so every level is measured on the
same members and contexts and any gap is caused by the attribute alone (through the model, which sees
tier and paid membership, and through the catalogue's eligibility rules, which read tier, paid
membership and region). The ranking is the service's own (``service.ranking.rank``, passed in as a
:data:`Ranker` by the CLI: training may not import the service), with the guard on or off as the
operator chooses.

Attributes:

- ``tier``: ordered, the programme's tiers;
- ``paid``: ordered ``no`` < ``yes`` (yes: an open-ended paid membership; no: none);
- ``region``: unordered, the regions members in the sample have and those the catalogue's rules name;
- ``declared:NAME``: unordered, a declared member attribute (``profile_updated.attributes``), the values
  the sample has. It only matters when the feature specification or a rule reads it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec
import numpy as np

from features.events import TIERS
from features.lifecycle import paid_active
from features.offers import Offer
from features.projection import Context
from features.state import Attribute, MemberState
from training.fairness.groups import AttributeSpec, AuditConfig, judge
from training.fairness.slates import METRICS, OfferFacts, VersionCount, slate_metrics, worse_versions

log = logging.getLogger(__name__)

#: Most levels a declared attribute may have in the audit (each one is a full ranking pass).
MAX_DECLARED_LEVELS = 12


class RankedSlate(NamedTuple):
    offer_ids: tuple[str, ...]
    #: Eligible offers the online guard withheld from this slate.
    guard_blocked: int = 0


#: Ranks one member in one context: the service's ranking, bound to a catalogue, model and policy.
Ranker = Callable[[MemberState, Context], RankedSlate]


@dataclass
class Sample:
    """Members to audit, the contexts each is ranked in, and (optionally) a segment per member."""

    states: list[MemberState]
    contexts: list[list[Context]]
    now: float
    segments: list[str] | None = None
    source: dict[str, Any] = field(default_factory=dict)
    #: Region of every member the source read (a live stack's: all scanned), for joining log lines.
    regions: dict[str, str] = field(default_factory=dict)


def attribute_spec(name: str, sample: Sample, offers: Sequence[Offer]) -> AttributeSpec | None:
    """The attribute called ``name`` with its levels; None (with a warning) when it has fewer than two."""
    if name == "tier":
        return AttributeSpec("tier", TIERS, ordered=True)
    if name == "paid":
        return AttributeSpec("paid", ("no", "yes"), ordered=True)
    if name == "region":
        levels = {s.region for s in sample.states if s.region}
        for o in offers:
            levels.update(o.eligibility.regions)
        if len(levels) < 2:
            log.warning("region: fewer than two regions in the sample and the catalogue; not audited")
            return None
        return AttributeSpec("region", tuple(sorted(levels)), ordered=False)
    if name.startswith("declared:"):
        key = name.split(":", 1)[1]
        seen = {str(a.value) for s in sample.states if (a := s.attributes.get(key)) is not None}
        seen.discard("None")
        if len(seen) < 2:
            log.warning("%s: fewer than two values among the sampled members; not audited", name)
            return None
        if len(seen) > MAX_DECLARED_LEVELS:
            raise ValueError(f"{name}: {len(seen)} values; the audit takes at most {MAX_DECLARED_LEVELS}")
        return AttributeSpec(name, tuple(sorted(seen)), ordered=False)
    raise ValueError(f"unknown attribute {name!r}: expected tier, paid, region or declared:NAME")


def level_of(state: MemberState, attr: AttributeSpec, now: float) -> str:
    """The member's own level of ``attr``."""
    if attr.name == "tier":
        return state.tier if state.tier in TIERS else TIERS[0]
    if attr.name == "paid":
        return "yes" if paid_active(state, now) else "no"
    if attr.name == "region":
        return state.region
    a = state.attributes.get(attr.name.split(":", 1)[1])
    return str(a.value) if a is not None else ""


def with_level(state: MemberState, attr: AttributeSpec, level: str, now: float) -> MemberState:
    """A copy of ``state`` with only ``attr`` set to ``level`` (the stored state is never touched)."""
    if attr.name == "tier":
        return msgspec.structs.replace(state, tier=level)
    if attr.name == "paid":
        if level == "no":
            return msgspec.structs.replace(state, paid_member=False)
        if paid_active(state, now):
            return state
        return msgspec.structs.replace(state, paid_member=True, paid_expires_ts=0.0, paid_ended_ts=0.0)
    if attr.name == "region":
        return msgspec.structs.replace(state, region=level)
    key = attr.name.split(":", 1)[1]
    old = state.attributes.get(key)
    value: Any = level
    if old is not None and isinstance(old.value, (int, float)) and not isinstance(old.value, bool):
        try:
            value = type(old.value)(level)
        except ValueError:
            value = level
    attrs = dict(state.attributes)
    attrs[key] = Attribute(value=value, ts=old.ts if old else 0.0, event_id=old.event_id if old else "")
    return msgspec.structs.replace(state, attributes=attrs)


def audit_attribute(
    attr: AttributeSpec,
    sample: Sample,
    ranker: Ranker,
    facts: dict[str, OfferFacts],
    config: AuditConfig,
) -> dict[str, Any]:
    """Rank every (member, context) as every level of ``attr``; the attribute's report section."""
    t0 = time.perf_counter()
    n_rows = sum(len(c) for c in sample.contexts) * len(attr.levels)
    values = np.empty((n_rows, len(METRICS)))
    levels: list[str] = []
    segments: list[str] = []
    versions = {(a, b): VersionCount() for a in attr.levels for b in attr.levels if a != b}
    own = {lv: 0 for lv in attr.levels}
    blocked = {lv: 0 for lv in attr.levels}
    i = 0
    for m, (state, contexts) in enumerate(zip(sample.states, sample.contexts, strict=True)):
        mine = level_of(state, attr, sample.now)
        if mine in own:
            own[mine] += 1
        variants = {lv: with_level(state, attr, lv, sample.now) for lv in attr.levels}
        for ctx in contexts:
            slates: dict[str, tuple[str, ...]] = {}
            for lv in attr.levels:
                out = ranker(variants[lv], ctx)
                slates[lv] = out.offer_ids
                blocked[lv] += out.guard_blocked
                values[i], _ = slate_metrics(out.offer_ids, facts)
                levels.append(lv)
                segments.append(sample.segments[m] if sample.segments is not None else "")
                i += 1
            for (a, b), count in versions.items():
                count.add(worse_versions(slates[a], slates[b], facts))
    if attr.ordered:
        # Only "the higher group got the worse version" is the concern; unordered: every direction.
        versions = {
            (a, b): c for (a, b), c in versions.items() if attr.levels.index(a) > attr.levels.index(b)
        }
    section = judge(
        attr,
        values,
        np.ones(n_rows),
        levels,
        config.for_attribute(attr.name),
        control=segments if sample.segments is not None else None,
        versions=versions,
    )
    section["members_by_own_level"] = own
    section["guard_blocked"] = blocked
    section["seconds"] = round(time.perf_counter() - t0, 2)
    return section


def run(
    sample: Sample,
    attributes: Sequence[str],
    offers: Sequence[Offer],
    ranker: Ranker,
    facts: dict[str, OfferFacts],
    config: AuditConfig,
) -> dict[str, Any]:
    """The counterfactual part of the report: one section per attribute that has two levels or more."""
    sections = []
    for name in attributes:
        attr = attribute_spec(name, sample, offers)
        if attr is None:
            continue
        section = audit_attribute(attr, sample, ranker, facts, config)
        log.info("counterfactual %s: %s in %.1fs", name, section["pass"], section["seconds"])
        sections.append(section)
    return {
        "members": len(sample.states),
        "contexts": sum(len(c) for c in sample.contexts),
        "pages": sorted({c.page_type for cs in sample.contexts for c in cs}),
        "now": sample.now,
        "source": sample.source,
        "attributes": sections,
    }
