"""Experiments: the declaration, the sticky bucket allocation and the member -> arm assignment (pure).

A declared experiment has arms, each a model version (``policy="model"``; no version = the promoted
one) or a baseline policy (``popularity``: the offers' smoothed prior click rates; ``rules_only``:
eligibility and slate rules over the offers' value, no learned score), each with a traffic share. An
optional holdout keeps a share of all members on a baseline policy, across experiments. An optional
shadow model is scored beside the live answer on a sampled share of requests (``service.shadow``).

Assignment, and why it is sticky
--------------------------------

``bucket = HMAC-SHA256(salt, "<experiment_id>:<member_id>") mod 10_000``; every arm *owns* a set of
bucket ranges, stored with the experiment (``infra.experiment_store``). A member's arm is the arm owning
their bucket; a bucket owned by no arm is "not in the experiment" (the promoted model, ``arm`` null). The
salt is the service's ``member_hash_salt``: the same on every replica and across restarts, so the hash is
the same everywhere, and the allocation is read from the one store.

Changing shares (:func:`allocate`): an arm whose share grows takes *free* buckets (never another arm's);
an arm whose share shrinks, or that is removed, would move its members, so the change is refused unless
the caller asks for ``reassign``, which re-draws every range from scratch. Members already in an arm
therefore never change arm unless asked; members outside the experiment may join a growing arm.

The holdout uses a bucket of its own (``"holdout:<member_id>"``, independent of the experiment id), so
the same members stay held out when one experiment replaces another; they are never in an arm.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

N_BUCKETS = 10_000

ArmName = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$")]
ExperimentId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
ModelVersion = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")]
Baseline = Literal["popularity", "rules_only"]
HOLDOUT_ARM = "holdout"


class ArmSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ArmName
    #: Fraction of all members (0-1]; the arms' shares plus the holdout's sum to at most 1.
    share: Annotated[float, Field(gt=0.0, le=1.0)]
    policy: Literal["model", "popularity", "rules_only"] = "model"
    #: For ``policy="model"``: the registry version; None serves whatever model is promoted.
    model_version: ModelVersion | None = None

    @model_validator(mode="after")
    def _version_only_for_models(self) -> ArmSpec:
        if self.policy != "model" and self.model_version is not None:
            raise ValueError(f"arm {self.name!r}: model_version is only for policy 'model'")
        return self


class HoldoutSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    share: Annotated[float, Field(gt=0.0, le=0.5)]
    policy: Baseline = "popularity"


class ShadowSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model_version: ModelVersion
    #: Fraction of recommend requests (not members) also scored by the shadow model.
    sample_share: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1


class Experiment(BaseModel):
    """An experiment declaration (the body of ``PUT /v1/admin/experiment`` and of the experiment file)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    experiment_id: ExperimentId
    arms: Annotated[list[ArmSpec], Field(min_length=1, max_length=10)]
    holdout: HoldoutSpec | None = None
    shadow: ShadowSpec | None = None
    description: Annotated[str, Field(max_length=500)] = ""

    @model_validator(mode="after")
    def _check(self) -> Experiment:
        names = [a.name for a in self.arms]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"arm names must be unique: {dupes}")
        if HOLDOUT_ARM in names:
            raise ValueError(f"arm name {HOLDOUT_ARM!r} is reserved for the holdout")
        total = sum(a.share for a in self.arms) + (self.holdout.share if self.holdout else 0.0)
        if total > 1.0 + 1e-9:
            raise ValueError(f"arm shares plus the holdout sum to {total:.4f} > 1")
        return self


Ranges = list[tuple[int, int]]


class StoredExperiment(BaseModel):
    """What the store keeps: the declaration, each arm's bucket ranges ``[start, end)``, a revision."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    experiment: Experiment
    allocation: dict[str, Ranges]
    revision: int
    updated_ts: float


class AllocationError(ValueError):
    """A change that would move members between arms (refused unless ``reassign``)."""


def _size(ranges: Ranges) -> int:
    return sum(e - s for s, e in ranges)


def _target(share: float) -> int:
    return round(share * N_BUCKETS)


def _fresh(exp: Experiment) -> dict[str, Ranges]:
    out: dict[str, Ranges] = {}
    start = 0
    for arm in exp.arms:
        end = start + _target(arm.share)
        out[arm.name] = [(start, end)] if end > start else []
        start = end
    return out


def _merge(ranges: Ranges) -> Ranges:
    out: Ranges = []
    for s, e in sorted(ranges):
        if out and out[-1][1] == s:
            out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def allocate(exp: Experiment, previous: StoredExperiment | None, reassign: bool = False) -> dict[str, Ranges]:
    """Bucket ranges per arm for ``exp``, keeping every bucket an arm of ``previous`` owned.

    A new experiment id (or ``reassign``) starts from scratch. Raises :class:`AllocationError` naming the
    arm when the change would take buckets from an arm (a shrink or a removal) without ``reassign``.
    """
    if previous is None or reassign or previous.experiment.experiment_id != exp.experiment_id:
        return _fresh(exp)
    old = previous.allocation
    names = {a.name for a in exp.arms}
    for name, ranges in old.items():
        if name not in names and _size(ranges) > 0:
            raise AllocationError(
                f"arm {name!r} has members and is not in the new declaration; "
                "removing it would reassign them (pass reassign=true to re-draw every arm)"
            )
    for arm in exp.arms:
        have = _size(old.get(arm.name, []))
        if _target(arm.share) < have:
            raise AllocationError(
                f"arm {arm.name!r}: share {arm.share} is below its current {have / N_BUCKETS}; shrinking "
                "would reassign its members (pass reassign=true to re-draw every arm)"
            )
    owned = np.zeros(N_BUCKETS, dtype=bool)
    for ranges in old.values():
        for s, e in ranges:
            owned[s:e] = True
    out: dict[str, Ranges] = {}
    for arm in exp.arms:
        ranges = list(old.get(arm.name, []))
        need = _target(arm.share) - _size(ranges)
        if need > 0:
            # Lowest free buckets first; the shares' sum <= 1 guarantees there are enough.
            free = np.flatnonzero(~owned)[:need]
            owned[free] = True
            ranges.extend(_runs(free))
        out[arm.name] = _merge(ranges)
    return out


def _runs(idx: np.ndarray) -> Ranges:
    """Sorted bucket indices -> contiguous ``[start, end)`` ranges."""
    if len(idx) == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) != 1)
    starts = np.r_[idx[0], idx[breaks + 1]]
    ends = np.r_[idx[breaks], idx[-1]] + 1
    return [(int(s), int(e)) for s, e in zip(starts, ends, strict=True)]


def bucket(salt: bytes, scope: str, member_id: str) -> int:
    """The member's bucket in ``scope`` (an experiment id, or ``holdout``): stable for a given salt."""
    digest = hmac.new(salt, f"{scope}:{member_id}".encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") % N_BUCKETS


class Assigner:
    """Member -> arm name for one stored experiment (a 10k-entry lookup table; microseconds per call)."""

    def __init__(self, stored: StoredExperiment, salt: bytes) -> None:
        self.stored = stored
        self.experiment = stored.experiment
        self.salt = salt
        self.arms: dict[str, ArmSpec] = {a.name: a for a in self.experiment.arms}
        names = [a.name for a in self.experiment.arms]
        self._names = names
        self._table = np.full(N_BUCKETS, -1, dtype=np.int16)
        for i, name in enumerate(names):
            for s, e in stored.allocation.get(name, []):
                self._table[s:e] = i
        h = self.experiment.holdout
        self._holdout_buckets = _target(h.share) if h is not None else 0

    def in_holdout(self, member_id: str) -> bool:
        return self._holdout_buckets > 0 and bucket(self.salt, HOLDOUT_ARM, member_id) < self._holdout_buckets

    def assign(self, member_id: str) -> str | None:
        """The member's arm (``holdout`` for held-out members), or None when not in the experiment."""
        if self.in_holdout(member_id):
            return HOLDOUT_ARM
        i = int(self._table[bucket(self.salt, self.experiment.experiment_id, member_id)])
        return self._names[i] if i >= 0 else None

    def shares(self) -> dict[str, float]:
        """Allocated share of the bucket space per arm (before the holdout is carved out)."""
        return {n: _size(self.stored.allocation.get(n, [])) / N_BUCKETS for n in self._names}
