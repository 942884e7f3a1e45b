"""API keys with scopes.

``storefront`` keys may call recommend and feedback; ``admin`` keys may call the catalog, model and
member routes. Scopes do not nest: an admin key on ``/v1/feedback`` is a 403, so a leaked storefront
key can never change the catalog and operations tooling never impersonates traffic by accident.
``explain: true`` on recommend (why each offer is or is not shown: it reveals the member's tier, recent
browsing and birthday month) is refused to storefront keys; it needs the ``support`` scope (a key for
customer-service tooling that can call nothing else) or ``admin``, and those keys may call recommend
only with ``explain: true`` (:func:`check_explain`).

Keys are compared with :func:`hmac.compare_digest` against every configured key (no early exit), so
response time does not reveal how much of a key matched or which list it is in.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from typing import Literal

from pydantic import SecretStr

from service.errors import Forbidden, Unauthorized

Scope = Literal["storefront", "admin", "support"]

#: Scopes that may call ``POST /v1/recommend`` (the explain rule narrows it, see :func:`check_explain`).
RECOMMEND_SCOPES: tuple[Scope, ...] = ("storefront", "support", "admin")


def check_explain(scope: Scope, explain: bool) -> None:
    """403 naming the reason when the key's scope does not match the request's ``explain``."""
    if explain and scope == "storefront":
        raise Forbidden(
            "explain: true reveals the member's profile and needs the support or admin scope; "
            "a storefront key may not ask for it"
        )
    if not explain and scope != "storefront":
        raise Forbidden(f"a key with scope {scope!r} may call recommend only with explain: true")


class KeyRing:
    def __init__(
        self, storefront: Iterable[SecretStr], admin: Iterable[SecretStr], support: Iterable[SecretStr] = ()
    ) -> None:
        self._keys: list[tuple[bytes, Scope]] = [
            (k.get_secret_value().encode(), "storefront") for k in storefront
        ]
        self._keys += [(k.get_secret_value().encode(), "admin") for k in admin]
        self._keys += [(k.get_secret_value().encode(), "support") for k in support]

    def scope_of(self, presented: str) -> Scope | None:
        candidate = presented.encode()
        found: Scope | None = None
        for key, scope in self._keys:
            if hmac.compare_digest(key, candidate):
                found = scope
        return found

    def require(self, presented: str | None, scope: Scope) -> Scope:
        """Return the key's scope when it grants ``scope``; raise 401 / 403 otherwise."""
        return self.require_any(presented, (scope,))

    def require_any(self, presented: str | None, scopes: tuple[Scope, ...]) -> Scope:
        """Return the key's scope when it is one of ``scopes``; raise 401 / 403 otherwise."""
        if not presented:
            raise Unauthorized("missing API key: send it in the X-API-Key header")
        have = self.scope_of(presented)
        if have is None:
            raise Unauthorized("invalid API key")
        if have not in scopes:
            need = " or ".join(repr(s) for s in scopes)
            raise Forbidden(f"this API key has scope {have!r}; the route needs {need}")
        return have
