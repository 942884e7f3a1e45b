"""Member-facing sentences from a gettext message catalogue, in the storefront's language.

The catalogues are ``service/locales/<locale>/LC_MESSAGES/messages.po``: one entry per reason code
(``msgctxt "reason"``), per exclusion code (``msgctxt "exclusion"``, the "why not shown" answers), per
category and per tier name. They are compiled to gettext ``.mo`` form in memory when this module is
imported (Babel's ``read_po`` + ``write_mo``), so a clean clone needs no build step and the ``.po`` file
stays the one source a translator edits.

Parameters are formatted for the locale before they are put into the sentence: money (``value``,
``threshold``) with Babel as CNY, counts as locale numbers, category and tier names from the catalogue.

Locale choice (:func:`negotiate`): the request's ``locale`` field, else the best ``Accept-Language``
match, else the service default (``settings.default_locale``).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from functools import cache, lru_cache
from pathlib import Path

from babel.core import Locale, UnknownLocaleError
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_currency, format_decimal
from babel.support import Translations

from features.eligibility import RULES

#: Supported locales, as BCP 47 tags (what requests send).
LOCALES: tuple[str, ...] = ("zh-CN", "en")
DEFAULT_LOCALE = "en"
CURRENCY = "CNY"

#: Every reason code the ranker can attach to a shown offer, with the parameters its sentence takes.
REASON_PARAMS: dict[str, tuple[str, ...]] = {
    "featured": (),
    "page_context": ("category",),
    "category_interest": ("category",),
    "category_purchases": ("category",),
    "high_value": ("value",),
    "limited_quantity": (),
    "popular": (),
    "birthday_month": (),
    "free_shipping_basket": ("threshold",),
    "frequent_orders": (),
    "threshold_within_reach": ("threshold",),
    "tier_benefit": ("tier",),
    "paid_membership": (),
    "coupon_habit": (),
    "consult_history": (),
    "paid_expiring": ("plan", "days"),
    "paid_expiring_today": ("plan",),
    "paid_lapsed": ("plan",),
    "tier_progress": ("amount", "tier"),
    "points_expiring": ("points", "days"),
    "points_expiring_today": ("points",),
    "welcome_back": (),
    "missed_you": ("days",),
    "available": (),
}
#: Every exclusion code: the eligibility rules plus the fairness guard.
EXCLUSION_CODES: tuple[str, ...] = (*RULES, "fairness_guard")

_LOCALE_DIR = Path(__file__).with_name("locales")
_MONEY_PARAMS = frozenset({"value", "threshold"})
#: Money in whole currency units ("Spend CN¥120 more"): the amount is rounded up to a unit already.
_WHOLE_MONEY_PARAMS = frozenset({"amount"})
#: ``plan`` is the paid programme's own name ("PLUS"), shown as it is; the unnamed plan is "paid".
_NAME_PARAMS = {
    "category": "category",
    "tier": "tier",
    "plan": "plan",
}  # parameter -> msgctxt of its display name


class MissingMessage(KeyError):
    """A code without a sentence in the catalogue (a test keeps every code covered)."""


def _gettext_dir(tag: str) -> str:
    return tag.replace("-", "_")


def _babel_locale(tag: str) -> Locale:
    return Locale.parse(tag, sep="-")


@cache
def translations(tag: str) -> Translations:
    """The compiled catalogue of one supported locale."""
    if tag not in LOCALES:
        raise ValueError(f"unsupported locale {tag!r}; supported: {', '.join(LOCALES)}")
    po_path = _LOCALE_DIR / _gettext_dir(tag) / "LC_MESSAGES" / "messages.po"
    with po_path.open("rb") as f:
        catalog = read_po(f, locale=_gettext_dir(tag))
    buf = io.BytesIO()
    write_mo(buf, catalog)
    buf.seek(0)
    return Translations(buf)


def message(context: str, msgid: str, tag: str) -> str:
    """The raw catalogue entry (placeholders unfilled); :class:`MissingMessage` when absent."""
    text = str(translations(tag).pgettext(context, msgid))
    if text == msgid and context in ("reason", "exclusion"):
        # gettext answers the msgid itself when an entry is missing: never show a bare code to a member.
        raise MissingMessage(f"no {context} sentence for {msgid!r} in {tag}")
    return text


def money(amount: float, tag: str) -> str:
    return format_currency(amount, CURRENCY, locale=_babel_locale(tag))


def whole_money(amount: float, tag: str) -> str:
    """``amount`` in the locale's currency format without the fraction digits (CN¥120, ¥120)."""
    loc = _babel_locale(tag)
    pattern = loc.currency_formats["standard"].pattern.split(";")[0].replace(".00", "")
    return format_currency(round(amount), CURRENCY, format=pattern, locale=loc, currency_digits=False)


def number(x: float, tag: str) -> str:
    return format_decimal(x, locale=_babel_locale(tag))


def _format_params(params: Mapping[str, object], tag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in params.items():
        if k in _MONEY_PARAMS:
            out[k] = money(float(v), tag)  # type: ignore[arg-type]
        elif k in _WHOLE_MONEY_PARAMS:
            out[k] = whole_money(float(v), tag)  # type: ignore[arg-type]
        elif k in _NAME_PARAMS:
            out[k] = str(translations(tag).pgettext(_NAME_PARAMS[k], str(v)))
        elif isinstance(v, int | float):
            out[k] = number(v, tag)
        else:
            out[k] = str(v)
    return out


def _render(context: str, code: str, params: Mapping[str, object], tag: str) -> str:
    try:
        template = message(context, code, tag)
    except MissingMessage:
        if tag == DEFAULT_LOCALE:
            raise
        template = message(context, code, DEFAULT_LOCALE)
    return template.format(**_format_params(params, tag))


@cache
def _cached_static(context: str, code: str, tag: str) -> str:
    return _render(context, code, {}, tag)


@lru_cache(maxsize=8192)
def _cached_reason(code: str, params: tuple[tuple[str, object], ...], tag: str) -> str:
    return _render("reason", code, dict(params), tag)


def reason_text(code: str, params: Mapping[str, object], tag: str) -> str:
    """The sentence of a reason code with its parameters, in ``tag``'s language."""
    if not params:
        return _cached_static("reason", code, tag)
    # Cached: Babel's currency formatting costs tens of microseconds, and the request path renders up
    # to a few sentences per shown offer. Parameters are offer facts (few distinct values).
    return _cached_reason(code, tuple(params.items()), tag)


def exclusion_text(code: str, tag: str) -> str:
    """The "why not shown" sentence of an exclusion code."""
    return _cached_static("exclusion", code, tag)


def _match(tag: str) -> str | None:
    """The supported locale for one language tag (``zh``, ``zh-Hans-CN`` and ``zh_CN`` all mean zh-CN)."""
    try:
        loc = Locale.parse(tag.strip().replace("_", "-"), sep="-")
    except (ValueError, UnknownLocaleError, TypeError):
        return None
    for supported in LOCALES:
        s = _babel_locale(supported)
        if loc.language == s.language and (loc.territory in (None, s.territory) or s.territory is None):
            return supported
    return None


def parse_accept_language(header: str) -> list[str]:
    """Language tags of an ``Accept-Language`` header, best first (q-values honoured, q=0 dropped)."""
    ranked: list[tuple[float, int, str]] = []
    for i, part in enumerate(header.split(",")):
        piece = part.strip()
        if not piece:
            continue
        tag, _, rest = piece.partition(";")
        q = 1.0
        rest = rest.strip()
        if rest.startswith("q="):
            try:
                q = float(rest[2:])
            except ValueError:
                q = 0.0
        if q > 0 and tag.strip() != "*":
            ranked.append((-q, i, tag.strip()))
    return [t for _, _, t in sorted(ranked)]


def negotiate(requested: str | None, accept_language: str | None, default: str = DEFAULT_LOCALE) -> str:
    """The locale of an answer: the request's own choice, else Accept-Language, else ``default``."""
    if requested:
        m = _match(requested)
        if m is not None:
            return m
    if accept_language:
        for tag in parse_accept_language(accept_language):
            m = _match(tag)
            if m is not None:
                return m
    return default


def is_supported(tag: str) -> bool:
    return _match(tag) is not None


#: The tags a request body's ``locale`` may name (the enum of its OpenAPI schema): each supported locale,
#: its language alone, and common regional and underscore spellings, all of which :func:`is_supported`
#: maps. A closed list, so the schema says exactly what is accepted; ``Accept-Language`` still
#: negotiates any tag.
LOCALE_TAGS: tuple[str, ...] = (
    *("zh-CN", "zh", "zh_CN", "zh-Hans", "zh-Hans-CN"),
    *("en", "en-US", "en-GB", "en_US", "en_GB", "en-AU", "en-CA", "en-IN", "en-SG"),
)


def is_locale_tag(tag: str) -> bool:
    """A body's ``locale`` is one of :data:`LOCALE_TAGS`."""
    return tag in LOCALE_TAGS
