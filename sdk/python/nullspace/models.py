"""What the API returns, as typed, immutable values.

Field names are the HTTP API's (docs/http-api.md), so ``timeout_ms`` stays
milliseconds here; only the calls take seconds, like the CLI.
"""

from __future__ import annotations

import base64
import re
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Tuple

if TYPE_CHECKING:
    from typing_extensions import dataclass_transform
else:

    def dataclass_transform(**_: Any) -> Any:
        return lambda c: c

_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(Z|z|[+-]\d\d:\d\d)$"
)


def parse_time(v: Any) -> Optional[datetime]:
    """An RFC 3339 timestamp as an aware datetime (nanoseconds cut to
    microseconds); None for null or the zero time Go writes for "unset"."""
    if not v:
        return None
    m = _RFC3339.match(str(v))
    if not m:
        raise ValueError(f"not an RFC 3339 time: {v!r}")
    y, mo, d, h, mi, s, frac, tz = m.groups()
    if tz in ("Z", "z"):
        tzinfo = timezone.utc
    else:
        sign = 1 if tz[0] == "+" else -1
        tzinfo = timezone(sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6])))
    us = int((frac or "0")[:6].ljust(6, "0"))
    t = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), us, tzinfo=tzinfo)
    if t.year <= 1:
        return None
    return t


_MISSING: Any = object()


@dataclass_transform(frozen_default=True)
class _Model:
    """An immutable record: the fields are the class's annotations, in
    order, with the class attributes as defaults. It is a plain class, not a
    dataclass, because building twenty dataclasses at import time was a
    fifth of the time of ``import nullspace``."""

    _fields: Tuple[str, ...] = ()

    def __init_subclass__(cls) -> None:
        cls._fields = tuple(n for n in cls.__dict__.get("__annotations__", {}) if not n.startswith("_"))

    def __init__(self, *args: Any, **kw: Any) -> None:
        if len(args) > len(self._fields):
            raise TypeError(f"{type(self).__name__} takes at most {len(self._fields)} positional arguments")
        for name, v in zip(self._fields, args):
            kw[name] = v
        for name in self._fields:
            v = kw.pop(name, _MISSING)
            if v is _MISSING:
                v = getattr(type(self), name, _MISSING)
                if v is _MISSING:
                    raise TypeError(f"{type(self).__name__} needs {name}")
                if isinstance(v, (list, dict)):
                    v = type(v)()
            object.__setattr__(self, name, v)
        if kw:
            raise TypeError(f"{type(self).__name__} has no field {next(iter(kw))!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in self._fields) + ")"

    def __eq__(self, other: Any) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self._fields)

    def __hash__(self) -> int:
        return hash(tuple(repr(getattr(self, n)) for n in self._fields))


def _str_map(v: Any) -> Dict[str, str]:
    return {str(k): str(x) for k, x in (v or {}).items()}


class VolumeMount(_Model):
    """A named volume mounted at ``path`` in a machine."""

    name: str
    path: str
    read_only: bool = False

    def to_json(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {"name": self.name, "path": self.path}
        if self.read_only:
            d["read_only"] = True
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "VolumeMount":
        return cls(name=d["name"], path=d["path"], read_only=bool(d.get("read_only", False)))


class MainExit(_Model):
    """How a machine's main process ended."""

    exit_code: int
    signal: str = ""
    at: Optional[datetime] = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "MainExit":
        return cls(exit_code=int(d.get("exit_code", 0)), signal=d.get("signal", "") or "", at=parse_time(d.get("at")))


class MachineInfo(_Model):
    """A machine as the server sees it. Reading it never wakes the machine.

    ``status`` is the machine's state: creating, running, pausing, paused,
    resuming, snapshotting, restoring, stopping, stopped, starting, killing,
    killed or failed. A paused id is an alias of its lineage: ``latest_id``
    names the execution that connect() reaches.
    """

    id: str
    status: str
    template: str = ""
    cpu_count: int = 0
    memory_mb: int = 0
    #: Limit in MiB on what the machine writes to its root file system;
    #: past it, writes inside fail with ENOSPC.
    disk_mb: int = 0
    envs: Dict[str, str] = {}
    metadata: Dict[str, str] = {}
    allow_internet: bool = False
    ip: str = ""
    created_at: Optional[datetime] = None
    started_at: Optional[datetime] = None
    ended_at: Optional[datetime] = None
    error: str = ""
    #: Why a failed machine failed, as a stable code: sandbox_exit, oom,
    #: pids, agent_unresponsive, pause_failed, snapshot_lost,
    #: server_restart; "" otherwise.
    failure_reason: str = ""
    volumes: List[VolumeMount] = []
    snapshot_id: str = ""
    lineage_id: str = ""
    latest_id: str = ""
    paused_aliases: int = 0
    snapshot_bytes: int = 0
    restored_from: str = ""
    timeout_ms: int = 0
    timeout_at: Optional[datetime] = None
    remaining_ms: int = 0
    timeout_action: str = ""
    on_timeout: str = ""
    auto_resume: bool = False
    idle_timeout_ms: int = 0
    persistence: str = ""
    command: List[str] = []
    main_pid: int = 0
    exit: Optional[MainExit] = None
    public_ports: bool = False
    checkpoint_retention: int = 0
    on_pause: List[str] = []
    on_resume: List[str] = []

    @property
    def state(self) -> str:
        """The same as ``status`` (the HTTP API's name for it)."""
        return self.status

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "MachineInfo":
        hooks = d.get("hooks") or {}
        return cls(
            id=d["id"],
            status=d.get("state", ""),
            template=d.get("template", ""),
            cpu_count=int(d.get("cpu_count", 0)),
            memory_mb=int(d.get("memory_mb", 0)),
            disk_mb=int(d.get("disk_mb", 0)),
            envs=_str_map(d.get("env")),
            metadata=_str_map(d.get("metadata")),
            allow_internet=bool(d.get("allow_internet", False)),
            ip=d.get("ip", ""),
            created_at=parse_time(d.get("created_at")),
            started_at=parse_time(d.get("started_at")),
            ended_at=parse_time(d.get("ended_at")),
            error=d.get("error", ""),
            failure_reason=d.get("failure_reason", ""),
            volumes=[VolumeMount.from_json(v) for v in d.get("volumes") or []],
            snapshot_id=d.get("snapshot_id", ""),
            lineage_id=d.get("lineage_id", ""),
            latest_id=d.get("latest_id", ""),
            paused_aliases=int(d.get("paused_aliases", 0)),
            snapshot_bytes=int(d.get("snapshot_bytes", 0)),
            restored_from=d.get("restored_from", ""),
            timeout_ms=int(d.get("timeout_ms", 0)),
            timeout_at=parse_time(d.get("timeout_at")),
            remaining_ms=int(d.get("remaining_ms", 0)),
            timeout_action=d.get("timeout_action", ""),
            on_timeout=d.get("on_timeout", ""),
            auto_resume=bool(d.get("auto_resume", False)),
            idle_timeout_ms=int(d.get("idle_timeout_ms", 0)),
            persistence=d.get("persistence", ""),
            command=list(d.get("command") or []),
            main_pid=int(d.get("main_pid", 0)),
            exit=MainExit.from_json(d["exit"]) if d.get("exit") else None,
            public_ports=bool(d.get("public_ports", False)),
            checkpoint_retention=int(d.get("checkpoint_retention", 0)),
            on_pause=list(hooks.get("on_pause") or []),
            on_resume=list(hooks.get("on_resume") or []),
        )


class Lease(_Model):
    """A machine's effective timeout, as set_timeout() echoes it."""

    timeout_ms: int
    timeout_at: Optional[datetime]
    remaining_ms: int
    timeout_action: str

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Lease":
        return cls(
            timeout_ms=int(d.get("timeout_ms", 0)),
            timeout_at=parse_time(d.get("timeout_at")),
            remaining_ms=int(d.get("remaining_ms", 0)),
            timeout_action=d.get("timeout_action", ""),
        )


class Snapshot(_Model):
    """A saved machine state. ``kind`` is ``hibernate`` (a paused machine's
    state, made by pause()), ``snapshot`` (reusable: create machines from it),
    ``checkpoint`` (an entry of a machine's history) or ``disk`` (a stopped
    machine's files)."""

    id: str
    kind: str = ""
    machine_id: str = ""
    lineage_id: str = ""
    template: str = ""
    size_bytes: int = 0
    created_at: Optional[datetime] = None
    parent_id: str = ""
    generation: int = 0
    checksum: str = ""
    pause_window_ms: int = 0
    runtime_version: str = ""
    kernel: str = ""
    children: int = 0
    pinned: bool = False
    #: The snapshot's name ("" if it has none), unique in the team; it works
    #: wherever the id does.
    name: str = ""
    #: Its files are in the server's object store (``--object-store``), so any
    #: server sharing it can restore the snapshot; always False without one.
    durable: bool = False

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Snapshot":
        return cls(
            id=d["id"],
            kind=d.get("kind", ""),
            machine_id=d.get("machine_id", ""),
            lineage_id=d.get("lineage_id", ""),
            template=d.get("template", ""),
            size_bytes=int(d.get("size_bytes", 0)),
            created_at=parse_time(d.get("created_at")),
            parent_id=d.get("parent_id", ""),
            generation=int(d.get("generation", 0)),
            checksum=d.get("checksum", ""),
            pause_window_ms=int(d.get("pause_window_ms", 0)),
            runtime_version=d.get("runtime_version", ""),
            kernel=d.get("kernel", ""),
            children=int(d.get("children", 0)),
            pinned=bool(d.get("pinned", False)),
            name=d.get("name", ""),
            durable=bool(d.get("durable", False)),
        )


class Metric(_Model):
    """One sample of a running machine's resources, taken every 5 seconds.
    ``cpu_used_pct`` is in percent of the machine's ``cpu_count``."""

    timestamp: Optional[datetime]
    cpu_count: int
    cpu_used_pct: float
    mem_used: int
    mem_total: int
    disk_used: int
    disk_total: int
    net_rx_bytes: int = 0
    net_tx_bytes: int = 0

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Metric":
        return cls(
            timestamp=parse_time(d.get("timestamp")),
            cpu_count=int(d.get("cpu_count", 0)),
            cpu_used_pct=float(d.get("cpu_used_pct", 0.0)),
            mem_used=int(d.get("mem_used", 0)),
            mem_total=int(d.get("mem_total", 0)),
            disk_used=int(d.get("disk_used", 0)),
            disk_total=int(d.get("disk_total", 0)),
            net_rx_bytes=int(d.get("net_rx_bytes", 0)),
            net_tx_bytes=int(d.get("net_tx_bytes", 0)),
        )


class CommandResult(_Model):
    """How a command ended and what it wrote. ``exit_code`` is 128 + N when
    signal N ended it; ``truncated`` says output beyond the machine's buffer
    was dropped from the front."""

    stdout: str
    stderr: str
    exit_code: int
    pid: int = 0
    signal: str = ""
    timed_out: bool = False
    truncated: bool = False

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "CommandResult":
        return cls(
            stdout=d.get("stdout", ""),
            stderr=d.get("stderr", ""),
            exit_code=int(d.get("exit_code", 0)),
            pid=int(d.get("pid", 0)),
            signal=d.get("signal", "") or "",
            timed_out=bool(d.get("timed_out", False)),
            truncated=bool(d.get("truncated", False)),
        )


class OutputChunk(_Model):
    """A piece of a command's output: ``stream`` is "stdout" or "stderr",
    ``data`` the bytes as text (split UTF-8 sequences are joined across
    chunks), ``raw`` the bytes, ``offset`` their position in the stream."""

    stream: str
    data: str
    raw: bytes
    offset: int


class ProcessInfo(_Model):
    """A command the machine's agent started (commands.list())."""

    pid: int
    cmd: List[str]
    running: bool
    cwd: str = ""
    user: str = ""
    started_at: Optional[datetime] = None
    exit_code: Optional[int] = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "ProcessInfo":
        ec = d.get("exit_code")
        return cls(
            pid=int(d["pid"]),
            cmd=list(d.get("cmd") or []),
            running=bool(d.get("running", False)),
            cwd=d.get("cwd", ""),
            user=d.get("user", ""),
            started_at=parse_time(d.get("started_at")),
            exit_code=None if ec is None else int(ec),
        )


class PtySize(_Model):
    """A terminal's size in character cells (1 to 1000 each)."""

    rows: int = 24
    cols: int = 80

    def to_json(self) -> Dict[str, int]:
        return {"rows": int(self.rows), "cols": int(self.cols)}


class FileEvent(_Model):
    """A change seen by files.watch_dir(): ``type`` is create, write,
    remove, rename (``old_path`` is where it was) or chmod; ``seq`` numbers
    the watch's events from 1."""

    type: str
    path: str = ""
    old_path: str = ""
    is_dir: bool = False
    seq: int = 0
    time: Optional[datetime] = None
    #: The file as it was when the change was seen, from a watch asked for
    #: entries (the API's ``entry=true``); None otherwise.
    entry: Optional["EntryInfo"] = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "FileEvent":
        e = d.get("entry")
        return cls(type=d.get("type", ""), path=d.get("path", ""), old_path=d.get("old_path", ""),
                   is_dir=bool(d.get("is_dir", False)), seq=int(d.get("seq") or 0), time=parse_time(d.get("time")),
                   entry=EntryInfo.from_json(e) if e else None)


class EntryInfo(_Model):
    """A file or directory in a machine. ``type`` is file, dir, symlink or
    other; ``mode`` the octal permission bits ("0644"); ``owner`` and
    ``group`` the names of its uid and gid in the machine's /etc/passwd and
    /etc/group, or the number ("1000") when it has no entry there ("" from
    a server older than these fields)."""

    name: str
    path: str
    type: str
    size: int = 0
    mode: str = ""
    mod_time: Optional[datetime] = None
    symlink_target: str = ""
    #: User metadata: the file's user.e2b.KEY extended attributes, by KEY.
    metadata: Dict[str, str] = {}
    owner: str = ""
    group: str = ""

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "EntryInfo":
        return cls(
            name=d.get("name", ""),
            path=d.get("path", ""),
            type=d.get("type", ""),
            size=int(d.get("size", 0)),
            mode=d.get("mode", ""),
            mod_time=parse_time(d.get("mod_time")),
            symlink_target=d.get("symlink_target", ""),
            metadata=_str_map(d.get("metadata")),
            owner=d.get("owner", ""),
            group=d.get("group", ""),
        )


class WriteInfo(_Model):
    """What files.write() wrote."""

    path: str
    size: int
    #: The metadata stored on the file; empty when none.
    metadata: Dict[str, str] = {}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "WriteInfo":
        return cls(path=d.get("path", ""), size=int(d.get("size", 0)), metadata=_str_map(d.get("metadata")))


class MachineURL(str):
    """A public URL of a machine's port, served by the edge: use it as the
    string it is (``url + "/path"``). It names the machine's lineage, so it
    keeps working across pauses and resumes, and wakes an ``auto_resume``
    machine. ``ws_url`` is the WebSocket form, ``origin_url`` the port as a
    browser origin of its own, ``expires_at`` None when it never expires."""

    ws_url: str
    origin_url: str
    path_url: str
    port: int
    lineage_id: str
    expires_at: Optional[datetime]
    public: bool

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "MachineURL":
        u = cls(d["url"])
        u.ws_url = d.get("ws_url", "")
        u.origin_url = d.get("origin_url", "")
        u.path_url = d.get("path_url", "")
        u.port = int(d.get("port", 0))
        u.lineage_id = d.get("lineage_id", "")
        u.expires_at = parse_time(d.get("expires_at"))
        u.public = bool(d.get("public", False))
        return u


class Event(_Model):
    """A lifecycle event. ``seq`` grows by one per event: pass the last one
    seen as ``after`` to read on from there."""

    seq: int
    type: str
    machine_id: str
    time: Optional[datetime]
    cause: str
    details: Dict[str, Any] = {}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Event":
        return cls(
            seq=int(d["seq"]),
            type=d.get("type", ""),
            machine_id=d.get("machine_id", ""),
            time=parse_time(d.get("time")),
            cause=d.get("cause", ""),
            details=dict(d.get("details") or {}),
        )


class Volume(_Model):
    """A named directory on the server that machines mount; not part of any
    snapshot, mounted again on resume and in every child."""

    name: str
    created_at: Optional[datetime] = None
    size_bytes: int = 0
    machines: int = 0

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Volume":
        return cls(
            name=d["name"],
            created_at=parse_time(d.get("created_at")),
            size_bytes=int(d.get("size_bytes", 0)),
            machines=int(d.get("machines", 0)),
        )


class Template(_Model):
    """A root filesystem machines are created from."""

    name: str
    state: str
    workdir: str = ""
    envs: Dict[str, str] = {}
    size_bytes: int = 0
    created_at: Optional[datetime] = None
    error: str = ""
    source: str = ""
    #: The content digest of its tree ("sha256:..."), which snapshots record.
    digest: str = ""

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Template":
        return cls(
            name=d["name"],
            state=d.get("state", ""),
            workdir=d.get("workdir", ""),
            envs=_str_map(d.get("env")),
            size_bytes=int(d.get("size_bytes", 0)),
            created_at=parse_time(d.get("created_at")),
            error=d.get("error", ""),
            source=d.get("source", ""),
            digest=d.get("digest", ""),
        )


def decode_data(ev: Mapping[str, Any]) -> bytes:
    """The raw bytes of a stdout/stderr stream event (base64 on the wire)."""
    d = ev.get("data")
    return base64.b64decode(d) if d else b""
