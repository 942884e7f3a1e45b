"""The operator's taxonomy: offer categories, subtypes per kind and tags, declared by the catalogue.

A catalogue file is either the legacy JSON list of offers (the demo shop's taxonomy applies) or::

    {
      "taxonomy": {
        "categories": ["restaurant", "coffee", "travel"],
        "subtypes": {"coupon": ["percent_off", "fixed_off"], "benefit": ["lounge"], "consult": []},
        "tags": ["weekend", "new_member"]
      },
      "offers": [{"offer_id": "c1", "kind": "coupon", "subtype": "percent_off", "category": "coffee", ...}]
    }

An offer is checked against the taxonomy where it enters the catalogue (admin API, catalogue files):
a category, subtype or tag the taxonomy does not declare is refused, naming the offer and the field.
An empty ``tags`` list declares no restriction on tags.

The feature specification takes the taxonomy's subtypes (and categories and tags, where it declares
vocabularies of those names) as its vocabularies (:func:`spec_for_taxonomy`), so codes are stable
between training and serving and the specification's hash changes when the taxonomy does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from features.offers import OFFER_KINDS, SUBTYPES, Offer
from features.spec import FeatureSpec

Label = Annotated[str, Field(min_length=1, max_length=48, pattern=r"^[A-Za-z0-9_.:&' -]+$")]


class CatalogError(ValueError):
    """A catalogue file or offer that does not fit (names the file, the offer and the field)."""


class Taxonomy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    categories: Annotated[list[Label], Field(max_length=1000)]
    subtypes: dict[str, Annotated[list[Label], Field(max_length=200)]]
    tags: Annotated[list[Label], Field(max_length=1000)] = []

    @field_validator("subtypes")
    @classmethod
    def _kinds(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        unknown = set(v) - set(OFFER_KINDS)
        if unknown:
            raise ValueError(f"subtypes for unknown kinds {sorted(unknown)} (kinds: {list(OFFER_KINDS)})")
        return {k: list(v.get(k, [])) for k in OFFER_KINDS}

    def all_subtypes(self) -> list[str]:
        """Every subtype in kind order, without repeats (a subtype name may serve two kinds)."""
        out: list[str] = []
        for k in OFFER_KINDS:
            out.extend(s for s in self.subtypes.get(k, []) if s not in out)
        return out

    def problems(self, offer: Offer) -> list[str]:
        out = []
        allowed = self.subtypes.get(offer.kind, [])
        if offer.subtype not in allowed:
            out.append(f"subtype {offer.subtype!r} is not one of {allowed} for kind {offer.kind}")
        if offer.category is not None and offer.category not in self.categories:
            out.append(f"category {offer.category!r} is not one of the taxonomy's {self.categories}")
        if self.tags:
            bad = [t for t in offer.tags if t not in self.tags]
            if bad:
                out.append(f"tags {bad} are not in the taxonomy's {self.tags}")
        return out

    def check(self, offer: Offer) -> None:
        """Raise :class:`CatalogError` naming the offer and what does not fit."""
        p = self.problems(offer)
        if p:
            raise CatalogError(f"offer {offer.offer_id}: " + "; ".join(p))


#: The demo shop's taxonomy (the default when a catalogue declares none).
DEMO_TAXONOMY = Taxonomy(
    categories=[
        "baby",
        "beauty",
        "fashion",
        "electronics",
        "grocery",
        "health",
        "home",
        "sports",
        "books",
        "pets",
        "toys",
        "outdoor",
        "other",
    ],
    subtypes={k: list(v) for k, v in SUBTYPES.items()},
)


def spec_for_taxonomy(spec: FeatureSpec, taxonomy: Taxonomy) -> FeatureSpec:
    """``spec`` with the ``subtype`` / ``category`` / ``tag`` vocabularies it has taken from ``taxonomy``."""
    out = spec
    for name, values in (
        ("subtype", taxonomy.all_subtypes()),
        ("category", list(taxonomy.categories)),
        ("tag", list(taxonomy.tags)),
    ):
        if name in out.vocabularies and out.vocabularies[name] != values:
            out = out.with_vocabulary(name, values)
    return out


def parse_catalog(data: Any, source: str = "catalogue") -> tuple[Taxonomy, list[Offer]]:
    """A catalogue's taxonomy and offers from its parsed JSON (list form: the demo taxonomy)."""
    if isinstance(data, list):
        taxonomy, raw = DEMO_TAXONOMY, data
    elif isinstance(data, dict) and "taxonomy" in data:
        extra = set(data) - {"taxonomy", "offers"}
        if extra:
            raise CatalogError(f"{source}: unknown keys {sorted(extra)} (expected taxonomy, offers)")
        try:
            taxonomy = Taxonomy.model_validate(data["taxonomy"])
        except ValidationError as exc:
            raise CatalogError(f"{source}: taxonomy: {exc}") from None
        raw = data.get("offers", [])
        if not isinstance(raw, list):
            raise CatalogError(f"{source}: offers must be a list")
    else:
        raise CatalogError(f"{source}: expected a list of offers or an object with taxonomy and offers")
    offers = []
    for i, o in enumerate(raw):
        try:
            offer = Offer.model_validate(o)
        except ValidationError as exc:
            raise CatalogError(f"{source}: offer #{i}: {exc}") from None
        try:
            taxonomy.check(offer)
        except CatalogError as exc:
            raise CatalogError(f"{source}: {exc}") from None
        offers.append(offer)
    return taxonomy, offers


def load_catalog_file(path: Path | str) -> tuple[Taxonomy, list[Offer]]:
    """Read a catalogue file (see the module docstring); a missing file is an error naming the path."""
    p = Path(path)
    if not p.exists():
        raise CatalogError(f"catalogue file {p} does not exist")
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise CatalogError(f"cannot read catalogue {p}: {exc}") from None
    return parse_catalog(data, str(p))


def load_taxonomy(path: Path | str | None) -> Taxonomy:
    """The taxonomy of a catalogue file (or of a bare ``{"taxonomy": ...}`` file); demo when None."""
    if path is None:
        return DEMO_TAXONOMY
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise CatalogError(f"cannot read taxonomy {p}: {exc}") from None
    if isinstance(data, dict) and "taxonomy" not in data and "categories" in data:
        data = {"taxonomy": data}
    return parse_catalog(data, str(p))[0]
