"""The same surface as nullspace.machine and nullspace.client, for asyncio:

    from nullspace import AsyncMachine

    async with await AsyncMachine.create(template="base") as machine:
        result = await machine.commands.run("echo hi")

Every call is a coroutine, streams are async iterators, and the context
managers are ``async with``. Requests and their answers are built by the
same code as the blocking surface (nullspace._ops), so both behave alike.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, AsyncIterator, Callable, Dict, List, Literal, Mapping, Optional, Sequence, Tuple, Union, overload

from . import _config, _ops, errors
from ._aio_http import AsyncStreamResponse, AsyncTransport
from ._commands import Collector, OutputCallback, WatchLog, reconnectable
from ._commands import check as check_result
from .machine import DEFAULT_SHELL
from ._config import DEFAULT, DEFAULT_MAX_RETRIES, DEFAULT_REQUEST_TIMEOUT, Request, Timeout, T, backoff, settings
from .models import (
    CommandResult,
    EntryInfo,
    Event,
    Lease,
    MachineInfo,
    MachineURL,
    MainExit,
    Metric,
    FileEvent,
    OutputChunk,
    ProcessInfo,
    PtySize,
    Snapshot,
    Template,
    Volume,
    WriteInfo,
)



class AsyncClient:
    """The asyncio twin of Client: a connection pool to one server."""

    def __init__(self, api_url: Optional[str] = None, api_key: Optional[str] = None, *,
                 request_timeout: Optional[float] = DEFAULT_REQUEST_TIMEOUT,
                 max_retries: int = DEFAULT_MAX_RETRIES) -> None:
        self.settings = settings(api_url, api_key, request_timeout, max_retries)
        self._t = AsyncTransport(self.settings)
        self.snapshots = AsyncSnapshots(self)
        self.volumes = AsyncVolumes(self)
        self.templates = AsyncTemplates(self)

    @property
    def api_url(self) -> str:
        return self.settings.api_url

    async def call(self, r: Request[T]) -> T:
        return await self._t.call(r)

    async def stream(self, r: Request[Any]) -> AsyncStreamResponse:
        return await self._t.stream(r)

    async def pages(self, make: Any, key: str, parse: Any) -> AsyncIterator[Any]:
        token: Optional[str] = None
        while True:
            items, token = _ops.page_items(await self.call(make(token)), key)
            for it in items:
                yield parse(it)
            if not token:
                return

    async def health(self, *, request_timeout: Timeout = DEFAULT) -> Dict[str, Any]:
        return await self.call(_ops.health(request_timeout))

    async def events(self, *, after: Optional[int] = None, machine_id: Optional[str] = None,
                     types: Optional[Sequence[str]] = None, follow: bool = True) -> AsyncIterator[Event]:
        """See Client.events."""
        last = after
        if not follow:
            while True:
                page = await self.call(_ops.events_page(last, machine_id, types, None))
                evs = [Event.from_json(e) for e in page.get("events") or []]
                for ev in evs:
                    yield ev
                if not page.get("next_token") or not evs:
                    return
                last = evs[-1].seq
        attempt = 0
        while True:
            try:
                async with await self.stream(_ops.events_follow(last, machine_id, types)) as s:
                    async for line in s.lines():
                        ev = Event.from_json(json.loads(line))
                        last, attempt = ev.seq, 0
                        yield ev
            except errors.NullspaceError as e:
                if not (isinstance(e, (errors.ConnectionError, errors.UnavailableError)) and attempt < 8):
                    raise
            await asyncio.sleep(backoff(attempt, None))
            attempt += 1

    async def close(self) -> None:
        await self._t.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


class AsyncSnapshots:
    def __init__(self, c: AsyncClient) -> None:
        self._c = c

    def list(self, *, machine_id: Optional[str] = None, kind: Optional[str] = None, name: Optional[str] = None,
             request_timeout: Timeout = DEFAULT) -> AsyncIterator[Snapshot]:
        return self._c.pages(lambda tok: _ops.snapshots_page(machine_id, kind, None, tok, request_timeout, name),
                             "snapshots", Snapshot.from_json)

    async def get(self, snapshot_id: str, *, request_timeout: Timeout = DEFAULT) -> Snapshot:
        return await self._c.call(_ops.get_snapshot(snapshot_id, request_timeout))

    async def delete(self, snapshot_id: str, *, force: bool = False, request_timeout: Timeout = DEFAULT) -> None:
        await self._c.call(_ops.delete_snapshot(snapshot_id, force, request_timeout))


class AsyncVolumes:
    def __init__(self, c: AsyncClient) -> None:
        self._c = c

    def list(self, *, request_timeout: Timeout = DEFAULT) -> AsyncIterator[Volume]:
        return self._c.pages(lambda tok: _ops.volumes_page(None, tok, request_timeout), "volumes", Volume.from_json)

    async def create(self, name: str, *, request_timeout: Timeout = DEFAULT) -> Volume:
        return await self._c.call(_ops.create_volume(name, request_timeout))

    async def delete(self, name: str, *, request_timeout: Timeout = DEFAULT) -> None:
        await self._c.call(_ops.delete_volume(name, request_timeout))


class AsyncTemplates:
    def __init__(self, c: AsyncClient) -> None:
        self._c = c

    def list(self, *, request_timeout: Timeout = DEFAULT) -> AsyncIterator[Template]:
        return self._c.pages(lambda tok: _ops.templates_page(None, tok, request_timeout), "templates",
                             Template.from_json)

    async def get(self, name: str, *, request_timeout: Timeout = DEFAULT) -> Template:
        return await self._c.call(_ops.get_template(name, request_timeout))

    async def build(self, name: str, *, from_template: Optional[str] = None, tarball: Any = None,
                    steps: Sequence[str] = (), workdir: Optional[str] = None,
                    envs: Optional[Mapping[str, str]] = None, request_timeout: Timeout = DEFAULT) -> Template:
        """Client.templates.build: from ``from_template`` (default "base")
        or an uploaded ``tarball`` (a path, or a binary file object whose
        ``read`` may be a coroutine), streamed."""
        return await self._c.call(_ops.build_template(name, from_template, steps, workdir, envs, request_timeout,
                                                      tarball=tarball))

    async def delete(self, name: str, *, request_timeout: Timeout = DEFAULT) -> None:
        await self._c.call(_ops.delete_template(name, request_timeout))


# Clients for entry points called without client=, per server and key.
_shared: Dict[Tuple[str, str], AsyncClient] = {}


def shared_client(client: Optional[AsyncClient], api_url: Optional[str], api_key: Optional[str]) -> AsyncClient:
    if client is not None:
        return client
    s = settings(api_url, api_key, DEFAULT_REQUEST_TIMEOUT, DEFAULT_MAX_RETRIES)
    k = (s.api_url, s.api_key)
    c = _shared.get(k)
    if c is None:
        c = _shared[k] = AsyncClient(s.api_url, s.api_key or None)
    return c


async def _kill_by_id(machine_id: str, *, client: Optional[AsyncClient] = None, api_url: Optional[str] = None,
                      api_key: Optional[str] = None, request_timeout: Timeout = DEFAULT) -> bool:
    c = shared_client(client, api_url, api_key)
    try:
        await c.call(_ops.kill(machine_id, request_timeout))
    except errors.MachineNotFoundError:
        return False
    return True


class AsyncMachine:
    """The asyncio twin of Machine (see its documentation)."""

    def __init__(self, info: MachineInfo, client: AsyncClient) -> None:
        self.id: str = info.id
        self._info = info
        self._client = client
        self.files = AsyncFiles(self)
        self.commands = AsyncCommands(self)
        self.pty = AsyncPty(self)

    def __repr__(self) -> str:
        return f"AsyncMachine(id={self.id!r}, status={self._info.status!r})"

    @property
    def client(self) -> AsyncClient:
        return self._client

    @property
    def info(self) -> MachineInfo:
        return self._info

    @classmethod
    async def create(
        cls,
        template: Optional[str] = None,
        *,
        timeout: Optional[float] = None,
        on_timeout: Optional[str] = None,
        auto_resume: Optional[bool] = None,
        idle_timeout: Optional[float] = None,
        persistence: Optional[str] = None,
        cpu: Optional[int] = None,
        memory_mb: Optional[int] = None,
        disk_mb: Optional[int] = None,
        envs: Optional[Mapping[str, str]] = None,
        metadata: Optional[Mapping[str, str]] = None,
        volumes: Any = None,
        allow_internet: Optional[bool] = None,
        command: Union[str, Sequence[str], None] = None,
        on_pause: Optional[Sequence[str]] = None,
        on_resume: Optional[Sequence[str]] = None,
        snapshot_id: Optional[str] = None,
        public_ports: Optional[bool] = None,
        checkpoint_retention: Optional[int] = None,
        idempotency_key: Optional[str] = None,
        client: Optional[AsyncClient] = None,
        api_url: Optional[str] = None,
        api_key: Optional[str] = None,
        request_timeout: Timeout = DEFAULT,
    ) -> "AsyncMachine":
        c = shared_client(client, api_url, api_key)
        r = _ops.create(
            template=template, timeout=timeout, on_timeout=on_timeout, auto_resume=auto_resume,
            idle_timeout=idle_timeout, persistence=persistence, cpu=cpu, memory_mb=memory_mb, disk_mb=disk_mb, envs=envs,
            metadata=metadata, volumes=volumes, allow_internet=allow_internet, command=command,
            on_pause=on_pause, on_resume=on_resume, snapshot_id=snapshot_id, public_ports=public_ports,
            checkpoint_retention=checkpoint_retention, request_timeout=request_timeout, key=idempotency_key,
        )
        return cls(await c.call(r), c)

    @classmethod
    async def connect(cls, machine_id: str, *, client: Optional[AsyncClient] = None, api_url: Optional[str] = None,
                      api_key: Optional[str] = None, request_timeout: Timeout = DEFAULT) -> "AsyncMachine":
        c = shared_client(client, api_url, api_key)
        return cls(await c.call(_ops.connect(machine_id, request_timeout)), c)

    @classmethod
    async def resume(cls, snapshot_id: str, *, client: Optional[AsyncClient] = None, api_url: Optional[str] = None,
                     api_key: Optional[str] = None, request_timeout: Timeout = DEFAULT) -> "AsyncMachine":
        c = shared_client(client, api_url, api_key)
        return cls(await c.call(_ops.resume(snapshot_id, request_timeout)), c)

    @classmethod
    async def get_info_by_id(cls, machine_id: str, *, client: Optional[AsyncClient] = None,
                             api_url: Optional[str] = None, api_key: Optional[str] = None,
                             request_timeout: Timeout = DEFAULT) -> MachineInfo:
        c = shared_client(client, api_url, api_key)
        return await c.call(_ops.get(machine_id, request_timeout))

    @classmethod
    def list(cls, *, state: Optional[str] = None, metadata: Optional[Mapping[str, str]] = None,
             template: Optional[str] = None, include_aliases: bool = False, page_size: Optional[int] = None,
             client: Optional[AsyncClient] = None,
             api_url: Optional[str] = None, api_key: Optional[str] = None,
             request_timeout: Timeout = DEFAULT) -> AsyncIterator[MachineInfo]:
        c = shared_client(client, api_url, api_key)
        return c.pages(lambda tok: _ops.list_machines(state, metadata, template, include_aliases, page_size, tok,
                                                      request_timeout), "machines", MachineInfo.from_json)

    async def _kill_self(self, *, request_timeout: Timeout = DEFAULT) -> bool:
        return await _kill_by_id(self.id, client=self._client, request_timeout=request_timeout)

    kill = _config.either(_kill_by_id, _kill_self)

    def _set(self, info: MachineInfo) -> MachineInfo:
        self._info = info
        return info

    async def get_info(self, *, request_timeout: Timeout = DEFAULT) -> MachineInfo:
        return self._set(await self._client.call(_ops.get(self.id, request_timeout)))

    async def is_running(self, *, request_timeout: Timeout = DEFAULT) -> bool:
        return (await self.get_info(request_timeout=request_timeout)).status == "running"

    async def pause(self, *, request_timeout: Timeout = DEFAULT) -> Snapshot:
        return await self._client.call(_ops.pause(self.id, request_timeout))

    async def create_snapshot(self, *, name: Optional[str] = None, idempotency_key: Optional[str] = None,
                              request_timeout: Timeout = DEFAULT) -> Snapshot:
        return await self._client.call(_ops.create_snapshot(self.id, name, request_timeout, idempotency_key))

    async def fork(self, count: int = 1, *, idempotency_key: Optional[str] = None,
                   request_timeout: Timeout = DEFAULT) -> List["AsyncMachine"]:
        _, children = _ops.fork_result(await self._client.call(_ops.fork(self.id, count, request_timeout, idempotency_key)))
        return [AsyncMachine(m, self._client) for m in children]

    async def stop(self, *, grace: Optional[float] = None, request_timeout: Timeout = DEFAULT) -> MachineInfo:
        return self._set(await self._client.call(_ops.stop(self.id, grace, request_timeout)))

    async def start(self, *, request_timeout: Timeout = DEFAULT) -> MachineInfo:
        return self._set(await self._client.call(_ops.start(self.id, request_timeout)))

    async def wait(self, timeout: Optional[float] = None, *, request_timeout: Timeout = DEFAULT) -> MainExit:
        return MainExit.from_json(await self._client.call(_ops.wait(self.id, timeout, request_timeout)))

    async def checkpoint(self, *, request_timeout: Timeout = DEFAULT) -> Snapshot:
        return await self._client.call(_ops.checkpoint(self.id, request_timeout))

    async def checkpoints(self, *, request_timeout: Timeout = DEFAULT) -> List[Snapshot]:
        it = self._client.pages(lambda tok: _ops.checkpoints_page(self.id, None, tok, request_timeout),
                                "snapshots", Snapshot.from_json)
        return [s async for s in it]

    async def restore_checkpoint(self, snapshot_id: str, *, request_timeout: Timeout = DEFAULT) -> MachineInfo:
        return self._set(await self._client.call(_ops.restore_checkpoint(self.id, snapshot_id, request_timeout)))

    async def pin_checkpoint(self, snapshot_id: str, pinned: bool = True, *,
                             request_timeout: Timeout = DEFAULT) -> Snapshot:
        return await self._client.call(_ops.pin(self.id, snapshot_id, pinned, request_timeout))

    async def set_timeout(self, timeout: float, timeout_action: Optional[str] = None, *,
                          request_timeout: Timeout = DEFAULT) -> Lease:
        return await self._client.call(_ops.set_timeout(self.id, timeout, timeout_action, request_timeout))

    def keep_alive(self, timeout_secs: Optional[float] = None, refresh_every_secs: Optional[float] = None,
                   *, on_error: Optional[Callable[[errors.NullspaceError], Any]] = None) -> "AsyncKeepAlive":
        return AsyncKeepAlive(self, timeout_secs, refresh_every_secs, on_error)

    async def get_metrics(self, *, request_timeout: Timeout = DEFAULT) -> List[Metric]:
        return await self._client.call(_ops.metrics(self.id, request_timeout))

    def monitor(self) -> "AsyncMonitor":
        return AsyncMonitor(self)

    async def get_url(self, port: int, *, expires_in: Optional[float] = None,
                      request_timeout: Timeout = DEFAULT) -> MachineURL:
        return await self._client.call(_ops.url(self.id, port, expires_in, request_timeout))

    async def __aenter__(self) -> "AsyncMachine":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        target = self._info.latest_id or self.id
        try:
            target = (await self._client.call(_ops.get(self.id))).latest_id or self.id
        except errors.NullspaceError:
            pass
        await AsyncMachine.kill(target, client=self._client)


class AsyncFiles:
    def __init__(self, m: AsyncMachine) -> None:
        self._m = m

    @overload
    async def read(self, path: str, format: Literal["text"] = "text", *, user: Optional[str] = ..., request_timeout: Timeout = ...) -> str: ...
    @overload
    async def read(self, path: str, format: Literal["bytes"], *, user: Optional[str] = ..., request_timeout: Timeout = ...) -> bytes: ...
    @overload
    async def read(self, path: str, format: Literal["stream"], *, user: Optional[str] = ..., request_timeout: Timeout = ...) -> "AsyncFileStream": ...

    async def read(self, path: str, format: str = "text", *, user: Optional[str] = None, request_timeout: Timeout = DEFAULT) -> Any:
        c = self._m._client
        r = _ops.read_file(self._m.id, path, request_timeout, user=user)
        if format == "stream":
            return AsyncFileStream(await c.stream(r))
        if format not in ("text", "bytes"):
            raise errors.InvalidArgumentError(f'format must be "text", "bytes" or "stream", not {format!r}',
                                              code="invalid_argument")
        data = await c.call(r)
        return data if format == "bytes" else data.decode("utf-8")

    async def write(self, path: str, data: Any, *, user: Optional[str] = None, mode: Optional[int] = None,
                    metadata: Optional[Dict[str, str]] = None, request_timeout: Timeout = DEFAULT) -> WriteInfo:
        """Like Files.write; also takes an async iterable of bytes."""
        return await self._m._client.call(_ops.write_file(self._m.id, path, data, mode, request_timeout, user=user,
                                                          metadata=metadata))

    async def list(self, path: str, *, user: Optional[str] = None, depth: Optional[int] = None, request_timeout: Timeout = DEFAULT) -> List[EntryInfo]:
        return await self._m._client.call(_ops.list_files(self._m.id, path, depth, request_timeout, user=user))

    async def stat(self, path: str, *, user: Optional[str] = None, request_timeout: Timeout = DEFAULT) -> EntryInfo:
        return await self._m._client.call(_ops.stat(self._m.id, path, request_timeout, user=user))

    async def exists(self, path: str, *, user: Optional[str] = None, request_timeout: Timeout = DEFAULT) -> bool:
        try:
            await self.stat(path, user=user, request_timeout=request_timeout)
        except errors.PathNotFoundError:
            return False
        return True

    async def remove(self, path: str, *, user: Optional[str] = None, recursive: bool = False, request_timeout: Timeout = DEFAULT) -> None:
        await self._m._client.call(_ops.remove(self._m.id, path, recursive, request_timeout, user=user))

    async def make_dir(self, path: str, *, user: Optional[str] = None, request_timeout: Timeout = DEFAULT) -> EntryInfo:
        return await self._m._client.call(_ops.make_dir(self._m.id, path, request_timeout, user=user))

    async def rename(self, old_path: str, new_path: str, *, user: Optional[str] = None, request_timeout: Timeout = DEFAULT) -> EntryInfo:
        return await self._m._client.call(_ops.rename(self._m.id, old_path, new_path, request_timeout, user=user))

    async def watch_dir(self, path: str, *, recursive: bool = False,
                        on_event: Optional[Callable[[FileEvent], Any]] = None) -> "AsyncWatchHandle":
        """Like Files.watch_dir: ``async for event in handle``, or
        ``on_event`` (a function or a coroutine function) on a task."""
        h = AsyncWatchHandle(self._m, path, recursive)
        await h._open()
        if on_event is not None:
            h._start_pump(on_event)
        return h


class AsyncFileStream:
    def __init__(self, s: AsyncStreamResponse) -> None:
        self._s = s
        self.size: Optional[int] = int(s.headers["content-length"]) if "content-length" in s.headers else None

    async def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            return b"".join([b async for b in self])
        return await self._s.read(n)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._s.__aiter__()

    async def aclose(self) -> None:
        await self._s.aclose()

    async def __aenter__(self) -> "AsyncFileStream":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()


class AsyncCommands:
    def __init__(self, m: AsyncMachine) -> None:
        self._m = m

    # The result's type follows background: a CommandResult, or a handle.
    @overload
    async def run(
        self,
        cmd: Union[str, Sequence[str]],
        *,
        shell: bool = ...,
        cwd: Optional[str] = ...,
        envs: Optional[Mapping[str, str]] = ...,
        user: Optional[str] = ...,
        stdin: Union[str, bytes, None] = ...,
        timeout: Optional[float] = ...,
        background: Literal[False] = ...,
        on_stdout: Optional[OutputCallback] = ...,
        on_stderr: Optional[OutputCallback] = ...,
        check: bool = ...,
        keep_stdin_open: bool = ...,
        request_timeout: Timeout = ...,
    ) -> CommandResult: ...

    @overload
    async def run(
        self,
        cmd: Union[str, Sequence[str]],
        *,
        shell: bool = ...,
        cwd: Optional[str] = ...,
        envs: Optional[Mapping[str, str]] = ...,
        user: Optional[str] = ...,
        stdin: Union[str, bytes, None] = ...,
        timeout: Optional[float] = ...,
        background: Literal[True],
        on_stdout: Optional[OutputCallback] = ...,
        on_stderr: Optional[OutputCallback] = ...,
        check: bool = ...,
        keep_stdin_open: bool = ...,
        request_timeout: Timeout = ...,
    ) -> "AsyncCommandHandle": ...

    @overload
    async def run(
        self,
        cmd: Union[str, Sequence[str]],
        *,
        shell: bool = ...,
        cwd: Optional[str] = ...,
        envs: Optional[Mapping[str, str]] = ...,
        user: Optional[str] = ...,
        stdin: Union[str, bytes, None] = ...,
        timeout: Optional[float] = ...,
        background: bool,
        on_stdout: Optional[OutputCallback] = ...,
        on_stderr: Optional[OutputCallback] = ...,
        check: bool = ...,
        keep_stdin_open: bool = ...,
        request_timeout: Timeout = ...,
    ) -> Union[CommandResult, "AsyncCommandHandle"]: ...

    async def run(
        self,
        cmd: Union[str, Sequence[str]],
        *,
        shell: bool = False,
        cwd: Optional[str] = None,
        envs: Optional[Mapping[str, str]] = None,
        user: Optional[str] = None,
        stdin: Union[str, bytes, None] = None,
        timeout: Optional[float] = None,
        background: bool = False,
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
        check: bool = False,
        keep_stdin_open: bool = False,
        request_timeout: Timeout = DEFAULT,
    ) -> Any:
        """Like Commands.run; callbacks may be plain functions or coroutine
        functions."""
        streamed = on_stdout is not None or on_stderr is not None
        r = _ops.run(self._m.id, cmd, shell=shell, cwd=cwd, envs=envs, user=user, stdin=stdin,
                     keep_stdin_open=keep_stdin_open, timeout=timeout, background=background,
                     stream=streamed and not background, t=request_timeout)
        c = self._m._client
        if background:
            h = AsyncCommandHandle(self._m, int((await c.call(r))["pid"]))
            if streamed:
                h._start_pump(on_stdout, on_stderr)
            return h
        if not streamed:
            return check_result(await c.call(r), check)
        col = Collector()
        async with await c.stream(r) as s:
            async for line in s.lines():
                await _dispatch(col, col.feed(line), on_stdout, on_stderr)
        if col.exit is None:
            raise errors.ConnectionError("the command's stream ended before its exit", code="connection_failed")
        return check_result(col.result(), check)

    async def connect(self, pid: int, *, stdout_offset: int = 0, stderr_offset: int = 0) -> "AsyncCommandHandle":
        if not any(p.pid == pid for p in await self.list()):
            raise errors.ProcessNotFoundError(f"no command with pid {pid} in machine {self._m.id}",
                                              code="process_not_found", status=404)
        h = AsyncCommandHandle(self._m, pid)
        h._col.offsets = {"stdout": stdout_offset, "stderr": stderr_offset}
        return h

    async def list(self, *, request_timeout: Timeout = DEFAULT) -> List[ProcessInfo]:
        return await self._m._client.call(_ops.processes(self._m.id, request_timeout))

    async def kill(self, pid: int, *, request_timeout: Timeout = DEFAULT) -> bool:
        try:
            await self._m._client.call(_ops.kill_process(self._m.id, pid, request_timeout))
        except errors.ProcessNotFoundError:
            return False
        return True

    async def send_signal(self, pid: int, signal: str = "SIGTERM", *, request_timeout: Timeout = DEFAULT) -> None:
        await self._m._client.call(_ops.signal(self._m.id, pid, signal, request_timeout))

    async def send_stdin(self, pid: int, data: Union[str, bytes], *, close: bool = False,
                         request_timeout: Timeout = DEFAULT) -> None:
        await self._m._client.call(_ops.send_stdin(self._m.id, pid, data, close, request_timeout))


async def _dispatch(col: Collector, chunk: Optional[OutputChunk], on_stdout: Optional[OutputCallback],
                    on_stderr: Optional[OutputCallback]) -> None:
    if chunk is None or not chunk.data:
        return
    cb = on_stdout if chunk.stream == "stdout" else on_stderr
    if cb is not None:
        res = cb(chunk.data)
        if asyncio.iscoroutine(res):
            await res


class AsyncCommandHandle:
    """The asyncio twin of CommandHandle: ``async for chunk in handle``,
    ``await handle.wait()``."""

    def __init__(self, m: AsyncMachine, pid: int) -> None:
        self.pid = pid
        self._m = m
        self._col = Collector(pid)
        self._lock = asyncio.Lock()
        self._pump: Optional["asyncio.Task[None]"] = None
        self._pump_err: Optional[BaseException] = None

    def __repr__(self) -> str:
        return f"AsyncCommandHandle(pid={self.pid}, machine={self._m.id!r})"

    @property
    def stdout_offset(self) -> int:
        return self._col.offsets["stdout"]

    @property
    def stderr_offset(self) -> int:
        return self._col.offsets["stderr"]

    @property
    def exit_code(self) -> Optional[int]:
        return None if self._col.exit is None else int(self._col.exit.get("exit_code") or 0)

    async def _chunks(self) -> AsyncIterator[OutputChunk]:
        attempt = 0
        c = self._m._client
        while self._col.exit is None:
            off = self._col.offsets
            try:
                async with await c.stream(_ops.output(self._m.id, self.pid, True, off["stdout"], off["stderr"])) as s:
                    async for line in s.lines():
                        ch = self._col.feed(line)
                        attempt = 0
                        if ch is not None:
                            yield ch
                if self._col.exit is None:
                    raise errors.ConnectionError("the output stream ended before the exit", code="connection_failed")
            except errors.NullspaceError as e:
                if not reconnectable(e) or attempt >= 6:
                    raise
                await asyncio.sleep(backoff(attempt, None))
                attempt += 1

    async def __aiter__(self) -> AsyncIterator[OutputChunk]:
        async with self._lock:
            async for ch in self._chunks():
                yield ch

    async def wait(self, on_stdout: Optional[OutputCallback] = None, on_stderr: Optional[OutputCallback] = None,
                   *, check: bool = False) -> CommandResult:
        if self._pump is not None:
            await self._pump
            if self._pump_err is not None:
                raise self._pump_err
        else:
            async with self._lock:
                async for ch in self._chunks():
                    await _dispatch(self._col, ch, on_stdout, on_stderr)
        return check_result(self._col.result(), check)

    def _start_pump(self, on_stdout: Optional[OutputCallback], on_stderr: Optional[OutputCallback]) -> None:
        async def pump() -> None:
            try:
                async with self._lock:
                    async for ch in self._chunks():
                        await _dispatch(self._col, ch, on_stdout, on_stderr)
            except Exception as e:  # surfaced by wait()
                self._pump_err = e

        self._pump = asyncio.ensure_future(pump())

    async def kill(self) -> bool:
        return await self._m.commands.kill(self.pid)

    async def send_stdin(self, data: Union[str, bytes], *, close: bool = False) -> None:
        await self._m.commands.send_stdin(self.pid, data, close=close)


class AsyncPty:
    """Like Pty, for asyncio."""

    def __init__(self, m: AsyncMachine) -> None:
        self._m = m

    async def create(self, size: Optional[PtySize] = None, *, cmd: Union[str, Sequence[str], None] = None,
                     cwd: Optional[str] = None, envs: Optional[Mapping[str, str]] = None, user: Optional[str] = None,
                     timeout: Optional[float] = None, on_data: Optional[Callable[[bytes], Any]] = None,
                     request_timeout: Timeout = DEFAULT) -> "AsyncPtyHandle":
        size = size or PtySize()
        shell = cmd is None or isinstance(cmd, str)
        r = _ops.run(self._m.id, DEFAULT_SHELL if cmd is None else cmd, shell=shell, cwd=cwd, envs=envs, user=user,
                     stdin=None, keep_stdin_open=False, timeout=timeout, background=True, stream=False,
                     t=request_timeout, pty=size)
        h = AsyncPtyHandle(self._m, int((await self._m._client.call(r))["pid"]))
        if on_data is not None:
            h._start_data_pump(on_data)
        return h

    async def connect(self, pid: int, *, offset: int = 0,
                      on_data: Optional[Callable[[bytes], Any]] = None) -> "AsyncPtyHandle":
        if not any(p.pid == pid for p in await self._m.commands.list()):
            raise errors.ProcessNotFoundError(f"no command with pid {pid} in machine {self._m.id}",
                                              code="process_not_found", status=404)
        h = AsyncPtyHandle(self._m, pid)
        h._col.offsets = {"stdout": offset, "stderr": 0}
        if on_data is not None:
            h._start_data_pump(on_data)
        return h

    async def send_stdin(self, pid: int, data: Union[str, bytes], *, request_timeout: Timeout = DEFAULT) -> None:
        await self._m._client.call(_ops.send_bytes(self._m.id, pid, data, request_timeout))

    async def resize(self, pid: int, size: PtySize, *, request_timeout: Timeout = DEFAULT) -> None:
        await self._m._client.call(_ops.resize(self._m.id, pid, size, request_timeout))

    async def kill(self, pid: int, *, request_timeout: Timeout = DEFAULT) -> bool:
        return await self._m.commands.kill(pid, request_timeout=request_timeout)


class AsyncPtyHandle(AsyncCommandHandle):
    """Like PtyHandle, for asyncio."""

    def __repr__(self) -> str:
        return f"AsyncPtyHandle(pid={self.pid}, machine={self._m.id!r})"

    def _start_data_pump(self, on_data: Callable[[bytes], Any]) -> None:
        async def pump() -> None:
            try:
                async with self._lock:
                    async for ch in self._chunks():
                        if ch.raw:
                            res = on_data(ch.raw)
                            if asyncio.iscoroutine(res):
                                await res
            except Exception as e:  # surfaced by wait()
                self._pump_err = e

        self._pump = asyncio.ensure_future(pump())

    async def send_stdin(self, data: Union[str, bytes], *, close: bool = False) -> None:
        if close:
            raise errors.InvalidArgumentError('a terminal\'s input cannot be closed: send b"\\x04" (Ctrl-D)',
                                              code="invalid_argument")
        await self._m.pty.send_stdin(self.pid, data)

    async def resize(self, size: PtySize) -> None:
        await self._m.pty.resize(self.pid, size)


class AsyncWatchHandle:
    """Like WatchHandle, for asyncio: ``async for``, ``await
    get_new_events()``, ``await stop()``, ``async with``."""

    def __init__(self, m: AsyncMachine, path: str, recursive: bool) -> None:
        self._m = m
        self.path = path
        self.recursive = recursive
        self._log = WatchLog()
        self._stream: Optional[AsyncStreamResponse] = None
        self._lines: Optional[AsyncIterator[bytes]] = None
        self._stopped = False
        self._pump: Optional["asyncio.Task[None]"] = None
        #: Why the on_event task stopped, if it failed.
        self.error: Optional[BaseException] = None

    @property
    def watch_id(self) -> str:
        """The watch's id in the machine (to resume it from elsewhere)."""
        return self._log.watch_id

    @property
    def last_seq(self) -> int:
        """The seq of the last event read: where a reopened stream starts."""
        return self._log.last_seq

    def __repr__(self) -> str:
        return f"AsyncWatchHandle(path={self.path!r}, watch_id={self.watch_id!r}, machine={self._m.id!r})"

    async def _open(self) -> None:
        r = _ops.watch(self._m.id, self.path, self.recursive, self.watch_id, self.last_seq, True)
        s = await self._m._client.stream(r)
        self._stream, self._lines = s, s.lines().__aiter__()
        if not self.watch_id:
            self._log.feed(await self._lines.__anext__())

    async def __aiter__(self) -> AsyncIterator[FileEvent]:
        attempt = 0
        while not self._log.ended and not self._stopped:
            try:
                if self._lines is None:
                    await self._open()
                assert self._lines is not None
                async for line in self._lines:
                    attempt = 0
                    ev = self._log.feed(line)
                    if ev is not None:
                        yield ev
                    if self._log.ended:
                        return
                self._lines = None
                if not self._stopped:
                    raise errors.ConnectionError("the watch stream ended before the watch", code="connection_failed")
            except errors.NullspaceError as e:
                self._lines = None
                if self._stopped:
                    return
                if not reconnectable(e) or attempt >= 6:
                    raise
                await asyncio.sleep(backoff(attempt, None))
                attempt += 1

    def _start_pump(self, on_event: Callable[[FileEvent], Any]) -> None:
        async def pump() -> None:
            try:
                async for ev in self:
                    res = on_event(ev)
                    if asyncio.iscoroutine(res):
                        await res
            except Exception as e:
                if not self._stopped:
                    self.error = e

        self._pump = asyncio.ensure_future(pump())

    async def get_new_events(self) -> List[FileEvent]:
        await self._close_stream()
        r = _ops.watch(self._m.id, self.path, self.recursive, self.watch_id, self.last_seq, False)
        out: List[FileEvent] = []
        async with await self._m._client.stream(r) as s:
            async for line in s.lines():
                ev = self._log.feed(line)
                if ev is not None:
                    out.append(ev)
        return out

    async def _close_stream(self) -> None:
        if self._stream is not None:
            await self._stream.aclose()
            self._stream, self._lines = None, None

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            await self._m._client.call(_ops.unwatch(self._m.id, self.watch_id))
        except (errors.NotFoundError, errors.MachineNotRunningError):
            pass
        await self._close_stream()
        if self._pump is not None:
            self._pump.cancel()

    async def __aenter__(self) -> "AsyncWatchHandle":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()


class AsyncKeepAlive:
    """``async with machine.keep_alive(...)``: see Machine.keep_alive."""

    def __init__(self, m: AsyncMachine, timeout_secs: Optional[float], every: Optional[float],
                 on_error: Optional[Callable[[errors.NullspaceError], Any]]) -> None:
        self._m = m
        self.timeout_secs = timeout_secs
        self.refresh_every_secs = every
        self._on_error = on_error
        self._task: Optional["asyncio.Task[None]"] = None
        self.lease: Optional[Lease] = None
        self.refreshes = 0
        self.error: Optional[errors.NullspaceError] = None

    async def __aenter__(self) -> "AsyncKeepAlive":
        if self.timeout_secs is None:
            self.timeout_secs = ((await self._m.get_info()).timeout_ms or 300_000) / 1000
        if self.refresh_every_secs is None:
            self.refresh_every_secs = self.timeout_secs / 2
        if not 0 < self.refresh_every_secs < self.timeout_secs:
            raise errors.InvalidArgumentError(
                f"refresh_every_secs ({self.refresh_every_secs}) must be above 0 and below timeout_secs "
                f"({self.timeout_secs}), or the lease runs out between refreshes", code="invalid_argument")
        await self._refresh()
        self._task = asyncio.ensure_future(self._loop())
        return self

    async def _refresh(self) -> None:
        assert self.timeout_secs is not None
        self.lease = await self._m.set_timeout(self.timeout_secs)
        self.refreshes += 1

    async def _loop(self) -> None:
        assert self.refresh_every_secs is not None and self.timeout_secs is not None
        wait = self.refresh_every_secs
        deadline = time.monotonic() + self.timeout_secs
        attempt = 0
        while True:
            await asyncio.sleep(wait)
            try:
                await self._refresh()
            except errors.NullspaceError as e:
                _config.warn("keep_alive: refreshing the lease of %s failed: %s", self._m.id, e)
                if self.error is None and self._on_error is not None:
                    self._on_error(e)
                if not e.retryable or time.monotonic() + 1 >= deadline:
                    self.error = e
                    return
                wait = min(backoff(attempt, e.retry_after), max(0.1, deadline - time.monotonic() - 1))
                attempt += 1
                continue
            deadline = time.monotonic() + self.timeout_secs
            wait, attempt = self.refresh_every_secs, 0

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def __aexit__(self, exc_type: Any, *exc: Any) -> None:
        await self.stop()
        if self.error is not None and exc_type is None:
            raise errors.KeepAliveError(
                f"keep_alive could not refresh the lease of machine {self._m.id}: {self.error}",
                code=self.error.code, status=self.error.status) from self.error


class AsyncMonitor:
    """``async for metric in AsyncMonitor(machine)``: see Monitor."""

    def __init__(self, machine: AsyncMachine) -> None:
        self._m = machine
        self._s: Optional[AsyncStreamResponse] = None
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[Metric]:
        attempt = 0
        c = self._m._client
        while not self._closed:
            try:
                self._s = await c.stream(_ops.monitor(self._m.id))
                async with self._s:
                    async for line in self._s.lines():
                        attempt = 0
                        yield Metric.from_json(json.loads(line))
            except errors.MachineNotFoundError:
                return
            except errors.NullspaceError as e:
                if self._closed:
                    return
                if not reconnectable(e) or attempt >= 8:
                    raise
            if self._closed:
                return
            try:
                if (await self._m.get_info()).status in ("killed", "failed"):
                    return
            except errors.MachineNotFoundError:
                return
            await asyncio.sleep(backoff(attempt, None))
            attempt += 1

    async def aclose(self) -> None:
        self._closed = True
        if self._s is not None:
            await self._s.aclose()

    async def __aenter__(self) -> "AsyncMonitor":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()
