"""Page-context values against the declared vocabularies: a value the specification does not know maps
to ``other`` (never a refusal); the caller counts and logs it.

The specification's ``context`` section says which fields have a vocabulary (page type, device,
channel in the default); the page ``category`` is checked against the catalogue's taxonomy. Malformed
input (wrong type, too long, bad characters) is the HTTP schema's business and still a 422.
"""

from __future__ import annotations

from dataclasses import dataclass

from features.projection import Context
from features.spec import OTHER, FeatureSpec
from features.taxonomy import Taxonomy


@dataclass(frozen=True)
class ContextVocabulary:
    """The known values of each context field (None: any value is taken as it is)."""

    page_type: frozenset[str] | None
    category: frozenset[str] | None
    device: frozenset[str] | None
    channel: frozenset[str] | None
    defaults: dict[str, str]

    @classmethod
    def of(cls, spec: FeatureSpec, taxonomy: Taxonomy) -> ContextVocabulary:
        def vocab(name: str) -> frozenset[str] | None:
            cf = spec.context.get(name)  # type: ignore[call-overload]
            if cf is None or cf.vocabulary is None:
                return None
            return frozenset(spec.vocabulary(cf.vocabulary))

        defaults: dict[str, str] = {
            str(k): v.default for k, v in spec.context.items() if v.default is not None and k != "category"
        }
        return cls(
            page_type=vocab("page_type"),
            category=frozenset(taxonomy.categories),
            device=vocab("device"),
            channel=vocab("channel"),
            defaults=defaults,
        )

    def normalise(
        self,
        page_type: str | None,
        category: str | None,
        device: str | None,
        channel: str | None,
    ) -> tuple[Context, list[tuple[str, str]]]:
        """The context to rank with, and the (field, value) pairs that were mapped to ``other``."""
        unknown: list[tuple[str, str]] = []

        def known(name: str, value: str | None, values: frozenset[str] | None, fallback: str) -> str:
            if value is None:
                return self.defaults.get(name, fallback)
            if values is not None and value not in values:
                unknown.append((name, value))
                return OTHER
            return value

        cat: str | None = None
        if category is not None:
            cat = known("category", category, self.category, OTHER)
        ctx = Context(
            page_type=known("page_type", page_type, self.page_type, "home"),
            category=cat,
            device=known("device", device, self.device, "other"),
            channel=known("channel", channel, self.channel, "app"),
        )
        return ctx, unknown
