"""Bad input: invalid settings refused at construction (and by ``benefits serve``), invalid offers refused
by the admin API, schemathesis over the running app's spec with each key scope."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from harness import reliability as rel
from infra.settings import Settings


@pytest.mark.parametrize(
    ("what", "kwargs", "fragment"), rel.BAD_SETTINGS, ids=[c[0] for c in rel.BAD_SETTINGS]
)
def test_invalid_settings_are_refused_naming_the_field(
    what: str, kwargs: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(ValidationError) as err:
        Settings(**kwargs)
    assert fragment in str(err.value)


@pytest.mark.integration
@pytest.mark.slow
def test_invalid_offers_and_seed_and_env_are_refused() -> None:
    o = rel.bad_input()
    offers = o.numbers["offers"]
    bad = [r for r in offers if not (r["status"] == 422 and r["named"])]
    assert not bad, bad
    assert not [r for r in offers if r["stored"]]
    for check, ok in o.checks.items():
        if "offer" not in check:
            assert ok, (check, o.numbers)


def test_nan_validity_bound_is_refused() -> None:
    from features.offers import Offer

    body = dict(rel._offer(), eligibility={"valid_to_ts": float("nan")})
    with pytest.raises(ValidationError):
        Offer.model_validate(body)


@pytest.mark.integration
@pytest.mark.slow
def test_schemathesis_finds_no_5xx_and_no_schema_violation() -> None:
    o = rel.schemathesis_run(max_examples=8)
    assert o.passed, "\n".join(o.notes) or o.numbers
