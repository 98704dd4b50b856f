"""Exceptions: every failed request raises a :class:`ChamferError` carrying the server's ``code``, ``message`` and
HTTP ``status``; the common codes get their own subclasses so callers can ``except NotFound:``.

The server answers errors as ``{"code": ..., "message": ...}``; its table (README "Errors") maps each code to one
status. :func:`error_from_response` picks the subclass by ``code`` first and by status when the code is unknown
(a newer server), so a new code never turns into a bare exception.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ChamferError(Exception):
    """Base class of every error this package raises.

    Attributes:
        code: the server's machine-readable code (``"dimension_mismatch"``, ...), or a ``client_...`` code for a
            problem found before anything was sent.
        message: the server's (or the client's) explanation.
        status: the HTTP status, ``None`` when no response was received.
        retry_after: seconds the server asked to wait before retrying (``Retry-After``), if it said.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "unknown",
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f"HTTP {self.status} " if self.status is not None else ""
        return f"{where}{self.code}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, status={self.status!r}, message={self.message!r})"


class InvalidArgument(ChamferError, ValueError):
    """400: a malformed body or a value the server refuses (wrong dimension, NaN, empty document, bad k, ...).

    Also raised before sending for inputs that cannot be encoded at all (``code`` starts with ``client_``)."""


class DimensionMismatch(InvalidArgument):
    """400 ``dimension_mismatch``: token vectors of another dimension than the collection's."""


class Unauthenticated(ChamferError):
    """401: missing or wrong API key."""


class NotFound(ChamferError, LookupError):
    """404: an unknown document (``not_found``) or route."""


class CollectionNotFound(NotFound):
    """404 ``collection_not_found``."""


class AlreadyExists(ChamferError):
    """409 ``already_exists``: the collection name is taken."""


class TooLarge(ChamferError):
    """413: too many tokens, or a request / batch / metadata / body over a server limit."""


class Overloaded(ChamferError):
    """429 ``overloaded``: writers outrun flushing; retry after :attr:`retry_after` seconds."""


class Unavailable(ChamferError):
    """503: shutting down, a collection still opening or damaged, or work cancelled."""


class DeadlineExceeded(ChamferError):
    """504 ``deadline_exceeded``: the request's deadline passed and its work was stopped."""


class StorageFull(ChamferError):
    """507 ``storage_full``: the server's disk is full."""


class ServerError(ChamferError):
    """500 and other server-side failures (``io``, ``corrupt``, ``internal``, ...)."""


class TransportError(ChamferError):
    """No HTTP answer: connection refused or reset, or the client's own timeout (``code`` ``"transport"`` or
    ``"timeout"``, ``status`` None)."""


_BY_CODE: dict[str, type[ChamferError]] = {
    "malformed": InvalidArgument,
    "invalid_argument": InvalidArgument,
    "dimension_mismatch": DimensionMismatch,
    "non_finite": InvalidArgument,
    "empty": InvalidArgument,
    "invalid_parameter": InvalidArgument,
    "duplicate_id": InvalidArgument,
    "invalid_config": InvalidArgument,
    "out_of_range": InvalidArgument,
    "unauthenticated": Unauthenticated,
    "not_found": NotFound,
    "collection_not_found": CollectionNotFound,
    "already_exists": AlreadyExists,
    "too_many_tokens": TooLarge,
    "too_large": TooLarge,
    "overloaded": Overloaded,
    "unavailable": Unavailable,
    "collection_unavailable": Unavailable,
    "cancelled": Unavailable,
    "deadline_exceeded": DeadlineExceeded,
    "storage_full": StorageFull,
    "io": ServerError,
    "corrupt": ServerError,
    "unsupported_version": ServerError,
    "incompatible": ServerError,
    "dataset": ServerError,
    "internal": ServerError,
}

_BY_STATUS: dict[int, type[ChamferError]] = {
    400: InvalidArgument,
    401: Unauthenticated,
    404: NotFound,
    409: AlreadyExists,
    413: TooLarge,
    429: Overloaded,
    503: Unavailable,
    504: DeadlineExceeded,
    507: StorageFull,
}


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: not sent by chamfer; fall back to the client's backoff


def error_from_response(status: int, headers: Mapping[str, str], body: Any, text: str = "") -> ChamferError:
    """The exception for a non-2xx answer (``body``: the parsed JSON, or None when the body was not JSON)."""
    if isinstance(body, dict) and isinstance(body.get("code"), str):
        code = body["code"]
        message = str(body.get("message", ""))
    else:
        code = f"http_{status}"
        message = text.strip()[:500] or f"HTTP {status} without an error body"
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status) or (ServerError if status >= 500 else ChamferError)
    return cls(message, code=code, status=status, retry_after=_retry_after(headers))


def client_error(message: str, code: str = "client_invalid_argument") -> InvalidArgument:
    """An :class:`InvalidArgument` for an input rejected before sending."""
    return InvalidArgument(message, code=code)
