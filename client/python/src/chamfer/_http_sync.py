"""The blocking client's transport: the standard library's ``http.client`` with a small keep-alive pool.

Why not ``httpx.Client``: per request, httpx spends several times the CPU of ``http.client`` (measured on this
project's 2-core machine, ``GET /healthz`` over loopback: 1.45 ms vs 0.28 ms of CPU), which is most of a search's
latency at concurrency 1. The async client keeps httpx.

Connections are kept alive and reused, one request at a time each, and are safe to share between threads (upload
runs several). A request that fails on a *reused* connection before any answer arrived (the server closed the idle
connection) is sent once more on a new connection: the server never saw it.
"""

from __future__ import annotations

import http.client
import threading
from urllib.parse import urlsplit

from . import errors
from ._io import Response, Wire, decode

_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


class SyncTransport:
    """Sends :class:`~chamfer._io.Wire` requests to one base URL (``http://host:port[/prefix]`` or ``https://``)."""

    def __init__(self, url: str, headers: dict[str, str], timeout: float | None, max_idle: int = 16) -> None:
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise errors.client_error(f"url must be http://host[:port] or https://host[:port], got {url!r}")
        self._https = u.scheme == "https"
        self._host = u.hostname
        self._port = u.port
        self._prefix = u.path.rstrip("/")
        self._headers = headers
        self._timeout = timeout
        self._max_idle = max_idle
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _connect(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        return cls(self._host, self._port, timeout=self._timeout)

    def _take(self) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self._connect(), False

    def _give(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self._max_idle:
                self._idle.append(conn)
                return
        conn.close()

    def send(self, w: Wire) -> Response:
        headers = {**self._headers, **w.headers}
        target = self._prefix + w.target
        while True:
            conn, reused = self._take()
            try:
                try:
                    conn.request(w.method, target, body=w.content, headers=headers)
                except _STALE:
                    # The server may have answered before reading the whole body (413: too large) and closed:
                    # its answer, if it is still there to read, says why.
                    pass
                resp = conn.getresponse()
                content = resp.read()
            except _STALE as e:
                conn.close()
                if reused:
                    continue  # the server had closed this idle connection: a new one
                raise errors.TransportError(f"connection failed: {e!r}", code="transport") from e
            except TimeoutError as e:
                conn.close()
                raise errors.TransportError(f"no answer within {self._timeout} s", code="timeout") from e
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                raise errors.TransportError(f"request failed: {e!r}", code="transport") from e
            answer_headers = {k.lower(): v for k, v in resp.getheaders()}
            if resp.will_close:
                conn.close()
            else:
                self._give(conn)
            return decode(resp.status, answer_headers, content)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for c in idle:
            c.close()
