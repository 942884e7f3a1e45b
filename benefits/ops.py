"""Operations helpers behind CLI verbs (kept out of ``benefits.cli`` so that it stays a thin layer)."""

from __future__ import annotations

from features.offers import Offer
from infra.redis_client import open_client
from infra.settings import Settings
from service.catalog import CatalogStore, load_seed


async def catalog_offers(settings: Settings, now: float) -> list[Offer]:
    """The live catalog from Redis; the seed (file or demo catalog) when Redis has none (data loss)."""
    if settings.redis_url is not None:
        client = await open_client(settings.redis_url, cluster=settings.redis_cluster, timeout_ms=5000)
        try:
            _, offers = await CatalogStore(client, settings.layout).read_all()
        finally:
            await client.aclose()
        if offers:
            return offers
    return load_seed(settings.catalog_seed_path, now)
