"""The declared feature specification: one versioned, hashed artifact that names every model column.

A specification is a JSON file validated by :class:`FeatureSpec`::

    {
      "version": 1,
      "vocabularies": {"tier": ["regular", "silver", ...], "page_type": [...], ...},
      "context": {"page_type": {"vocabulary": "page_type", "default": "home"}, ...},
      "features": [
        {"name": "views_1d", "kind": "decayed_count", "params": {"event": "page_view", "half_life": "1d"}},
        {"name": "age_band", "kind": "member_attribute",
         "params": {"attribute": "age_band", "type": "categorical", "vocabulary": "age_band"}},
        ...
      ]
    }

Each feature is a name bound to a computation by its ``kind`` (the registry lives in
:mod:`features.computations`); the column order of the model is the order of ``features``. The
package ships :data:`DEFAULT_SPEC_PATH` (``default_spec.json``): the 62 columns of feature schema v1 in
their order and meaning, with the lifecycle columns (issue 19) after the member totals.

The hash (:attr:`FeatureSpec.hash`) covers the version, every feature's name, kind and parameters,
the vocabularies and the context declarations (not descriptions), and, when a lifecycle feature is
declared, the membership programme's configuration (:class:`features.lifecycle.LifecycleConfig`, from
settings: :meth:`FeatureSpec.with_lifecycle`) where it differs from the defaults: a stage or tier gap
means what the thresholds it was computed with say. It is written into every exported
model (``feature_spec_hash``) and the service refuses a model whose hash differs from the spec it runs.

Decayed counters in the member state keep fixed half-lives (:data:`features.decay.HALF_LIFE_LABELS`);
a feature chooses among them by label. Counted event types are :data:`features.state.COUNTED_KINDS`.
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from features.decay import HALF_LIFE_LABELS
from features.lifecycle import DEFAULT_CONFIG as DEFAULT_LIFECYCLE
from features.lifecycle import LifecycleConfig

DEFAULT_SPEC_PATH = Path(__file__).with_name("default_spec.json")

FeatureName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
VocabValue = Annotated[str, Field(min_length=1, max_length=64)]
#: The value an open field's unseen values map to.
OTHER = "other"


class SpecError(ValueError):
    """A specification that cannot be used (bad file, unknown kind, bad parameters)."""


class Feature(BaseModel):
    """One model column: a name bound to the computation ``kind`` with ``params``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: FeatureName
    kind: Annotated[str, Field(min_length=1, max_length=64)]
    params: dict[str, Any] = {}
    description: str = ""


class ContextField(BaseModel):
    """A page-context field of the recommend request.

    With a ``vocabulary``, a value outside it maps to ``other`` (``open``: counted and logged once,
    never refused). Without one the field is free text (e.g. the page category, matched to offers by
    name).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    vocabulary: str | None = None
    default: str | None = None


class FeatureSpec(BaseModel):
    """A validated feature specification (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Annotated[int, Field(ge=1)]
    description: str = ""
    vocabularies: dict[str, list[VocabValue]] = {}
    context: dict[Literal["page_type", "category", "device", "channel"], ContextField] = {}
    features: Annotated[list[Feature], Field(min_length=1)]
    #: The programme configuration the lifecycle features are computed under (None: the defaults). The
    #: service and training set it from settings (:meth:`with_lifecycle`).
    lifecycle: LifecycleConfig | None = None

    @field_validator("vocabularies")
    @classmethod
    def _unique_values(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, values in v.items():
            if len(set(values)) != len(values):
                raise ValueError(f"vocabulary {name!r} repeats a value")
        return v

    @model_validator(mode="after")
    def _check(self) -> FeatureSpec:
        names = [f.name for f in self.features]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"feature names repeat: {dupes}")
        for field_name, cf in self.context.items():
            if cf.vocabulary is not None and cf.vocabulary not in self.vocabularies:
                raise ValueError(f"context {field_name!r} names unknown vocabulary {cf.vocabulary!r}")
        # Every feature's kind and parameters are checked by the registry that computes it.
        from features.computations import check_feature

        for f in self.features:
            try:
                check_feature(f, self)
            except (KeyError, ValueError, TypeError) as exc:
                raise ValueError(f"feature {f.name!r} ({f.kind}): {exc}") from None
        return self

    @cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @cached_property
    def index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}

    def __len__(self) -> int:
        return len(self.features)

    @property
    def lifecycle_config(self) -> LifecycleConfig:
        """The programme configuration lifecycle features are computed under."""
        return self.lifecycle or DEFAULT_LIFECYCLE

    @cached_property
    def uses_lifecycle(self) -> bool:
        """True when a feature reads the programme configuration (a lifecycle feature)."""
        from features.computations import kind_of

        return any(kind_of(f).lifecycle for f in self.features)

    def canonical(self) -> dict[str, Any]:
        """What the hash covers: everything that changes a column's value, nothing cosmetic.

        The programme configuration only where a feature reads it, and only the fields that differ from
        the defaults (a new configuration field with a default leaves every hash as it was)."""
        out: dict[str, Any] = {
            "version": self.version,
            "vocabularies": self.vocabularies,
            "context": {k: v.model_dump() for k, v in sorted(self.context.items())},
            "features": [{"name": f.name, "kind": f.kind, "params": f.params} for f in self.features],
        }
        if self.uses_lifecycle:
            changed = self.lifecycle_config.model_dump(mode="json", exclude_defaults=True)
            if changed:
                out["lifecycle"] = changed
        return out

    @cached_property
    def hash(self) -> str:
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def vocabulary(self, name: str) -> list[str]:
        try:
            return self.vocabularies[name]
        except KeyError:
            raise SpecError(f"the specification has no vocabulary {name!r}") from None

    def member_attributes(self) -> dict[str, str]:
        """Attribute name -> declared type, for every ``member_attribute`` feature."""
        return {
            str(f.params["attribute"]): str(f.params.get("type", "numeric"))
            for f in self.features
            if f.kind == "member_attribute"
        }

    def with_vocabulary(self, name: str, values: list[str]) -> FeatureSpec:
        """A copy with one vocabulary replaced (e.g. the subtypes of an operator's taxonomy)."""
        data = self.model_dump()
        data["vocabularies"] = {**data["vocabularies"], name: list(values)}
        return FeatureSpec.model_validate(data)

    def with_lifecycle(self, config: LifecycleConfig) -> FeatureSpec:
        """A copy computed under the programme configuration ``config`` (the settings' one).

        A specification file that declares a different configuration is refused rather than silently
        overridden: the programme configuration has one source, the settings."""
        if self.lifecycle is not None and self.lifecycle != config:
            raise SpecError(
                "the feature specification declares a lifecycle configuration that differs from the "
                "settings' (BENEFITS_LIFECYCLE / BENEFITS_LIFECYCLE_CONFIG_PATH): declare it there only"
            )
        if self.lifecycle_config == config:
            return self
        data = self.model_dump()
        data["lifecycle"] = None if config == DEFAULT_LIFECYCLE else config.model_dump()
        return FeatureSpec.model_validate(data)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, exclude_defaults=True)


def parse_spec(text: str | bytes, source: str = "specification") -> FeatureSpec:
    """Validate a specification's JSON text; raise :class:`SpecError` naming what is wrong."""
    try:
        return FeatureSpec.model_validate_json(text)
    except ValidationError as exc:
        raise SpecError(f"{source}: {exc}") from None


def load_spec(path: Path | str | None = None) -> FeatureSpec:
    """The specification at ``path`` (the shipped default when None)."""
    p = Path(path) if path is not None else DEFAULT_SPEC_PATH
    try:
        text = p.read_bytes()
    except OSError as exc:
        raise SpecError(f"cannot read feature specification {p}: {exc}") from None
    return parse_spec(text, str(p))


def half_life_index(label: str) -> int:
    if label not in HALF_LIFE_LABELS:
        raise ValueError(f"half_life {label!r} is not one of {list(HALF_LIFE_LABELS)}")
    return HALF_LIFE_LABELS.index(label)


#: Before declared specifications, models carried ``feature_schema`` = "v1:" + a hash of the names of
#: their 62 columns. The specification that reproduces those columns exactly (the default one without
#: its lifecycle columns) has the hash :data:`LEGACY_V1_SPEC_HASH`; such a model is accepted under it
#: only (the default specification has more columns since issue 19).
LEGACY_SCHEMA_KEY = "feature_schema"
LEGACY_SCHEMA_V1 = "v1:ce13b0fe4ed171e9"
LEGACY_V1_SPEC_HASH = "b1f6c92f7b3036c1"


def spec_mismatch(meta: dict[str, str], spec: FeatureSpec) -> str | None:
    """Why a model's metadata does not fit ``spec`` (None when it does).

    A model from before declared specifications (only the legacy ``feature_schema``) fits the
    specification of the v1 columns (:data:`LEGACY_V1_SPEC_HASH`), and only it, when its schema string
    is the v1 one.
    """
    got = meta.get("feature_spec_hash")
    if got is None:
        legacy = meta.get(LEGACY_SCHEMA_KEY)
        if legacy == LEGACY_SCHEMA_V1 and spec.hash == LEGACY_V1_SPEC_HASH:
            return None
        return f"model has no feature_spec_hash (feature_schema {legacy!r}); the specification is {spec.hash}"
    if got != spec.hash:
        return f"model feature_spec_hash {got!r} != the specification's {spec.hash!r}"
    return None


_DEFAULT: FeatureSpec | None = None


def default_spec() -> FeatureSpec:
    """The shipped default specification (parsed once)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = load_spec(DEFAULT_SPEC_PATH)
    return _DEFAULT
