"""Machines, their files and commands: the blocking surface.

    from nullspace import Machine

    with Machine.create(template="base") as machine:
        print(machine.commands.run("uname -a").stdout)
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Literal, Mapping, Optional, Sequence, Union, overload

from . import _config, _ops, errors
from ._commands import Collector, OutputCallback, WatchLog, reconnectable
from ._commands import check as check_result
from ._config import DEFAULT, Timeout, backoff
from ._http import StreamResponse
from .client import Client, shared_client
from .models import (
    CommandResult,
    EntryInfo,
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
    WriteInfo,
)

#: What pty.create() runs without a command: a login bash where the
#: template has one, sh otherwise (as `nullspace shell` does).
DEFAULT_SHELL = "command -v bash >/dev/null 2>&1 && exec bash -l || exec sh -l"

DataCallback = Callable[[bytes], Any]
EventCallback = Callable[[FileEvent], Any]



def _kill_by_id(machine_id: str, *, client: Optional[Client] = None, api_url: Optional[str] = None,
                api_key: Optional[str] = None, request_timeout: Timeout = DEFAULT) -> bool:
    """Kills a machine: ``Machine.kill(id)`` or ``machine.kill()``. Any id
    of the machine's lineage (a paused alias too) ends the machine: its
    latest execution, its paused aliases and its history. True when the
    machine is killed (by this call or before), False when there is no such
    machine."""
    c = shared_client(client, api_url, api_key)
    try:
        c.call(_ops.kill(machine_id, request_timeout))
    except errors.MachineNotFoundError:
        return False
    return True


class Machine:
    """A handle on one machine execution, named by ``id``.

    A pause keeps the id as a *paused alias*; resume and connect return a
    handle with a new id, which is the one to store. Calls on a paused
    alias act on the machine's latest execution (kill, pause, files and
    commands when it runs); files and commands raise
    MachineNotRunningError while the machine is paused: connect() first.
    """

    def __init__(self, info: MachineInfo, client: Client) -> None:
        self.id: str = info.id
        self._info = info
        self._client = client
        self.files = Files(self)
        self.commands = Commands(self)
        self.pty = Pty(self)

    def __repr__(self) -> str:
        return f"Machine(id={self.id!r}, status={self._info.status!r})"

    @property
    def client(self) -> Client:
        return self._client

    @property
    def info(self) -> MachineInfo:
        """What the last call that returned this machine said about it (no
        request; get_info() asks the server)."""
        return self._info

    # -- entry points

    @classmethod
    def create(
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
        client: Optional[Client] = None,
        api_url: Optional[str] = None,
        api_key: Optional[str] = None,
        request_timeout: Timeout = DEFAULT,
    ) -> "Machine":
        """Creates a running machine from a template (default "base") or, with
        ``snapshot_id``, as a child of a reusable snapshot.

        ``timeout`` is the lease in seconds (default 300): at its end the
        machine is destroyed, paused with ``on_timeout="pause"`` (memory and
        files kept), or stopped with ``on_timeout="stop"`` (files kept,
        memory and processes dropped: ``connect`` boots it afresh);
        ``auto_resume=True`` (needs pause or stop) lets traffic to its public
        URLs wake it. ``idle_timeout`` pauses it after that many seconds without
        network activity. ``on_pause`` / ``on_resume`` are shell commands run
        inside it around every pause and restore. ``disk_mb`` bounds what it
        writes to its root file system (default: the server's); past it,
        writes inside fail with ENOSPC.

        Every create is sent with an Idempotency-Key (a new UUID, or
        ``idempotency_key``), so it is retried like an idempotent call: after
        a dropped connection or a timeout the server answers the retry with
        the first create's machine, never a second one, for 24 hours. Pass
        your own key (1 to 255 printable ASCII characters) to retry a create
        across process restarts; the same key with other arguments raises
        ``ConflictError`` with code ``idempotency_key_reused``.
        """
        c = shared_client(client, api_url, api_key)
        r = _ops.create(
            template=template, timeout=timeout, on_timeout=on_timeout, auto_resume=auto_resume,
            idle_timeout=idle_timeout, persistence=persistence, cpu=cpu, memory_mb=memory_mb, disk_mb=disk_mb, envs=envs,
            metadata=metadata, volumes=volumes, allow_internet=allow_internet, command=command,
            on_pause=on_pause, on_resume=on_resume, snapshot_id=snapshot_id, public_ports=public_ports,
            checkpoint_retention=checkpoint_retention, request_timeout=request_timeout, key=idempotency_key,
        )
        return cls(c.call(r), c)

    @classmethod
    def connect(cls, machine_id: str, *, client: Optional[Client] = None, api_url: Optional[str] = None,
                api_key: Optional[str] = None, request_timeout: Timeout = DEFAULT) -> "Machine":
        """The running latest execution of the machine ``machine_id`` names
        (any id of its lineage): a paused one is resumed, a stopped one
        started. The returned handle's id may be new: store it."""
        c = shared_client(client, api_url, api_key)
        return cls(c.call(_ops.connect(machine_id, request_timeout)), c)

    @classmethod
    def resume(cls, snapshot_id: str, *, client: Optional[Client] = None, api_url: Optional[str] = None,
               api_key: Optional[str] = None, request_timeout: Timeout = DEFAULT) -> "Machine":
        """A new running machine restored from a paused machine's snapshot
        (the Snapshot that pause() returned)."""
        c = shared_client(client, api_url, api_key)
        return cls(c.call(_ops.resume(snapshot_id, request_timeout)), c)

    @classmethod
    def get_info_by_id(cls, machine_id: str, *, client: Optional[Client] = None, api_url: Optional[str] = None,
                       api_key: Optional[str] = None, request_timeout: Timeout = DEFAULT) -> MachineInfo:
        """The machine's state; read-only: it never wakes a paused machine."""
        c = shared_client(client, api_url, api_key)
        return c.call(_ops.get(machine_id, request_timeout))

    @classmethod
    def list(cls, *, state: Optional[str] = None, metadata: Optional[Mapping[str, str]] = None,
             template: Optional[str] = None, include_aliases: bool = False, page_size: Optional[int] = None,
             client: Optional[Client] = None,
             api_url: Optional[str] = None, api_key: Optional[str] = None,
             request_timeout: Timeout = DEFAULT) -> Iterator[MachineInfo]:
        """Every machine (one row per machine: its latest execution), oldest
        first, read a page at a time as the iteration goes; filtered by
        state, template and metadata (all pairs must match). ``page_size``
        (1..1000, default 100) is how many rows each request reads."""
        c = shared_client(client, api_url, api_key)
        return c.pages(lambda tok: _ops.list_machines(state, metadata, template, include_aliases, page_size, tok,
                                                      request_timeout), "machines", MachineInfo.from_json)

    def _kill_self(self, *, request_timeout: Timeout = DEFAULT) -> bool:
        return _kill_by_id(self.id, client=self._client, request_timeout=request_timeout)

    kill = _config.either(_kill_by_id, _kill_self)

    # -- lifecycle

    def _set(self, info: MachineInfo) -> MachineInfo:
        self._info = info
        return info

    def get_info(self, *, request_timeout: Timeout = DEFAULT) -> MachineInfo:
        """The machine's current state (read-only)."""
        return self._set(self._client.call(_ops.get(self.id, request_timeout)))

    def is_running(self, *, request_timeout: Timeout = DEFAULT) -> bool:
        return self.get_info(request_timeout=request_timeout).status == "running"

    def pause(self, *, request_timeout: Timeout = DEFAULT) -> Snapshot:
        """Hibernates the machine: memory and files go into a snapshot, CPU
        and memory are freed, and this id stays as a paused alias.
        Machine.connect(id) or Machine.resume(snapshot.id) bring it back."""
        snap = self._client.call(_ops.pause(self.id, request_timeout))
        return snap

    def create_snapshot(self, *, name: Optional[str] = None, idempotency_key: Optional[str] = None,
                        request_timeout: Timeout = DEFAULT) -> Snapshot:
        """A reusable snapshot of the running machine, which keeps running;
        Machine.create(snapshot_id=...) makes independent children of it.
        ``name`` names it (unique in the team, else ``ConflictError`` with
        code ``snapshot_name_exists``); the name then works wherever the id
        does, until the snapshot is deleted. Sent with an Idempotency-Key
        and retried like create (see there)."""
        return self._client.call(_ops.create_snapshot(self.id, name, request_timeout, idempotency_key))

    def fork(self, count: int = 1, *, idempotency_key: Optional[str] = None,
             request_timeout: Timeout = DEFAULT) -> List["Machine"]:
        """``count`` (1..16) running children of one snapshot of this
        machine, which keeps running; all or none. Sent with an
        Idempotency-Key and retried like create (see there)."""
        _, children = _ops.fork_result(self._client.call(_ops.fork(self.id, count, request_timeout, idempotency_key)))
        return [Machine(m, self._client) for m in children]

    def stop(self, *, grace: Optional[float] = None, request_timeout: Timeout = DEFAULT) -> MachineInfo:
        """Ends every process (SIGTERM, SIGKILL after ``grace`` seconds,
        default 10) and keeps only the files; start() boots it again under
        the same id."""
        return self._set(self._client.call(_ops.stop(self.id, grace, request_timeout)))

    def start(self, *, request_timeout: Timeout = DEFAULT) -> MachineInfo:
        """Boots a stopped machine from its files under the same id."""
        return self._set(self._client.call(_ops.start(self.id, request_timeout)))

    def wait(self, timeout: Optional[float] = None, *, request_timeout: Timeout = DEFAULT) -> MainExit:
        """Waits until the machine's main process (``command`` at create) has
        exited and returns how; TimeoutError after ``timeout`` seconds."""
        return MainExit.from_json(self._client.call(_ops.wait(self.id, timeout, request_timeout)))

    def checkpoint(self, *, request_timeout: Timeout = DEFAULT) -> Snapshot:
        """A checkpoint in the machine's history; the machine keeps running."""
        return self._client.call(_ops.checkpoint(self.id, request_timeout))

    def checkpoints(self, *, request_timeout: Timeout = DEFAULT) -> List[Snapshot]:
        """The lineage's history (pauses, checkpoints), oldest first."""
        return list(self._client.pages(lambda tok: _ops.checkpoints_page(self.id, None, tok, request_timeout),
                                       "snapshots", Snapshot.from_json))

    def restore_checkpoint(self, snapshot_id: str, *, request_timeout: Timeout = DEFAULT) -> MachineInfo:
        """Replaces the machine's state by one of its checkpoints, in place:
        the id stays."""
        return self._set(self._client.call(_ops.restore_checkpoint(self.id, snapshot_id, request_timeout)))

    def pin_checkpoint(self, snapshot_id: str, pinned: bool = True, *, request_timeout: Timeout = DEFAULT) -> Snapshot:
        """Keeps a checkpoint whatever the retention (pinned=False undoes it)."""
        return self._client.call(_ops.pin(self.id, snapshot_id, pinned, request_timeout))

    def set_timeout(self, timeout: float, timeout_action: Optional[str] = None, *,
                    request_timeout: Timeout = DEFAULT) -> Lease:
        """Refreshes the lease: the deadline becomes ``timeout`` seconds from
        now, and ``timeout_action`` ("destroy", "hibernate" or "stop") what
        happens then (None keeps the current one). Returns the lease in
        effect."""
        return self._client.call(_ops.set_timeout(self.id, timeout, timeout_action, request_timeout))

    def keep_alive(self, timeout_secs: Optional[float] = None, refresh_every_secs: Optional[float] = None,
                   *, on_error: Optional[Callable[[errors.NullspaceError], Any]] = None) -> "KeepAlive":
        """A context manager that holds the machine's lease open while its
        block runs: it refreshes at once, then every ``refresh_every_secs``
        (default half of ``timeout_secs``) from a background thread.
        ``timeout_secs`` defaults to the machine's current window. A refresh
        that fails is retried; if the lease could not be kept, the block's
        exit raises KeepAliveError (and ``on_error`` is called at once)."""
        return KeepAlive(self, timeout_secs, refresh_every_secs, on_error)

    def get_metrics(self, *, request_timeout: Timeout = DEFAULT) -> List[Metric]:
        """The machine's resource samples of the last 10 minutes (one every
        5 s), oldest first."""
        return self._client.call(_ops.metrics(self.id, request_timeout))

    def monitor(self) -> "Monitor":
        """An iterator of live samples; see Monitor."""
        return Monitor(self)

    def get_url(self, port: int, *, expires_in: Optional[float] = None, request_timeout: Timeout = DEFAULT) -> MachineURL:
        """The public URL of ``port``, served by the edge. It names the
        machine's lineage, so it survives pauses and resumes; with
        ``auto_resume`` a request to it wakes a paused machine. Signed;
        ``expires_in`` seconds bounds it (default: never expires)."""
        return self._client.call(_ops.url(self.id, port, expires_in, request_timeout))

    def __enter__(self) -> "Machine":
        return self

    def __exit__(self, *exc: Any) -> None:
        """Kills the machine (its latest execution, so a machine paused and
        resumed inside the block goes too)."""
        target = self._info.latest_id or self.id
        try:
            info = self._client.call(_ops.get(self.id))
            target = info.latest_id or self.id
        except errors.NullspaceError:
            pass
        Machine.kill(target, client=self._client)


class Files:
    """The machine's filesystem: ``machine.files``."""

    def __init__(self, m: Machine) -> None:
        self._m = m

    @overload
    def read(self, path: str, format: Literal["text"] = "text", *, user: Optional[str] = ..., request_timeout: Timeout = ...) -> str: ...
    @overload
    def read(self, path: str, format: Literal["bytes"], *, user: Optional[str] = ..., request_timeout: Timeout = ...) -> bytes: ...
    @overload
    def read(self, path: str, format: Literal["stream"], *, user: Optional[str] = ..., request_timeout: Timeout = ...) -> "FileStream": ...

    def read(self, path: str, format: str = "text", *, user: Optional[str] = None, request_timeout: Timeout = DEFAULT) -> Any:
        """The file's content: ``format="text"`` a str (UTF-8), ``"bytes"``,
        or ``"stream"`` a FileStream to read in chunks (close it, or use it in
        a with block)."""
        c = self._m._client
        r = _ops.read_file(self._m.id, path, request_timeout, user=user)
        if format == "stream":
            return FileStream(c.stream(r))
        data = c.call(r)
        if format == "bytes":
            return data
        if format == "text":
            return data.decode("utf-8")
        raise errors.InvalidArgumentError(f'format must be "text", "bytes" or "stream", not {format!r}',
                                          code="invalid_argument")

    def write(self, path: str, data: Any, *, user: Optional[str] = None, mode: Optional[int] = None,
              metadata: Optional[Dict[str, str]] = None, request_timeout: Timeout = DEFAULT) -> WriteInfo:
        """Creates or replaces a file (and its parent directories) with
        ``data``: str (UTF-8), bytes, a file opened in binary mode or any
        iterable of bytes. Files and iterables are streamed, never read
        whole into memory. ``mode`` sets the permission bits (0o755).
        ``metadata`` is stored on the file (user.e2b.KEY extended
        attributes; printable ASCII), replacing what it had; EntryInfo
        .metadata reads it back."""
        return self._m._client.call(_ops.write_file(self._m.id, path, data, mode, request_timeout, user=user,
                                                    metadata=metadata))

    def list(self, path: str, *, user: Optional[str] = None, depth: Optional[int] = None, request_timeout: Timeout = DEFAULT) -> List[EntryInfo]:
        """The entries of a directory (``depth`` > 1 descends)."""
        return self._m._client.call(_ops.list_files(self._m.id, path, depth, request_timeout, user=user))

    def stat(self, path: str, *, user: Optional[str] = None, request_timeout: Timeout = DEFAULT) -> EntryInfo:
        return self._m._client.call(_ops.stat(self._m.id, path, request_timeout, user=user))

    def exists(self, path: str, *, user: Optional[str] = None, request_timeout: Timeout = DEFAULT) -> bool:
        try:
            self.stat(path, user=user, request_timeout=request_timeout)
        except errors.PathNotFoundError:
            return False
        return True

    def remove(self, path: str, *, user: Optional[str] = None, recursive: bool = False, request_timeout: Timeout = DEFAULT) -> None:
        """Deletes a file or an empty directory; ``recursive`` a whole tree."""
        self._m._client.call(_ops.remove(self._m.id, path, recursive, request_timeout, user=user))

    def make_dir(self, path: str, *, user: Optional[str] = None, request_timeout: Timeout = DEFAULT) -> EntryInfo:
        """Creates a directory and its parents; an existing one is fine."""
        return self._m._client.call(_ops.make_dir(self._m.id, path, request_timeout, user=user))

    def rename(self, old_path: str, new_path: str, *, user: Optional[str] = None, request_timeout: Timeout = DEFAULT) -> EntryInfo:
        return self._m._client.call(_ops.rename(self._m.id, old_path, new_path, request_timeout, user=user))

    def watch_dir(self, path: str, *, recursive: bool = False, on_event: Optional[EventCallback] = None) -> "WatchHandle":
        """Watches a directory (``recursive``: its whole tree) for changes
        made in the machine, from now on. Iterate over the handle for
        FileEvent values as they come, or pass ``on_event`` to get them on a
        thread of their own, or poll with ``get_new_events()``. A dropped
        connection is reopened where it left off; ``stop()`` (or the end of
        a with block) removes the watch."""
        return WatchHandle(self._m, path, recursive, on_event)


class FileStream:
    """A file being read from a machine: ``read(n)``, iteration over
    chunks, a context manager."""

    def __init__(self, s: StreamResponse) -> None:
        self._s = s
        self.size: Optional[int] = int(s.headers["content-length"]) if "content-length" in s.headers else None

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            return b"".join(self)
        return self._s.read(n)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._s)

    def close(self) -> None:
        self._s.close()

    def __enter__(self) -> "FileStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Commands:
    """Processes in the machine: ``machine.commands``."""

    def __init__(self, m: Machine) -> None:
        self._m = m

    # The result's type follows background: a CommandResult, or a handle.
    @overload
    def run(
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
    def run(
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
    ) -> "CommandHandle": ...

    @overload
    def run(
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
    ) -> Union[CommandResult, "CommandHandle"]: ...

    def run(
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
        """Runs a command: ``cmd`` is an argv list, or a string split like a
        shell would (``shell=True`` runs it with /bin/sh -c instead, for
        pipes and redirections).

        In the foreground it returns a CommandResult once the command exits
        (``timeout`` seconds kill it first, default 60; 0: no limit). A
        non-zero exit is not an error unless ``check=True``
        (CommandExitError). ``on_stdout``/``on_stderr`` get the output as it
        comes. With ``background=True`` it returns a CommandHandle at once.
        A command is never sent twice."""
        streamed = on_stdout is not None or on_stderr is not None
        r = _ops.run(self._m.id, cmd, shell=shell, cwd=cwd, envs=envs, user=user, stdin=stdin,
                     keep_stdin_open=keep_stdin_open, timeout=timeout, background=background,
                     stream=streamed and not background, t=request_timeout)
        c = self._m._client
        if background:
            pid = int(c.call(r)["pid"])
            h = CommandHandle(self._m, pid)
            if streamed:
                h._start_pump(on_stdout, on_stderr)
            return h
        if not streamed:
            return check_result(c.call(r), check)
        col = Collector()
        with c.stream(r) as s:
            for line in s.lines():
                col.dispatch(col.feed(line), on_stdout, on_stderr)
        if col.exit is None:
            raise errors.ConnectionError("the command's stream ended before its exit", code="connection_failed")
        return check_result(col.result(), check)

    def connect(self, pid: int, *, stdout_offset: int = 0, stderr_offset: int = 0) -> "CommandHandle":
        """A handle on a command started earlier, also one started before the
        machine was paused and resumed (its processes are part of its
        state). Its output is read from the offsets given (default: all the
        machine still holds)."""
        procs = self.list()
        if not any(p.pid == pid for p in procs):
            raise errors.ProcessNotFoundError(f"no command with pid {pid} in machine {self._m.id}",
                                              code="process_not_found", status=404)
        h = CommandHandle(self._m, pid)
        h._col.offsets = {"stdout": stdout_offset, "stderr": stderr_offset}
        return h

    def list(self, *, request_timeout: Timeout = DEFAULT) -> List[ProcessInfo]:
        """The commands the machine's agent started (running and exited)."""
        return self._m._client.call(_ops.processes(self._m.id, request_timeout))

    def kill(self, pid: int, *, request_timeout: Timeout = DEFAULT) -> bool:
        """SIGKILL to the command's process group; False if it is gone."""
        try:
            self._m._client.call(_ops.kill_process(self._m.id, pid, request_timeout))
        except errors.ProcessNotFoundError:
            return False
        return True

    def send_signal(self, pid: int, signal: str = "SIGTERM", *, request_timeout: Timeout = DEFAULT) -> None:
        self._m._client.call(_ops.signal(self._m.id, pid, signal, request_timeout))

    def send_stdin(self, pid: int, data: Union[str, bytes], *, close: bool = False,
                   request_timeout: Timeout = DEFAULT) -> None:
        """Writes to the stdin of a command started with
        ``keep_stdin_open=True``; ``close`` closes it after."""
        self._m._client.call(_ops.send_stdin(self._m.id, pid, data, close, request_timeout))


class CommandHandle:
    """A command running in the background. Iterate over it for its output
    as OutputChunk values; wait() for its result. Reading resumes from byte
    offsets when a connection drops, so output is neither lost (within the
    machine's buffer) nor repeated."""

    def __init__(self, m: Machine, pid: int) -> None:
        self.pid = pid
        self._m = m
        self._col = Collector(pid)
        self._lock = threading.Lock()
        self._pump: Optional[threading.Thread] = None
        self._pump_err: Optional[BaseException] = None

    def __repr__(self) -> str:
        return f"CommandHandle(pid={self.pid}, machine={self._m.id!r})"

    @property
    def stdout_offset(self) -> int:
        return self._col.offsets["stdout"]

    @property
    def stderr_offset(self) -> int:
        return self._col.offsets["stderr"]

    @property
    def exit_code(self) -> Optional[int]:
        """The exit code once wait() or the iteration saw the end, else None."""
        return None if self._col.exit is None else int(self._col.exit.get("exit_code") or 0)

    def _chunks(self) -> Iterator[OutputChunk]:
        attempt = 0
        c = self._m._client
        while self._col.exit is None:
            off = self._col.offsets
            try:
                with c.stream(_ops.output(self._m.id, self.pid, True, off["stdout"], off["stderr"])) as s:
                    for line in s.lines():
                        ch = self._col.feed(line)
                        attempt = 0
                        if ch is not None:
                            yield ch
                if self._col.exit is None:
                    raise errors.ConnectionError("the output stream ended before the exit", code="connection_failed")
            except errors.NullspaceError as e:
                if not reconnectable(e) or attempt >= 6:
                    raise
                time.sleep(backoff(attempt, None))
                attempt += 1

    def __iter__(self) -> Iterator[OutputChunk]:
        with self._lock:
            yield from self._chunks()

    def wait(self, on_stdout: Optional[OutputCallback] = None, on_stderr: Optional[OutputCallback] = None,
             *, check: bool = False) -> CommandResult:
        """Waits for the command to exit and returns its result: the output
        read through this handle (from its offsets on), callbacks called as
        it comes."""
        if self._pump is not None:
            self._pump.join()
            if self._pump_err is not None:
                raise self._pump_err
        else:
            with self._lock:
                for ch in self._chunks():
                    self._col.dispatch(ch, on_stdout, on_stderr)
        return check_result(self._col.result(), check)

    def _start_pump(self, on_stdout: Optional[OutputCallback], on_stderr: Optional[OutputCallback]) -> None:
        def pump() -> None:
            try:
                with self._lock:
                    for ch in self._chunks():
                        self._col.dispatch(ch, on_stdout, on_stderr)
            except BaseException as e:  # surfaced by wait()
                self._pump_err = e

        self._pump = threading.Thread(target=pump, name=f"nullspace-output-{self.pid}", daemon=True)
        self._pump.start()

    def kill(self) -> bool:
        return self._m.commands.kill(self.pid)

    def send_stdin(self, data: Union[str, bytes], *, close: bool = False) -> None:
        self._m.commands.send_stdin(self.pid, data, close=close)


class Pty:
    """Terminals in the machine: ``machine.pty``. A terminal is a command
    on a pseudo-terminal (job control works: b"\\x03" is Ctrl-C); it
    survives a pause like any command and is reattached by pid."""

    def __init__(self, m: Machine) -> None:
        self._m = m

    def create(self, size: Optional[PtySize] = None, *, cmd: Union[str, Sequence[str], None] = None,
               cwd: Optional[str] = None, envs: Optional[Mapping[str, str]] = None, user: Optional[str] = None,
               timeout: Optional[float] = None, on_data: Optional[DataCallback] = None,
               request_timeout: Timeout = DEFAULT) -> "PtyHandle":
        """Starts ``cmd`` (default: a login shell; a str runs with
        /bin/sh -c) on a terminal of ``size`` (default 24×80; TERM is
        xterm-256color unless ``envs`` sets it). ``on_data`` gets the
        output bytes as they come, on a thread of its own; ``timeout``
        seconds kill it (default: none)."""
        size = size or PtySize()
        shell = cmd is None or isinstance(cmd, str)
        r = _ops.run(self._m.id, DEFAULT_SHELL if cmd is None else cmd, shell=shell, cwd=cwd, envs=envs, user=user,
                     stdin=None, keep_stdin_open=False, timeout=timeout, background=True, stream=False,
                     t=request_timeout, pty=size)
        h = PtyHandle(self._m, int(self._m._client.call(r)["pid"]))
        if on_data is not None:
            h._start_data_pump(on_data)
        return h

    def connect(self, pid: int, *, offset: int = 0, on_data: Optional[DataCallback] = None) -> "PtyHandle":
        """A handle on a terminal started earlier (also before a pause and
        resume), its output read from byte ``offset`` (default 0: the
        scrollback the machine still holds)."""
        if not any(p.pid == pid for p in self._m.commands.list()):
            raise errors.ProcessNotFoundError(f"no command with pid {pid} in machine {self._m.id}",
                                              code="process_not_found", status=404)
        h = PtyHandle(self._m, pid)
        h._col.offsets = {"stdout": offset, "stderr": 0}
        if on_data is not None:
            h._start_data_pump(on_data)
        return h

    def send_stdin(self, pid: int, data: Union[str, bytes], *, request_timeout: Timeout = DEFAULT) -> None:
        """Types ``data`` (bytes as they are, str as UTF-8)."""
        self._m._client.call(_ops.send_bytes(self._m.id, pid, data, request_timeout))

    def resize(self, pid: int, size: PtySize, *, request_timeout: Timeout = DEFAULT) -> None:
        self._m._client.call(_ops.resize(self._m.id, pid, size, request_timeout))

    def kill(self, pid: int, *, request_timeout: Timeout = DEFAULT) -> bool:
        return self._m.commands.kill(pid, request_timeout=request_timeout)


class PtyHandle(CommandHandle):
    """A terminal: a CommandHandle whose output (stdout) is what the
    terminal shows, with ``send_stdin`` for keystrokes and ``resize``."""

    def __repr__(self) -> str:
        return f"PtyHandle(pid={self.pid}, machine={self._m.id!r})"

    def _start_data_pump(self, on_data: DataCallback) -> None:
        def pump() -> None:
            try:
                with self._lock:
                    for ch in self._chunks():
                        if ch.raw:
                            on_data(ch.raw)
            except BaseException as e:  # surfaced by wait()
                self._pump_err = e

        self._pump = threading.Thread(target=pump, name=f"nullspace-pty-{self.pid}", daemon=True)
        self._pump.start()

    def send_stdin(self, data: Union[str, bytes], *, close: bool = False) -> None:
        if close:
            raise errors.InvalidArgumentError("a terminal's input cannot be closed: send b\"\\x04\" (Ctrl-D)",
                                              code="invalid_argument")
        self._m.pty.send_stdin(self.pid, data)

    def resize(self, size: PtySize) -> None:
        self._m.pty.resize(self.pid, size)


class WatchHandle:
    """A watch of a directory (Files.watch_dir): iterate for FileEvent
    values, poll with get_new_events(), stop() to remove it."""

    def __init__(self, m: Machine, path: str, recursive: bool, on_event: Optional[EventCallback]) -> None:
        self._m = m
        self.path = path
        self.recursive = recursive
        self._log = WatchLog()
        self._stream: Optional[StreamResponse] = None
        self._lines: Optional[Iterator[bytes]] = None
        self._stopped = threading.Event()
        self._open()
        self._thread: Optional[threading.Thread] = None
        self.error: Optional[BaseException] = None
        if on_event is not None:
            def pump() -> None:
                try:
                    for ev in self:
                        on_event(ev)
                except BaseException as e:
                    if not self._stopped.is_set():
                        self.error = e

            self._thread = threading.Thread(target=pump, name=f"nullspace-watch-{self.watch_id}", daemon=True)
            self._thread.start()

    @property
    def watch_id(self) -> str:
        """The watch's id in the machine (to resume it from elsewhere)."""
        return self._log.watch_id

    @property
    def last_seq(self) -> int:
        """The seq of the last event read: where a reopened stream starts."""
        return self._log.last_seq

    def __repr__(self) -> str:
        return f"WatchHandle(path={self.path!r}, watch_id={self.watch_id!r}, machine={self._m.id!r})"

    def _open(self) -> None:
        """Starts the watch, or reopens its stream after the last seq seen."""
        s = self._m._client.stream(_ops.watch(self._m.id, self.path, self.recursive, self.watch_id, self.last_seq, True))
        self._stream, self._lines = s, iter(s.lines())
        if not self.watch_id:
            self._log.feed(next(self._lines))

    def __iter__(self) -> Iterator[FileEvent]:
        attempt = 0
        while not self._log.ended and not self._stopped.is_set():
            try:
                if self._lines is None:
                    self._open()
                assert self._lines is not None
                for line in self._lines:
                    attempt = 0
                    ev = self._log.feed(line)
                    if ev is not None:
                        yield ev
                    if self._log.ended:
                        return
                self._lines = None
                if not self._stopped.is_set():
                    raise errors.ConnectionError("the watch stream ended before the watch", code="connection_failed")
            except errors.NullspaceError as e:
                self._lines = None
                if self._stopped.is_set():
                    return
                if not reconnectable(e) or attempt >= 6:
                    raise
                time.sleep(backoff(attempt, None))
                attempt += 1

    def get_new_events(self) -> List[FileEvent]:
        """The events since the last ones returned (polling; do not mix
        with iterating)."""
        self._close_stream()
        r = _ops.watch(self._m.id, self.path, self.recursive, self.watch_id, self.last_seq, False)
        out: List[FileEvent] = []
        with self._m._client.stream(r) as s:
            for line in s.lines():
                ev = self._log.feed(line)
                if ev is not None:
                    out.append(ev)
        return out

    def _close_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream, self._lines = None, None

    def stop(self) -> None:
        """Removes the watch; an iteration in progress ends."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        try:
            self._m._client.call(_ops.unwatch(self._m.id, self.watch_id))
        except (errors.NotFoundError, errors.MachineNotRunningError):
            pass  # gone already, with its machine or by itself
        self._close_stream()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)

    def __enter__(self) -> "WatchHandle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class KeepAlive:
    """See Machine.keep_alive."""

    def __init__(self, m: Machine, timeout_secs: Optional[float], every: Optional[float],
                 on_error: Optional[Callable[[errors.NullspaceError], Any]]) -> None:
        self._m = m
        self.timeout_secs = timeout_secs
        self.refresh_every_secs = every
        self._on_error = on_error
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.lease: Optional[Lease] = None
        self.refreshes = 0
        #: The refresh error that made the lease uncertain, if one did.
        self.error: Optional[errors.NullspaceError] = None

    def __enter__(self) -> "KeepAlive":
        if self.timeout_secs is None:
            self.timeout_secs = (self._m.get_info().timeout_ms or 300_000) / 1000
        if self.refresh_every_secs is None:
            self.refresh_every_secs = self.timeout_secs / 2
        if not 0 < self.refresh_every_secs < self.timeout_secs:
            raise errors.InvalidArgumentError(
                f"refresh_every_secs ({self.refresh_every_secs}) must be above 0 and below timeout_secs "
                f"({self.timeout_secs}), or the lease runs out between refreshes", code="invalid_argument")
        self._refresh()  # at once, and raise here if the machine cannot be kept
        self._thread = threading.Thread(target=self._loop, name=f"nullspace-keepalive-{self._m.id}", daemon=True)
        self._thread.start()
        return self

    def _refresh(self) -> None:
        assert self.timeout_secs is not None
        self.lease = self._m.set_timeout(self.timeout_secs)
        self.refreshes += 1

    def _loop(self) -> None:
        assert self.refresh_every_secs is not None and self.timeout_secs is not None
        wait = self.refresh_every_secs
        deadline = time.monotonic() + self.timeout_secs
        attempt = 0
        while not self._stop.wait(wait):
            try:
                self._refresh()
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

    def stop(self) -> None:
        """Stops refreshing; the lease then runs out as set last."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.stop()
        if self.error is not None and exc_type is None:
            raise errors.KeepAliveError(
                f"keep_alive could not refresh the lease of machine {self._m.id}: {self.error}",
                code=self.error.code, status=self.error.status) from self.error


class Monitor:
    """Live resource samples of a machine, as they are taken (every 5 s):

        for metric in Monitor(machine):
            print(metric.cpu_used_pct, metric.mem_used)

    It reconnects by itself when the connection drops and ends when the
    machine is killed. close() (or breaking out of the loop) stops it.
    """

    def __init__(self, machine: Machine) -> None:
        self._m = machine
        self._s: Optional[StreamResponse] = None
        self._closed = False

    def __iter__(self) -> Iterator[Metric]:
        attempt = 0
        c = self._m._client
        while not self._closed:
            try:
                self._s = c.stream(_ops.monitor(self._m.id))
                with self._s:
                    for line in self._s.lines():
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
                if self._m.get_info().status in ("killed", "failed"):
                    return
            except errors.MachineNotFoundError:
                return
            time.sleep(backoff(attempt, None))
            attempt += 1

    def close(self) -> None:
        self._closed = True
        if self._s is not None:
            self._s.close()

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
