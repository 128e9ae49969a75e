"""The reading of a command's output stream, shared by the sync and async
surfaces: events decoded, text joined across split UTF-8 sequences, byte
offsets kept so a reconnect reads on without duplicates."""

from __future__ import annotations

import codecs
import json
from typing import Any, Callable, Dict, List, Optional

from . import errors
from .models import CommandResult, FileEvent, OutputChunk, decode_data

OutputCallback = Callable[[str], Any]


class Collector:
    """Follows one command's output: feed it the stream's lines; it keeps
    what was read, the offsets to reconnect from, and the exit."""

    def __init__(self, pid: int = 0, keep: bool = True) -> None:
        self.pid = pid
        self.offsets: Dict[str, int] = {"stdout": 0, "stderr": 0}
        self._text: Dict[str, List[str]] = {"stdout": [], "stderr": []}
        self._dec = {s: codecs.getincrementaldecoder("utf-8")("replace") for s in ("stdout", "stderr")}
        self._keep = keep
        self.exit: Optional[Dict[str, Any]] = None

    def feed(self, line: bytes) -> Optional[OutputChunk]:
        """Takes one NDJSON line; returns the output it carried, if new.
        An ``error`` event raises its error."""
        ev = json.loads(line)
        typ = ev.get("type")
        if typ == "start":
            self.pid = int(ev.get("pid") or self.pid)
            return None
        if typ in ("stdout", "stderr"):
            raw = decode_data(ev)
            off = int(ev.get("offset") or 0)
            seen = self.offsets[typ]
            if off + len(raw) <= seen:
                return None  # read before a reconnect
            if off < seen:
                raw, off = raw[seen - off :], seen
            self.offsets[typ] = off + len(raw)
            text = self._dec[typ].decode(raw)
            if self._keep:
                self._text[typ].append(text)
            return OutputChunk(stream=typ, data=text, raw=raw, offset=off)
        if typ == "exit":
            self.exit = ev
            return None
        if typ == "error":
            raise errors.stream_error(ev.get("error"))
        return None  # an event type added later

    def dispatch(self, chunk: Optional[OutputChunk], on_stdout: Optional[OutputCallback],
                 on_stderr: Optional[OutputCallback]) -> None:
        if chunk is None or not chunk.data:
            return
        cb = on_stdout if chunk.stream == "stdout" else on_stderr
        if cb is not None:
            cb(chunk.data)

    def result(self) -> CommandResult:
        """The command's result, once the exit event was read."""
        assert self.exit is not None
        for s in ("stdout", "stderr"):
            tail = self._dec[s].decode(b"", final=True)
            if tail:
                self._text[s].append(tail)
        ev = self.exit
        return CommandResult(
            stdout="".join(self._text["stdout"]),
            stderr="".join(self._text["stderr"]),
            exit_code=int(ev.get("exit_code") or 0),
            pid=self.pid,
            signal=ev.get("signal") or "",
            timed_out=bool(ev.get("timed_out", False)),
        )


def check(result: CommandResult, check: bool) -> CommandResult:
    if check and result.exit_code != 0:
        raise errors.CommandExitError(result)
    return result


def reconnectable(e: errors.NullspaceError) -> bool:
    """Whether an output stream that failed with e is worth opening again
    from its offsets: the connection broke, or the server is restarting."""
    return isinstance(e, (errors.ConnectionError, errors.UnavailableError)) or (
        isinstance(e, errors.TimeoutError) and e.code == "request_timeout"
    )


class WatchLog:
    """Follows one file watch's stream, shared by the sync and async
    handles: its id (from the first, "watching" event), the last seq seen
    (to reopen the stream after), and whether it ended."""

    def __init__(self) -> None:
        self.watch_id = ""
        self.last_seq = 0
        self.ended = False

    def feed(self, line: bytes) -> Optional[FileEvent]:
        """Takes one NDJSON line; returns the event it carried, if any for
        the caller. An ``error`` event raises its error."""
        d = json.loads(line)
        typ = d.get("type")
        if typ == "error":
            raise errors.stream_error(d.get("error"))
        if typ == "watching":
            self.watch_id = d.get("watch_id", "") or self.watch_id
            return None
        ev = FileEvent.from_json(d)
        if ev.seq:
            self.last_seq = ev.seq
        if ev.type == "end":
            self.ended = True
        return ev
