"""The ``member_offer_attribute`` kind: a number the operator knows about one member and one offer.

Some knowledge is per member *and* offer and lives outside the event stream: a warehouse's spend of the
member on the products a coupon covers, a partner's propensity score, a booking system's eligibility
score. The operator sends it as ordinary member attributes (``profile_updated.attributes``, folded
last-writer-wins by event time, kept in the member's blob) named ``PREFIX:OFFER_ID``; the feature reads,
for every offer of the request, the attribute ``PREFIX:<that offer's id>`` (``default`` when the member
has none for it). Serving still reads one blob per request, and training folds the same events.

Declared as::

    {"name": "cj_campaign_product_spend", "kind": "member_offer_attribute",
     "params": {"prefix": "cj_spend", "default": 0}}

Hazards: attribute names are at most 64 characters of ``[A-Za-z0-9_.:-]``, so ``PREFIX:OFFER_ID`` must
fit (an offer id with ``@`` cannot be named); a member keeps at most
:data:`features.state.MAX_ATTRIBUTES` attributes, so this suits a few dozen (member, offer) pairs per
member, not a whole catalogue. Text and list values are not numbers and read as ``default``.

Cost: proportional to the member's attributes, not to the catalogue (the loop walks the member's
attributes that carry the prefix and writes their offers' rows).
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from features.computations import Request
    from features.spec import FeatureSpec

_PREFIX = re.compile(r"^[A-Za-z0-9_.-]{1,48}$")


def member_offer_attribute(params: dict[str, Any], spec: FeatureSpec) -> Any:
    """Builder (row scope): checks ``params`` (``prefix``, optional ``default``) and returns the column."""
    extra = set(params) - {"prefix", "default"}
    if extra:
        raise ValueError(f"unknown parameters {sorted(extra)} (allowed: ['prefix', 'default'])")
    if "prefix" not in params:
        raise ValueError("missing parameter 'prefix'")
    prefix = params["prefix"]
    if not isinstance(prefix, str) or not _PREFIX.match(prefix):
        raise ValueError(f"prefix {prefix!r} must be 1-48 characters of [A-Za-z0-9_.-]")
    default = params.get("default", 0.0)
    if isinstance(default, bool) or not isinstance(default, int | float) or not math.isfinite(default):
        raise ValueError(f"default must be a finite number, not {default!r}")
    head = prefix + ":"
    fill = float(default)

    def fn(r: Request) -> np.ndarray | float:
        out: np.ndarray | None = None
        index = r.table.index
        for name, attr in r.state.attributes.items():
            if not name.startswith(head):
                continue
            value = attr.value
            if value is None or isinstance(value, str | list):
                continue
            i = index.get(name[len(head) :])
            if i is None:
                continue
            if r.only is not None:
                hit = np.flatnonzero(r.only == i)
                if not len(hit):
                    continue
                i = int(hit[0])
            if out is None:
                out = np.full(r.n, fill)
            out[i] = float(value)
        return out if out is not None else fill

    return fn
