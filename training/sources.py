"""Where ``benefits train`` gets its rows from: a simulation directory, a bring-your-own impressions
table (with an optional event log, members table and catalogue), or the event archive alone.

:func:`load_source` reads them into a :class:`Source` (impressions, the history to fold, the offers and
the feature specification with the catalogue's vocabularies) and says what it could not use: unknown
columns (:mod:`training.byod`), and context values outside the specification's vocabularies (they rank
as ``other``, in training as in serving).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from features.events import Event
from features.offers import Offer
from features.projection import DEFAULT_SPEC
from features.spec import OTHER, FeatureSpec, SpecError
from features.taxonomy import CatalogError, Taxonomy, load_catalog_file, spec_for_taxonomy
from training import byod, dataset

log = logging.getLogger(__name__)

#: Errors that mean "this input cannot be used" (they name the file and field): the CLI prints them as
#: one line and exits 2 instead of a traceback.
INPUT_ERRORS: tuple[type[Exception], ...] = (byod.DataError, CatalogError, SpecError)


@dataclass
class Source:
    impressions: pd.DataFrame
    events: list[Event]
    offers: list[Offer]
    files: list[Path]
    kind: str
    description: str
    meta: dict[str, Any] = field(default_factory=dict)
    #: The feature specification with the catalogue's vocabularies (set by load_source).
    spec: FeatureSpec = DEFAULT_SPEC


def normalise_context(imp: pd.DataFrame, spec: FeatureSpec, taxonomy: Taxonomy, what: str) -> pd.DataFrame:
    """The impressions' page context as serving sees it: a value outside the specification's vocabulary
    (the catalogue's categories for ``category``) becomes ``other``, named in one warning per field
    (:func:`features.context.ContextVocabulary.normalise` does the same to a recommend request)."""
    from features.context import ContextVocabulary

    vocab = ContextVocabulary.of(spec, taxonomy)
    out = imp
    for name, known in (
        ("page_type", vocab.page_type),
        ("category", vocab.category),
        ("device", vocab.device),
        ("channel", vocab.channel),
    ):
        if name not in imp.columns or known is None:
            continue
        col = imp[name]
        present = col.notna()
        values = col[present].astype(str)
        bad = present & ~col.astype(str).isin(known)
        if bad.any():
            byod.warn_unknown(values.unique().tolist(), known, f"{what}: {name} ({int(bad.sum())} rows)")
            if out is imp:
                out = imp.copy()
            out.loc[bad, name] = OTHER
    return out


def load_source(
    data: Path,
    events: Path | None = None,
    *,
    catalog: Path | None = None,
    members: Path | None = None,
    history: byod.History = "both",
    spec: FeatureSpec | None = None,
) -> Source:
    """Read a simulation directory or a bring-your-own impressions table (see module docstring).

    The catalogue (``catalog.json`` in the directory or beside the table, unless ``catalog`` is given)
    declares the taxonomy; ``spec`` (the default specification when None) takes its vocabularies from it
    (:func:`features.taxonomy.spec_for_taxonomy`), and so does the returned ``Source.spec``.
    """
    data = Path(data)
    base_spec = spec or DEFAULT_SPEC
    if not data.exists():
        raise byod.DataError(
            f"{data} does not exist (expected a simulation directory or a CSV/Parquet table)"
        )
    cat_path = (
        Path(catalog) if catalog is not None else (data if data.is_dir() else data.parent) / "catalog.json"
    )
    if not cat_path.exists():
        raise byod.DataError(
            f"no catalogue: expected {cat_path} (a JSON list of offers or {{taxonomy, offers}}; see README "
            "'Bring your own data'), or pass --catalog"
        )
    taxonomy, offers = load_catalog_file(cat_path)
    if not offers:
        # Rows are joined with the catalogue's offers: without any, every row would be dropped.
        raise byod.DataError(
            f"catalogue {cat_path} has no offers: training joins each impression with its offer (fill "
            'its "offers", e.g. from `benefits catalog export --format json`)'
        )
    spec = spec_for_taxonomy(base_spec, taxonomy)
    extra: list[Event] = []
    if byod.is_archive(data):
        # The retraining loop: the archive is both the history and, through its impression and claim
        # events, the impressions table.
        evs = byod.load_event_source(data)
        if events is not None:
            evs = [*evs, *byod.load_event_source(Path(events))]
        imp = normalise_context(byod.impressions_from_events(evs), spec, taxonomy, f"archive {data}")
        meta: dict[str, Any] = {"history": "events"}
        kind = "archive"
        files = [cat_path, *sorted(data.glob("event_date=*/part-*.parquet"))]
    elif data.is_dir():
        imp_path = data / "impressions.parquet"
        ev_path = Path(events) if events is not None else data / "events.jsonl"
        meta = json.loads((data / "meta.json").read_text()) if (data / "meta.json").exists() else {}
        imp = normalise_context(pd.read_parquet(imp_path), spec, taxonomy, str(imp_path))
        evs = byod.load_event_source(ev_path) if ev_path.exists() else []
        kind = str(meta.get("kind", "directory"))
        files = [imp_path, ev_path, cat_path]
    else:
        imp, extra = byod.impression_table(data, spec)
        imp = normalise_context(imp, spec, taxonomy, f"impressions table {data}")
        files = [data, cat_path]
        meta = {}
        kind = "bring_your_own"
        logged = byod.load_event_source(events) if events is not None else []
        if events is not None:
            files.append(Path(events))
        if events is None and history == "events":
            raise byod.DataError("history=events needs an event log (--events)")
        prepared = dataset.prepare_impressions(imp, offers)
        evs = byod.combine_history(prepared, offers, logged, history if events is not None else "labels")
        imp = prepared.drop(columns=["group"])
        meta["history"] = history if events is not None else "labels"
    if members is not None:
        extra = [*extra, *byod.members_events(Path(members), spec)]
        files.append(Path(members))
    if extra:
        meta["attribute_events"] = len(extra)
        evs = [*evs, *extra]
    src = Source(imp, evs, offers, [f for f in files if f.is_file()], kind, str(data), meta)
    src.spec = spec
    return src
