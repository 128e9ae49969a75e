"""The async surface seen through blocking calls, so one test suite runs
against both: every coroutine is run on an event loop in a thread of its
own, async iterators become iterators, ``async with`` becomes ``with``.

Only the test suite uses this; it is not a way to use the SDK (use
Machine, which has its own blocking transport)."""

from __future__ import annotations

import asyncio
import inspect
import threading
from typing import Any

import nullspace.aio as aio

_loop = asyncio.new_event_loop()
threading.Thread(target=_loop.run_forever, name="facade-loop", daemon=True).start()

_WRAPPED = (aio.AsyncMachine, aio.AsyncFiles, aio.AsyncCommands, aio.AsyncCommandHandle, aio.AsyncKeepAlive,
            aio.AsyncMonitor, aio.AsyncFileStream, aio.AsyncClient, aio.AsyncSnapshots, aio.AsyncVolumes,
            aio.AsyncTemplates, aio.AsyncPty, aio.AsyncPtyHandle, aio.AsyncWatchHandle)


def run(coro: Any) -> Any:
    return asyncio.run_coroutine_threadsafe(coro, _loop).result()


def wrap(v: Any) -> Any:
    if inspect.iscoroutine(v):
        return wrap(run(v))
    if isinstance(v, _WRAPPED) or v is aio.AsyncMachine:
        return Proxy(v)
    if hasattr(v, "__anext__"):
        return _Iter(v)
    if isinstance(v, list):
        return [wrap(x) for x in v]
    return v


def unwrap(v: Any) -> Any:
    return v._target if isinstance(v, Proxy) else v


class _Iter:
    def __init__(self, it: Any) -> None:
        self._it = it

    def __iter__(self) -> "_Iter":
        return self

    def __next__(self) -> Any:
        try:
            return wrap(run(self._it.__anext__()))
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        if hasattr(self._it, "aclose"):
            run(self._it.aclose())


class Proxy:
    def __init__(self, target: Any) -> None:
        object.__setattr__(self, "_target", target)

    def __getattr__(self, name: str) -> Any:
        if name == "close" and not hasattr(self._target, "close"):
            name = "aclose"
        v = getattr(self._target, name)
        if callable(v) and not isinstance(v, type):
            return lambda *a, **kw: wrap(v(*[unwrap(x) for x in a], **{k: unwrap(x) for k, x in kw.items()}))
        return wrap(v)

    def __iter__(self) -> Any:
        return _Iter(self._target.__aiter__())

    def __enter__(self) -> Any:
        return wrap(run(self._target.__aenter__()))

    def __exit__(self, *exc: Any) -> Any:
        return run(self._target.__aexit__(*exc))

    def __repr__(self) -> str:
        return f"Proxy({self._target!r})"

    def __eq__(self, other: Any) -> bool:
        return unwrap(other) is self._target


#: AsyncMachine, called like Machine.
Machine = Proxy(aio.AsyncMachine)


def Client(*a: Any, **kw: Any) -> Proxy:
    return Proxy(aio.AsyncClient(*a, **kw))
