"""The asyncio transport: a small HTTP/1.1 client on asyncio streams (the
standard library has none), with kept-alive connections, per-call timeouts
and the same retry policy as the blocking transport. Cancelling a call
closes its connection."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, AsyncIterator, Dict, List, Optional, Tuple, TypeVar

from . import _config, errors
from ._config import Request, Settings

T = TypeVar("T")

_CHUNK = 64 << 10
_MAX_HEAD = 64 << 10


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def dead(self) -> bool:
        # An idle connection the server closed has seen EOF; one with bytes
        # nobody asked for is unusable too.
        return self.writer.is_closing() or self.reader.at_eof() or bool(getattr(self.reader, "_buffer", b""))

    def close(self) -> None:
        try:
            self.writer.close()
        except (OSError, RuntimeError):
            pass


class _Head:
    def __init__(self, status: int, headers: Dict[str, str], keep_alive: bool) -> None:
        self.status, self.headers, self.keep_alive = status, headers, keep_alive
        # The body of an error answer, read with its head (see _read_head).
        self.error_body: Optional[bytes] = None


async def _read_head(c: _Conn) -> _Head:
    try:
        raw = await c.reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError as e:
        raise errors.ConnectionError("the server's answer head is too large", code="connection_failed") from e
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise errors.ConnectionError(f"not an HTTP/1.x answer: {lines[0][:80]!r}", code="connection_failed")
    status = int(parts[1])
    headers: Dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        k, _, v = line.partition(":")
        k = k.strip().lower()
        headers[k] = (headers[k] + ", " + v.strip()) if k in headers else v.strip()
    conn = headers.get("connection", "").lower()
    keep = parts[0] == "HTTP/1.1" and "close" not in conn
    if status == 100:
        return await _read_head(c)
    h = _Head(status, headers, keep)
    n = headers.get("content-length", "")
    if not 200 <= status < 300 and n.isdigit() and int(n) <= _MAX_HEAD:
        # Read now, in the same step as the head: a server that refused a
        # body it did not read closes, and once the reset arrives the
        # stream gives nothing more, buffered or not.
        h.error_body = await c.reader.readexactly(int(n))
    return h


class _Body:
    """Reads one answer's body: by Content-Length, chunked, or to EOF."""

    def __init__(self, c: _Conn, h: _Head, method: str, timeout: Optional[float]) -> None:
        self._c, self._timeout = c, timeout
        te = h.headers.get("transfer-encoding", "").lower()
        self.chunked = "chunked" in te
        self.left: Optional[int] = None
        if method == "HEAD" or h.status in (204, 304) or h.error_body is not None:
            self.left = 0
        elif not self.chunked and "content-length" in h.headers:
            self.left = int(h.headers["content-length"])
        self.reusable = h.keep_alive and (self.chunked or self.left is not None)
        self._chunk_left = 0
        self.done = self.left == 0

    async def _io(self, aw: Any) -> Any:
        return await asyncio.wait_for(aw, self._timeout) if self._timeout is not None else await aw

    async def read(self, n: int = _CHUNK) -> bytes:
        if self.done:
            return b""
        r = self._c.reader
        if self.chunked:
            if self._chunk_left == 0:
                size_line = await self._io(r.readline())
                if not size_line:
                    raise errors.ConnectionError("the answer ended inside a chunk", code="connection_failed")
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while True:  # trailers, then the blank line
                        t = await self._io(r.readline())
                        if t in (b"\r\n", b"\n", b""):
                            break
                    self.done = True
                    return b""
                self._chunk_left = size
            b = await self._io(r.read(min(n, self._chunk_left)))
            if not b:
                raise errors.ConnectionError("the answer ended inside a chunk", code="connection_failed")
            self._chunk_left -= len(b)
            if self._chunk_left == 0:
                await self._io(r.readexactly(2))
            return b
        if self.left is not None:
            b = await self._io(r.read(min(n, self.left)))
            if not b:
                raise errors.ConnectionError("the answer ended before its Content-Length", code="connection_failed")
            self.left -= len(b)
            self.done = self.left == 0
            return b
        b = await self._io(r.read(n))
        if not b:
            self.done = True
        return b

    async def read_all(self, limit: Optional[int] = None) -> bytes:
        out = bytearray()
        while not self.done and (limit is None or len(out) < limit):
            out += await self.read()
        return bytes(out)


class AsyncTransport:
    """Sends requests to one server from the running event loop."""

    def __init__(self, s: Settings, max_idle: int = 16) -> None:
        self.settings = s
        self._idle: List[_Conn] = []
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._max_idle = max_idle
        self._closed = False
        self._ssl = ssl.create_default_context() if self.settings.https else None

    def _pool(self) -> List[_Conn]:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # Connections belong to the loop that made them: a client used
            # from a new loop (a second asyncio.run) starts a fresh pool.
            self._idle, self._loop = [], loop
        return self._idle

    async def _get(self, r: Request[Any]) -> Tuple[_Conn, bool]:
        if self._closed:
            raise errors.NullspaceError("the client is closed", code="client_closed")
        pool = self._pool()
        while pool:
            c = pool.pop()
            if not c.dead():
                return c, True
            c.close()
        t = self.settings.connect_timeout(r)
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.settings.host, self.settings.port, ssl=self._ssl, limit=_MAX_HEAD), t)
        return _Conn(reader, writer), False

    def _put(self, c: _Conn) -> None:
        pool = self._pool()
        if not self._closed and len(pool) < self._max_idle:
            pool.append(c)
        else:
            c.close()

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for c in idle:
            c.close()

    async def _send_body(self, c: _Conn, body: Any, chunked: bool) -> None:
        w = c.writer
        if isinstance(body, (bytes, bytearray, memoryview)):
            w.write(bytes(body))
            await w.drain()
            return

        async def chunks() -> AsyncIterator[bytes]:
            if hasattr(body, "read"):
                while True:
                    b = body.read(_CHUNK)
                    if asyncio.iscoroutine(b):
                        b = await b
                    if not b:
                        return
                    yield b
            elif hasattr(body, "__aiter__"):
                async for b in body:
                    yield b
            else:
                for b in body:
                    yield b

        async for chunk in chunks():
            if isinstance(chunk, str):
                chunk = chunk.encode()
            if not chunk:
                continue
            w.write(b"%x\r\n" % len(chunk) + chunk + b"\r\n" if chunked else chunk)
            await w.drain()
        if chunked:
            w.write(b"0\r\n\r\n")
            await w.drain()

    async def _open(self, r: Request[Any]) -> Tuple[_Conn, _Head, _Body]:
        body, headers = r.payload()
        headers.update(self.settings.headers())
        sent = False
        c: Optional[_Conn] = None
        try:
            c, sent = await self._get(r)
            sent = True
            lines = [f"{r.method} {self.settings.prefix + r.url_path()} HTTP/1.1", f"Host: {self.settings.netloc}"]
            lines += [f"{k}: {v}" for k, v in headers.items()]
            head_bytes = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
            if isinstance(body, (bytes, bytearray, memoryview)):
                # One write, one segment: a body written on its own waits
                # for the server's delayed ACK of the head.
                head_bytes, body = head_bytes + bytes(body), None
            c.writer.write(head_bytes)
            rt = self.settings.read_timeout(r)
            # The answer is read while the body goes out: a server may
            # answer before reading it all (a refusal: too large, unknown
            # machine) and close, and that answer says why, not the broken
            # pipe that sending the rest then meets.
            head_task = asyncio.ensure_future(_read_head(c))
            try:
                if body is not None:
                    await self._send_body(c, body, chunked=headers.get("Transfer-Encoding") == "chunked")
                else:
                    await c.writer.drain()
            except OSError:
                await asyncio.wait([head_task], timeout=1.0)
                if not head_task.done() or head_task.exception() is not None:
                    raise
            except BaseException:
                head_task.cancel()
                raise
            head = await (asyncio.wait_for(head_task, rt) if rt is not None else head_task)
            return c, head, _Body(c, head, r.method, rt)
        except errors.NullspaceError:
            if c is not None:
                c.close()
            raise
        except asyncio.CancelledError:
            if c is not None:
                c.close()
            raise
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
            if c is not None:
                c.close()
            err = _config.connection_error(r, _as_timeout(e))
            err._sent = sent  # type: ignore[attr-defined]
            raise err from e

    async def _attempts(self, r: Request[Any], attempt: int = 0) -> Tuple[_Conn, _Head, _Body, int]:
        while True:
            try:
                c, head, body = await self._open(r)
            except errors.NullspaceError as e:
                if not _config.should_retry(r, e, attempt, self.settings.max_retries, getattr(e, "_sent", True)):
                    raise
                await asyncio.sleep(_config.backoff(attempt, None))
                attempt += 1
                continue
            if 200 <= head.status < 300:
                return c, head, body, attempt
            data = head.error_body
            if data is None:
                try:
                    data = await body.read_all(64 << 10)
                except (errors.NullspaceError, OSError, asyncio.TimeoutError):
                    data = b""
            self._release(c, body)
            err = _config.error_of(head.status, head.headers, data)
            if not _config.should_retry(r, err, attempt, self.settings.max_retries, True):
                raise err
            await asyncio.sleep(_config.backoff(attempt, err.retry_after))
            attempt += 1

    def _release(self, c: _Conn, body: _Body) -> None:
        if body.done and body.reusable:
            self._put(c)
        else:
            c.close()

    async def call(self, r: Request[T]) -> T:
        attempt = 0
        while True:
            c, head, body, attempt = await self._attempts(r, attempt)
            try:
                data = await body.read_all()
            except BaseException as e:
                c.close()
                if isinstance(e, errors.ConnectionError):
                    err: errors.NullspaceError = e
                elif isinstance(e, (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError)):
                    err = _config.connection_error(r, _as_timeout(e))
                else:
                    raise
                if not _config.should_retry(r, err, attempt, self.settings.max_retries, True):
                    if err is e:
                        raise
                    raise err from e
                await asyncio.sleep(_config.backoff(attempt, None))
                attempt += 1
                continue
            self._release(c, body)
            return _config.decode(r, head.status, data)

    async def stream(self, r: Request[Any]) -> "AsyncStreamResponse":
        c, head, body, _ = await self._attempts(r)
        return AsyncStreamResponse(self, r, c, head, body)


def _as_timeout(e: BaseException) -> BaseException:
    return TimeoutError("timed out") if isinstance(e, asyncio.TimeoutError) else e


class AsyncStreamResponse:
    """A 2xx answer read as it comes."""

    def __init__(self, t: AsyncTransport, r: Request[Any], c: _Conn, head: _Head, body: _Body) -> None:
        self._t, self._r, self._c, self._body = t, r, c, body
        self.status = head.status
        self.headers = head.headers
        self._closed = False

    async def read(self, n: int = _CHUNK) -> bytes:
        if self._closed:
            return b""
        try:
            b = await self._body.read(n)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
            await self.aclose()
            raise _config.connection_error(self._r, _as_timeout(e)) from e
        except BaseException:
            await self.aclose()
            raise
        if not b and self._body.done:
            self._closed = True
            self._t._release(self._c, self._body)
        return b

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            b = await self.read()
            if not b:
                return
            yield b

    async def lines(self) -> AsyncIterator[bytes]:
        """The answer's lines (see _config.Lines)."""
        cut = _config.Lines(self._r)
        async for chunk in self:
            for line in cut.feed(chunk):
                yield line
        cut.end()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._c.close()

    async def __aenter__(self) -> "AsyncStreamResponse":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()
