"""Every API call as a Request, built once for the sync and the async
surface: what is sent, whether it may be retried and how the answer is
read. Durations arrive here in seconds and leave as the API's ``*_ms``."""

from __future__ import annotations

import base64
import io
import json as _json
import os
import shlex
import stat as statmod
from typing import Any, AsyncIterator, Dict, Iterator, List, Mapping, Optional, Sequence, Union

from . import errors
from ._config import DEFAULT, Request, Timeout, idempotency_key, q, quote
from .models import (
    CommandResult,
    EntryInfo,
    Event,
    Lease,
    MachineInfo,
    MachineURL,
    Metric,
    ProcessInfo,
    PtySize,
    Snapshot,
    Template,
    Volume,
    VolumeMount,
    WriteInfo,
)

NDJSON = "application/x-ndjson"

_CHUNK = 64 << 10


def ms(secs: Optional[float], name: str, minimum: float = 0) -> Optional[int]:
    """Seconds as whole milliseconds; a negative or too small value is an
    InvalidArgumentError naming the parameter."""
    if secs is None:
        return None
    if isinstance(secs, bool) or not isinstance(secs, (int, float)):
        raise errors.InvalidArgumentError(f"{name} must be a number of seconds, not {secs!r}", code="invalid_argument")
    if secs < minimum:
        raise errors.InvalidArgumentError(f"{name} must be at least {minimum} seconds, not {secs}", code="invalid_argument")
    return int(round(secs * 1000))


def mpath(id: str, *rest: str) -> str:
    if not id or not isinstance(id, str):
        raise errors.InvalidArgumentError(f"a machine id is needed, not {id!r}", code="invalid_argument")
    return "/v1/machines/" + quote(id) + "".join("/" + r for r in rest)


def argv(cmd: Union[str, Sequence[str]], what: str) -> List[str]:
    if isinstance(cmd, str):
        parts = shlex.split(cmd)
    else:
        parts = [str(c) for c in cmd]
    if not parts:
        raise errors.InvalidArgumentError(f"{what} is empty", code="invalid_argument")
    return parts


def _volumes(v: Any) -> List[Dict[str, Any]]:
    if isinstance(v, Mapping):
        return [{"name": n, "path": p} for n, p in v.items()]
    out = []
    for m in v:
        if isinstance(m, VolumeMount):
            out.append(m.to_json())
        elif isinstance(m, Mapping):
            out.append(dict(m))
        elif isinstance(m, (tuple, list)) and len(m) in (2, 3):
            out.append(VolumeMount(*m).to_json())
        else:
            raise errors.InvalidArgumentError(
                f"volumes: {m!r} is not a VolumeMount, a mapping or a (name, path) pair", code="invalid_argument"
            )
    return out


def create(
    *,
    template: Optional[str],
    timeout: Optional[float],
    on_timeout: Optional[str],
    auto_resume: Optional[bool],
    idle_timeout: Optional[float],
    persistence: Optional[str],
    cpu: Optional[int],
    memory_mb: Optional[int],
    disk_mb: Optional[int],
    envs: Optional[Mapping[str, str]],
    metadata: Optional[Mapping[str, str]],
    volumes: Any,
    allow_internet: Optional[bool],
    command: Union[str, Sequence[str], None],
    on_pause: Optional[Sequence[str]],
    on_resume: Optional[Sequence[str]],
    snapshot_id: Optional[str],
    public_ports: Optional[bool],
    checkpoint_retention: Optional[int],
    request_timeout: Timeout,
    key: Optional[str] = None,
) -> Request[MachineInfo]:
    b: Dict[str, Any] = {}
    if template:
        b["template"] = template
    if snapshot_id:
        b["snapshot_id"] = snapshot_id
    if timeout is not None:
        b["timeout_ms"] = ms(timeout, "timeout", 1)
    if on_timeout:
        b["on_timeout"] = on_timeout
    if auto_resume:
        b["auto_resume"] = True
    if idle_timeout:
        b["idle_timeout_ms"] = ms(idle_timeout, "idle_timeout", 1)
    if persistence:
        b["persistence"] = persistence
    if cpu:
        b["cpu_count"] = cpu
    if memory_mb:
        b["memory_mb"] = memory_mb
    if disk_mb:
        b["disk_mb"] = disk_mb
    if envs:
        b["env"] = {str(k): str(v) for k, v in envs.items()}
    if metadata:
        b["metadata"] = {str(k): str(v) for k, v in metadata.items()}
    if volumes:
        b["volumes"] = _volumes(volumes)
    if allow_internet:
        b["allow_internet"] = True
    if command is not None:
        b["command"] = argv(command, "command")
    if on_pause or on_resume:
        b["hooks"] = {"on_pause": list(on_pause or []), "on_resume": list(on_resume or [])}
    if public_ports:
        b["public_ports"] = True
    if checkpoint_retention is not None:
        b["checkpoint_retention"] = checkpoint_retention
    # The key is made once per call: every retry of it carries the same one,
    # so the server answers a retry with the first answer, not a second
    # machine.
    return Request("POST", "/v1/machines", json=b, parse=MachineInfo.from_json, timeout=request_timeout,
                   idempotency_key=idempotency_key(key))


def get(id: str, t: Timeout = DEFAULT) -> Request[MachineInfo]:
    return Request("GET", mpath(id), idempotent=True, parse=MachineInfo.from_json, timeout=t)


def list_machines(
    state: Optional[str], metadata: Optional[Mapping[str, str]], template: Optional[str], include_aliases: bool,
    limit: Optional[int], next_token: Optional[str], t: Timeout = DEFAULT,
) -> Request[Dict[str, Any]]:
    md = [f"{k}={v}" for k, v in (metadata or {}).items()]
    query = q(state=state, metadata=md or None, template=template, include_aliases=include_aliases,
              limit=limit, next_token=next_token)
    return Request("GET", "/v1/machines", query=query, idempotent=True, timeout=t)


def kill(id: str, t: Timeout = DEFAULT) -> Request[MachineInfo]:
    return Request("DELETE", mpath(id), idempotent=True, parse=MachineInfo.from_json, timeout=t)


def connect(id: str, t: Timeout = DEFAULT) -> Request[MachineInfo]:
    # Connect follows the lineage to its running latest execution: sending
    # it twice reaches the same machine.
    return Request("POST", mpath(id, "connect"), idempotent=True, parse=MachineInfo.from_json, timeout=t)


def resume(snapshot_id: str, t: Timeout = DEFAULT) -> Request[MachineInfo]:
    return Request("POST", "/v1/snapshots/" + quote(snapshot_id) + "/resume", parse=MachineInfo.from_json, timeout=t)


def pause(id: str, t: Timeout = DEFAULT) -> Request[Snapshot]:
    return Request("POST", mpath(id, "pause"), parse=Snapshot.from_json, timeout=t)


def create_snapshot(id: str, name: Optional[str] = None, t: Timeout = DEFAULT, key: Optional[str] = None) -> Request[Snapshot]:
    return Request("POST", mpath(id, "snapshots"), json={"name": name} if name else None, parse=Snapshot.from_json, timeout=t,
                   idempotency_key=idempotency_key(key))


def fork(id: str, count: int, t: Timeout = DEFAULT, key: Optional[str] = None) -> Request[Dict[str, Any]]:
    return Request("POST", mpath(id, "fork"), json={"count": count}, timeout=t, idempotency_key=idempotency_key(key))


def stop(id: str, grace: Optional[float], t: Timeout = DEFAULT) -> Request[MachineInfo]:
    body = None if grace is None else {"grace_ms": ms(grace, "grace")}
    return Request("POST", mpath(id, "stop"), json=body, idempotent=True, parse=MachineInfo.from_json,
                   timeout=t, extra_timeout=grace or 10.0)


def start(id: str, t: Timeout = DEFAULT) -> Request[MachineInfo]:
    return Request("POST", mpath(id, "start"), idempotent=True, parse=MachineInfo.from_json, timeout=t)


def wait(id: str, timeout: Optional[float], t: Timeout = DEFAULT) -> Request[Dict[str, Any]]:
    return Request("GET", mpath(id, "wait"), query=q(timeout_ms=ms(timeout, "timeout", 0.001)), idempotent=True,
                   timeout=t, extra_timeout=timeout)


def checkpoint(id: str, t: Timeout = DEFAULT) -> Request[Snapshot]:
    return Request("POST", mpath(id, "checkpoints"), parse=Snapshot.from_json, timeout=t)


def checkpoints_page(id: str, limit: Optional[int], next_token: Optional[str], t: Timeout = DEFAULT) -> Request[Dict[str, Any]]:
    return Request("GET", mpath(id, "checkpoints"), query=q(limit=limit, next_token=next_token), idempotent=True, timeout=t)


def restore_checkpoint(id: str, snapshot_id: str, t: Timeout = DEFAULT) -> Request[MachineInfo]:
    return Request("POST", mpath(id, "checkpoints", quote(snapshot_id), "restore"), parse=MachineInfo.from_json, timeout=t)


def pin(id: str, snapshot_id: str, pinned: bool, t: Timeout = DEFAULT) -> Request[Snapshot]:
    verb = "pin" if pinned else "unpin"
    return Request("POST", mpath(id, "checkpoints", quote(snapshot_id), verb), idempotent=True,
                   parse=Snapshot.from_json, timeout=t)


def set_timeout(id: str, timeout: float, timeout_action: Optional[str], t: Timeout = DEFAULT) -> Request[Lease]:
    body: Dict[str, Any] = {"timeout_ms": ms(timeout, "timeout", 1)}
    if timeout_action:
        body["timeout_action"] = timeout_action
    # A refresh sent twice sets the same window: safe to retry.
    return Request("POST", mpath(id, "timeout"), json=body, idempotent=True, parse=Lease.from_json, timeout=t)


def metrics(id: str, t: Timeout = DEFAULT) -> Request[List[Metric]]:
    return Request("GET", mpath(id, "metrics"), idempotent=True,
                   parse=lambda d: [Metric.from_json(m) for m in d.get("metrics") or []], timeout=t)


def monitor(id: str) -> Request[Any]:
    return Request("GET", mpath(id, "metrics"), query=q(follow=True), accept=NDJSON, idempotent=True, extra_timeout=None)


def url(id: str, port: int, expires_in: Optional[float], t: Timeout = DEFAULT) -> Request[MachineURL]:
    body: Dict[str, Any] = {"port": port}
    if expires_in:
        body["expires_in_ms"] = ms(expires_in, "expires_in", 1)
    return Request("POST", mpath(id, "urls"), json=body, idempotent=True, parse=MachineURL.from_json, timeout=t)


# -- commands


def run(
    id: str,
    cmd: Union[str, Sequence[str]],
    *,
    shell: bool,
    cwd: Optional[str],
    envs: Optional[Mapping[str, str]],
    user: Optional[str],
    stdin: Union[str, bytes, None],
    keep_stdin_open: bool,
    timeout: Optional[float],
    background: bool,
    stream: bool,
    t: Timeout,
    pty: Optional[PtySize] = None,
) -> Request[Any]:
    b: Dict[str, Any] = {}
    if pty is not None:
        b["pty"] = pty.to_json()
    if shell:
        b["shell"] = cmd if isinstance(cmd, str) else shlex.join(cmd)
        if not b["shell"].strip():
            raise errors.InvalidArgumentError("the command is empty", code="invalid_argument")
    else:
        b["cmd"] = argv(cmd, "the command")
    if cwd:
        b["cwd"] = cwd
    if envs:
        b["env"] = {str(k): str(v) for k, v in envs.items()}
    if user:
        b["user"] = str(user)
    if stdin is not None:
        b["stdin"] = _text(stdin, "stdin")
    if keep_stdin_open:
        b["keep_stdin_open"] = True
    if timeout is not None:
        b["timeout_ms"] = ms(timeout, "timeout")
    if background:
        b["background"] = True
    elif stream:
        b["stream"] = True
    # A foreground command answers once it has run: wait for its timeout
    # (60 s on the server when none is given) on top of request_timeout.
    extra: Optional[float] = 0.0
    if not background:
        extra = None if timeout == 0 else (timeout if timeout is not None else 60.0)
    return Request("POST", mpath(id, "commands"), json=b, accept=NDJSON if stream else "application/json",
                   timeout=t, extra_timeout=extra,
                   parse=None if (stream or background) else CommandResult.from_json)


def processes(id: str, t: Timeout = DEFAULT) -> Request[List[ProcessInfo]]:
    return Request("GET", mpath(id, "commands"), idempotent=True,
                   parse=lambda d: [ProcessInfo.from_json(p) for p in d.get("processes") or []], timeout=t)


def output(id: str, pid: int, follow: bool, stdout_offset: int, stderr_offset: int) -> Request[Any]:
    query = q(follow=follow, stdout_offset=stdout_offset or None, stderr_offset=stderr_offset or None)
    return Request("GET", mpath(id, "commands", str(pid), "output"), query=query, accept=NDJSON,
                   idempotent=True, extra_timeout=None)


def send_stdin(id: str, pid: int, data: Union[str, bytes], close: bool, t: Timeout = DEFAULT) -> Request[None]:
    body: Dict[str, Any] = {"data": _text(data, "send_stdin data"), "close": close}
    return Request("POST", mpath(id, "commands", str(pid), "stdin"), json=body, timeout=t)


def send_bytes(id: str, pid: int, data: Union[str, bytes], t: Timeout = DEFAULT) -> Request[None]:
    """Raw input (keystrokes: b"\\x03" is Ctrl-C), base64 on the wire."""
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    body = {"bytes": base64.b64encode(raw).decode("ascii")}
    return Request("POST", mpath(id, "commands", str(pid), "stdin"), json=body, timeout=t)


def resize(id: str, pid: int, size: PtySize, t: Timeout = DEFAULT) -> Request[None]:
    return Request("POST", mpath(id, "commands", str(pid), "resize"), json=size.to_json(), idempotent=True, timeout=t)


def watch(id: str, path: str, recursive: bool, watch_id: str, after: int, follow: bool) -> Request[Any]:
    if watch_id:
        query = q(watch_id=watch_id, after=after, follow=None if follow else "false")
    else:
        query = q(path=path, recursive="true" if recursive else None, follow=None if follow else "false")
    # Only a watch that exists (watch_id) may be asked for again.
    return Request("GET", mpath(id, "files", "watch"), query=query, accept=NDJSON, idempotent=bool(watch_id),
                   extra_timeout=None)


def unwatch(id: str, watch_id: str, t: Timeout = DEFAULT) -> Request[None]:
    return Request("DELETE", mpath(id, "files", "watch", quote(watch_id)), idempotent=True, timeout=t)


def _text(data: Union[str, bytes], what: str) -> str:
    """stdin as the API carries it: text (a JSON string)."""
    if isinstance(data, str):
        return data
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError as e:
        raise errors.InvalidArgumentError(
            f"{what} must be text (UTF-8): {e}", code="invalid_argument",
            suggested_action="write binary input to a file with files.write and redirect it: cmd < /tmp/input") from e


def signal(id: str, pid: int, sig: str, t: Timeout = DEFAULT) -> Request[None]:
    return Request("POST", mpath(id, "commands", str(pid), "signal"), json={"signal": sig}, idempotent=True, timeout=t)


def kill_process(id: str, pid: int, t: Timeout = DEFAULT) -> Request[None]:
    return Request("DELETE", mpath(id, "commands", str(pid)), idempotent=True, timeout=t)


# -- files


def read_file(id: str, path: str, t: Timeout = DEFAULT, user: Optional[str] = None) -> Request[bytes]:
    return Request("GET", mpath(id, "files"), query=q(path=path, user=user), accept="application/octet-stream",
                   idempotent=True, raw=True, timeout=t)


def write_file(id: str, path: str, data: Any, mode: Optional[int], t: Timeout = DEFAULT,
               user: Optional[str] = None, metadata: Optional[Mapping[str, str]] = None) -> Request[WriteInfo]:
    length: Optional[int] = None
    if isinstance(data, str):
        data = data.encode("utf-8")
    elif isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data)
    elif hasattr(data, "read"):
        length = _remaining(data)
    elif not hasattr(data, "__iter__") and not hasattr(data, "__aiter__"):
        raise errors.InvalidArgumentError(
            f"files.write takes str, bytes, a file-like object or an iterable of bytes, not {type(data).__name__}",
            code="invalid_argument")
    query = q(path=path, mode=None if mode is None else format(mode, "04o"), user=user)
    query += [(f"metadata[{k}]", str(v)) for k, v in (metadata or {}).items()]
    return Request("PUT", mpath(id, "files"), query=query, body=data, content_type="application/octet-stream",
                   content_length=length, idempotent=True, parse=WriteInfo.from_json, timeout=t)


def _remaining(f: Any) -> Optional[int]:
    """Bytes left in a seekable file-like object, so it is sent with a
    Content-Length; None (chunked) when that cannot be known."""
    try:
        if not f.seekable():
            return None
        pos = f.tell()
        end = f.seek(0, 2)
        f.seek(pos)
        return end - pos
    except (AttributeError, OSError, ValueError):
        return None


def list_files(id: str, path: str, depth: Optional[int], t: Timeout = DEFAULT,
               user: Optional[str] = None) -> Request[List[EntryInfo]]:
    return Request("GET", mpath(id, "files", "list"), query=q(path=path, depth=depth, user=user), idempotent=True,
                   parse=lambda d: [EntryInfo.from_json(e) for e in d.get("entries") or []], timeout=t)


def stat(id: str, path: str, t: Timeout = DEFAULT, user: Optional[str] = None) -> Request[EntryInfo]:
    return Request("GET", mpath(id, "files", "stat"), query=q(path=path, user=user), idempotent=True,
                   parse=EntryInfo.from_json, timeout=t)


def remove(id: str, path: str, recursive: bool, t: Timeout = DEFAULT, user: Optional[str] = None) -> Request[None]:
    return Request("DELETE", mpath(id, "files"), query=q(path=path, recursive=recursive, user=user), idempotent=True, timeout=t)


def make_dir(id: str, path: str, t: Timeout = DEFAULT, user: Optional[str] = None) -> Request[EntryInfo]:
    return Request("POST", mpath(id, "files", "mkdir"), json=_with_user({"path": path}, user), idempotent=True,
                   parse=EntryInfo.from_json, timeout=t)


def rename(id: str, old: str, new: str, t: Timeout = DEFAULT, user: Optional[str] = None) -> Request[EntryInfo]:
    return Request("POST", mpath(id, "files", "rename"), json=_with_user({"from": old, "to": new}, user),
                   parse=EntryInfo.from_json, timeout=t)


def _with_user(body: Dict[str, Any], user: Optional[str]) -> Dict[str, Any]:
    """A file call's body with who it acts as, when given."""
    if user:
        body["user"] = str(user)
    return body


# -- snapshots, volumes, templates, events


def snapshots_page(machine_id: Optional[str], kind: Optional[str], limit: Optional[int], next_token: Optional[str],
                   t: Timeout = DEFAULT, name: Optional[str] = None) -> Request[Dict[str, Any]]:
    query = q(machine_id=machine_id, kind=kind, name=name, limit=limit, next_token=next_token)
    return Request("GET", "/v1/snapshots", query=query, idempotent=True, timeout=t)


def get_snapshot(id: str, t: Timeout = DEFAULT) -> Request[Snapshot]:
    return Request("GET", "/v1/snapshots/" + quote(id), idempotent=True, parse=Snapshot.from_json, timeout=t)


def delete_snapshot(id: str, force: bool, t: Timeout = DEFAULT) -> Request[None]:
    return Request("DELETE", "/v1/snapshots/" + quote(id), query=q(force=force), idempotent=True, timeout=t)


def volumes_page(limit: Optional[int], next_token: Optional[str], t: Timeout = DEFAULT) -> Request[Dict[str, Any]]:
    return Request("GET", "/v1/volumes", query=q(limit=limit, next_token=next_token), idempotent=True, timeout=t)


def create_volume(name: str, t: Timeout = DEFAULT) -> Request[Volume]:
    return Request("POST", "/v1/volumes", json={"name": name}, parse=Volume.from_json, timeout=t)


def delete_volume(name: str, t: Timeout = DEFAULT) -> Request[None]:
    return Request("DELETE", "/v1/volumes/" + quote(name), idempotent=True, timeout=t)


def templates_page(limit: Optional[int], next_token: Optional[str], t: Timeout = DEFAULT) -> Request[Dict[str, Any]]:
    return Request("GET", "/v1/templates", query=q(limit=limit, next_token=next_token), idempotent=True, timeout=t)


def get_template(name: str, t: Timeout = DEFAULT) -> Request[Template]:
    return Request("GET", "/v1/templates/" + quote(name), idempotent=True, parse=Template.from_json, timeout=t)


def build_template(name: str, from_template: Optional[str], steps: Sequence[str], workdir: Optional[str],
                   envs: Optional[Mapping[str, str]], t: Timeout = DEFAULT, tarball: Any = None) -> Request[Template]:
    """A build from ``from_template`` (default "base") or, with
    ``tarball``, from that root filesystem uploaded: exactly one source."""
    if tarball is not None and from_template:
        raise errors.InvalidArgumentError(
            "a template is built from one source: from_template or tarball, not both", code="invalid_argument",
            suggested_action="drop from_template to build from the tarball, or tarball to build from the template")
    b: Dict[str, Any] = {"name": name, "steps": list(steps)}
    if tarball is None:
        b["from_template"] = from_template or "base"
    if workdir:
        b["workdir"] = workdir
    if envs:
        b["env"] = dict(envs)
    # The build answers when it is done: no read limit.
    if tarball is None:
        return Request("POST", "/v1/templates", json=b, parse=Template.from_json, timeout=t, extra_timeout=None)
    up = _Upload(b, tarball)
    return Request("POST", "/v1/templates", body=up, content_type="multipart/form-data; boundary=" + up.boundary,
                   content_length=up.length, parse=Template.from_json, timeout=t, extra_timeout=None)


_TARBALL_ACTION = "pass the path of a root filesystem tarball (plain, gzip, zstd or xz) or a file object opened 'rb'"


class _Upload:
    """The body of a template upload (multipart/form-data): a part
    ``request`` with the JSON build request, then a part ``tarball`` read a
    chunk at a time as it is sent, never whole in memory (a path is opened
    then, and closed at the end). The blocking transport iterates it; the
    asyncio one async-iterates it, awaiting a file object's read when it is
    a coroutine. ``length`` is the whole body's size when the tarball's is
    known (a path, a seekable file), so that the server refuses one over its
    limit (413 file_too_large) before it is sent; None sends it chunked."""

    def __init__(self, request: Mapping[str, Any], tarball: Any) -> None:
        self.boundary = "nullspace-" + os.urandom(16).hex()
        self._path: Optional[str] = None
        self._file: Any = None
        size: Optional[int]
        if isinstance(tarball, (str, os.PathLike)):
            self._path = os.fspath(tarball)
            try:
                st = os.stat(self._path)
            except OSError as e:
                raise errors.InvalidArgumentError(f"tarball {self._path}: {e.strerror}", code="invalid_argument",
                                                  suggested_action=_TARBALL_ACTION) from e
            if not statmod.S_ISREG(st.st_mode):
                raise errors.InvalidArgumentError(f"tarball {self._path} is not a regular file", code="invalid_argument",
                                                  suggested_action=_TARBALL_ACTION)
            size = st.st_size
        elif hasattr(tarball, "read") and not isinstance(tarball, io.TextIOBase):
            self._file = tarball
            size = _remaining(tarball)
        else:
            what = "a text file" if isinstance(tarball, io.TextIOBase) else type(tarball).__name__
            raise errors.InvalidArgumentError(
                f"tarball takes a path or a binary file object, not {what}", code="invalid_argument",
                suggested_action=_TARBALL_ACTION + " (io.BytesIO(data) for bytes in memory)")
        b = "--" + self.boundary + "\r\n"
        self.head = (b + 'Content-Disposition: form-data; name="request"\r\nContent-Type: application/json\r\n\r\n').encode()
        self.head += _json.dumps(request, separators=(",", ":")).encode() + b"\r\n"
        self.head += (b + 'Content-Disposition: form-data; name="tarball"; filename="rootfs.tar"\r\n'
                      "Content-Type: application/octet-stream\r\n\r\n").encode()
        self.tail = ("\r\n--" + self.boundary + "--\r\n").encode()
        self.size = size
        self.length = None if size is None else len(self.head) + size + len(self.tail)

    def _chunk(self, b: Any, sent: int) -> bytes:
        """A chunk of the tarball, checked; sent is what came before it."""
        if not isinstance(b, (bytes, bytearray, memoryview)):
            raise errors.InvalidArgumentError(
                f"the tarball's read() gave {type(b).__name__}, not bytes", code="invalid_argument",
                suggested_action=_TARBALL_ACTION)
        if self.size is not None and sent + len(b) > self.size:
            raise self._changed()
        return bytes(b)

    def _changed(self) -> errors.InvalidArgumentError:
        # The request announced a Content-Length: a body of another length
        # would leave the server waiting, or read past it.
        return errors.InvalidArgumentError(
            f"the tarball changed size while it was sent (it had {self.size} bytes)", code="invalid_argument",
            suggested_action="upload a tarball that nothing writes to meanwhile")

    def __iter__(self) -> Iterator[bytes]:
        yield self.head
        f: Any = open(self._path, "rb") if self._path is not None else self._file
        try:
            sent = 0
            while True:
                b = self._chunk(f.read(_CHUNK), sent)
                if not b:
                    break
                sent += len(b)
                yield b
        finally:
            if self._path is not None:
                f.close()
        if self.size is not None and sent != self.size:
            raise self._changed()
        yield self.tail

    async def __aiter__(self) -> AsyncIterator[bytes]:
        import asyncio  # loaded already: this runs on its loop

        yield self.head
        f: Any = open(self._path, "rb") if self._path is not None else self._file
        try:
            sent = 0
            while True:
                b = f.read(_CHUNK)
                if hasattr(b, "__await__"):  # an asynchronous file object
                    b = await b
                b = self._chunk(b, sent)
                if not b:
                    break
                sent += len(b)
                yield b
                # A server that reads as fast as it is sent never makes
                # the writer wait: let the loop's other tasks run.
                await asyncio.sleep(0)
        finally:
            if self._path is not None:
                f.close()
        if self.size is not None and sent != self.size:
            raise self._changed()
        yield self.tail


def delete_template(name: str, t: Timeout = DEFAULT) -> Request[None]:
    return Request("DELETE", "/v1/templates/" + quote(name), idempotent=True, timeout=t)


def events_page(after: Optional[int], machine_id: Optional[str], types: Optional[Sequence[str]], limit: Optional[int],
                t: Timeout = DEFAULT) -> Request[Dict[str, Any]]:
    query = q(after=after, machine_id=machine_id, type=",".join(types) if types else None, limit=limit)
    return Request("GET", "/v1/events", query=query, idempotent=True, timeout=t)


def events_follow(after: Optional[int], machine_id: Optional[str], types: Optional[Sequence[str]]) -> Request[Any]:
    query = q(follow=True, after=after, machine_id=machine_id, type=",".join(types) if types else None)
    return Request("GET", "/v1/events", query=query, accept=NDJSON, idempotent=True, extra_timeout=None)


def health(t: Timeout = DEFAULT) -> Request[Dict[str, Any]]:
    return Request("GET", "/v1/health", idempotent=True, timeout=t)


def fork_result(d: Mapping[str, Any]) -> "tuple[Snapshot, List[MachineInfo]]":
    return Snapshot.from_json(d["snapshot"]), [MachineInfo.from_json(m) for m in d.get("machines") or []]


def page_items(d: Mapping[str, Any], key: str) -> "tuple[List[Any], str]":
    return list(d.get(key) or []), str(d.get("next_token") or "")


def event_of(d: Mapping[str, Any]) -> Event:
    return Event.from_json(d)
