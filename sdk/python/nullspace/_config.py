"""Where the API is, which key to send, and the request plumbing that the
sync and async transports share: the request description, the retry policy
and the decoding of answers. Nothing here does I/O on the network."""

from __future__ import annotations

import json as _json
import os
import time
import urllib.parse
from typing import Any, Callable, Dict, Generic, Iterable, List, Mapping, Optional, Sequence, Tuple, TypeVar, Union

from . import errors

ENV_API_URL = "NULLSPACE_API_URL"
ENV_API_KEY = "NULLSPACE_API_KEY"
ENV_DATA_DIR = "NULLSPACE_DATA_DIR"
DEFAULT_API_URL = "http://127.0.0.1:7700"
DEFAULT_DATA_DIR = "/var/lib/nullspace"
KEY_FILE_NAME = "api-key"

#: How long a call waits for the server's answer by default (seconds). It is
#: the time allowed between bytes, not a machine's lease: see ``timeout``.
DEFAULT_REQUEST_TIMEOUT = 60.0

#: How many times an idempotent call (or one sent with an Idempotency-Key)
#: is retried after a connection failure or a retryable answer (429, 502,
#: 503, 504).
DEFAULT_MAX_RETRIES = 3

#: The header that makes a create, fork or snapshot safe to send again: the
#: server answers a retry carrying the same key with the first answer.
IDEMPOTENCY_HEADER = "Idempotency-Key"

VERSION = "0.1.0"
USER_AGENT = f"nullspace-python/{VERSION}"

T = TypeVar("T")


def resolve_url(api_url: Optional[str]) -> str:
    """``api_url``, else NULLSPACE_API_URL, else http://127.0.0.1:7700."""
    u = api_url or os.environ.get(ENV_API_URL) or DEFAULT_API_URL
    p = urllib.parse.urlsplit(u)
    if p.scheme not in ("http", "https") or not p.hostname:
        raise errors.InvalidArgumentError(
            f"api_url {u!r} is not an http(s) URL",
            code="invalid_argument",
            suggested_action=f"pass api_url='http://host:7700' or set {ENV_API_URL}",
        )
    return u.rstrip("/")


def resolve_key(api_key: Optional[str]) -> str:
    """``api_key``, else NULLSPACE_API_KEY, else the key file the server
    writes on first start ($NULLSPACE_DATA_DIR/api-key, default
    /var/lib/nullspace/api-key), so programs on the server host need no
    configuration. No key at all is "" (the server then answers 401)."""
    if api_key:
        return api_key
    if os.environ.get(ENV_API_KEY):
        return os.environ[ENV_API_KEY]
    path = os.path.join(os.environ.get(ENV_DATA_DIR) or DEFAULT_DATA_DIR, KEY_FILE_NAME)
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""
    except OSError as e:
        raise errors.AuthenticationError(
            f"cannot read the API key file {path}: {e}",
            code="unauthenticated",
            suggested_action=f"set {ENV_API_KEY}, or run as a user that can read {path}",
        ) from e


class _Default:
    def __repr__(self) -> str:
        return "DEFAULT"


#: The client's request_timeout, when a call does not set its own.
DEFAULT: Any = _Default()

Timeout = Union[float, None, _Default]
Body = Union[bytes, Any, Iterable[bytes], None]


def idempotency_key(key: Optional[str]) -> str:
    """The Idempotency-Key of one logical call: the caller's, checked (1 to
    255 printable ASCII characters), else a new random UUID."""
    if key is None:
        import uuid  # here: most programs create few machines

        return str(uuid.uuid4())
    if (not isinstance(key, str) or not 1 <= len(key) <= 255 or key != key.strip()
            or any(not " " <= ch <= "~" for ch in key)):
        raise errors.InvalidArgumentError(
            f"idempotency_key must be 1 to 255 printable ASCII characters without leading or trailing spaces, not {key!r}",
            code="invalid_argument",
            suggested_action="pass a UUID or another short ASCII id of the logical call, or None for a new one",
        )
    return key


class Request(Generic[T]):
    """One API call. ``parse`` turns the decoded JSON answer into the value
    the caller gets; ``idempotent`` says whether it may be sent again after a
    failure (never true for a command); ``idempotency_key``, sent as the
    Idempotency-Key header on every attempt, makes a create, fork or
    snapshot as safe to send again as an idempotent call; ``extra_timeout`` is
    added to the read timeout (a foreground command's own timeout: its
    answer comes only once it has run; None: no read limit); ``raw`` says
    the answer is bytes, not JSON. (A plain class: the dataclasses module
    alone is a tenth of the time of ``import nullspace``.)"""

    __slots__ = ("method", "path", "query", "json", "body", "content_type", "content_length", "accept",
                 "idempotent", "idempotency_key", "parse", "timeout", "extra_timeout", "raw")

    def __init__(self, method: str, path: str, query: Sequence[Tuple[str, str]] = (), json: Any = None,
                 body: Body = None, content_type: str = "", content_length: Optional[int] = None,
                 accept: str = "application/json", idempotent: bool = False,
                 parse: Optional[Callable[[Any], T]] = None, timeout: Timeout = DEFAULT,
                 extra_timeout: Optional[float] = 0.0, raw: bool = False,
                 idempotency_key: Optional[str] = None) -> None:
        self.method, self.path, self.query, self.json, self.body = method, path, query, json, body
        self.idempotency_key = idempotency_key
        self.content_type, self.content_length, self.accept = content_type, content_length, accept
        self.idempotent, self.parse, self.timeout = idempotent, parse, timeout
        self.extra_timeout, self.raw = extra_timeout, raw

    def url_path(self) -> str:
        if not self.query:
            return self.path
        return self.path + "?" + urllib.parse.urlencode(list(self.query))

    def payload(self) -> Tuple[Body, Dict[str, str]]:
        """The body to send and its headers."""
        h: Dict[str, str] = {"Accept": self.accept}
        if self.idempotency_key is not None:
            h[IDEMPOTENCY_HEADER] = self.idempotency_key
        if self.json is not None:
            b = _json.dumps(self.json, separators=(",", ":")).encode()
            h["Content-Type"] = "application/json"
            h["Content-Length"] = str(len(b))
            return b, h
        if self.body is None:
            if self.method in ("POST", "PUT", "PATCH"):
                h["Content-Length"] = "0"
            return None, h
        if self.content_type:
            h["Content-Type"] = self.content_type
        if isinstance(self.body, (bytes, bytearray, memoryview)):
            h["Content-Length"] = str(len(self.body))
        elif self.content_length is not None:
            h["Content-Length"] = str(self.content_length)
        else:
            h["Transfer-Encoding"] = "chunked"
        return self.body, h

    def replayable(self) -> bool:
        return self.body is None or isinstance(self.body, (bytes, bytearray, memoryview))


class Settings:
    """What a client was configured with, and the parts of its URL the
    transports connect to."""

    __slots__ = ("api_url", "api_key", "request_timeout", "max_retries", "https", "host", "port", "prefix", "netloc")

    def __init__(self, api_url: str, api_key: str, request_timeout: Optional[float], max_retries: int) -> None:
        self.api_url, self.api_key = api_url, api_key
        self.request_timeout, self.max_retries = request_timeout, max_retries
        u = urllib.parse.urlsplit(api_url)
        self.https = u.scheme == "https"
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or (443 if self.https else 80)
        self.prefix = u.path.rstrip("/")
        self.netloc = u.netloc

    def headers(self) -> Dict[str, str]:
        h = {"User-Agent": USER_AGENT}
        if self.api_key:
            h["Authorization"] = "Bearer " + self.api_key
        return h

    def read_timeout(self, r: Request[Any]) -> Optional[float]:
        """How long to wait for each read of r's answer: request_timeout
        beyond what the call itself is asked to take (a command's timeout,
        a wait's). A call with no bound of its own (a wait without timeout,
        a stream) has no read limit unless it was given a request_timeout."""
        if isinstance(r.timeout, _Default):
            if r.extra_timeout is None or self.request_timeout is None:
                return None
            return self.request_timeout + r.extra_timeout
        if r.timeout is None:
            return None
        return r.timeout + (r.extra_timeout or 0.0)

    def connect_timeout(self, r: Request[Any]) -> Optional[float]:
        t = self.request_timeout if isinstance(r.timeout, _Default) else r.timeout
        return t if t is not None else DEFAULT_REQUEST_TIMEOUT


def settings(api_url: Optional[str], api_key: Optional[str], request_timeout: Optional[float], max_retries: int) -> Settings:
    return Settings(resolve_url(api_url), resolve_key(api_key), request_timeout, max_retries)


RETRY_STATUSES = (429, 502, 503, 504)


def retry_after(headers: Mapping[str, str]) -> Optional[float]:
    """The Retry-After header in seconds (delta or HTTP date), if any."""
    v = headers.get("retry-after") or headers.get("Retry-After")
    if not v:
        return None
    try:
        return max(0.0, float(v))
    except ValueError:
        pass
    import email.utils  # only for the rare HTTP-date form

    try:
        t = email.utils.parsedate_to_datetime(v)
    except (TypeError, ValueError):
        return None
    return max(0.0, t.timestamp() - time.time())


def backoff(attempt: int, hint: Optional[float]) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based): the
    server's Retry-After when it gave one, else exponential with jitter."""
    if hint is not None:
        return min(hint, 30.0)
    import random  # here: it costs a few ms at import, and few calls ever retry

    return min(0.2 * (2**attempt), 5.0) * (0.5 + random.random() / 2)


def should_retry(r: Request[Any], err: errors.NullspaceError, attempt: int, max_retries: int, sent: bool) -> bool:
    """Whether to send r again after err. A request that never left (the
    connection could not be made) is always safe to send again; one that
    may have reached the server only when it is idempotent or carries an
    Idempotency-Key. A keyed call is also sent again when its answer did
    not come in time (the server replays the first answer, or waits for it)
    and when the server says the first attempt is still in progress."""
    if attempt >= max_retries or not r.replayable():
        return False
    keyed = r.idempotency_key is not None
    if isinstance(err, errors.ConnectionError):
        return (not sent) or r.idempotent or keyed
    if keyed and isinstance(err, errors.TimeoutError) and err.code == "request_timeout":
        return True
    if keyed and err.status == 409 and err.code == "idempotency_key_in_progress":
        return True
    if not (r.idempotent or keyed):
        return False
    return err.status in RETRY_STATUSES and err.retryable


def decode(r: Request[T], status: int, body: bytes) -> T:
    """The value of a 2xx answer."""
    if r.raw:
        value: Any = body
    elif not body or status == 204:
        value = None
    else:
        try:
            value = _json.loads(body)
        except ValueError as e:
            raise errors.NullspaceError(
                f"{r.method} {r.path}: the server's answer is not JSON: {body[:100]!r}", status=status
            ) from e
    return r.parse(value) if r.parse else value


def error_of(status: int, headers: Mapping[str, str], body: bytes) -> errors.NullspaceError:
    """The exception of a non-2xx answer."""
    try:
        decoded: Any = _json.loads(body) if body else None
    except ValueError:
        decoded = body.decode("utf-8", "replace")
    return errors.error_from_body(status, decoded, retry_after(headers))


def connection_error(r: Request[Any], e: BaseException) -> errors.NullspaceError:
    if isinstance(e, (TimeoutError, OSError)) and "timed out" in str(e):
        return errors.TimeoutError(
            f"{r.method} {r.path}: no answer within the request timeout",
            code="request_timeout",
            retryable=True,
            suggested_action="pass a larger request_timeout, or None for no limit",
        )
    return errors.ConnectionError(
        f"{r.method} {r.path}: {type(e).__name__}: {e}",
        code="connection_failed",
        retryable=True,
        suggested_action="check that the server is running and api_url is right",
    )


class Lines:
    """Cuts a stream's chunks into lines (NDJSON): feed() returns the lines
    a chunk completes, without their ends, empty ones skipped; end() fails
    when the stream stopped inside a line."""

    def __init__(self, r: Request[Any]) -> None:
        self._r = r
        self._buf = b""

    def feed(self, chunk: bytes) -> List[bytes]:
        self._buf += chunk
        out: List[bytes] = []
        while True:
            i = self._buf.find(b"\n")
            if i < 0:
                return out
            line, self._buf = self._buf[:i].strip(), self._buf[i + 1 :]
            if line:
                out.append(line)

    def end(self) -> None:
        if self._buf.strip():
            raise errors.ConnectionError(f"{self._r.method} {self._r.path}: the stream ended inside a line",
                                         code="connection_failed", retryable=True)


class either:
    """A method callable on the class with an id (``Machine.kill(id)``) and
    on a handle without one (``machine.kill()``)."""

    def __init__(self, on_class: Callable[..., Any], on_handle: Callable[..., Any]) -> None:
        self._cls, self._obj = on_class, on_handle
        self.__doc__ = on_class.__doc__

    def __get__(self, obj: Any, owner: Any) -> Callable[..., Any]:
        if obj is None:
            return self._cls
        return lambda *a, **kw: self._obj(obj, *a, **kw)


def warn(msg: str, *args: Any) -> None:
    """Logs a warning on the "nullspace" logger (logging is imported on
    first use: most programs never need it)."""
    import logging

    logging.getLogger("nullspace").warning(msg, *args)


def q(**kw: Any) -> List[Tuple[str, str]]:
    """Query parameters, dropping None; bools as true/false; lists repeat."""
    out: List[Tuple[str, str]] = []
    for k, v in kw.items():
        if v is None or v is False:
            continue
        if v is True:
            out.append((k, "true"))
        elif isinstance(v, (list, tuple)):
            out.extend((k, str(x)) for x in v)
        else:
            out.append((k, str(v)))
    return out


def quote(s: str) -> str:
    return urllib.parse.quote(s, safe="")
