"""Signed member tokens: bind a storefront request to the signed-in member it is made for.

The storefront key is one shared secret held by the storefront's servers; by itself it lets its holder
ask for (and act as) any member id. With ``member_token_secret`` set, the site that signs members in
(it shares the secret) issues a short-lived HS256 JWT per member: ``{"sub": MEMBER_ID, "exp": ...}``,
sent in ``X-Member-Token``. A request whose token is invalid, expired or for another member is a 403;
with ``member_tokens_required`` a request without one is a 403 too. PyJWT does the verification
(algorithm pinned to HS256, ``exp`` and ``sub`` required).
"""

from __future__ import annotations

import jwt
from pydantic import SecretStr

from service.errors import Forbidden

HEADER = "X-Member-Token"
ALGORITHM = "HS256"


class MemberTokens:
    def __init__(self, secret: SecretStr | None, required: bool) -> None:
        self._secret = secret.get_secret_value() if secret is not None else None
        self.required = required and self._secret is not None

    @property
    def enabled(self) -> bool:
        return self._secret is not None

    def check(self, token: str | None, member_id: str) -> None:
        """Raise 403 unless ``token`` is acceptable for a request about ``member_id``."""
        if self._secret is None:
            return
        if not token:
            if self.required:
                raise Forbidden(f"member tokens are required: send a signed token for the member in {HEADER}")
            return
        try:
            claims = jwt.decode(
                token, self._secret, algorithms=[ALGORITHM], options={"require": ["exp", "sub"]}
            )
        except jwt.ExpiredSignatureError:
            raise Forbidden(f"{HEADER} has expired") from None
        except jwt.InvalidTokenError as exc:
            raise Forbidden(f"{HEADER} is not a valid member token ({type(exc).__name__})") from None
        if claims.get("sub") != member_id:
            raise Forbidden(f"{HEADER} is for another member than the body's member_id")

    def issue(self, member_id: str, exp: int) -> str:
        """A token for ``member_id`` expiring at ``exp`` (Unix seconds): for the signing site and tests."""
        if self._secret is None:
            raise ValueError("no member token secret configured")
        return jwt.encode({"sub": member_id, "exp": exp}, self._secret, algorithm=ALGORITHM)
