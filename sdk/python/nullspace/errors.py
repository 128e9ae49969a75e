"""One exception hierarchy for every failure of the SDK.

Every error the server answers carries a stable ``code`` (``machine_not_found``,
``snapshot_incompatible``, ...); the SDK raises the class made for that code,
so no caller ever matches message text. A code this SDK does not know yet
still raises :class:`NullspaceError` with the code set.
"""

from __future__ import annotations

import builtins
from typing import Any, Dict, Optional, Type


class NullspaceError(Exception):
    """Base class of every error raised by the SDK.

    ``code`` is the server's stable code ("" when the answer carried none),
    ``status`` the HTTP status (0 for a failure that never got an answer or
    an error inside a stream), ``retryable`` whether the same call may
    succeed later, ``suggested_action`` what to do next, ``retry_after``
    the seconds the server asked to wait before a retry (its Retry-After),
    if it did.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "",
        status: int = 0,
        retryable: bool = False,
        suggested_action: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.retryable = retryable
        self.suggested_action = suggested_action
        self.retry_after: Optional[float] = None

    def __str__(self) -> str:
        s = self.message
        if self.code:
            s += f" ({self.code})"
        if self.suggested_action:
            s += f"; {self.suggested_action}"
        return s

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, status={self.status}, message={self.message!r})"


class AuthenticationError(NullspaceError):
    """The API key is missing or wrong (401)."""


class InvalidArgumentError(NullspaceError, ValueError):
    """The request was refused as malformed (400): the message says which field."""


class NotFoundError(NullspaceError):
    """Something named by the call does not exist (404)."""


class MachineNotFoundError(NotFoundError):
    """No machine has this id in your team, or it was killed and forgotten."""


class SnapshotNotFoundError(NotFoundError):
    """No such snapshot, or it was deleted or pruned by checkpoint retention."""


class TemplateNotFoundError(NotFoundError):
    """No template of this name."""


class VolumeNotFoundError(NotFoundError):
    """No volume of this name."""


class ProcessNotFoundError(NotFoundError):
    """No command with this pid in the machine."""


class PathNotFoundError(NotFoundError, builtins.FileNotFoundError):
    """No file or directory at this path in the machine.

    It is also the built-in ``FileNotFoundError``, so ``except
    FileNotFoundError`` catches it.
    """


class ConflictError(NullspaceError):
    """The call conflicts with the current state (409), e.g. another pause of
    the same machine is in progress; ``retryable`` says whether to retry.
    Also an Idempotency-Key sent before with another request body (422
    ``idempotency_key_reused``: use a new key for a different call) or whose
    first request is still running (409 ``idempotency_key_in_progress``,
    retried by the SDK)."""


class MachineNotRunningError(ConflictError):
    """The machine is paused, stopped, killed or failed: connect() or start()
    it first (the suggested action says which)."""


class SnapshotIncompatibleError(ConflictError):
    """The snapshot was written by another runtime build, platform or CPU, or
    its template or volumes changed; it cannot be restored on this host."""


class SnapshotCorruptError(ConflictError):
    """A file of the snapshot does not match its checksum."""


class SnapshotSupersededError(ConflictError):
    """The lineage has a newer state than this snapshot; resume the latest."""


class ResourceExhaustedError(NullspaceError):
    """The server has no capacity now (503 ``capacity_exhausted``: memory or
    addresses; retry after ``retry_after`` seconds) or its snapshot disk is
    full (507)."""


class RateLimitError(NullspaceError):
    """Too many requests (429); retry after ``retry_after`` seconds."""


class UnavailableError(NullspaceError):
    """The server or the machine's agent cannot answer now (503); retryable."""


class TimeoutError(NullspaceError, builtins.TimeoutError):
    """A deadline passed: the request's own ``request_timeout``, a command's
    ``timeout``, or a wait's. It is also the built-in ``TimeoutError``."""


class ConnectionError(NullspaceError, builtins.ConnectionError):
    """The server could not be reached, or the connection broke before the
    answer was complete. The original exception is ``__cause__``."""


class CommandExitError(NullspaceError):
    """A command run with ``check=True`` exited with a non-zero code."""

    def __init__(self, result: Any) -> None:
        tail = (result.stderr or result.stdout or "").strip().splitlines()[-1:]
        msg = f"command exited with code {result.exit_code}"
        if tail:
            msg += f": {tail[0][:200]}"
        super().__init__(msg, code="command_exit", status=0)
        self.result = result
        self.exit_code: int = result.exit_code
        self.stdout: str = result.stdout
        self.stderr: str = result.stderr


class KeepAliveError(NullspaceError):
    """A keep_alive() refresh failed and the lease may run out; ``__cause__``
    is the refresh's error."""


# The class for each stable code. Codes not listed fall back on the HTTP
# status (see error_from_body); a code the server adds later still raises a
# NullspaceError that carries it.
_BY_CODE: Dict[str, Type[NullspaceError]] = {
    "unauthenticated": AuthenticationError,
    "invalid_argument": InvalidArgumentError,
    "auto_resume_requires_pause": InvalidArgumentError,
    "port_not_allowed": InvalidArgumentError,
    "snapshot_wrong_kind": InvalidArgumentError,
    "command_not_found": InvalidArgumentError,
    "file_too_large": InvalidArgumentError,
    "is_a_directory": InvalidArgumentError,
    "not_a_directory": InvalidArgumentError,
    "not_found": NotFoundError,
    "machine_not_found": MachineNotFoundError,
    "snapshot_not_found": SnapshotNotFoundError,
    "template_not_found": TemplateNotFoundError,
    "volume_not_found": VolumeNotFoundError,
    "process_not_found": ProcessNotFoundError,
    "file_not_found": PathNotFoundError,
    "conflict": ConflictError,
    "machine_not_running": MachineNotRunningError,
    "machine_ephemeral": ConflictError,
    "machine_has_no_command": ConflictError,
    "snapshot_in_use": ConflictError,
    "volume_in_use": ConflictError,
    "volume_exists": ConflictError,
    "snapshot_name_exists": ConflictError,
    "template_exists": ConflictError,
    "template_in_use": ConflictError,
    "template_not_ready": ConflictError,
    "idempotency_key_reused": ConflictError,
    "idempotency_key_in_progress": ConflictError,
    "snapshot_incompatible": SnapshotIncompatibleError,
    "snapshot_corrupt": SnapshotCorruptError,
    "snapshot_superseded": SnapshotSupersededError,
    "resource_exhausted": ResourceExhaustedError,
    "capacity_exhausted": ResourceExhaustedError,
    "unavailable": UnavailableError,
    "agent_unavailable": UnavailableError,
    "deadline_exceeded": TimeoutError,
    "command_timeout": TimeoutError,
}

_BY_STATUS: Dict[int, Type[NullspaceError]] = {
    400: InvalidArgumentError,
    401: AuthenticationError,
    413: InvalidArgumentError,
    404: NotFoundError,
    409: ConflictError,
    429: RateLimitError,
    503: UnavailableError,
    504: TimeoutError,
    507: ResourceExhaustedError,
}


def error_from_body(status: int, body: Any, retry_after: Optional[float] = None) -> NullspaceError:
    """The exception for an error answer: ``body`` is the decoded JSON
    ``{code, message, retryable, suggested_action}``, or anything else when
    the answer was not one (a proxy's page)."""
    if isinstance(body, dict) and body.get("code"):
        code = str(body["code"])
        cls = _BY_CODE.get(code) or _BY_STATUS.get(status, NullspaceError)
        err = cls(
            str(body.get("message") or f"server answered {status}"),
            code=code,
            status=status,
            retryable=bool(body.get("retryable", False)),
            suggested_action=str(body.get("suggested_action") or ""),
        )
    else:
        text = body if isinstance(body, str) else ""
        msg = f"server answered HTTP {status}"
        if text.strip() and not text.lstrip().startswith("<"):
            msg += ": " + text.strip()[:200]
        cls = _BY_STATUS.get(status, NullspaceError)
        err = cls(msg, status=status, retryable=status in (429, 502, 503, 504))
    err.retry_after = retry_after
    return err


def stream_error(body: Any) -> NullspaceError:
    """The exception for an ``error`` event inside a stream."""
    return error_from_body(0, body if isinstance(body, dict) else {"code": "internal", "message": "stream error"})
