"""Unit tests of the SDK's own logic against a scripted loopback server:
error classes, retries, keep-alive, streams cut mid-way. They need no
Nullspace server; test_live.py and test_reference.py do."""

from __future__ import annotations

import asyncio
import base64
import builtins
import io
import os
import socket
import time
import unittest
from typing import Any, List
from datetime import timezone

import nullspace
from nullspace import AsyncClient, AsyncMachine, Client, Machine, errors
from nullspace.models import parse_time

from fakeserver import FakeServer, err, js, ndjson_stream

MACHINE = {"id": "mch_1", "state": "running", "lineage_id": "mch_1", "latest_id": "mch_1"}


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class ErrorClassesTest(unittest.TestCase):
    def test_every_code_raises_its_class(self) -> None:
        cases = [
            (401, "unauthenticated", errors.AuthenticationError),
            (400, "invalid_argument", errors.InvalidArgumentError),
            (400, "auto_resume_requires_pause", errors.InvalidArgumentError),
            (404, "machine_not_found", errors.MachineNotFoundError),
            (404, "snapshot_not_found", errors.SnapshotNotFoundError),
            (404, "template_not_found", errors.TemplateNotFoundError),
            (404, "volume_not_found", errors.VolumeNotFoundError),
            (404, "process_not_found", errors.ProcessNotFoundError),
            (404, "file_not_found", errors.PathNotFoundError),
            (409, "machine_not_running", errors.MachineNotRunningError),
            (409, "conflict", errors.ConflictError),
            (409, "snapshot_incompatible", errors.SnapshotIncompatibleError),
            (409, "snapshot_corrupt", errors.SnapshotCorruptError),
            (409, "snapshot_superseded", errors.SnapshotSupersededError),
            (409, "snapshot_name_exists", errors.ConflictError),
            (429, "rate_limited", errors.RateLimitError),
            (503, "unavailable", errors.UnavailableError),
            (504, "deadline_exceeded", errors.TimeoutError),
            (507, "resource_exhausted", errors.ResourceExhaustedError),
            (503, "capacity_exhausted", errors.ResourceExhaustedError),
            (418, "a_code_from_the_future", errors.NullspaceError),
        ]
        srv = FakeServer()
        self.addCleanup(srv.close)
        c = Client(srv.url, "k", max_retries=0)
        self.addCleanup(c.close)
        for status, code, cls in cases:
            with self.subTest(code=code):
                srv.route("GET /v1/machines/mch_1", err(status, code, headers={"Retry-After": "7"}))
                with self.assertRaises(cls) as cm:
                    Machine.get_info_by_id("mch_1", client=c)
                e = cm.exception
                self.assertIs(type(e), cls)
                self.assertEqual((e.code, e.status, e.suggested_action, e.retry_after), (code, status, "do the thing", 7.0))
                self.assertIn(code, str(e))

    def test_builtin_bases(self) -> None:
        self.assertTrue(issubclass(errors.TimeoutError, builtins.TimeoutError))
        self.assertTrue(issubclass(errors.PathNotFoundError, builtins.FileNotFoundError))
        self.assertTrue(issubclass(errors.ConnectionError, builtins.ConnectionError))
        self.assertTrue(issubclass(errors.MachineNotRunningError, errors.ConflictError))

    def test_not_json_answer(self) -> None:
        srv = FakeServer()
        self.addCleanup(srv.close)
        srv.route("GET /v1/machines/mch_1", (502, {"Content-Type": "text/html"}, b"<html>bad gateway</html>"))
        with Client(srv.url, "k", max_retries=0) as c, self.assertRaises(errors.NullspaceError) as cm:
            Machine.get_info_by_id("mch_1", client=c)
        self.assertEqual((cm.exception.status, cm.exception.code, cm.exception.retryable), (502, "", True))

    def test_command_exit_error(self) -> None:
        srv = FakeServer()
        self.addCleanup(srv.close)
        srv.route("POST /v1/machines/mch_1/commands", js(200, {"pid": 3, "exit_code": 2, "stdout": "", "stderr": "boom\n"}))
        with Client(srv.url, "k") as c:
            m = Machine(nullspace.MachineInfo.from_json(MACHINE), c)
            self.assertEqual(m.commands.run("false").exit_code, 2)
            with self.assertRaises(errors.CommandExitError) as cm:
                m.commands.run("false", check=True)
        self.assertEqual((cm.exception.exit_code, cm.exception.stderr), (2, "boom\n"))
        self.assertIn("boom", str(cm.exception))


class KillTest(unittest.TestCase):
    def test_kill_on_class_and_handle(self) -> None:
        srv = FakeServer()
        self.addCleanup(srv.close)
        srv.route("DELETE /v1/machines/mch_1", js(200, dict(MACHINE, state="killed")))
        srv.route("DELETE /v1/machines/mch_2", err(404, "machine_not_found"))
        with Client(srv.url, "k") as c:
            self.assertTrue(Machine.kill("mch_1", client=c))
            self.assertFalse(Machine.kill("mch_2", client=c))
            self.assertTrue(Machine(nullspace.MachineInfo.from_json(MACHINE), c).kill())

        async def main() -> None:
            async with AsyncClient(srv.url, "k") as ac:
                self.assertTrue(await AsyncMachine.kill("mch_1", client=ac))
                self.assertFalse(await AsyncMachine.kill("mch_2", client=ac))
                self.assertTrue(await AsyncMachine(nullspace.MachineInfo.from_json(MACHINE), ac).kill())

        asyncio.run(main())
        self.assertEqual(srv.count("DELETE", "/v1/machines/mch_1"), 4)


class RetryTest(unittest.TestCase):
    def setUp(self) -> None:
        self.srv = FakeServer()
        self.addCleanup(self.srv.close)

    def test_idempotent_call_retried_after_retryable_answer(self) -> None:
        self.srv.route("GET /v1/machines/mch_1", err(503, "unavailable", True, {"Retry-After": "0"}),
                       err(503, "unavailable", True, {"Retry-After": "0"}), js(200, MACHINE))
        with Client(self.srv.url, "k") as c:
            self.assertEqual(Machine.get_info_by_id("mch_1", client=c).id, "mch_1")
        self.assertEqual(self.srv.count("GET", "/v1/machines/mch_1"), 3)

    def test_command_never_sent_twice_create_retried_with_its_key(self) -> None:
        self.srv.route("POST /v1/machines", err(503, "unavailable", True, {"Retry-After": "0"}), js(201, MACHINE))
        self.srv.route("POST /v1/machines/mch_1/commands", err(503, "agent_unavailable", True, {"Retry-After": "0"}))
        with Client(self.srv.url, "k") as c:
            self.assertEqual(Machine.create(template="base", client=c).id, "mch_1")
            m = Machine(nullspace.MachineInfo.from_json(MACHINE), c)
            with self.assertRaises(errors.UnavailableError):
                m.commands.run("echo once")
        self.assertEqual(self.srv.count("POST", "/v1/machines"), 2)
        keys = {h.get("Idempotency-Key") for meth, p, h, _ in self.srv.requests if p == "/v1/machines"}
        self.assertEqual(len(keys), 1)
        self.assertEqual(self.srv.count("POST", "/v1/machines/mch_1/commands"), 1)
        cmd = [h for meth, p, h, _ in self.srv.requests if p == "/v1/machines/mch_1/commands"]
        self.assertNotIn("Idempotency-Key", cmd[0])

    def test_non_retryable_answer_not_retried(self) -> None:
        self.srv.route("GET /v1/machines/mch_1", err(404, "machine_not_found"))
        with Client(self.srv.url, "k") as c, self.assertRaises(errors.MachineNotFoundError):
            Machine.get_info_by_id("mch_1", client=c)
        self.assertEqual(self.srv.count("GET", "/v1/machines/mch_1"), 1)

    def test_connection_refused_is_connection_error(self) -> None:
        url = f"http://127.0.0.1:{free_port()}"
        with Client(url, "k", max_retries=2) as c, self.assertRaises(errors.ConnectionError) as cm:
            Machine.create(template="base", client=c)
        self.assertIsInstance(cm.exception.__cause__, OSError)
        self.assertTrue(cm.exception.retryable)

    def test_keep_alive_reuses_one_connection(self) -> None:
        self.srv.route("GET /v1/machines/mch_1", js(200, MACHINE))
        with Client(self.srv.url, "k") as c:
            for _ in range(5):
                Machine.get_info_by_id("mch_1", client=c)
        self.assertEqual(len(self.srv.peers), 1)

    def test_async_keep_alive_and_retry(self) -> None:
        self.srv.route("GET /v1/machines/mch_1", err(503, "unavailable", True, {"Retry-After": "0"}), js(200, MACHINE))

        async def main() -> None:
            async with AsyncClient(self.srv.url, "k") as c:
                for _ in range(4):
                    self.assertEqual((await AsyncMachine.get_info_by_id("mch_1", client=c)).id, "mch_1")

        asyncio.run(main())
        self.assertEqual(self.srv.count("GET", "/v1/machines/mch_1"), 5)
        self.assertEqual(len(self.srv.peers), 1)

    def test_early_refusal_reported_not_broken_pipe(self) -> None:
        """A server that refuses a large upload before reading it answers and
        closes: the caller gets that answer, not a broken pipe."""
        path = "/v1/machines/mch_1/files"
        self.srv.route("PUT " + path, err(413, "file_too_large", headers={"Connection": "close"}))
        self.srv.no_read.add("PUT " + path)
        big = b"x" * (32 << 20)
        with Client(self.srv.url, "k") as c:
            m = Machine(nullspace.MachineInfo.from_json(MACHINE), c)
            with self.assertRaises(errors.InvalidArgumentError) as cm:
                m.files.write("/workspace/big", big)
        self.assertEqual((cm.exception.code, cm.exception.status), ("file_too_large", 413))

        async def main() -> None:
            async with AsyncClient(self.srv.url, "k") as c:
                m = AsyncMachine(nullspace.MachineInfo.from_json(MACHINE), c)
                await m.files.write("/workspace/big", big)

        with self.assertRaises(errors.InvalidArgumentError) as cm:
            asyncio.run(main())
        self.assertEqual(cm.exception.code, "file_too_large")

    def test_key_sent_as_bearer(self) -> None:
        self.srv.route("GET /v1/machines/mch_1", js(200, MACHINE))
        with Client(self.srv.url, "secret-key") as c:
            Machine.get_info_by_id("mch_1", client=c)
        self.assertEqual(self.srv.requests[0][2]["Authorization"], "Bearer secret-key")


def drop_first(answer: Any, wait: float = 0.0) -> Any:
    """A route that reads the first request, waits ``wait`` seconds and
    closes the connection without answering; later ones get ``answer``."""
    n = [0]

    def route(h: Any, _: bytes) -> Any:
        n[0] += 1
        if n[0] == 1:
            time.sleep(wait)
            h.close_connection = True
            return None
        return answer

    return route


SNAP = {"id": "snp_1", "kind": "snapshot", "machine_id": "mch_1"}
FORK = {"snapshot": SNAP, "machines": [dict(MACHINE, id="mch_2")]}


class IdempotencyKeyTest(unittest.TestCase):
    """Create, fork and create_snapshot carry an Idempotency-Key, the same
    on every attempt of one call, so they are retried like idempotent
    calls; a refusal of the key is not retried."""

    def setUp(self) -> None:
        self.srv = FakeServer()
        self.addCleanup(self.srv.close)

    def keys(self, path: str) -> List[str]:
        return [h.get("Idempotency-Key", "") for _, p, h, _ in self.srv.requests if p == path]

    def test_dropped_connection_retried_with_the_same_key(self) -> None:
        routes = {"/v1/machines": js(201, MACHINE), "/v1/machines/mch_1/fork": js(201, FORK),
                  "/v1/machines/mch_1/snapshots": js(201, SNAP)}
        for path, answer in routes.items():
            self.srv.route("POST " + path, drop_first(answer))
        with Client(self.srv.url, "k") as c:
            m = Machine.create(template="base", client=c)
            self.assertEqual(m.id, "mch_1")
            self.assertEqual([k.id for k in m.fork(1)], ["mch_2"])
            self.assertEqual(m.create_snapshot().id, "snp_1")
        seen = set()
        for path in routes:
            with self.subTest(path=path):
                keys = self.keys(path)
                self.assertEqual(len(keys), 2)
                self.assertEqual(keys[0], keys[1])
                self.assertRegex(keys[0], r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
                seen.add(keys[0])
        self.assertEqual(len(seen), 3, "each call has a key of its own")

    def test_async_dropped_connection_retried_with_the_same_key(self) -> None:
        routes = {"/v1/machines": js(201, MACHINE), "/v1/machines/mch_1/fork": js(201, FORK),
                  "/v1/machines/mch_1/snapshots": js(201, SNAP)}
        for path, answer in routes.items():
            self.srv.route("POST " + path, drop_first(answer))

        async def main() -> None:
            async with AsyncClient(self.srv.url, "k") as c:
                m = await AsyncMachine.create(template="base", client=c)
                self.assertEqual([k.id for k in await m.fork(1)], ["mch_2"])
                self.assertEqual((await m.create_snapshot()).id, "snp_1")

        asyncio.run(main())
        for path in routes:
            with self.subTest(path=path):
                keys = self.keys(path)
                self.assertEqual(len(keys), 2)
                self.assertEqual(keys[0], keys[1])
                self.assertTrue(keys[0])

    def test_every_call_a_new_key_and_the_callers_as_given(self) -> None:
        self.srv.route("POST /v1/machines", js(201, MACHINE))
        with Client(self.srv.url, "k") as c:
            Machine.create(client=c)
            Machine.create(client=c)
            Machine.create(client=c, idempotency_key="job-42 create")

        async def main() -> None:
            async with AsyncClient(self.srv.url, "k") as c:
                await AsyncMachine.create(client=c)
                m = await AsyncMachine.create(client=c, idempotency_key="job-43")
                self.srv.route("POST /v1/machines/mch_1/fork", js(201, FORK))
                self.srv.route("POST /v1/machines/mch_1/snapshots", js(201, SNAP))
                await m.fork(1, idempotency_key="fork-1")
                await m.create_snapshot(idempotency_key="snap-1")

        asyncio.run(main())
        keys = self.keys("/v1/machines")
        self.assertEqual(len(set(keys[:2] + keys[3:4])), 3)
        self.assertEqual((keys[2], keys[4]), ("job-42 create", "job-43"))
        self.assertEqual(self.keys("/v1/machines/mch_1/fork"), ["fork-1"])
        self.assertEqual(self.keys("/v1/machines/mch_1/snapshots"), ["snap-1"])

    def test_key_reused_is_not_retried(self) -> None:
        self.srv.route("POST /v1/machines", err(422, "idempotency_key_reused"))
        with Client(self.srv.url, "k") as c, self.assertRaises(errors.ConflictError) as cm:
            Machine.create(client=c, idempotency_key="k1")
        self.assertEqual((cm.exception.code, cm.exception.status), ("idempotency_key_reused", 422))

        async def main() -> None:
            async with AsyncClient(self.srv.url, "k") as c:
                await AsyncMachine.create(client=c, idempotency_key="k1")

        with self.assertRaises(errors.ConflictError) as cm:
            asyncio.run(main())
        self.assertEqual(cm.exception.code, "idempotency_key_reused")
        self.assertEqual(self.srv.count("POST", "/v1/machines"), 2)

    def test_in_progress_and_timeout_retried(self) -> None:
        self.srv.route("POST /v1/machines", err(409, "idempotency_key_in_progress", True, {"Retry-After": "0"}),
                       js(201, MACHINE))
        self.srv.route("POST /v1/machines/mch_1/fork", drop_first(js(201, FORK), wait=0.5))
        with Client(self.srv.url, "k") as c:
            m = Machine.create(client=c)
            self.assertEqual(len(m.fork(1, request_timeout=0.2)), 1)
        self.assertEqual(len(set(self.keys("/v1/machines"))), 1)
        self.assertEqual(len(self.keys("/v1/machines")), 2)
        fork_keys = self.keys("/v1/machines/mch_1/fork")
        self.assertEqual(len(fork_keys), 2)
        self.assertEqual(fork_keys[0], fork_keys[1])

    def test_async_in_progress_and_timeout_retried(self) -> None:
        self.srv.route("POST /v1/machines", err(409, "idempotency_key_in_progress", True, {"Retry-After": "0"}),
                       js(201, MACHINE))
        self.srv.route("POST /v1/machines/mch_1/snapshots", drop_first(js(201, SNAP), wait=0.5))

        async def main() -> None:
            async with AsyncClient(self.srv.url, "k") as c:
                m = await AsyncMachine.create(client=c)
                self.assertEqual((await m.create_snapshot(request_timeout=0.2)).id, "snp_1")

        asyncio.run(main())
        self.assertEqual(len(self.keys("/v1/machines")), 2)
        self.assertEqual(len(set(self.keys("/v1/machines"))), 1)
        snap_keys = self.keys("/v1/machines/mch_1/snapshots")
        self.assertEqual(len(snap_keys), 2)
        self.assertEqual(snap_keys[0], snap_keys[1])

    def test_bad_key_refused_before_sending(self) -> None:
        with Client(self.srv.url, "k") as c:
            for bad in ["", "x" * 256, "caf\u00e9", "a\nb", " lead"]:
                with self.subTest(key=bad), self.assertRaises(errors.InvalidArgumentError):
                    Machine.create(client=c, idempotency_key=bad)
            self.assertEqual(self.srv.requests, [])
            self.srv.route("POST /v1/machines", js(201, MACHINE))
            Machine.create(client=c, idempotency_key="x" * 255)
        self.assertEqual(self.keys("/v1/machines"), ["x" * 255])


def out(typ: str, data: bytes, offset: int) -> dict:
    return {"type": typ, "data": base64.b64encode(data).decode(), "offset": offset}


class StreamTest(unittest.TestCase):
    """Output streams cut mid-way reconnect from their byte offsets."""

    def setUp(self) -> None:
        self.srv = FakeServer()
        self.addCleanup(self.srv.close)
        self.srv.route("GET /v1/machines/mch_1/commands", js(200, {"processes": [{"pid": 9, "cmd": ["x"], "running": True}]}))
        cut = lambda h: h.connection.shutdown(socket.SHUT_RDWR)  # noqa: E731
        first = ndjson_stream([out("stdout", b"ab", 0), out("stdout", "\u00e9".encode()[:1], 2)], then=cut)
        rest = ndjson_stream([out("stdout", b"ab" + "\u00e9".encode(), 0), out("stdout", b"cd", 4),
                              {"type": "exit", "exit_code": 0}])
        calls = []

        def route(h, body):
            calls.append(h.path)
            return (first if len(calls) == 1 else rest)(h, body)

        self.calls = calls
        self.srv.route("GET /v1/machines/mch_1/commands/9/output", route)

    def test_sync_reconnect_no_duplicates(self) -> None:
        with Client(self.srv.url, "k") as c:
            m = Machine(nullspace.MachineInfo.from_json(MACHINE), c)
            res = m.commands.connect(9).wait()
        self.assertEqual(res.stdout, "ab\u00e9cd")
        self.assertIn("stdout_offset=3", self.calls[1])

    def test_async_reconnect_no_duplicates(self) -> None:
        async def main() -> str:
            async with AsyncClient(self.srv.url, "k") as c:
                m = AsyncMachine(nullspace.MachineInfo.from_json(MACHINE), c)
                h = await m.commands.connect(9)
                return (await h.wait()).stdout

        self.assertEqual(asyncio.run(main()), "ab\u00e9cd")
        self.assertIn("stdout_offset=3", self.calls[1])


class EventsResumeTest(unittest.TestCase):
    def test_events_resume_after_disconnect(self) -> None:
        srv = FakeServer()
        self.addCleanup(srv.close)
        ev = lambda seq: {"seq": seq, "type": "machine.created", "machine_id": "mch_1", "time": "2026-12-01T10:00:00Z", "cause": "api"}  # noqa: E731
        cut = lambda h: h.connection.shutdown(socket.SHUT_RDWR)  # noqa: E731
        streams = [ndjson_stream([ev(1), ev(2)], then=cut), ndjson_stream([ev(3)], then=cut), ndjson_stream([ev(4)])]
        paths = []

        def route(h, body):
            paths.append(h.path)
            return streams[min(len(paths) - 1, 2)](h, body)

        srv.route("GET /v1/events", route)
        with Client(srv.url, "k") as c:
            seqs = []
            for e in c.events(after=0):
                seqs.append(e.seq)
                if e.seq == 4:
                    break
        self.assertEqual(seqs, [1, 2, 3, 4])
        self.assertIn("after=2", paths[1])
        self.assertIn("after=3", paths[2])


class WatchResumeTest(unittest.TestCase):
    """A watch's stream cut mid-way is opened again by watch_id from the
    last seq seen, through both transports; stop() removes the watch."""

    def setUp(self) -> None:
        self.srv = FakeServer()
        self.addCleanup(self.srv.close)
        fe = lambda seq, path: {"type": "create", "seq": seq, "path": path, "time": "2026-12-01T10:00:00Z"}  # noqa: E731
        cut = lambda h: h.connection.shutdown(socket.SHUT_RDWR)  # noqa: E731
        streams = [
            ndjson_stream([{"type": "watching", "watch_id": "wch_1", "time": "2026-12-01T10:00:00Z"}, fe(1, "/w/a"), fe(2, "/w/b")], then=cut),
            ndjson_stream([fe(3, "/w/c"), {"type": "end", "seq": 4, "path": "/w", "time": "2026-12-01T10:00:00Z"}]),
        ]
        self.paths: List[str] = []

        def route(h, body):
            self.paths.append(h.path)
            return streams[min(len(self.paths) - 1, 1)](h, body)

        self.srv.route("GET /v1/machines/mch_1/files/watch", route)
        self.deleted: List[str] = []
        def delete(h, body):
            self.deleted.append(h.path)
            return 204, {}, b""

        self.srv.route("DELETE /v1/machines/mch_1/files/watch/wch_1", delete)

    def check(self, got: List[str]) -> None:
        self.assertEqual(got, ["create /w/a", "create /w/b", "create /w/c", "end /w"])
        self.assertIn("path=%2Fw", self.paths[0])
        self.assertIn("watch_id=wch_1", self.paths[1])
        self.assertIn("after=2", self.paths[1])
        self.assertEqual(len(self.deleted), 1)

    def test_sync(self) -> None:
        with Client(self.srv.url, "k") as c:
            m = Machine(nullspace.MachineInfo.from_json(MACHINE), c)
            with m.files.watch_dir("/w", recursive=True) as w:
                self.assertEqual(w.watch_id, "wch_1")
                got = [f"{e.type} {e.path}" for e in w]
        self.check(got)

    def test_async(self) -> None:
        async def main() -> List[str]:
            async with AsyncClient(self.srv.url, "k") as c:
                m = AsyncMachine(nullspace.MachineInfo.from_json(MACHINE), c)
                async with await m.files.watch_dir("/w", recursive=True) as w:
                    return [f"{e.type} {e.path}" async for e in w]

        self.check(asyncio.run(main()))


class MonitorReconnectTest(unittest.TestCase):
    def test_monitor_reconnects(self) -> None:
        srv = FakeServer()
        self.addCleanup(srv.close)
        sample = lambda i: {"timestamp": f"2026-12-01T10:00:0{i}Z", "cpu_count": 2, "cpu_used_pct": i,  # noqa: E731
                            "mem_used": 1, "mem_total": 2, "disk_used": 0, "disk_total": 0}
        cut = lambda h: h.connection.shutdown(socket.SHUT_RDWR)  # noqa: E731
        streams = [ndjson_stream([sample(1)], then=cut), ndjson_stream([sample(2)], then=cut)]
        n = []

        def route(h, body):
            n.append(1)
            return streams[min(len(n) - 1, 1)](h, body)

        srv.route("GET /v1/machines/mch_1/metrics", route)
        srv.route("GET /v1/machines/mch_1", js(200, MACHINE))
        with Client(srv.url, "k") as c:
            m = Machine(nullspace.MachineInfo.from_json(MACHINE), c)
            got = []
            for s in nullspace.Monitor(m):
                got.append(s.cpu_used_pct)
                if len(got) == 3:
                    break
        self.assertEqual(got, [1.0, 2.0, 2.0])
        self.assertEqual(len(n), 3)


class PackagingTest(unittest.TestCase):
    def test_pip_install_offline(self) -> None:
        """`pip install ./sdk/python` in a fresh venv, with no index: the
        in-tree backend needs nothing from PyPI."""
        import subprocess
        import sys
        import tempfile

        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        with open(os.path.join(root, "pyproject.toml"), encoding="utf-8") as f:
            self.assertIn(f'version = "{nullspace.__version__}"', f.read())
        with tempfile.TemporaryDirectory() as d:
            venv = os.path.join(d, "venv")
            subprocess.run([sys.executable, "-m", "venv", venv], check=True)
            py = os.path.join(venv, "bin", "python")
            r = subprocess.run([py, "-m", "pip", "install", "-q", "--no-index", root], capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stderr)
            r = subprocess.run([py, "-c", "import nullspace, os; from nullspace import AsyncMachine; "
                                "print(nullspace.__version__, os.path.isfile(os.path.join(os.path.dirname("
                                "nullspace.__file__), 'py.typed')))"], capture_output=True, text=True, cwd=d)
            self.assertEqual(r.stdout.split(), [nullspace.__version__, "True"], r.stderr)


class ModelsTest(unittest.TestCase):
    def test_parse_time(self) -> None:
        t = parse_time("2026-12-01T22:43:55.123456789Z")
        assert t is not None
        self.assertEqual((t.microsecond, t.tzinfo), (123456, timezone.utc))
        self.assertEqual(parse_time("2026-12-01T22:43:55+02:00").utcoffset().total_seconds(), 7200)  # type: ignore[union-attr]
        self.assertIsNone(parse_time("0001-01-01T00:00:00Z"))
        self.assertIsNone(parse_time(None))

    def test_failure_reason(self) -> None:
        info = nullspace.MachineInfo.from_json({**MACHINE, "state": "failed", "error": "out of memory", "failure_reason": "oom"})
        self.assertEqual((info.status, info.failure_reason), ("failed", "oom"))
        self.assertEqual(nullspace.MachineInfo.from_json(MACHINE).failure_reason, "")

    def test_url_is_a_string(self) -> None:
        u = nullspace.MachineURL.from_json({"url": "http://e/m/x", "ws_url": "ws://e/m/x", "port": 80})
        self.assertEqual(u + "/a", "http://e/m/x/a")
        self.assertEqual((u.ws_url, u.port, u.expires_at), ("ws://e/m/x", 80, None))

    def test_bad_arguments_fail_before_sending(self) -> None:
        srv = FakeServer()
        self.addCleanup(srv.close)
        with Client(srv.url, "k") as c:
            for kw in ({"timeout": -1}, {"timeout": "600"}, {"idle_timeout": 0.0001}, {"volumes": [42]}, {"command": []}):
                with self.subTest(kw=kw), self.assertRaises(errors.InvalidArgumentError):
                    Machine.create(template="base", client=c, **kw)
            m = Machine(nullspace.MachineInfo.from_json(MACHINE), c)
            for bad in ({"stdin": b"\xff\xfe"}, {"timeout": -5}, {"shell": True, "cmd": "  "}):
                cmd = bad.pop("cmd", "cat")
                with self.subTest(run=bad), self.assertRaises(errors.InvalidArgumentError):
                    m.commands.run(cmd, **bad)
            with self.assertRaises(errors.InvalidArgumentError):
                m.files.write("/x", 42)
            with self.assertRaises(errors.InvalidArgumentError):
                Client("ftp://x")
        self.assertEqual(srv.requests, [])


TEMPLATE = {"name": "up", "state": "ready", "size_bytes": 1, "created_at": "2026-12-01T10:00:00Z", "source": "upload"}


class TemplateUploadTest(unittest.TestCase):
    """templates.build(tarball=...) sends multipart/form-data: the JSON
    request part, then the tarball read a chunk at a time, then the closing
    boundary; with a Content-Length when the tarball's size is known,
    chunked otherwise; through both transports."""

    def setUp(self) -> None:
        self.srv = FakeServer()
        self.addCleanup(self.srv.close)
        self.srv.route("POST /v1/templates", js(201, TEMPLATE))
        # Several chunks' worth, not a multiple of one.
        self.data = os.urandom((300 << 10) + 7)
        d = self.enterContext_tmpdir()
        self.path = os.path.join(d, "rootfs.tar.gz")
        with open(self.path, "wb") as f:
            f.write(self.data)

    def enterContext_tmpdir(self) -> str:
        import tempfile

        d = tempfile.TemporaryDirectory()
        self.addCleanup(d.cleanup)
        return d.name

    def sent(self, want_request: dict, data: bytes, chunked: bool = False) -> None:
        """Checks the one request sent, byte for byte, and with the standard
        library's own multipart parser."""
        import email.parser
        import json

        self.assertEqual(len(self.srv.requests), 1)
        method, path, headers, body = self.srv.requests[0]
        self.assertEqual((method, path), ("POST", "/v1/templates"))
        ctype = headers["Content-Type"]
        self.assertTrue(ctype.startswith("multipart/form-data; boundary="), ctype)
        boundary = ctype.split("boundary=", 1)[1]
        if chunked:
            self.assertEqual(headers.get("Transfer-Encoding"), "chunked")
            self.assertNotIn("Content-Length", headers)
        else:
            self.assertEqual(headers.get("Content-Length"), str(len(body)))
        b = f"--{boundary}\r\n"
        want = (b + 'Content-Disposition: form-data; name="request"\r\nContent-Type: application/json\r\n\r\n').encode()
        want += json.dumps(want_request, separators=(",", ":")).encode() + b"\r\n"
        want += (b + 'Content-Disposition: form-data; name="tarball"; filename="rootfs.tar"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n").encode()
        want += data + f"\r\n--{boundary}--\r\n".encode()
        self.assertEqual(body, want)
        msg = email.parser.BytesParser().parsebytes(f"Content-Type: {ctype}\r\n\r\n".encode() + body)
        parts = msg.get_payload()
        assert isinstance(parts, list)
        self.assertEqual([p.get_param("name", header="content-disposition") for p in parts], ["request", "tarball"])
        self.assertEqual(json.loads(parts[0].get_payload(decode=True)), want_request)
        self.assertEqual(parts[1].get_payload(decode=True), data)

    def test_sync_path(self) -> None:
        with Client(self.srv.url, "k") as c:
            t = c.templates.build("up", tarball=self.path, steps=["echo hi"], workdir="/w", envs={"A": "1"})
        self.assertEqual((t.name, t.source), ("up", "upload"))
        self.sent({"name": "up", "steps": ["echo hi"], "workdir": "/w", "env": {"A": "1"}}, self.data)

    def test_sync_file_object_read_a_chunk_at_a_time(self) -> None:
        reads: List[int] = []

        class Unseekable:
            """A pipe-like source of the tarball: its size cannot be known."""

            def __init__(self, data: bytes) -> None:
                self._f = io.BytesIO(data)

            def read(self, n: int = -1) -> bytes:
                reads.append(n)
                return self._f.read(n)

        with Client(self.srv.url, "k") as c:
            c.templates.build("up", tarball=Unseekable(self.data))
        self.sent({"name": "up", "steps": []}, self.data, chunked=True)
        self.assertGreater(len(reads), 4)
        self.assertTrue(all(0 < n <= 1 << 20 for n in reads), f"reads of {set(reads)} bytes: the tarball is read whole")
        self.srv.requests.clear()
        with Client(self.srv.url, "k") as c, open(self.path, "rb") as f:
            f.seek(7)  # what is left of a seekable file is sent, with its length
            c.templates.build("up", tarball=f)
        self.sent({"name": "up", "steps": []}, self.data[7:])

    def test_async_path_and_async_file(self) -> None:
        class AsyncFile:
            """A file object whose read is a coroutine (aiofiles' kind)."""

            def __init__(self, data: bytes) -> None:
                self._f = io.BytesIO(data)

            async def read(self, n: int = -1) -> bytes:
                await asyncio.sleep(0)
                return self._f.read(n)

        async def main(tarball: object) -> str:
            async with AsyncClient(self.srv.url, "k") as c:
                return (await c.templates.build("up", tarball=tarball, steps=["true"])).source

        self.assertEqual(asyncio.run(main(self.path)), "upload")
        self.sent({"name": "up", "steps": ["true"]}, self.data)
        self.srv.requests.clear()
        asyncio.run(main(AsyncFile(self.data)))
        self.sent({"name": "up", "steps": ["true"]}, self.data, chunked=True)

    def test_from_template_is_json_and_default_base(self) -> None:
        import json

        with Client(self.srv.url, "k") as c:
            c.templates.build("t1", steps=["true"])
            c.templates.build("t2", from_template="minimal")
        got = [(h["Content-Type"], json.loads(b)) for _, _, h, b in self.srv.requests]
        self.assertEqual(got, [("application/json", {"name": "t1", "steps": ["true"], "from_template": "base"}),
                               ("application/json", {"name": "t2", "steps": [], "from_template": "minimal"})])

    def test_bad_sources_refused_before_sending(self) -> None:
        d = self.enterContext_tmpdir()
        text = open(self.path, "r", encoding="latin-1")
        self.addCleanup(text.close)
        cases = [
            ({"from_template": "base", "tarball": self.path}, "one source"),
            ({"tarball": os.path.join(d, "missing.tar")}, "No such file"),
            ({"tarball": d}, "not a regular file"),
            ({"tarball": b"tar bytes"}, "not bytes"),
            ({"tarball": text}, "not a text file"),
        ]
        with Client(self.srv.url, "k") as c:
            for kw, msg in cases:
                with self.subTest(kw=kw), self.assertRaises(errors.InvalidArgumentError) as cm:
                    c.templates.build("up", **kw)  # type: ignore[arg-type]
                self.assertIn(msg, str(cm.exception))
                self.assertTrue(cm.exception.suggested_action)

        async def main() -> None:
            async with AsyncClient(self.srv.url, "k") as c:
                await c.templates.build("up", from_template="base", tarball=self.path)

        with self.assertRaises(errors.InvalidArgumentError):
            asyncio.run(main())
        self.assertEqual(self.srv.requests, [])

    def test_tarball_changed_while_sent(self) -> None:
        from nullspace import _ops

        r = _ops.build_template("up", None, (), None, None, tarball=self.path)
        with open(self.path, "r+b") as f:
            f.truncate(1000)
        # The request is cut short: the server has nothing to answer.
        self.srv.route("POST /v1/templates", lambda h, body: None)
        with Client(self.srv.url, "k") as c, self.assertRaises(errors.InvalidArgumentError) as cm:
            c.call(r)
        self.assertIn("changed size", str(cm.exception))

    def test_too_large_refused_before_read(self) -> None:
        """The server's 413 file_too_large, answered before it read the
        body, is what the caller gets, through both transports."""
        with open(self.path, "wb") as f:
            f.write(b"x" * (32 << 20))
        self.srv.no_read.add("POST /v1/templates")
        # Answered and closed at once (a reset: the body is unread).
        self.srv.route("POST /v1/templates", err(413, "file_too_large", headers={"Connection": "close"}))
        with Client(self.srv.url, "k") as c, self.assertRaises(errors.InvalidArgumentError) as cm:
            c.templates.build("big", tarball=self.path)
        self.assertEqual((cm.exception.code, cm.exception.status), ("file_too_large", 413))

        def like_go(h: Any, _: bytes) -> None:
            # As the server's net/http does (closeWriteAndWait): the answer,
            # a FIN, and the reset only a while later.
            status, headers, data = err(413, "file_too_large", headers={"Connection": "close"})
            h.send_response(status)
            for k, v in headers.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
            h.wfile.flush()
            h.connection.shutdown(socket.SHUT_WR)
            time.sleep(0.5)

        self.srv.route("POST /v1/templates", like_go)
        for tarball in (self.path, io.BufferedReader(io.BytesIO(b"x" * (32 << 20)))):  # type: ignore[arg-type]
            with self.subTest(tarball=type(tarball).__name__):
                with Client(self.srv.url, "k") as c, self.assertRaises(errors.InvalidArgumentError) as cm:
                    c.templates.build("big", tarball=tarball)
                self.assertEqual((cm.exception.code, cm.exception.status), ("file_too_large", 413))

        async def main() -> None:
            async with AsyncClient(self.srv.url, "k") as c:
                await c.templates.build("big", tarball=self.path)

        with self.assertRaises(errors.InvalidArgumentError) as cm:
            asyncio.run(main())
        self.assertEqual((cm.exception.code, cm.exception.status), ("file_too_large", 413))


class EntryOwnerTest(unittest.TestCase):
    def test_owner_and_group(self) -> None:
        srv = FakeServer()
        self.addCleanup(srv.close)
        entry = {"name": "a", "path": "/w/a", "type": "file", "size": 1, "mode": "0644",
                 "mod_time": "2026-12-01T10:00:00Z", "owner": "user", "group": "1234"}
        srv.route("GET /v1/machines/mch_1/files/list", js(200, {"entries": [entry, {**entry, "owner": "", "group": ""}]}))
        old = {k: v for k, v in entry.items() if k not in ("owner", "group")}
        srv.route("GET /v1/machines/mch_1/files/stat", js(200, old))
        with Client(srv.url, "k") as c:
            m = Machine(nullspace.MachineInfo.from_json(MACHINE), c)
            got = [(e.owner, e.group) for e in m.files.list("/w")]
            st = m.files.stat("/w/a")
        self.assertEqual(got, [("user", "1234"), ("", "")])
        self.assertEqual((st.owner, st.group), ("", ""))  # a server older than the fields

        async def main() -> "tuple[str, str]":
            async with AsyncClient(srv.url, "k") as ac:
                e = (await AsyncMachine(nullspace.MachineInfo.from_json(MACHINE), ac).files.list("/w"))[0]
                return e.owner, e.group

        self.assertEqual(asyncio.run(main()), ("user", "1234"))


if __name__ == "__main__":
    unittest.main()


class FileUserTest(unittest.TestCase):
    """File calls name the user they act as: in the query, or in the
    mkdir and rename bodies; absent, the server's default (root)."""

    def test_user_sent(self) -> None:
        from nullspace import _ops
        for r in (_ops.read_file("m", "/a", user="user"), _ops.write_file("m", "/a", b"x", None, user="user"),
                  _ops.list_files("m", "/a", None, user="user"), _ops.stat("m", "/a", user="user"),
                  _ops.remove("m", "/a", True, user="user")):
            self.assertIn(("user", "user"), r.query)
        self.assertEqual(_ops.make_dir("m", "/a", user="1000").json, {"path": "/a", "user": "1000"})
        self.assertEqual(_ops.rename("m", "/a", "/b", user="user").json, {"from": "/a", "to": "/b", "user": "user"})

    def test_default_sends_none(self) -> None:
        from nullspace import _ops
        self.assertNotIn("user", [k for k, _ in _ops.read_file("m", "/a").query])
        self.assertEqual(_ops.make_dir("m", "/a").json, {"path": "/a"})


class SnapshotNameTest(unittest.TestCase):
    """A snapshot's name is sent when given, read back, and filters lists."""

    def test_named_snapshot(self) -> None:
        srv = FakeServer()
        self.addCleanup(srv.close)
        snap = {"id": "snp_1", "kind": "snapshot", "name": "web"}
        srv.route("POST /v1/machines/mch_1/snapshots", js(201, snap), js(201, dict(snap, name=None)), js(201, snap))
        srv.route("GET /v1/snapshots", js(200, {"snapshots": [snap], "next_token": ""}), js(200, {"snapshots": [snap], "next_token": ""}))
        with Client(srv.url, "k") as c:
            m = Machine(nullspace.MachineInfo.from_json(MACHINE), c)
            self.assertEqual(m.create_snapshot(name="web").name, "web")
            m.create_snapshot()
            self.assertEqual([s.name for s in c.snapshots.list(name="web")], ["web"])

        async def main() -> None:
            async with AsyncClient(srv.url, "k") as ac:
                am = AsyncMachine(nullspace.MachineInfo.from_json(MACHINE), ac)
                self.assertEqual((await am.create_snapshot(name="web")).name, "web")
                self.assertEqual([s.id async for s in ac.snapshots.list(name="web")], ["snp_1"])

        asyncio.run(main())
        posts = [(p, b) for meth, p, _, b in srv.requests if meth == "POST"]
        self.assertEqual(posts, [("/v1/machines/mch_1/snapshots", b'{"name":"web"}'),
                                 ("/v1/machines/mch_1/snapshots", b""),
                                 ("/v1/machines/mch_1/snapshots", b'{"name":"web"}')])
        lists = [p for meth, p, _, _ in srv.requests if meth == "GET"]
        self.assertEqual(lists, ["/v1/snapshots?name=web", "/v1/snapshots?name=web"])


class FileMetadataTest(unittest.TestCase):
    """Metadata goes as metadata[KEY]= on a write and comes back on the
    write, the entries and a watch's entry."""

    def test_sent(self) -> None:
        from nullspace import _ops
        r = _ops.write_file("m", "/a", b"x", None, metadata={"author": "mish"})
        self.assertIn(("metadata[author]", "mish"), r.query)
        self.assertNotIn("metadata[author]", [k for k, _ in _ops.write_file("m", "/a", b"x", None).query])

    def test_read(self) -> None:
        from nullspace.models import EntryInfo, FileEvent, WriteInfo
        entry = {"name": "a", "path": "/a", "type": "file", "metadata": {"k": "v"}}
        self.assertEqual(WriteInfo.from_json({"path": "/a", "size": 1, "metadata": {"k": "v"}}).metadata, {"k": "v"})
        self.assertEqual(EntryInfo.from_json(entry).metadata, {"k": "v"})
        self.assertEqual(EntryInfo.from_json({"name": "a", "path": "/a", "type": "file"}).metadata, {})
        ev = FileEvent.from_json({"type": "write", "path": "/a", "entry": entry})
        self.assertIsNotNone(ev.entry)
        assert ev.entry is not None
        self.assertEqual(ev.entry.metadata, {"k": "v"})
        self.assertIsNone(FileEvent.from_json({"type": "remove", "path": "/a"}).entry)
