"""HTTP request and response models. Inputs forbid unknown fields so a typo is a 422 naming the field."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WrapValidator, field_validator

from features.offers import Offer
from service.feedback import FeedbackType
from service.i18n import LOCALE_TAGS, is_locale_tag

MemberId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:@-]+$")]
OfferIdStr = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
RequestId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:@-]+$")]
#: A context value: any short label. Which values are known is the feature specification's and the
#: taxonomy's business (an unknown one ranks as "other", counted and logged once, never a 422); only
#: malformed values (wrong type, too long, odd characters) are refused here.
ContextValue = Annotated[str, Field(min_length=1, max_length=48, pattern=r"^[A-Za-z0-9_.:&' -]+$")]
EventId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:@-]+$")]


def _integral(v: object) -> object:
    # JSON has one number type: 6.0 is the integer 6 (JSON Schema's "integer" admits it). Strings,
    # booleans and fractions are still refused by the strict int check.
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


#: The integer fields of strict bodies: a JSON integer, or an integral number written with a fraction.
#: (The validator sits after the bounds so the schema keeps them as minimum / maximum.)
Limit = Annotated[int, Field(ge=1, le=50), BeforeValidator(_integral)]
Position = Annotated[int, Field(ge=0, le=1000), BeforeValidator(_integral)]
#: A request's language: one of the tags the service maps to a supported locale (service.i18n).
LocaleTag = Annotated[str, Field(min_length=2, max_length=35, json_schema_extra={"enum": list(LOCALE_TAGS)})]
#: Idempotency-Key header values: the same alphabet as ids (they end up inside Redis keys).
IDEMPOTENCY_KEY_PATTERN = r"^[A-Za-z0-9_.:@-]{1,64}$"


class RecommendContext(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    page_type: ContextValue | None = None
    category: ContextValue | None = None
    device: ContextValue | None = None
    channel: ContextValue | None = None


class RecommendRequest(BaseModel):
    # strict: no coercion ("5" or true for limit, "yes" or 0 for explain are 422s, as in service.body).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    member_id: MemberId
    context: RecommendContext = RecommendContext()
    #: Offers to return; the service default (settings.default_limit) when omitted.
    limit: Limit | None = None
    #: Also return the offers that were not eligible, each with its reason ("why not shown").
    explain: bool = False
    #: Language of the sentences (BCP 47: "zh-CN", "en"; "zh" and "en-GB" match too: the schema lists
    #: every accepted tag). Wins over the Accept-Language header; the service default when neither names
    #: a supported locale.
    locale: LocaleTag | None = None

    @field_validator("locale")
    @classmethod
    def _supported_locale(cls, v: str | None) -> str | None:
        if v is not None and not is_locale_tag(v):
            raise ValueError(f"unsupported locale {v!r}; one of: {', '.join(LOCALE_TAGS)}")
        return v


class Reason(BaseModel):
    code: str
    text: str


class RankedOfferOut(BaseModel):
    offer_id: str
    kind: Literal["coupon", "benefit", "consult"]
    subtype: str
    title: str
    category: str | None
    value: float
    score: float
    position: int
    propensity: float
    reasons: list[Reason]
    #: Minimum basket of a threshold coupon, in currency (0: none).
    threshold: float = 0.0
    #: When the offer stops being usable (Unix seconds, UTC): eligibility window or campaign end.
    valid_until_ts: float | None = None
    display_text: str | None = None
    image_key: str | None = None


class Excluded(BaseModel):
    offer_id: str
    reason: str
    text: str


class RecommendResponse(BaseModel):
    """Documentation of the recommend answer (the route returns the same shape as orjson bytes)."""

    request_id: str
    #: The member's experiment arm (sticky); null when no experiment applies. Send it back with feedback.
    arm: str | None = None
    model_version: str | None
    mode: Literal["personalised", "cold_start", "non_personalised", "fallback"]
    degraded: bool
    degraded_cause: str | None
    catalog_version: int | None
    candidates: int
    eligible: int
    offers: list[RankedOfferOut]
    excluded: list[Excluded] | None = None


class FeedbackRequest(BaseModel):
    # strict: no coercion ("3" for position, "1.7e9" for event_ts are 422s naming the field).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    type: FeedbackType
    member_id: MemberId
    offer_id: OfferIdStr
    request_id: RequestId
    position: Position = 0
    propensity: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    #: The ``arm`` of the recommend answer this is about; when omitted, the member's current arm.
    arm: Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$")] | None = None
    #: When it happened (Unix seconds, UTC); the server's clock when omitted.
    event_ts: Annotated[float, Field(ge=946684800.0, le=4102444800.0)] | None = None
    #: The event's id, unique per member (the producer's idempotency key: a retry with the same id returns
    #: the first outcome and changes nothing). Alternatively send an ``Idempotency-Key`` header.
    event_id: EventId | None = None
    #: Where a claim is made; the offer's channel / page rules apply only when given.
    context: RecommendContext | None = None
    #: Language of a claim refusal's sentence, as for recommend: this field, else Accept-Language, else
    #: the service default.
    locale: LocaleTag | None = None

    @field_validator("locale")
    @classmethod
    def _supported_locale(cls, v: str | None) -> str | None:
        if v is not None and not is_locale_tag(v):
            raise ValueError(f"unsupported locale {v!r}; one of: {', '.join(LOCALE_TAGS)}")
        return v


class FeedbackResponse(BaseModel):
    status: str
    event_id: str
    event_type: str
    inventory_left: int | None = None
    budget_left: float | None = None


def _integral_deep(v: Any) -> Any:
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, dict):
        return {k: _integral_deep(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_integral_deep(x) for x in v]
    return v


def _strict_offer(v: Any, handler: Any) -> Offer:
    # The catalogue model is lax on purpose (CSV cells are strings); a JSON body is not: 0 is not false,
    # "5" is not 5. Integral numbers are integers (JSON has one number type; 5 is still a valid float).
    if isinstance(v, dict):
        return Offer.model_validate(_integral_deep(v), strict=True)
    out: Offer = handler(v)
    return out


#: An offer in a JSON body of the admin API: the catalogue's model, validated strictly.
OfferIn = Annotated[Offer, WrapValidator(_strict_offer)]


class ErrorResponse(BaseModel):
    error: str
    message: str
    fields: list[dict[str, Any]] | None = None


class OfferList(BaseModel):
    catalog_version: int
    offers: list[Offer]


__all__ = ["Offer", "OfferIn"]
