"""The service's exception tree. Domain code raises these; ``service.app`` maps them to HTTP in one place.

::

    ServiceError                 500 internal        base; never raised directly on a valid request
    ├── Unauthorized             401 unauthorized    missing or unknown API key
    ├── Forbidden                403 forbidden       key valid but lacks the route's scope
    ├── NotFound                 404 not_found       offer / model version / member unknown
    ├── Conflict                 409 conflict        offer exists already
    │   └── ClaimRefused         409 claim_refused   a claim broke a rule: ``reason`` (a code of
    │                                                features.eligibility.RULES) and its sentence
    ├── Invalid                  422 invalid         semantically invalid input (offer id mismatch,
    │                                                model refused on promote)
    ├── PayloadTooLarge          413 too_large       body over settings.max_body_bytes
    └── Unavailable              503 unavailable     a dependency is down (broker) or overloaded
        └── NotPublished         503 unavailable     the event was certainly not sent (no broker,
                                                     failing fast, backlog full): safe to undo

Model loading has its own :class:`ModelRefused` (not HTTP-shaped: the poller logs and keeps the old model;
the promote route wraps it in :class:`Invalid`).
"""

from __future__ import annotations

import orjson


class ServiceError(Exception):
    status: int = 500
    code: str = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> dict[str, object]:
        """The JSON error body (``error``, ``message`` and any fields a subclass adds)."""
        return {"error": self.code, "message": self.message}


def service_error_body(exc: ServiceError) -> bytes:
    """The one error shape: ``{"error": code, "message": ...}`` (plus a subclass's fields, e.g. a claim
    refusal's ``reason``)."""
    return orjson.dumps(exc.body())


def store_error_body() -> bytes:
    """A store is down (503, with ``Retry-After: 1``): a dependency failure, not a bug."""
    return orjson.dumps({"error": "unavailable", "message": "a store is unreachable; retry"})


class Unauthorized(ServiceError):
    status = 401
    code = "unauthorized"


class Forbidden(ServiceError):
    status = 403
    code = "forbidden"


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class Conflict(ServiceError):
    status = 409
    code = "conflict"


class ClaimRefused(Conflict):
    """A claim refused by a rule; the body names the rule's code and sentence."""

    code = "claim_refused"

    def __init__(self, reason: str, message: str, offer_id: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.offer_id = offer_id

    def body(self) -> dict[str, object]:
        return {"error": self.code, "reason": self.reason, "message": self.message, "offer_id": self.offer_id}


class Invalid(ServiceError):
    status = 422
    code = "invalid"


class PayloadTooLarge(ServiceError):
    status = 413
    code = "too_large"


class Unavailable(ServiceError):
    status = 503
    code = "unavailable"


class NotPublished(Unavailable):
    """The event was certainly not handed to the broker, so whatever it stood for may be undone."""


class ModelRefused(Exception):
    """A model file the service will not serve. ``reason`` is a short stable label (metrics, API)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
