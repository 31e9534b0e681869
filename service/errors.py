"""The relay's exceptions.

    RelayError                 code, HTTP status, message: what API clients see
    ├── InvalidInput           400/422: the request itself is wrong
    ├── Unauthorized           401: token, signature or admin bearer refused
    ├── Forbidden              403: source address not allowed
    ├── NotFound               404
    ├── RequestTimeout         408: the client took too long to send its body (already answered)
    ├── Conflict               409
    ├── PayloadTooLarge        413
    ├── StorageUnavailable     503: the store could not commit; the caller should retry
    └── ServerBusy             503: too many request bodies held at once; retry shortly

Every error answers as ``{"error": {"code": ..., "message": ...}}``.
"""

from __future__ import annotations


class RelayError(Exception):
    """Base of every error the relay reports to a client."""

    status_code = 400
    code = "bad_request"
    #: Seconds to send as ``Retry-After`` (429, 503), or None.
    retry_after: int | None = None
    #: Answered before the request's body was read: the connection is closed after the answer
    #: (reading and discarding the rest would let the client hold it).
    closes_connection = False

    def __init__(self, message: str | None = None, *, code: str | None = None) -> None:
        self.message = message or (self.__doc__ or self.code).strip()
        if code is not None:
            self.code = code
        super().__init__(self.message)

    def as_json(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


class InvalidInput(RelayError):
    """The request is malformed."""

    status_code = 400
    code = "invalid_request"


class InvalidPayload(InvalidInput):
    """The callback body is JSON but not a payload this provider sends."""

    status_code = 422
    code = "invalid_payload"


class Unauthorized(RelayError):
    """Authentication failed."""

    status_code = 401
    code = "unauthorized"


class Forbidden(RelayError):
    """The request's source is not allowed."""

    status_code = 403
    code = "forbidden"


class NotFound(RelayError):
    """No such resource."""

    status_code = 404
    code = "not_found"


class Conflict(RelayError):
    """The resource is in a state that does not allow this."""

    status_code = 409
    code = "conflict"


class PayloadTooLarge(RelayError):
    """The body is larger than RELAY_MAX_BODY_BYTES."""

    status_code = 413
    code = "payload_too_large"
    closes_connection = True


class RequestTimeout(RelayError):
    """The request body did not arrive within RELAY_BODY_TIMEOUT."""

    status_code = 408
    code = "request_timeout"
    closes_connection = True


class StorageUnavailable(RelayError):
    """The store could not commit; nothing was accepted. Retry later."""

    status_code = 503
    code = "storage_unavailable"


class InternalError(RelayError):
    """The relay failed; nothing was accepted."""

    status_code = 500
    code = "internal_error"


class ServerBusy(RelayError):
    """The relay holds as many request bodies as it may (RELAY_BODY_MEMORY); retry shortly."""

    status_code = 503
    code = "server_busy"
    closes_connection = True
    retry_after = 1
