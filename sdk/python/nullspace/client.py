"""The blocking client: a connection to one server, and the calls that are
not about one machine (snapshots, volumes, templates, events)."""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
from typing import IO, Any, Dict, Iterator, Mapping, Optional, Sequence, Tuple, TypeVar, Union

from . import _ops, errors
from ._config import DEFAULT, DEFAULT_MAX_RETRIES, DEFAULT_REQUEST_TIMEOUT, Request, Timeout, backoff, settings
from ._http import StreamResponse, Transport
from .models import Event, Snapshot, Template, Volume

T = TypeVar("T")

#: What templates.build uploads: a path, or a file object opened "rb".
Tarball = Union[str, "os.PathLike[str]", IO[bytes], None]


class Client:
    """A connection to a Nullspace server, reused by every call made through
    it (HTTP keep-alive) and safe to share between threads.

    ``api_url`` defaults to NULLSPACE_API_URL (else http://127.0.0.1:7700),
    ``api_key`` to NULLSPACE_API_KEY (else the server host's key file).
    ``request_timeout`` (seconds, None for no limit) bounds how long each call
    waits for the server; it is not a machine's lease, which is the
    ``timeout`` of Machine.create and set_timeout. Use it as a context
    manager, or call close(), to close its connections.
    """

    def __init__(
        self,
        api_url: Optional[str] = None,
        api_key: Optional[str] = None,
        *,
        request_timeout: Optional[float] = DEFAULT_REQUEST_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
    ) -> None:
        self.settings = settings(api_url, api_key, request_timeout, max_retries)
        self._t = Transport(self.settings)
        self.snapshots = Snapshots(self)
        self.volumes = Volumes(self)
        self.templates = Templates(self)

    @property
    def api_url(self) -> str:
        return self.settings.api_url

    def call(self, r: Request[T]) -> T:
        return self._t.call(r)

    def stream(self, r: Request[Any]) -> StreamResponse:
        return self._t.stream(r)

    def pages(self, make: Any, key: str, parse: Any) -> Iterator[Any]:
        """Every item of a paged list: make(next_token) builds the request
        of one page."""
        token: Optional[str] = None
        while True:
            items, token = _ops.page_items(self.call(make(token)), key)
            for it in items:
                yield parse(it)
            if not token:
                return

    def health(self, *, request_timeout: Timeout = DEFAULT) -> Dict[str, Any]:
        """The server's ``{"ok": true, "version": ...}``; needs no key."""
        return self.call(_ops.health(request_timeout))

    def events(
        self,
        *,
        after: Optional[int] = None,
        machine_id: Optional[str] = None,
        types: Optional[Sequence[str]] = None,
        follow: bool = True,
    ) -> Iterator[Event]:
        """Lifecycle events in order of ``seq``, from after ``after``. With
        follow (the default) the iterator waits for new ones and, when the
        connection drops, reconnects after the last seq it yielded: no event
        is skipped or repeated. Without follow it ends at the newest."""
        last = after
        if not follow:
            while True:
                page = self.call(_ops.events_page(last, machine_id, types, None))
                evs = [Event.from_json(e) for e in page.get("events") or []]
                yield from evs
                if not page.get("next_token") or not evs:
                    return
                last = evs[-1].seq
        attempt = 0
        while True:
            try:
                with self.stream(_ops.events_follow(last, machine_id, types)) as s:
                    for line in s.lines():
                        ev = Event.from_json(json.loads(line))
                        last, attempt = ev.seq, 0
                        yield ev
            except errors.NullspaceError as e:
                if not (isinstance(e, (errors.ConnectionError, errors.UnavailableError)) and attempt < 8):
                    raise
            time.sleep(backoff(attempt, None))
            attempt += 1

    def close(self) -> None:
        self._t.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Snapshots:
    """Saved machine states: ``client.snapshots``."""

    def __init__(self, c: Client) -> None:
        self._c = c

    def list(self, *, machine_id: Optional[str] = None, kind: Optional[str] = None, name: Optional[str] = None,
             request_timeout: Timeout = DEFAULT) -> Iterator[Snapshot]:
        """Every snapshot (of one machine's lineage, of one kind, of one
        name), oldest first, read a page at a time as the iteration goes."""
        return self._c.pages(lambda tok: _ops.snapshots_page(machine_id, kind, None, tok, request_timeout, name),
                             "snapshots", Snapshot.from_json)

    def get(self, snapshot_id: str, *, request_timeout: Timeout = DEFAULT) -> Snapshot:
        """The snapshot of this id, or of this name."""
        return self._c.call(_ops.get_snapshot(snapshot_id, request_timeout))

    def delete(self, snapshot_id: str, *, force: bool = False, request_timeout: Timeout = DEFAULT) -> None:
        """Deletes a snapshot. One that holds a paused machine's state or
        that live machines were made from is refused (ConflictError,
        ``snapshot_in_use``) unless ``force``."""
        self._c.call(_ops.delete_snapshot(snapshot_id, force, request_timeout))


class Volumes:
    """Named volumes: ``client.volumes``."""

    def __init__(self, c: Client) -> None:
        self._c = c

    def list(self, *, request_timeout: Timeout = DEFAULT) -> Iterator[Volume]:
        return self._c.pages(lambda tok: _ops.volumes_page(None, tok, request_timeout), "volumes", Volume.from_json)

    def create(self, name: str, *, request_timeout: Timeout = DEFAULT) -> Volume:
        return self._c.call(_ops.create_volume(name, request_timeout))

    def delete(self, name: str, *, request_timeout: Timeout = DEFAULT) -> None:
        self._c.call(_ops.delete_volume(name, request_timeout))


class Templates:
    """Templates machines are created from: ``client.templates``."""

    def __init__(self, c: Client) -> None:
        self._c = c

    def list(self, *, request_timeout: Timeout = DEFAULT) -> Iterator[Template]:
        return self._c.pages(lambda tok: _ops.templates_page(None, tok, request_timeout), "templates",
                             Template.from_json)

    def get(self, name: str, *, request_timeout: Timeout = DEFAULT) -> Template:
        return self._c.call(_ops.get_template(name, request_timeout))

    def build(self, name: str, *, from_template: Optional[str] = None, tarball: Tarball = None,
              steps: Sequence[str] = (), workdir: Optional[str] = None, envs: Optional[Mapping[str, str]] = None,
              request_timeout: Timeout = DEFAULT) -> Template:
        """Builds a template from another (``from_template``, default
        "base") or from a root filesystem of yours (``tarball``: a path or a
        binary file object holding a tar stream, plain, gzip, zstd or xz,
        uploaded as it is read), then runs shell ``steps`` in a machine;
        returns when it is ready or failed (``state``, ``error``). One
        source only. An upload over the server's limit (2 GiB by default)
        raises InvalidArgumentError ``file_too_large``."""
        return self._c.call(_ops.build_template(name, from_template, steps, workdir, envs, request_timeout,
                                                tarball=tarball))

    def delete(self, name: str, *, request_timeout: Timeout = DEFAULT) -> None:
        self._c.call(_ops.delete_template(name, request_timeout))


# Clients made for entry points called without client=, one per server and
# key, so that their connections are reused across calls.
_shared: Dict[Tuple[str, str], Client] = {}
_shared_lock = threading.Lock()


def shared_client(client: Optional[Client], api_url: Optional[str], api_key: Optional[str]) -> Client:
    """``client``, or the shared client of api_url and api_key (each
    resolved from the environment when None)."""
    if client is not None:
        return client
    s = settings(api_url, api_key, DEFAULT_REQUEST_TIMEOUT, DEFAULT_MAX_RETRIES)
    k = (s.api_url, s.api_key)
    with _shared_lock:
        c = _shared.get(k)
        if c is None:
            c = _shared[k] = Client(s.api_url, s.api_key or None)
        return c


@atexit.register
def _close_shared() -> None:
    with _shared_lock:
        for c in _shared.values():
            c.close()
        _shared.clear()
