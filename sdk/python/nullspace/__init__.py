"""Nullspace: gVisor machines that a program creates in a fraction of a
second, runs commands and edits files in, hibernates with their whole memory
when idle, wakes on a request to their public URL, and forks.

    from nullspace import Machine

    machine = Machine.create(template="base")
    machine.files.write("/workspace/report.txt", "draft\\n")
    snapshot = machine.pause()

The blocking surface is here; the same for asyncio is ``AsyncMachine`` (and
``AsyncClient``). Standard library only.
"""

from typing import TYPE_CHECKING

from ._config import DEFAULT_REQUEST_TIMEOUT, VERSION as __version__
from .client import Client
from .errors import (
    AuthenticationError,
    CommandExitError,
    ConflictError,
    ConnectionError,
    InvalidArgumentError,
    KeepAliveError,
    MachineNotFoundError,
    MachineNotRunningError,
    NotFoundError,
    NullspaceError,
    PathNotFoundError,
    ProcessNotFoundError,
    RateLimitError,
    ResourceExhaustedError,
    SnapshotCorruptError,
    SnapshotIncompatibleError,
    SnapshotNotFoundError,
    SnapshotSupersededError,
    TemplateNotFoundError,
    TimeoutError,
    UnavailableError,
    VolumeNotFoundError,
)
from .machine import CommandHandle, FileStream, KeepAlive, Machine, Monitor, PtyHandle, WatchHandle
from .models import (
    CommandResult,
    EntryInfo,
    Event,
    FileEvent,
    Lease,
    MachineInfo,
    MachineURL,
    MainExit,
    Metric,
    OutputChunk,
    ProcessInfo,
    PtySize,
    Snapshot,
    Template,
    Volume,
    VolumeMount,
    WriteInfo,
)

__all__ = [
    "AsyncClient", "AsyncCommandHandle", "AsyncFileStream", "AsyncKeepAlive", "AsyncMachine", "AsyncMonitor",
    "AsyncPtyHandle", "AsyncWatchHandle", "FileEvent", "PtyHandle", "PtySize", "WatchHandle",
    "AuthenticationError", "Client", "CommandExitError", "CommandHandle", "CommandResult", "ConflictError",
    "ConnectionError", "DEFAULT_REQUEST_TIMEOUT", "EntryInfo", "Event", "FileStream", "InvalidArgumentError",
    "KeepAlive", "KeepAliveError", "Lease", "Machine", "MachineInfo", "MachineNotFoundError",
    "MachineNotRunningError", "MachineURL", "MainExit", "Metric", "Monitor", "NotFoundError", "NullspaceError",
    "OutputChunk", "PathNotFoundError", "ProcessInfo", "ProcessNotFoundError", "RateLimitError",
    "ResourceExhaustedError", "Snapshot", "SnapshotCorruptError", "SnapshotIncompatibleError",
    "SnapshotNotFoundError", "SnapshotSupersededError", "Template", "TemplateNotFoundError", "TimeoutError",
    "UnavailableError", "Volume", "VolumeMount", "VolumeNotFoundError", "WriteInfo", "__version__",
]

if TYPE_CHECKING:
    from .aio import (AsyncClient, AsyncCommandHandle, AsyncFileStream, AsyncKeepAlive, AsyncMachine, AsyncMonitor,
                      AsyncPtyHandle, AsyncWatchHandle)

_ASYNC = ("AsyncClient", "AsyncCommandHandle", "AsyncFileStream", "AsyncKeepAlive", "AsyncMachine", "AsyncMonitor",
          "AsyncPtyHandle", "AsyncWatchHandle")


def __getattr__(name: str) -> object:
    # The asyncio surface is imported on first use: asyncio alone would
    # double the time of ``import nullspace`` for programs that never use it.
    if name in _ASYNC:
        from . import aio

        return getattr(aio, name)
    raise AttributeError(f"module 'nullspace' has no attribute {name!r}")
