"""Member-facing sentences in the storefront's language: catalogue coverage, formatting, negotiation,
and the recommend answer over HTTP in the locale the request asks for."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from features.events import TIERS
from features.offers import CATEGORIES
from infra.settings import Settings
from service import i18n
from service.app import create_app
from tests.service.conftest import SF, SUPPORT, running

pytestmark = pytest.mark.anyio

_CJK = re.compile(r"[\u4e00-\u9fff]")
_SAMPLE = {"category": "baby", "value": 12.0, "threshold": 199.0, "tier": "gold", "plan": "PLUS", "days": 5,
           "amount": 120.0, "points": 300}  # fmt: skip


@pytest.mark.parametrize("tag", i18n.LOCALES)
@pytest.mark.parametrize("code", sorted(i18n.REASON_PARAMS))
def test_every_reason_code_has_a_sentence_in_every_locale(tag: str, code: str) -> None:
    raw = i18n.message("reason", code, tag)  # raises MissingMessage when the entry is absent
    params = {p: _SAMPLE[p] for p in i18n.REASON_PARAMS[code]}
    # The sentence uses exactly the parameters the code declares (a translator dropping one is caught).
    assert set(re.findall(r"\{(\w+)\}", raw)) == set(params)
    text = i18n.reason_text(code, params, tag)
    assert text and "{" not in text and text != code and text.endswith((".", "。"))
    assert bool(_CJK.search(text)) == (tag == "zh-CN")


@pytest.mark.parametrize("tag", i18n.LOCALES)
@pytest.mark.parametrize("code", i18n.EXCLUSION_CODES)
def test_every_exclusion_code_has_a_sentence_in_every_locale(tag: str, code: str) -> None:
    text = i18n.exclusion_text(code, tag)
    assert text and text != code and text.endswith((".", "。"))
    assert bool(_CJK.search(text)) == (tag == "zh-CN")


@pytest.mark.parametrize("tag", i18n.LOCALES)
def test_every_category_and_tier_has_a_display_name(tag: str) -> None:
    tr = i18n.translations(tag)
    for ctx, names in (("category", CATEGORIES), ("tier", TIERS)):
        for name in names:
            shown = tr.pgettext(ctx, name)
            assert shown
            if ctx == "tier" and tag == "en":
                assert shown == name.capitalize()  # a tier is a name: "reach Gold"
            else:
                assert (shown == name) == (tag == "en")


def test_lifecycle_sentences() -> None:
    assert i18n.reason_text("paid_expiring", {"plan": "PLUS", "days": 5}, "en") == (
        "Your PLUS membership ends in 5 days."
    )
    assert i18n.reason_text("paid_lapsed", {"plan": "paid"}, "zh-CN").startswith("您的付费会员")
    # The tier by its display name, the amount in whole currency units (it is rounded up to one).
    assert i18n.reason_text("tier_progress", {"amount": 120, "tier": "gold"}, "en") == (
        "Spend CN¥120 more to reach Gold."
    )
    assert (
        i18n.reason_text("tier_progress", {"amount": 1200, "tier": "gold"}, "zh-CN")
        == "再消费¥1,200即可升级为黄金会员。"
    )
    # The window the sentence states is the offer's (the count is taken over it: service.reasons).
    assert (
        i18n.reason_text("points_expiring", {"points": 3000, "days": 30}, "en")
        == "3,000 of your points expire within 30 days."
    )
    assert i18n.reason_text("points_expiring", {"points": 300, "days": 7}, "zh-CN") == (
        "您有300积分将在7天内过期。"
    )
    assert i18n.reason_text("points_expiring_today", {"points": 50}, "en") == (
        "50 of your points expire within a day."
    )
    assert i18n.reason_text("welcome_back", {}, "zh-CN") == "欢迎回来。"


def test_missing_entry_is_an_error_not_a_bare_code() -> None:
    with pytest.raises(i18n.MissingMessage):
        i18n.message("reason", "no_such_reason", "zh-CN")


def test_values_are_formatted_for_the_locale() -> None:
    assert i18n.money(12345.5, "zh-CN") == "¥12,345.50"
    assert i18n.money(12345.5, "en") == "CN¥12,345.50"
    assert i18n.number(1234567.25, "en") == "1,234,567.25"
    zh = i18n.reason_text("high_value", {"value": 30.0}, "zh-CN")
    en = i18n.reason_text("high_value", {"value": 30.0}, "en")
    assert zh == "高价值优惠，价值¥30.00。"  # noqa: RUF001 (a Chinese sentence uses the full-width comma)
    assert en == "A high-value offer, worth CN¥30.00."
    assert i18n.reason_text("category_interest", {"category": "baby"}, "zh-CN") == "您本周浏览过母婴商品。"
    assert i18n.reason_text("tier_benefit", {"tier": "gold"}, "zh-CN") == "您的黄金会员专属权益。"


@pytest.mark.parametrize(
    ("requested", "header", "expected"),
    [
        ("en", "zh-CN", "en"),  # the body wins
        (None, "zh-CN,zh;q=0.9,en;q=0.8", "zh-CN"),
        (None, "fr-FR, en-GB;q=0.7, zh;q=0.5", "en"),
        (None, "en;q=0.2, zh-Hans-CN;q=0.9", "zh-CN"),
        (None, "zh-TW", "zh-CN"),  # same language, another territory: still Chinese rather than English
        (None, "fr, de;q=0.5", "zh-CN"),  # nothing supported: the default
        (None, "zh;q=0, en", "en"),  # q=0 means "not this one"
        (None, "garbage;;;q=x", "zh-CN"),
        ("zh", None, "zh-CN"),
        (None, None, "zh-CN"),
    ],
)
def test_negotiation(requested: str | None, header: str | None, expected: str) -> None:
    assert i18n.negotiate(requested, header, default="zh-CN") == expected


@given(st.text(max_size=200))
def test_any_accept_language_header_negotiates_to_a_supported_locale(header: str) -> None:
    assert i18n.negotiate(None, header, default="en") in i18n.LOCALES


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running(create_app(settings)) as c:
        yield c


async def _texts(c: httpx.AsyncClient, body: dict[str, object], headers: dict[str, str]) -> list[str]:
    # explain (the "why not shown" sentences) needs the support scope
    r = await c.post(
        "/v1/recommend", json={"member_id": "i18n-m", "explain": True, **body}, headers={**headers, **SUPPORT}
    )
    assert r.status_code == 200, r.text
    out = r.json()
    texts = [reason["text"] for o in out["offers"] for reason in o["reasons"]]
    texts += [e["text"] for e in out["excluded"]]
    assert out["offers"] and out["excluded"]
    return texts


async def test_recommend_answers_in_the_requested_language(client: httpx.AsyncClient) -> None:
    zh_default = await _texts(client, {}, SF)  # settings.default_locale is zh-CN
    assert all(_CJK.search(t) for t in zh_default)
    en_header = await _texts(client, {}, {**SF, "Accept-Language": "en-US,en;q=0.9"})
    assert not any(_CJK.search(t) for t in en_header)
    zh_body = await _texts(client, {"locale": "zh-CN"}, {**SF, "Accept-Language": "en"})
    assert all(_CJK.search(t) for t in zh_body)


async def test_unsupported_locale_field_is_a_422_naming_it(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/recommend", json={"member_id": "m", "locale": "fr-FR"}, headers=SF)
    assert r.status_code == 422
    assert "locale" in r.text and "fr-FR" in r.text


def test_the_catalogue_covers_every_code_the_ranker_emits() -> None:
    from features.eligibility import RULES
    from service.reasons import REASON_CODES

    assert set(REASON_CODES) == set(i18n.REASON_PARAMS)
    assert set(RULES) <= set(i18n.EXCLUSION_CODES)
