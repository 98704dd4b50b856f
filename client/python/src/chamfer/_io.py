"""The seam between what the API does and how bytes move (a "sans-I/O" design).

Every operation of the API is written once, in :mod:`chamfer._ops`, as a generator that *yields* what it needs
done and receives the outcome:

* a :class:`Request` -> the driver sends it and sends back a :class:`Response` (or throws a
  :class:`~chamfer.errors.TransportError` into the generator when no answer came);
* a :class:`Sleep` -> the driver waits (``time.sleep`` or ``asyncio.sleep``);
* a :class:`Gather` -> the driver runs several operations at once (threads or tasks).

The generator's return value is the operation's result. :class:`chamfer.Client` drives operations with blocking
httpx calls and :class:`chamfer.AsyncClient` with awaited ones; neither holds any request-building, parsing,
retry or batching logic of its own. This module also holds the encoding of requests and the decoding of answers
that both transports share.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlencode

from . import errors

T = TypeVar("T")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: Any = None
    params: Mapping[str, str] | None = None
    timeout_ms: int | None = None


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: Any
    text: str


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Gather:
    """Run ``ops`` (consumed lazily), at most ``parallel`` at a time; ``on_result`` gets each result as it
    completes (in the driver's thread or task, one call at a time). The first failure stops starting new ones
    and is raised into the gathering operation once the running ones end."""

    ops: Iterable[Generator[Any, Any, Any]]
    parallel: int
    on_result: Callable[[Any], None]


Op = Generator[Any, Any, T]


def call(req: Request, ok: tuple[int, ...] = ()) -> Generator[Any, Any, Any]:
    """Sends ``req``; returns the parsed JSON body of a 2xx answer (or of a status in ``ok``), raises the
    mapped :class:`~chamfer.errors.ChamferError` otherwise."""
    resp: Response = yield req
    if 200 <= resp.status < 300 or resp.status in ok:
        return resp.body
    raise errors.error_from_response(resp.status, resp.headers, resp.body, resp.text)


# ----- bytes, shared by both transports ------------------------------------------------------------------------


@dataclass(frozen=True)
class Wire:
    """A request as bytes: method, target (path and query), headers, body."""

    method: str
    target: str
    headers: dict[str, str]
    content: bytes | None


def encode(req: Request) -> Wire:
    """The bytes both transports send for ``req``."""
    headers: dict[str, str] = {}
    content = None
    if req.body is not None:
        try:
            content = json.dumps(req.body, separators=(",", ":"), allow_nan=False).encode()
        except ValueError as e:  # JSON has no NaN or infinity: refuse as the server would
            raise errors.InvalidArgument(f"a value is not finite (NaN or infinity): {e}", code="non_finite") from e
        headers["content-type"] = "application/json"
    if req.timeout_ms is not None:
        headers["x-timeout-ms"] = str(int(req.timeout_ms))
    target = req.path + ("?" + urlencode(dict(req.params)) if req.params else "")
    return Wire(req.method, target, headers, content)


def decode(status: int, headers: Mapping[str, str], content: bytes) -> Response:
    """A :class:`Response` from an answer's status, headers (``get`` by lower-case name) and body bytes."""
    body = None
    if content and "json" in headers.get("content-type", ""):
        try:
            body = json.loads(content)
        except ValueError:
            body = None
    text = "" if body is not None else content.decode("utf-8", "replace")
    return Response(status=status, headers=headers, body=body, text=text)


def client_headers(api_key: str | None) -> dict[str, str]:
    headers = {"user-agent": "chamfer-client-python"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    return headers
