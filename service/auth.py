"""API keys with scopes.

``storefront`` keys may call recommend and feedback; ``admin`` keys may call the catalog, model and
member routes. Scopes do not nest: an admin key on ``/v1/recommend`` is a 403, so a leaked storefront
key can never change the catalog and operations tooling never impersonates traffic by accident.

Keys are compared with :func:`hmac.compare_digest` against every configured key (no early exit), so
response time does not reveal how much of a key matched or which list it is in.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from typing import Literal

from pydantic import SecretStr

from service.errors import Forbidden, Unauthorized

Scope = Literal["storefront", "admin"]


class KeyRing:
    def __init__(self, storefront: Iterable[SecretStr], admin: Iterable[SecretStr]) -> None:
        self._keys: list[tuple[bytes, Scope]] = [
            (k.get_secret_value().encode(), "storefront") for k in storefront
        ]
        self._keys += [(k.get_secret_value().encode(), "admin") for k in admin]

    def scope_of(self, presented: str) -> Scope | None:
        candidate = presented.encode()
        found: Scope | None = None
        for key, scope in self._keys:
            if hmac.compare_digest(key, candidate):
                found = scope
        return found

    def require(self, presented: str | None, scope: Scope) -> Scope:
        """Return the key's scope when it grants ``scope``; raise 401 / 403 otherwise."""
        if not presented:
            raise Unauthorized("missing API key: send it in the X-API-Key header")
        have = self.scope_of(presented)
        if have is None:
            raise Unauthorized("invalid API key")
        if have != scope:
            raise Forbidden(f"this API key has scope {have!r}; the route needs {scope!r}")
        return have
