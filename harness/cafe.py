"""A small bring-your-own dataset for tests, the README's worked example and the done-when figures.

An operator with its own taxonomy (categories ``restaurant``, ``coffee``, ``travel``, none of which the
code knows) and member attributes (age band, income, household, habits, commuter) that drive who claims
what: coffee coupons go to coffee drinkers and young members, travel perks to high incomes, restaurant
deals to families. Members are mostly new (few impressions each), so history alone cannot rank them:
the attributes must.

:func:`write_cafe` writes, into one directory, exactly what a data scientist would bring::

    catalog.json      {"taxonomy": {...}, "offers": [...]}
    impressions.csv   member_id, offer_id, event_ts (ISO 8601, with a zone), label, request_id, batch_code
    members.csv       member_id, age_band, income, household, habits ("coffee;travel"), commuter
    spec.json         the default specification plus the member-attribute features
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.spec import DEFAULT_SPEC_PATH

T0 = 1_760_000_000.0
TAXONOMY: dict[str, Any] = {
    "categories": ["restaurant", "coffee", "travel"],
    "subtypes": {
        "coupon": ["percent_off", "fixed_off"],
        "benefit": ["lounge", "priority_booking"],
        "consult": ["trip_planning"],
    },
    "tags": ["weekend", "new_member"],
}
AGE_BANDS = ["18-24", "25-34", "35-49", "50+"]
HOUSEHOLDS = ["single", "couple", "family"]
ATTRIBUTE_FEATURES: list[dict[str, Any]] = [
    {"name": "attr_age_band", "kind": "member_attribute",
     "params": {"attribute": "age_band", "type": "categorical", "vocabulary": "age_band", "default": -1}},
    {"name": "attr_income", "kind": "member_attribute", "params": {"attribute": "income", "default": -1}},
    {"name": "attr_household", "kind": "member_attribute",
     "params": {"attribute": "household", "type": "categorical", "vocabulary": "household", "default": -1}},
    {"name": "attr_likes_coffee", "kind": "member_attribute",
     "params": {"attribute": "habits", "type": "list", "contains": "coffee"}},
    {"name": "attr_likes_travel", "kind": "member_attribute",
     "params": {"attribute": "habits", "type": "list", "contains": "travel"}},
    {"name": "attr_commuter", "kind": "member_attribute",
     "params": {"attribute": "commuter", "type": "boolean", "default": -1}},
]  # fmt: skip


def offers() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for cat in TAXONOMY["categories"]:
        for i, (sub, value) in enumerate((("percent_off", 5.0), ("fixed_off", 8.0), ("percent_off", 12.0))):
            out.append(
                {
                    "offer_id": f"{cat}-{sub}-{i}",
                    "kind": "coupon",
                    "subtype": sub,
                    "title": f"{value:.0f} off {cat}",
                    "category": cat,
                    "value": value,
                    "tags": ["weekend"] if i == 2 else [],
                }
            )
    out.append({"offer_id": "lounge", "kind": "benefit", "subtype": "lounge", "title": "Airport lounge",
                "category": "travel", "value": 30.0})  # fmt: skip
    out.append({"offer_id": "trip", "kind": "consult", "subtype": "trip_planning", "title": "Trip planning",
                "category": "travel", "value": 20.0})  # fmt: skip
    return out


def spec_with_attributes() -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(DEFAULT_SPEC_PATH.read_text())
    spec["description"] = "Default features plus the cafe operator's member attributes."
    # The offer's own category as a code (the taxonomy fills the vocabulary), so the trees can cross it
    # with the member's attributes.
    spec["vocabularies"] = {
        **spec["vocabularies"],
        "age_band": AGE_BANDS,
        "household": HOUSEHOLDS,
        "category": TAXONOMY["categories"],
    }
    category = {
        "name": "offer_category",
        "kind": "offer_code",
        "params": {"field": "category", "vocabulary": "category"},
    }
    spec["features"] = [*spec["features"], category, *ATTRIBUTE_FEATURES]
    return spec


def members(n: int, rng: np.random.Generator) -> pd.DataFrame:
    age = rng.choice(len(AGE_BANDS), n, p=[0.2, 0.35, 0.3, 0.15])
    household = rng.choice(len(HOUSEHOLDS), n, p=[0.4, 0.3, 0.3])
    income = np.round(rng.lognormal(10.6, 0.5, n), -2)
    coffee = rng.random(n) < np.where(age <= 1, 0.6, 0.3)
    travel = rng.random(n) < np.where(income > 50_000, 0.6, 0.2)
    habits = [";".join(h for h, on in (("coffee", c), ("travel", t), ("dining", d)) if on)
              for c, t, d in zip(coffee, travel, rng.random(n) < 0.4, strict=True)]  # fmt: skip
    return pd.DataFrame(
        {
            "member_id": [f"m{i:05d}" for i in range(n)],
            "age_band": [AGE_BANDS[a] for a in age],
            "income": income,
            "household": [HOUSEHOLDS[h] for h in household],
            "habits": habits,
            "commuter": rng.random(n) < 0.5,
        }
    )


def true_probability(m: pd.Series, offer: dict[str, Any]) -> float:
    cat = offer.get("category")
    z = -2.6 + 0.02 * float(offer.get("value", 0.0))
    habits = str(m["habits"]).split(";")
    if cat == "coffee":
        z += (
            1.6 * ("coffee" in habits)
            + 0.6 * (m["age_band"] in ("18-24", "25-34"))
            + 0.5 * bool(m["commuter"])
        )
    elif cat == "travel":
        z += 1.4 * (m["income"] > 50_000) + 0.9 * ("travel" in habits) + 0.4 * (m["household"] == "couple")
    else:
        z += 1.5 * (m["household"] == "family") + 0.5 * ("dining" in habits)
    return float(1.0 / (1.0 + np.exp(-z)))


def write_cafe(
    out: Path, n_members: int = 3000, seed: int = 11, catalog_file: dict[str, Any] | None = None
) -> dict[str, Path]:
    """Write the dataset (see the module docstring); returns the paths. ``catalog_file`` (a catalogue
    ``{"taxonomy": ..., "offers": [...]}``, e.g. the README's) replaces the built-in one."""
    rng = np.random.default_rng(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cat_doc = catalog_file or {"taxonomy": TAXONOMY, "offers": offers()}
    catalog = list(cat_doc["offers"])
    mem = members(n_members, rng)
    rows = []
    for _, m in mem.iterrows():
        for s in range(int(rng.integers(1, 4))):
            t = T0 + float(rng.uniform(0, 30 * 86400))
            shown = rng.choice(len(catalog), size=min(4, len(catalog)), replace=False)
            rid = f"r-{m['member_id']}-{s}"
            for pos, j in enumerate(shown.tolist()):
                o = catalog[j]
                label = int(rng.random() < true_probability(m, o))
                rows.append((m["member_id"], o["offer_id"], t, label, rid, pos))
    imp = pd.DataFrame(rows, columns=["member_id", "offer_id", "event_ts", "label", "request_id", "position"])
    # ISO 8601 with an explicit zone, as exported from a warehouse; plus a column nobody declared.
    imp["event_ts"] = pd.to_datetime(imp["event_ts"], unit="s", utc=True).dt.tz_convert("Europe/Paris")
    imp["event_ts"] = imp["event_ts"].map(lambda d: d.isoformat())
    imp["batch_code"] = "b1"
    paths = {
        "catalog": out / "catalog.json",
        "impressions": out / "impressions.csv",
        "members": out / "members.csv",
        "spec": out / "spec.json",
    }
    paths["catalog"].write_text(json.dumps(cat_doc, indent=1))
    imp.to_csv(paths["impressions"], index=False)
    mem.to_csv(paths["members"], index=False)
    paths["spec"].write_text(json.dumps(spec_with_attributes(), indent=1))
    return paths


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Write the cafe bring-your-own example dataset.")
    parser.add_argument("--out", type=Path, default=Path("cafe"))
    parser.add_argument("--members", type=int, default=3000)
    args = parser.parse_args()
    for name, path in write_cafe(args.out, n_members=args.members).items():
        print(f"{name}: {path}")  # user-facing output of a dev tool
