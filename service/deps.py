"""Typed dependencies: the lifespan builds one :class:`Resources`; routes receive pieces of it.

Every dependency is ``async def``: FastAPI sends a plain ``def`` dependency to AnyIO's thread pool, a
thread hop per dependency per request (9 % of a recommend's CPU in the issue's profile) for what is an
attribute read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from infra.redis_client import AnyRedis
from infra.registry import Registry
from infra.settings import Settings
from service.auth import RECOMMEND_SCOPES, KeyRing, Scope
from service.catalog import CatalogHolder, CatalogStore
from service.epoch import EpochWatch
from service.feedback import FeedbackService
from service.member_tokens import HEADER as MEMBER_TOKEN_HEADER
from service.member_tokens import MemberTokens
from service.metrics import Metrics
from service.middleware import InFlight
from service.model import ModelHolder
from service.recommend import Recommender


@dataclass
class Resources:
    settings: Settings
    redis: AnyRedis
    catalog: CatalogHolder
    catalog_store: CatalogStore
    models: ModelHolder
    registry: Registry
    recommender: Recommender
    feedback: FeedbackService
    metrics: Metrics
    keys: KeyRing
    #: Requests holding an in-flight slot (service.middleware), reported by /readyz.
    in_flight: InFlight | None = None
    #: The store epoch check (service.epoch): /readyz reports state_lost.
    epoch: EpochWatch | None = None
    #: Signed member tokens (service.member_tokens); None or without a secret: not checked.
    tokens: MemberTokens | None = None


async def _resources(request: Request) -> Resources:
    res: Resources = request.app.state.resources
    return res


ResourcesDep = Annotated[Resources, Depends(_resources)]


async def _recommender(res: ResourcesDep) -> Recommender:
    return res.recommender


async def _feedback(res: ResourcesDep) -> FeedbackService:
    return res.feedback


RecommenderDep = Annotated[Recommender, Depends(_recommender)]
FeedbackDep = Annotated[FeedbackService, Depends(_feedback)]

_api_key = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="API key (scope storefront, support or admin)"
)
_member_token = APIKeyHeader(
    name=MEMBER_TOKEN_HEADER,
    auto_error=False,
    description="signed member token (HS256 JWT, sub = member_id) when member tokens are on",
)
MemberTokenDep = Annotated[str | None, Security(_member_token)]


def check_member_token(res: Resources, token: str | None, member_id: str) -> None:
    """403 unless the request's member token allows acting for ``member_id`` (no-op when tokens are off)."""
    if res.tokens is not None:
        res.tokens.check(token, member_id)


async def require_recommend_scope(res: ResourcesDep, key: Annotated[str | None, Security(_api_key)]) -> Scope:
    return res.keys.require_any(key, RECOMMEND_SCOPES)


async def require_storefront(res: ResourcesDep, key: Annotated[str | None, Security(_api_key)]) -> None:
    res.keys.require(key, "storefront")


async def require_admin(res: ResourcesDep, key: Annotated[str | None, Security(_api_key)]) -> None:
    res.keys.require(key, "admin")
