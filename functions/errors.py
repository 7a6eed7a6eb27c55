"""The exceptions every layer of the package raises.

Each exception carries a stable machine-readable ``code`` (what callers branch on) and a
human sentence (``message``). Exceptions never carry event payloads, keys or tokens: their
messages name fields, not values. Mapping to HTTP status happens in exactly one place,
``functions.http``; nothing below it knows about status codes.

    EngagementError
    ├── ConfigError             configuration missing or malformed (cold start)
    ├── RequestError            the HTTP request itself is unusable
    │   ├── MalformedRequest        body is not JSON, or the envelope is wrong
    │   ├── MethodNotAllowed        wrong HTTP method
    │   ├── PayloadTooLarge         body or event count over a configured limit
    │   └── UnsupportedMediaType    content type or content encoding not accepted
    ├── AuthError               credentials missing or invalid
    │   └── NotServiceRole          valid credentials whose role is not service_role
    ├── TimestampError          a timestamp cannot be turned into UTC under the rules
    ├── RateLimited             the caller is over a rate limit
    └── StoreError              the database refused or failed (PostgREST-shaped fields)
        └── StoreUnavailable        transient: unreachable, timed out, 5xx; safe to retry
"""

from __future__ import annotations


class EngagementError(Exception):
    """Base of every error this package raises on purpose."""

    code: str = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ConfigError(EngagementError):
    """Configuration is missing or malformed; raised at cold start, never per request."""

    code = "config_error"


class RequestError(EngagementError):
    """The HTTP request cannot be processed as sent."""

    code = "bad_request"


class MalformedRequest(RequestError):
    code = "malformed_request"


class MethodNotAllowed(RequestError):
    code = "method_not_allowed"

    def __init__(self, message: str, *, allowed: tuple[str, ...]) -> None:
        super().__init__(message)
        self.allowed = allowed


class PayloadTooLarge(RequestError):
    code = "payload_too_large"


class UnsupportedMediaType(RequestError):
    code = "unsupported_media_type"


class AuthError(EngagementError):
    """Credentials are missing or invalid.

    ``code`` is one of: ``missing_credentials``, ``malformed``, ``expired``,
    ``not_yet_valid``, ``issued_in_future``, ``bad_signature``, ``unsupported_algorithm``,
    ``unknown_key``, ``jwks_unavailable``, ``invalid_secret_key``, ``not_configured``.
    """

    code = "unauthorized"


class NotServiceRole(AuthError):
    """The credentials are genuine but their role is not ``service_role``."""

    code = "not_service_role"

    def __init__(self, message: str, *, role: str | None) -> None:
        super().__init__(message)
        self.role = role


class TimestampError(EngagementError):
    """A timestamp cannot be converted to UTC.

    ``code`` is one of: ``invalid_timestamp``, ``missing_timezone``, ``unknown_timezone``,
    ``unusable_timezone`` (a real zone name that names no place's clock: ``Factory``),
    ``nonexistent_local_time`` (inside a DST gap), ``ambiguous_local_time`` (inside a DST
    overlap), ``timestamp_in_future``. ``field`` names the input at fault (``timestamp``,
    ``timezone`` or ``default_timezone``) so callers can build a JSON pointer.
    """

    code = "invalid_timestamp"

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None) -> None:
        super().__init__(message, code=code)
        self.field = field


class RateLimited(EngagementError):
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StoreError(EngagementError):
    """The store refused a write; fields follow PostgREST's error body."""

    code = "store_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: str | None = None,
        hint: str | None = None,
        stored: int = 0,
    ) -> None:
        super().__init__(message, code=code)
        self.details = details
        self.hint = hint
        self.stored = stored
        """How many events of the batch were already committed before the failure."""


class StoreUnavailable(StoreError):
    """The store could not be reached or timed out; the caller may retry after a pause."""

    code = "store_unavailable"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: str | None = None,
        hint: str | None = None,
        stored: int = 0,
        retry_after: int = 5,
    ) -> None:
        super().__init__(message, code=code, details=details, hint=hint, stored=stored)
        self.retry_after = retry_after
