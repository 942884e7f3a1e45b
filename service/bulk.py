"""Bulk catalogue import and export: parse a CSV or JSON file into offers, report every refused row with
its reasons, and apply only the valid rows. One code path for the admin API
(``POST /v1/admin/offers/import``), the console (which calls that route) and the CLI
(``benefits catalog import``).

Formats
-------
JSON: a list of offers, or ``{"offers": [...]}``, each shaped like the admin API's offer body.

CSV: one offer per row; a header names the columns. Nested fields use dotted names
(``eligibility.tiers``, ``caps.max_claims_per_member``); list fields (``eligibility.tiers``,
``eligibility.regions``, ``eligibility.channels``, ``eligibility.page_types``) separate their items with
``|``. An empty cell means "not given" (the field's default). Booleans are ``true``/``false``
(also ``1``/``0``, ``yes``/``no``). :func:`to_csv` writes this format back, so an export re-imports.

Semantics
---------
- Parsing never writes. :func:`plan` compares the valid rows with the stored catalogue: each is
  ``created``, ``updated`` or ``unchanged``. :func:`apply` writes created + updated offers in one
  pipeline with a single catalogue version bump, so re-importing the same file is a no-op (idempotent;
  the version does not move).
- A row is refused when it does not validate as an :class:`~features.offers.Offer`, or repeats an
  ``offer_id`` already seen earlier in the file (the first occurrence wins; the rest are refused, so a
  file can never silently overwrite itself). Refused rows are never written.
- Columns the offer model does not know are ignored and named in ``warnings`` (data the user gave that
  is ignored is never dropped silently).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from features.offers import Caps, Eligibility, Offer
from features.taxonomy import DEMO_TAXONOMY, Taxonomy
from service.catalog import CatalogStore

#: Most rows one import may carry (one request body; the body-size limit applies too).
MAX_ROWS = 10_000
LIST_SEPARATOR = "|"
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}


class ImportFormatError(ValueError):
    """The file as a whole cannot be read (not CSV/JSON, no header, too many rows)."""


@dataclass
class Refusal:
    row: int  # 1-based data row (CSV: the header is row 0) or list index + 1 (JSON)
    offer_id: str | None
    errors: list[dict[str, str]]

    def as_dict(self) -> dict[str, Any]:
        return {"row": self.row, "offer_id": self.offer_id, "errors": self.errors}


@dataclass
class Parsed:
    rows: int
    offers: list[tuple[int, Offer]]
    refused: list[Refusal]
    warnings: list[str] = field(default_factory=list)


@dataclass
class Plan:
    parsed: Parsed
    created: list[Offer]
    updated: list[Offer]
    unchanged: list[Offer]

    @property
    def writes(self) -> list[Offer]:
        return self.created + self.updated

    def report(self, *, dry_run: bool, applied: bool, catalog_version: int | None) -> dict[str, Any]:
        p = self.parsed
        return {
            "dry_run": dry_run,
            "applied": applied,
            "catalog_version": catalog_version,
            "rows": p.rows,
            "valid": len(p.offers),
            "refused_count": len(p.refused),
            "refused": [r.as_dict() for r in p.refused],
            "created": [o.offer_id for o in self.created],
            "updated": [o.offer_id for o in self.updated],
            "unchanged": [o.offer_id for o in self.unchanged],
            "warnings": p.warnings,
        }


def _model_fields(model: type[BaseModel]) -> set[str]:
    return set(model.model_fields)


_OFFER_FIELDS = _model_fields(Offer)
_NESTED: dict[str, set[str]] = {"eligibility": _model_fields(Eligibility), "caps": _model_fields(Caps)}
# Lists in one cell, joined by LIST_SEPARATOR (as the export writes them): nested ones (eligibility.tiers)
# and the offer's own (tags).
_LIST_FIELDS = {
    name
    for prefix, model in (("eligibility", Eligibility), ("caps", Caps))
    for name, f in model.model_fields.items()
    if str(f.annotation).startswith("list")
    for name in [f"{prefix}.{name}"]
} | {name for name, f in Offer.model_fields.items() if str(f.annotation).startswith("list")}
_BOOL_FIELDS = {
    *(n for n, f in Offer.model_fields.items() if f.annotation is bool or f.annotation == "bool"),
    *(f"eligibility.{n}" for n, f in Eligibility.model_fields.items() if f.annotation in (bool, "bool")),
}


def detect_format(name_or_type: str, data: bytes) -> str:
    """``"csv"`` or ``"json"`` from a file name / content type, else from the first non-blank byte."""
    low = name_or_type.lower()
    if "json" in low:
        return "json"
    if "csv" in low:
        return "csv"
    head = data.lstrip()[:1]
    return "json" if head in (b"[", b"{") else "csv"


def parse(data: bytes, fmt: str, taxonomy: Taxonomy = DEMO_TAXONOMY) -> Parsed:
    """Validate every row of a CSV or JSON file (offers outside ``taxonomy`` are refused); raise
    :class:`ImportFormatError` for an unreadable file."""
    if fmt == "json":
        return _validate(_json_rows(data), [], taxonomy)
    if fmt == "csv":
        rows, warnings = _csv_rows(data)
        return _validate(rows, warnings, taxonomy)
    raise ImportFormatError(f"unknown format {fmt!r}: use csv or json")


def _json_rows(data: bytes) -> list[Any]:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ImportFormatError(f"not valid JSON: {exc}") from None
    if isinstance(doc, dict) and isinstance(doc.get("offers"), list):
        doc = doc["offers"]
    if not isinstance(doc, list):
        raise ImportFormatError('JSON must be a list of offers or {"offers": [...]}')
    if len(doc) > MAX_ROWS:
        raise ImportFormatError(f"{len(doc)} rows; at most {MAX_ROWS} per import")
    return doc


def _csv_rows(data: bytes) -> tuple[list[Any], list[str]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ImportFormatError(f"CSV is not UTF-8 text: {exc}") from None
    reader = csv.DictReader(io.StringIO(text))
    try:
        header = reader.fieldnames
        if not header:
            raise ImportFormatError("CSV has no header row")
        unknown = [c for c in header if not _known_column(c)]
        warnings = [f"column {c!r} is not an offer field and was ignored" for c in unknown]
        rows: list[Any] = []
        for raw in reader:
            if len(rows) >= MAX_ROWS:
                raise ImportFormatError(f"more than {MAX_ROWS} rows; at most {MAX_ROWS} per import")
            if None in raw:  # more cells than header columns
                cells = len(header) + len(raw[None])
                rows.append(_Broken(f"row has {cells} cells; the header has {len(header)}"))
                continue
            rows.append(_unflatten({k: v for k, v in raw.items() if k not in unknown}))
    except csv.Error as exc:  # e.g. a bare carriage return inside a field: was a 500
        raise ImportFormatError(f"CSV cannot be read: {exc} (line {reader.line_num})") from None
    return rows, warnings


def _known_column(name: str) -> bool:
    if "." in name:
        prefix, _, sub = name.partition(".")
        return sub in _NESTED.get(prefix, set())
    return name in _OFFER_FIELDS and name not in _NESTED


@dataclass
class _Broken:
    message: str


def _cell(name: str, value: str) -> Any:
    if name in _LIST_FIELDS:
        return [v.strip() for v in value.split(LIST_SEPARATOR) if v.strip()]
    if name in _BOOL_FIELDS:
        low = value.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
    return value.strip()  # pydantic coerces numbers from strings (lax mode) and names what fails


def _unflatten(flat: dict[str, str | None]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in flat.items():
        if value is None or value.strip() == "":
            continue
        if "." in name:
            prefix, _, sub = name.partition(".")
            out.setdefault(prefix, {})[sub] = _cell(name, value)
        else:
            out[name] = _cell(name, value)
    return out


def _validate(rows: list[Any], warnings: list[str], taxonomy: Taxonomy = DEMO_TAXONOMY) -> Parsed:
    offers: list[tuple[int, Offer]] = []
    refused: list[Refusal] = []
    seen: dict[str, int] = {}
    for n, raw in enumerate(rows, start=1):
        oid = raw.get("offer_id") if isinstance(raw, dict) else None
        oid = oid if isinstance(oid, str) else None
        if isinstance(raw, _Broken):
            refused.append(Refusal(n, None, [{"field": "row", "message": raw.message}]))
            continue
        if not isinstance(raw, dict):
            refused.append(Refusal(n, None, [{"field": "row", "message": "not an object"}]))
            continue
        try:
            offer = Offer.model_validate(raw)
        except ValidationError as exc:
            refused.append(Refusal(n, oid, _errors(exc)))
            continue
        problems = taxonomy.problems(offer)
        if problems:
            fields = [p.split(" ", 1)[0] for p in problems]
            refused.append(
                Refusal(n, oid, [{"field": f, "message": m} for f, m in zip(fields, problems, strict=True)])
            )
            continue
        first = seen.get(offer.offer_id)
        if first is not None:
            refused.append(
                Refusal(n, offer.offer_id, [{"field": "offer_id", "message": f"repeats row {first}"}])
            )
            continue
        seen[offer.offer_id] = n
        offers.append((n, offer))
    return Parsed(rows=len(rows), offers=offers, refused=refused, warnings=warnings)


def _errors(exc: ValidationError) -> list[dict[str, str]]:
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        out.append({"field": loc or "offer", "message": msg})
    return out


def plan(parsed: Parsed, stored: list[Offer]) -> Plan:
    """Sort the valid offers into created / updated / unchanged against the stored catalogue."""
    by_id = {o.offer_id: o for o in stored}
    created, updated, unchanged = [], [], []
    for _, offer in parsed.offers:
        old = by_id.get(offer.offer_id)
        if old is None:
            created.append(offer)
        elif old == offer:
            unchanged.append(offer)
        else:
            updated.append(offer)
    return Plan(parsed, created, updated, unchanged)


async def run_import(
    store: CatalogStore, data: bytes, fmt: str, *, dry_run: bool, taxonomy: Taxonomy = DEMO_TAXONOMY
) -> tuple[dict[str, Any], bool]:
    """Parse, plan against the stored catalogue and (unless ``dry_run``) write: (report, applied).

    Raises :class:`ImportFormatError` for an unreadable file. The admin route and the CLI both call this.
    """
    parsed = parse(data, fmt, taxonomy)
    version, stored = await store.read_all()
    the_plan = plan(parsed, stored)
    applied = False
    if not dry_run and the_plan.writes:
        version = await store.put_many(the_plan.writes)
        applied = True
    return the_plan.report(dry_run=dry_run, applied=applied, catalog_version=version), applied


# -- export ----------------------------------------------------------------------------------------------

CSV_COLUMNS: tuple[str, ...] = (
    *(n for n in Offer.model_fields if n not in _NESTED),
    *(f"eligibility.{n}" for n in Eligibility.model_fields),
    *(f"caps.{n}" for n in Caps.model_fields),
)


def _out_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return LIST_SEPARATOR.join(str(v) for v in value)
    return str(value)


def to_csv(offers: list[Offer]) -> str:
    """The offers as CSV in the import format (sorted by offer id)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for o in sorted(offers, key=lambda o: o.offer_id):
        d = o.model_dump(mode="json")
        row = []
        for col in CSV_COLUMNS:
            if "." in col:
                prefix, _, sub = col.partition(".")
                row.append(_out_cell(d[prefix][sub]))
            else:
                row.append(_out_cell(d[col]))
        w.writerow(row)
    return buf.getvalue()


def to_json(offers: list[Offer]) -> bytes:
    return orjson.dumps(
        [o.model_dump(mode="json") for o in sorted(offers, key=lambda o: o.offer_id)],
        option=orjson.OPT_INDENT_2,
    )
