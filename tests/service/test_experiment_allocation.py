"""Experiment assignment is sticky: properties of the bucket allocation and of the member hash."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from service.experiments import (
    HOLDOUT_ARM,
    N_BUCKETS,
    AllocationError,
    Assigner,
    Experiment,
    StoredExperiment,
    allocate,
    bucket,
)

SALT = b"test-salt"
MEMBERS = [f"m{i:05d}" for i in range(3000)]


def exp(shares: list[float], experiment_id: str = "e1", holdout: float | None = None) -> Experiment:
    return Experiment.model_validate(
        {
            "experiment_id": experiment_id,
            "arms": [{"name": f"a{i}", "share": s} for i, s in enumerate(shares)],
            "holdout": {"share": holdout} if holdout else None,
        }
    )


def stored(e: Experiment, prev: StoredExperiment | None = None, reassign: bool = False) -> StoredExperiment:
    rev = prev.revision + 1 if prev else 1
    return StoredExperiment(experiment=e, allocation=allocate(e, prev, reassign), revision=rev, updated_ts=0)


def assignments(s: StoredExperiment) -> dict[str, str | None]:
    a = Assigner(s, SALT)
    return {m: a.assign(m) for m in MEMBERS}


share = st.integers(min_value=1, max_value=2500).map(lambda b: b / N_BUCKETS)


@settings(max_examples=40, deadline=None)
@given(
    before=st.lists(share, min_size=1, max_size=4),
    growth=st.lists(st.integers(min_value=0, max_value=1500), min_size=4, max_size=4),
)
def test_growing_shares_never_moves_a_member_already_in_an_arm(
    before: list[float], growth: list[int]
) -> None:
    first = stored(exp(before))
    after = [s + g / N_BUCKETS for s, g in zip(before, growth, strict=False)]
    assume(sum(after) <= 1.0)
    second = stored(exp(after), first)
    a1, a2 = assignments(first), assignments(second)
    moved = [m for m in MEMBERS if a1[m] is not None and a2[m] != a1[m]]
    assert not moved
    # Each arm owns exactly its declared share of the bucket space, with no overlap.
    owned = [b for ranges in second.allocation.values() for s, e in ranges for b in range(s, e)]
    assert len(owned) == len(set(owned))
    for arm in second.experiment.arms:
        assert sum(e - s for s, e in second.allocation[arm.name]) == round(arm.share * N_BUCKETS)


def test_shrinking_or_removing_an_arm_is_refused_unless_asked() -> None:
    first = stored(exp([0.5, 0.5]))
    with pytest.raises(AllocationError, match="'a1'"):
        allocate(exp([0.5, 0.3]), first)
    with pytest.raises(AllocationError, match="'a1'"):
        allocate(exp([0.5]), first)
    redrawn = stored(exp([0.5, 0.3]), first, reassign=True)
    assert sum(e - s for s, e in redrawn.allocation["a1"]) == 3000


def test_shares_are_respected_and_the_hash_is_stable() -> None:
    s = stored(exp([0.2, 0.3], holdout=0.1))
    a = assignments(s)
    n = len(MEMBERS)
    held = sum(v == HOLDOUT_ARM for v in a.values()) / n
    assert abs(held - 0.1) < 0.03
    # Arms are carved out of the members who are not held out.
    assert abs(sum(v == "a0" for v in a.values()) / n - 0.2 * 0.9) < 0.03
    assert abs(sum(v == "a1" for v in a.values()) / n - 0.3 * 0.9) < 0.03
    assert abs(sum(v is None for v in a.values()) / n - 0.5 * 0.9) < 0.03
    # Same salt, a fresh assigner (another replica, a restart): identical answers.
    assert assignments(StoredExperiment.model_validate_json(s.model_dump_json())) == a
    assert bucket(SALT, "e1", "m1") == bucket(SALT, "e1", "m1")
    assert bucket(SALT, "e1", "m1") != bucket(b"other", "e1", "m1") or bucket(SALT, "e1", "m2") != bucket(
        b"other", "e1", "m2"
    )


def test_holdout_is_the_same_members_across_experiments() -> None:
    a = assignments(stored(exp([0.5], "first", holdout=0.05)))
    b = assignments(stored(exp([0.3, 0.3], "second", holdout=0.05)))
    assert {m for m, v in a.items() if v == HOLDOUT_ARM} == {m for m, v in b.items() if v == HOLDOUT_ARM}


def A(**kw: object) -> dict[str, object]:
    return {"name": "a", "share": 0.1, **kw}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"experiment_id": "e", "arms": [A(share=0.7), A(name="b", share=0.4)]}, "sum"),
        ({"experiment_id": "e", "arms": [A(), A()]}, "unique"),
        ({"experiment_id": "e", "arms": [A(name="holdout")]}, "reserved"),
        ({"experiment_id": "e", "arms": [A(policy="popularity", model_version="v1")]}, "model_version"),
        ({"experiment_id": "e", "arms": [A(colour=1)]}, "colour"),
        ({"experiment_id": "e", "arms": []}, "arms"),
    ],
)
def test_bad_declarations_name_the_problem(body: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        Experiment.model_validate(body)
