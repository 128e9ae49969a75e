"""The blocking transport: HTTP/1.1 over http.client, with a small pool of
kept-alive connections, per-call timeouts and retries of idempotent calls
(and of calls sent with an Idempotency-Key)."""

from __future__ import annotations

import http.client
import select
import threading
import time
from typing import Any, Dict, Iterator, List, Tuple, TypeVar

from . import _config, errors
from ._config import Request, Settings

T = TypeVar("T")

_CHUNK = 64 << 10


def _ssl_context() -> Any:
    import ssl

    return ssl.create_default_context()


def _dead(conn: http.client.HTTPConnection) -> bool:
    """Whether a pooled connection was closed by the server while idle: a
    readable idle socket is at EOF (or holds bytes nobody asked for)."""
    sock = conn.sock
    if sock is None:
        return True
    try:
        r, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(r)


class Transport:
    """Sends requests to one server. Safe for use from many threads: each
    call takes a connection from the pool and gives it back when its answer
    has been read."""

    def __init__(self, s: Settings, max_idle: int = 16) -> None:
        self.settings = s
        self._idle: List[http.client.HTTPConnection] = []
        self._max_idle = max_idle
        self._lock = threading.Lock()
        self._closed = False
        self._ssl = _ssl_context() if self.settings.https else None

    # -- connections

    def _get(self) -> Tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._closed:
                raise errors.NullspaceError("the client is closed", code="client_closed")
            while self._idle:
                c = self._idle.pop()
                if not _dead(c):
                    return c, True
                c.close()
        if self.settings.https:
            c: http.client.HTTPConnection = http.client.HTTPSConnection(
                self.settings.host, self.settings.port, context=self._ssl, blocksize=_CHUNK
            )
        else:
            c = http.client.HTTPConnection(self.settings.host, self.settings.port, blocksize=_CHUNK)
        return c, False

    def _put(self, c: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self._max_idle:
                self._idle.append(c)
                return
        c.close()

    def close(self) -> None:
        """Closes every idle connection; calls after this fail."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for c in idle:
            c.close()

    # -- requests

    def _open(self, r: Request[Any]) -> Tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Sends r once and returns the connection and the answer's head.
        Raises a NullspaceError with ``_sent`` telling whether the request
        may have reached the server."""
        body, headers = r.payload()
        headers.update(self.settings.headers())
        c, reused = self._get()
        sent = reused
        try:
            if c.sock is None:
                c.timeout = self.settings.connect_timeout(r)
                c.connect()
            sent = True
            assert c.sock is not None
            c.sock.settimeout(self.settings.read_timeout(r))
            c.putrequest(r.method, self.settings.prefix + r.url_path(), skip_accept_encoding=True)
            for k, v in headers.items():
                c.putheader(k, v)
            try:
                if body is None or isinstance(body, (bytes, bytearray, memoryview)):
                    # Head and body in one segment: a body sent on its own
                    # waits for the server's delayed ACK of the head.
                    c.endheaders(message_body=body)
                else:
                    c.endheaders()
                    self._send_body(c, body, chunked=headers.get("Transfer-Encoding") == "chunked")
            except OSError:
                # The server may have answered before reading the whole
                # body (a refusal: too large, unknown machine) and closed:
                # its answer says why, not the broken pipe.
                return c, c.getresponse()
            resp = c.getresponse()
            return c, resp
        except errors.NullspaceError:
            c.close()
            raise
        except (OSError, http.client.HTTPException) as e:
            c.close()
            err = _config.connection_error(r, e)
            err._sent = sent  # type: ignore[attr-defined]
            raise err from e

    @staticmethod
    def _send_body(c: http.client.HTTPConnection, body: Any, chunked: bool) -> None:
        if isinstance(body, (bytes, bytearray, memoryview)):
            c.send(body)
            return
        chunks: Iterator[bytes]
        if hasattr(body, "read"):
            chunks = iter(lambda: body.read(_CHUNK), b"")
        else:
            chunks = iter(body)
        for chunk in chunks:
            if isinstance(chunk, str):
                chunk = chunk.encode()
            if not chunk:
                continue
            if chunked:
                c.send(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            else:
                c.send(chunk)
        if chunked:
            c.send(b"0\r\n\r\n")

    def _attempts(self, r: Request[Any], attempt: int = 0) -> Tuple[http.client.HTTPConnection, http.client.HTTPResponse, int]:
        """Sends r, retrying as the policy allows, until a 2xx answer's head
        arrives (returned with the number of the attempt that got it);
        raises the error of the last attempt otherwise."""
        while True:
            try:
                c, resp = self._open(r)
            except errors.NullspaceError as e:
                if not _config.should_retry(r, e, attempt, self.settings.max_retries, getattr(e, "_sent", True)):
                    raise
                time.sleep(_config.backoff(attempt, None))
                attempt += 1
                continue
            if 200 <= resp.status < 300:
                return c, resp, attempt
            hdrs = {k.lower(): v for k, v in resp.getheaders()}
            try:
                data = resp.read(64 << 10)
            except (OSError, http.client.HTTPException):
                data = b""
            self._release(c, resp)
            err = _config.error_of(resp.status, hdrs, data)
            if not _config.should_retry(r, err, attempt, self.settings.max_retries, True):
                raise err
            time.sleep(_config.backoff(attempt, err.retry_after))
            attempt += 1

    def _release(self, c: http.client.HTTPConnection, resp: http.client.HTTPResponse) -> None:
        if resp.isclosed() and not resp.will_close:
            self._put(c)
        else:
            c.close()

    def call(self, r: Request[T]) -> T:
        """Sends r and returns its parsed answer. An answer that breaks off
        is asked for again when r may be sent again (see should_retry)."""
        attempt = 0
        while True:
            c, resp, attempt = self._attempts(r, attempt)
            try:
                data = resp.read()
            except (OSError, http.client.HTTPException) as e:
                c.close()
                err = _config.connection_error(r, e)
                if not _config.should_retry(r, err, attempt, self.settings.max_retries, True):
                    raise err from e
                time.sleep(_config.backoff(attempt, None))
                attempt += 1
                continue
            self._release(c, resp)
            return _config.decode(r, resp.status, data)

    def stream(self, r: Request[Any]) -> "StreamResponse":
        """Sends r and returns its answer to be read as it comes. Close it
        (or use it in a with block) when done."""
        c, resp, _ = self._attempts(r)
        return StreamResponse(self, r, c, resp)


class StreamResponse:
    """A 2xx answer read incrementally: NDJSON lines or raw chunks."""

    def __init__(self, t: Transport, r: Request[Any], c: http.client.HTTPConnection, resp: http.client.HTTPResponse) -> None:
        self._t, self._r, self._c, self._resp = t, r, c, resp
        self.status = resp.status
        self.headers: Dict[str, str] = {k.lower(): v for k, v in resp.getheaders()}
        self._done = False

    def read(self, n: int = _CHUNK) -> bytes:
        """Up to n bytes; b"" at the end of the answer."""
        if self._done:
            return b""
        try:
            b = self._resp.read1(n) if n > 0 else self._resp.read()
        except (OSError, http.client.HTTPException) as e:
            self.close()
            raise _config.connection_error(self._r, e) from e
        if not b:
            self._finish()
        return b

    def __iter__(self) -> Iterator[bytes]:
        while True:
            b = self.read()
            if not b:
                return
            yield b

    def lines(self) -> Iterator[bytes]:
        """The answer's lines (see _config.Lines)."""
        cut = _config.Lines(self._r)
        for chunk in self:
            yield from cut.feed(chunk)
        cut.end()

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            self._t._release(self._c, self._resp)

    def close(self) -> None:
        """Ends the answer; a connection not read to its end is closed, not
        pooled."""
        if not self._done:
            self._done = True
            self._c.close()

    def __enter__(self) -> "StreamResponse":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
