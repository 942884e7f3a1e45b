"""Bring your own data: an impressions table, a catalogue, an optional members table and event log.

What is read, and what is said about the rest:

- the **impressions table** (CSV or Parquet): the columns in :data:`IMPRESSION_COLUMNS`, plus any
  column named like a member attribute of the feature specification (``member_attribute`` features),
  taken as that member's attribute as of that row; every other column is listed in one warning;
- the **catalogue** (``catalog.json`` beside the table unless given): a missing file is an error that
  names the path it looked for;
- a **members table** (``--members``, CSV or Parquet): ``member_id``, optionally ``event_ts`` (when the
  row became true; without it the attributes hold from the start), and attribute columns; columns the
  specification does not name are listed in a warning;
- the **event log** (``--events``: a JSONL file or an archive directory written by ``benefits archive``).

History (``history``): ``both`` (default) folds the event log *and* the labels (an impression event per
row, a claim one second after each positive), skipping rows the log already has as impressions;
``events`` uses the log alone, ``labels`` the labels alone.

Timestamps: Unix seconds (int or float), ISO 8601 strings (with or without a zone; naive ones are UTC),
or timezone-aware datetimes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from features import events as ev
from features.offers import Offer
from features.spec import FeatureSpec

log = logging.getLogger(__name__)

History = Literal["both", "events", "labels"]
CONTEXT_COLUMNS = ("page_type", "category", "device", "channel")
IMPRESSION_COLUMNS = (
    "member_id",
    "offer_id",
    "event_ts",
    "label",
    "request_id",
    "position",
    "page_type",
    "category",
    "device",
    "channel",
    "segment",
    "true_p",
    # The logging policy's probabilities, for counterfactual evaluation (training.counterfactual).
    "propensity",
    "propensity_marginal",
)
#: When a members table gives no time, its attributes hold from the start (2000-01-01, the earliest
#: event time the schema accepts).
BEGINNING_TS = 946684800.0


class DataError(ValueError):
    """Input data that cannot be used, with what and where."""


def read_table(path: Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist")
    suffixes = "".join(path.suffixes).lower()
    if suffixes.endswith((".parquet", ".pq")):
        return pd.read_parquet(path)
    if suffixes.endswith((".csv", ".csv.gz")):
        return pd.read_csv(path)
    raise DataError(f"{path}: expected a .csv or .parquet file")


def to_unix_seconds(col: pd.Series, name: str = "event_ts") -> pd.Series:
    """Unix seconds (float) from numbers, ISO 8601 strings or datetimes (naive = UTC)."""
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        return col.astype(np.float64)
    if pd.api.types.is_datetime64_any_dtype(col):
        dt = col if getattr(col.dt, "tz", None) is not None else col.dt.tz_localize("UTC")
    else:
        numeric = pd.to_numeric(col, errors="coerce")
        if numeric.notna().all():
            return numeric.astype(np.float64)
        try:
            dt = pd.to_datetime(col, utc=True, format="ISO8601")
        except (ValueError, TypeError) as exc:
            bad = col[pd.to_datetime(col, utc=True, errors="coerce", format="ISO8601").isna()]
            raise DataError(
                f"{name}: not Unix seconds nor ISO 8601 timestamps, e.g. {bad.head(3).tolist()} ({exc})"
            ) from None
    dt = dt.dt.tz_convert("UTC")
    return (dt - pd.Timestamp("1970-01-01", tz="UTC")).dt.total_seconds().astype(np.float64)


def _attribute_value(raw: Any, typ: str) -> ev.AttributeValue:
    if raw is None or (isinstance(raw, float) and np.isnan(raw)) or raw is pd.NA:
        return None
    if typ == "numeric":
        try:
            return float(raw)
        except (TypeError, ValueError):
            return None
    if typ == "boolean":
        if isinstance(raw, str):
            return raw.strip().lower() in ("1", "true", "yes", "y", "t")
        return bool(raw)
    if typ == "list":
        if isinstance(raw, list | tuple | np.ndarray):
            return [str(v)[:128] for v in list(raw)[:32]]
        return [v.strip()[:128] for v in str(raw).replace(";", ",").split(",") if v.strip()][:32]
    value = raw
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # a categorical read as float by pandas ("3.0") is the code "3"
    return str(value)[:128]


def attribute_events(
    frame: pd.DataFrame, spec: FeatureSpec, ts: np.ndarray, prefix: str
) -> tuple[list[ev.Event], list[str]]:
    """One ``profile_updated`` per row with the specification's attribute columns (changed rows only)."""
    declared = spec.member_attributes()
    cols = [c for c in frame.columns if c in declared]
    if not cols:
        return [], []
    out: list[ev.Event] = []
    members = frame["member_id"].astype(str).tolist()
    values = {c: frame[c].tolist() for c in cols}
    last: dict[str, dict[str, ev.AttributeValue]] = {}
    for i, member in enumerate(members):
        attrs = {c: _attribute_value(values[c][i], declared[c]) for c in cols}
        if last.get(member) == attrs:
            continue
        last[member] = attrs
        out.append(
            ev.ProfileUpdated(
                event_id=f"{prefix}{i}", member_id=member, event_ts=float(ts[i]), attributes=attrs
            )
        )
    return out, cols


def members_events(path: Path, spec: FeatureSpec) -> list[ev.Event]:
    """The members table as ``profile_updated`` events (see the module docstring)."""
    df = read_table(path)
    if "member_id" not in df.columns:
        raise DataError(f"{path}: a members table needs a member_id column")
    df["member_id"] = df["member_id"].astype(str)
    ts = (
        to_unix_seconds(df["event_ts"]).to_numpy()
        if "event_ts" in df.columns
        else np.full(len(df), BEGINNING_TS)
    )
    ts = np.clip(ts, BEGINNING_TS, None)
    order = np.argsort(ts, kind="stable")
    df, ts = df.iloc[order].reset_index(drop=True), ts[order]
    events, used = attribute_events(df, spec, ts, "mbr")
    ignored = sorted(set(df.columns) - {"member_id", "event_ts", *used})
    if ignored:
        log.warning(
            "members table %s: columns %s are not attributes of the feature specification: ignored",
            path,
            ignored,
        )
    if not used:
        log.warning("members table %s has no column the feature specification uses", path)
    log.info("members table %s: %d members, attributes %s", path, df["member_id"].nunique(), used)
    return events


def impression_table(path: Path, spec: FeatureSpec) -> tuple[pd.DataFrame, list[ev.Event]]:
    """The impressions table with ``event_ts`` in Unix seconds, and the attribute events its own
    attribute columns carry (each visible from just before its row)."""
    df = read_table(path)
    missing = {"member_id", "offer_id", "event_ts", "label"} - set(df.columns)
    if missing:
        raise DataError(f"{path}: the impressions table lacks columns {sorted(missing)}")
    df["member_id"] = df["member_id"].astype(str)
    df["event_ts"] = to_unix_seconds(df["event_ts"])
    # A millisecond before the row: visible to it (the fold reads strictly before), as the member's
    # attributes are when the storefront asks.
    events, used = attribute_events(df, spec, df["event_ts"].to_numpy() - 1e-3, "att")
    ignored = sorted(set(df.columns) - set(IMPRESSION_COLUMNS) - set(used))
    if ignored:
        log.warning(
            "impressions table %s: columns %s are neither impression fields nor attributes of the feature "
            "specification: ignored (declare them as member_attribute features to use them)",
            path,
            ignored,
        )
    if used:
        log.info("impressions table %s: member attributes %s", path, used)
    return df.drop(columns=used), events


def load_event_source(path: Path) -> list[ev.Event]:
    """A JSONL event log, or an archive directory (Parquet files written by ``benefits archive``)."""
    from training import dataset

    path = Path(path)
    if path.is_dir():
        from infra.archive import read_archive

        return read_archive(path)
    if not path.exists():
        raise DataError(f"event log {path} does not exist")
    return dataset.load_events(path)


#: Claims that count as the outcome of an impression, and how long after it they still count.
_CLAIMS = (ev.CouponClaim, ev.BenefitUse, ev.ConsultBooked)
LABEL_WINDOW_SECONDS = 7 * 86400.0


def impressions_from_events(
    events: Iterable[ev.Event], window_seconds: float = LABEL_WINDOW_SECONDS
) -> pd.DataFrame:
    """The impressions table of an event log (e.g. the archive): one row per ``impression`` event, label
    1 when the member claimed that offer within ``window_seconds`` after it (each claim labels the
    latest impression of the offer before it). The page context is the one the impression carries (the
    storefront's feedback ``context``, as the service normalised it); an impression without it gets the
    defaults (home, no category, other, app). ``propensity`` is the impression's logged one (NaN when it
    has none)."""
    shown: dict[tuple[str, str], list[int]] = {}
    rows: list[tuple[str, str, float, str, int, str, str | None, str, str]] = []
    claims: list[tuple[str, str, float]] = []
    impressions: list[ev.Impression] = []
    for e in events:
        if isinstance(e, ev.Impression):
            impressions.append(e)
            shown.setdefault((e.member_id, e.offer_id), []).append(len(rows))
            rows.append(
                (
                    e.member_id, e.offer_id, e.event_ts, e.request_id, e.position,
                    e.page_type or "home", e.category, e.device or "other", e.channel or "app",
                )
            )  # fmt: skip
        elif isinstance(e, _CLAIMS):
            claims.append((e.member_id, e.offer_id, e.event_ts))
    label = np.zeros(len(rows), dtype=np.int8)
    for member, offer, ts in claims:
        idx = shown.get((member, offer), [])
        before = [i for i in idx if rows[i][2] < ts <= rows[i][2] + window_seconds]
        if before:
            label[max(before, key=lambda i: rows[i][2])] = 1
    df = pd.DataFrame(
        rows,
        columns=["member_id", "offer_id", "event_ts", "request_id", "position", *CONTEXT_COLUMNS],
    )
    df["label"] = label
    # The logging policy's propensity each impression carries (NaN without one): what counterfactual
    # evaluation of the archive reweights by (training.counterfactual).
    df["propensity"] = [float("nan") if e.propensity is None else e.propensity for e in impressions]
    return df


def is_archive(path: Path) -> bool:
    return Path(path).is_dir() and any(Path(path).glob("event_date=*"))


def combine_history(
    prepared: pd.DataFrame,
    offers: list[Offer],
    log_events: list[ev.Event],
    history: History,
) -> list[ev.Event]:
    """The history to fold (see the module docstring)."""
    from training import dataset

    if history == "events":
        return list(log_events)
    synthesized = dataset.synthesize_events(prepared, offers)
    if history == "labels":
        return synthesized
    seen = {
        (e.member_id, e.offer_id, round(e.event_ts, 3)) for e in log_events if isinstance(e, ev.Impression)
    }
    if not seen:
        return [*log_events, *synthesized]
    keep_rows = {
        i
        for i, (m, o, t) in enumerate(
            zip(
                prepared["member_id"].tolist(),
                prepared["offer_id"].tolist(),
                prepared["event_ts"].tolist(),
                strict=True,
            )
        )
        if (m, o, round(t, 3)) not in seen
    }
    if not keep_rows:
        return list(log_events)
    extra = dataset.synthesize_events(prepared.iloc[sorted(keep_rows)], offers)
    log.info("history: %d logged events + %d from labels not in the log", len(log_events), len(extra))
    return [*log_events, *extra]


def warn_unknown(values: Iterable[str], known: Iterable[str], what: str) -> None:
    unknown = sorted(set(values) - set(known))
    if unknown:
        log.warning(
            "%s values %s are not in the declared vocabulary: they rank as 'other'", what, unknown[:20]
        )
