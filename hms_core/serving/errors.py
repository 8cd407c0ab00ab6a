"""Errors of the prediction service: each carries the HTTP status it maps to and a message that names the problem.

The app turns every :class:`ServingError` into ``{"error": {"status", "code", "message", "field"}}`` with that
status; anything else becomes a 500 with an error id (the traceback goes to the server log, never to the client).
``hms predict`` prints the same messages.
"""

from __future__ import annotations

__all__ = [
    "BadInput",
    "Overloaded",
    "PayloadTooLarge",
    "ServingError",
    "Unauthorized",
    "Unprocessable",
    "UnsupportedType",
]


class ServingError(Exception):
    """A request the service cannot answer; ``status`` is the HTTP status, ``field`` the part of the request."""

    status: int = 400
    code: str = "bad_request"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict[str, object]:
        return {"status": self.status, "code": self.code, "message": self.message, "field": self.field}


class BadInput(ServingError):
    """Malformed or truncated file, JSON that does not parse, a missing upload field (400)."""


class Unauthorized(ServingError):
    status = 401
    code = "unauthorized"


class PayloadTooLarge(ServingError):
    status = 413
    code = "payload_too_large"


class UnsupportedType(ServingError):
    status = 415
    code = "unsupported_media_type"


class Unprocessable(ServingError):
    """A readable recording the package cannot score: channels, sampling rate, length, NaN or inf (422)."""

    status = 422
    code = "unprocessable_recording"


class Overloaded(ServingError):
    """Every prediction slot is busy (503); the client should retry later."""

    status = 503
    code = "overloaded"
