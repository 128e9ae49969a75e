"""What the live tests share: the server they run against (make test starts
one, with real gVisor machines, and passes it in the environment) and small
helpers."""

from __future__ import annotations

import os
import time
import urllib.request
from typing import Any, Callable, Optional

import nullspace

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


def require_server() -> None:
    """Fails (not skips) the suite when no server is configured: make test
    runs these tests from e2e/python_sdk_test.go against its server."""
    if not os.environ.get("NULLSPACE_API_URL"):
        raise RuntimeError(
            "NULLSPACE_API_URL is not set: run the live SDK tests with `make test` (e2e TestPythonSDK), "
            "or point NULLSPACE_API_URL and NULLSPACE_API_KEY at a running `nullspace serve`")
    with nullspace.Client() as c:
        c.health()


def test_rootfs() -> str:
    """A root filesystem directory the suites upload as a template tarball:
    make test passes the test server's minimal template (busybox) in
    NULLSPACE_TEST_ROOTFS. Fails (not skips) without one."""
    d = os.environ.get("NULLSPACE_TEST_ROOTFS", "")
    if not d or not os.path.isfile(os.path.join(d, "bin", "busybox")):
        raise RuntimeError(
            f"NULLSPACE_TEST_ROOTFS={d!r} is not a root filesystem with /bin/busybox: set it to the server's "
            "minimal template (TEMPLATES_DIR/minimal/rootfs), as e2e TestPythonSDK does")
    return d


def eventually(what: str, f: Callable[[], Any], timeout: float = 30.0, every: float = 0.2) -> Any:
    """Polls f until it returns a true value, or fails after timeout."""
    deadline = time.monotonic() + timeout
    last: Optional[BaseException] = None
    while time.monotonic() < deadline:
        try:
            v = f()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - reported at the deadline
            last = e
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout} s (last error: {last})")


def fetch(url: str, timeout: float = 60.0) -> "tuple[int, bytes]":
    """GET url with urllib (no DNS beyond 127.0.0.1: the path-form URL)."""
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def kill_quietly(machine_id: str) -> None:
    try:
        nullspace.Machine.kill(machine_id)
    except nullspace.NullspaceError:
        pass
