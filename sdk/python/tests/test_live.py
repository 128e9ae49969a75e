"""The SDK's whole surface against a live server with real gVisor machines,
run twice: through Machine (the blocking transport) and through
AsyncMachine (the asyncio transport, driven by tests/facade.py)."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
import threading
import time
import tracemalloc
import unittest
import uuid
from typing import Any, List

import nullspace
from nullspace import errors

import facade
import live


def setUpModule() -> None:
    live.require_server()


class Surface:
    """The tests; the subclasses say which surface they drive."""

    M: Any  # Machine or the facade's AsyncMachine
    make_client: Any

    def setUp(self) -> None:
        self.made: List[str] = []
        self.tag = uuid.uuid4().hex[:8]

    def tearDown(self) -> None:
        for mid in self.made:
            live.kill_quietly(mid)

    def machine(self, **kw: Any) -> Any:
        kw.setdefault("template", "base")
        m = self.M.create(**kw)
        self.made.append(m.id)
        return m

    # -- files

    def test_files(self) -> None:
        m = self.machine()
        t: Any = self
        info = m.files.write("/workspace/a/b.txt", "h\u00e9llo\n")
        t.assertEqual((info.path, info.size), ("/workspace/a/b.txt", 7))
        t.assertEqual(m.files.read("/workspace/a/b.txt"), "h\u00e9llo\n")
        m.files.write("/workspace/bin.dat", bytes(range(256)), mode=0o600)
        t.assertEqual(m.files.read("/workspace/bin.dat", format="bytes"), bytes(range(256)))
        st = m.files.stat("/workspace/bin.dat")
        t.assertEqual((st.name, st.type, st.size, st.mode), ("bin.dat", "file", 256, "0600"))
        with m.files.read("/workspace/bin.dat", format="stream") as s:
            t.assertEqual(b"".join(s), bytes(range(256)))
        entries = {e.name: e for e in m.files.list("/workspace")}
        t.assertEqual(entries["a"].type, "dir")
        t.assertEqual((entries["bin.dat"].path, entries["bin.dat"].size), ("/workspace/bin.dat", 256))
        t.assertTrue(m.files.exists("/workspace/a/b.txt"))
        t.assertFalse(m.files.exists("/workspace/nope"))
        t.assertEqual(m.files.make_dir("/workspace/d/e").type, "dir")
        m.files.make_dir("/workspace/d/e")  # already there: fine
        t.assertEqual(m.files.rename("/workspace/a/b.txt", "/workspace/d/c.txt").path, "/workspace/d/c.txt")
        t.assertFalse(m.files.exists("/workspace/a/b.txt"))
        m.files.remove("/workspace/bin.dat")
        m.files.remove("/workspace/d", recursive=True)
        t.assertFalse(m.files.exists("/workspace/d"))
        with t.assertRaises(errors.PathNotFoundError):
            m.files.read("/workspace/d/c.txt")
        with t.assertRaises(FileNotFoundError):  # the built-in catches it too
            m.files.stat("/nope")
        with t.assertRaises(errors.InvalidArgumentError):
            m.files.read("/workspace", format="json")

    def test_large_streamed_write_and_read(self) -> None:
        """50 MiB from a file, never held in memory whole, and read back as
        a stream."""
        m = self.machine()
        t: Any = self
        size = 50 << 20
        h = hashlib.sha256()
        with tempfile.TemporaryFile() as f:
            block = os.urandom(1 << 20)
            for i in range(50):
                chunk = bytes([i]) + block[1:]
                f.write(chunk)
                h.update(chunk)
            f.seek(0)
            tracemalloc.start()
            tracemalloc.reset_peak()
            try:
                info = m.files.write("/workspace/big.bin", f)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
        t.assertEqual(info.size, size)
        t.assertLess(peak, 8 << 20, f"writing 50 MiB held {peak} bytes in Python memory")
        got = m.commands.run(["sha256sum", "/workspace/big.bin"]).stdout.split()[0]
        t.assertEqual(got, h.hexdigest())
        back = hashlib.sha256()
        n = 0
        with m.files.read("/workspace/big.bin", format="stream") as s:
            for chunk in s:
                back.update(chunk)
                n += len(chunk)
        t.assertEqual((n, back.hexdigest()), (size, h.hexdigest()))

        def gen():  # an iterable of bytes, sent chunked
            for i in range(4):
                yield bytes([65 + i]) * 1000

        t.assertEqual(m.files.write("/workspace/gen.txt", gen()).size, 4000)
        t.assertEqual(m.files.read("/workspace/gen.txt"), "A" * 1000 + "B" * 1000 + "C" * 1000 + "D" * 1000)

    # -- commands

    def test_commands_foreground(self) -> None:
        m = self.machine()
        t: Any = self
        r = m.commands.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
        t.assertEqual((r.stdout, r.stderr, r.exit_code), ("out\n", "err\n", 3))
        t.assertEqual(m.commands.run("echo $HOME $FOO", shell=True, envs={"FOO": "bar"}).stdout.split()[-1], "bar")
        t.assertEqual(m.commands.run("pwd", cwd="/tmp").stdout, "/tmp\n")
        t.assertEqual(m.commands.run("id -un", user="nobody").stdout, "nobody\n")
        t.assertEqual(m.commands.run("cat", stdin="piped in").stdout, "piped in")
        t.assertEqual(m.commands.run("echo 'a b'  c").stdout, "a b c\n")  # a string is split like a shell
        r = m.commands.run("sleep 5", timeout=1)
        t.assertTrue(r.timed_out)
        t.assertNotEqual(r.exit_code, 0)
        with t.assertRaises(errors.CommandExitError) as cm:
            m.commands.run("sh -c 'echo nope >&2; exit 4'", check=True)
        t.assertEqual((cm.exception.exit_code, cm.exception.stderr), (4, "nope\n"))
        with t.assertRaises(errors.InvalidArgumentError):
            m.commands.run("no-such-binary")

    def test_command_callbacks_stream(self) -> None:
        m = self.machine()
        t: Any = self
        seen: List[Any] = []
        r = m.commands.run("echo one; sleep 1; echo two >&2; sleep 1; echo three", shell=True,
                           on_stdout=lambda s: seen.append(("out", s, time.monotonic())),
                           on_stderr=lambda s: seen.append(("err", s, time.monotonic())))
        t.assertEqual((r.stdout, r.stderr, r.exit_code), ("one\nthree\n", "two\n", 0))
        t.assertEqual([(k, s) for k, s, _ in seen], [("out", "one\n"), ("err", "two\n"), ("out", "three\n")])
        # Streamed as it came, not delivered at the end.
        t.assertGreater(seen[2][2] - seen[0][2], 1.5)

    def test_background_commands(self) -> None:
        m = self.machine()
        t: Any = self
        h = m.commands.run("for i in 1 2 3; do echo l$i; sleep 0.2; done", shell=True, background=True)
        t.assertGreater(h.pid, 0)
        chunks = [c.data for c in h]
        t.assertEqual("".join(chunks), "l1\nl2\nl3\n")
        t.assertEqual(h.wait().exit_code, 0)
        # Callbacks with background: fed from the start, wait() returns after.
        got: List[str] = []
        h = m.commands.run("echo a; echo b", shell=True, background=True, on_stdout=got.append)
        t.assertEqual(h.wait().stdout, "a\nb\n")
        t.assertEqual("".join(got), "a\nb\n")
        # stdin kept open, then closed.
        h = m.commands.run("cat", background=True, keep_stdin_open=True)
        h.send_stdin("hello ")
        h.send_stdin(b"world", close=True)
        t.assertEqual(h.wait().stdout, "hello world")
        # kill, by handle and by pid; list shows them.
        h = m.commands.run("sleep 100", background=True)
        t.assertIn(h.pid, [p.pid for p in m.commands.list() if p.running])
        t.assertTrue(h.kill())
        r = h.wait()
        t.assertEqual((r.signal, r.exit_code), ("SIGKILL", 137))
        h2 = m.commands.run("sleep 100", background=True)
        t.assertTrue(m.commands.kill(h2.pid))
        t.assertEqual(m.commands.connect(h2.pid).wait().signal, "SIGKILL")
        with t.assertRaises(errors.ProcessNotFoundError):
            m.commands.connect(99999)

    def test_reattach_after_pause_resume(self) -> None:
        m = self.machine()
        t: Any = self
        h = m.commands.run("i=0; while [ $i -lt 30 ]; do echo line$i; i=$((i+1)); sleep 0.1; done",
                           shell=True, background=True)
        seen = ""
        for chunk in h:
            seen += chunk.data
            if seen.count("\n") >= 3:
                break
        m.pause()
        resumed = self.M.connect(m.id)
        self.made.append(resumed.id)
        t.assertNotEqual(resumed.id, m.id)
        # From the offsets read so far: no duplicates, nothing lost.
        rest = resumed.commands.connect(h.pid, stdout_offset=h.stdout_offset).wait()
        want = "".join(f"line{i}\n" for i in range(30))
        t.assertEqual(seen + rest.stdout, want)
        # From the start: everything the machine holds.
        t.assertEqual(resumed.commands.connect(h.pid).wait().stdout, want)

    # -- terminals and watches

    def test_pty(self) -> None:
        m = self.machine()
        t: Any = self
        screen = bytearray()
        lock = threading.Lock()

        def on_data(b: bytes) -> None:
            with lock:
                screen.extend(b)

        def until(want: str) -> None:
            deadline = time.monotonic() + 20
            while True:
                with lock:
                    if want.encode() in screen:
                        return
                if time.monotonic() > deadline:
                    t.fail(f"the terminal never showed {want!r}: {bytes(screen)!r}")
                time.sleep(0.02)

        h = m.pty.create(nullspace.PtySize(rows=30, cols=100), on_data=on_data)
        h.send_stdin(b"stty size; echo sum=$((6*7))\n")
        until("30 100")
        until("sum=42")
        h.resize(nullspace.PtySize(rows=40, cols=120))
        m.pty.send_stdin(h.pid, "stty size\n")
        until("40 120")
        h.send_stdin("sleep 100\n")
        time.sleep(0.5)
        h.send_stdin(b"\x03")  # Ctrl-C: the foreground job ends
        h.send_stdin("echo after=$?; export kept=yes\n")
        until("after=130")
        with t.assertRaises(errors.InvalidArgumentError):
            h.send_stdin("x", close=True)
        with t.assertRaises(errors.InvalidArgumentError):
            m.pty.resize(h.pid, nullspace.PtySize(rows=0, cols=0))

        # The terminal survives a pause; reattached, its scrollback is there.
        m.pause()
        resumed = self.M.connect(m.id)
        self.made.append(resumed.id)
        screen2 = bytearray()
        h2 = resumed.pty.connect(h.pid, on_data=screen2.extend)
        resumed.pty.send_stdin(h.pid, "echo kept=$kept; exit 3\n")
        res = h2.wait()
        t.assertEqual(res.exit_code, 3)
        t.assertIn(b"sum=42", bytes(screen2))
        t.assertIn(b"kept=yes", bytes(screen2))
        with t.assertRaises(errors.ProcessNotFoundError):
            resumed.pty.connect(99999)

    def test_watch_dir(self) -> None:
        m = self.machine()
        t: Any = self
        m.commands.run("mkdir -p /workspace/w", shell=True)
        events: List[Any] = []
        w = m.files.watch_dir("/workspace/w", recursive=True, on_event=events.append)

        def seen(*want: str) -> None:
            deadline = time.monotonic() + 20
            while True:
                got = [(e.type, e.old_path + ">" + e.path if e.old_path else e.path) for e in list(events)]
                keys = [f"{a} {b}" for a, b in got]
                i = 0
                for k in keys:
                    if i < len(want) and k == want[i]:
                        i += 1
                if i == len(want):
                    return
                if time.monotonic() > deadline:
                    t.fail(f"saw {keys}, want {want}")
                time.sleep(0.05)

        m.files.write("/workspace/w/a.txt", "x")
        seen("create /workspace/w/a.txt", "write /workspace/w/a.txt")
        m.files.rename("/workspace/w/a.txt", "/workspace/w/b.txt")
        m.commands.run("mkdir /workspace/w/sub && echo y > /workspace/w/sub/c && rm /workspace/w/b.txt", shell=True)
        seen("rename /workspace/w/a.txt>/workspace/w/b.txt", "create /workspace/w/sub",
             "create /workspace/w/sub/c", "remove /workspace/w/b.txt")
        t.assertTrue(all(e.seq > 0 for e in events))
        w.stop()

        # Polling: the events since the last poll.
        with m.files.watch_dir("/workspace/w") as p:
            t.assertEqual(p.get_new_events(), [])
            m.files.write("/workspace/w/polled", "z")
            deadline = time.monotonic() + 10
            got: List[Any] = []
            while not any(e.path == "/workspace/w/polled" for e in got) and time.monotonic() < deadline:
                got += p.get_new_events()
                time.sleep(0.1)
            t.assertIn(("create", "/workspace/w/polled"), [(e.type, e.path) for e in got])
        with t.assertRaises(errors.PathNotFoundError):
            m.files.watch_dir("/workspace/nope")

    # -- lifecycle

    def test_lifecycle(self) -> None:
        t: Any = self
        m = self.machine(metadata={"suite": self.tag}, envs={"GREETING": "hi"}, cpu=1, memory_mb=256, disk_mb=512)
        info = m.get_info()
        t.assertEqual((info.status, info.cpu_count, info.memory_mb, info.disk_mb, info.metadata), ("running", 1, 256, 512, {"suite": self.tag}))
        t.assertEqual(m.commands.run("echo $GREETING", shell=True).stdout, "hi\n")
        m.files.write("/workspace/state.txt", "v1")
        cp = m.checkpoint()
        t.assertEqual(cp.kind, "checkpoint")
        m.files.write("/workspace/state.txt", "v2")
        t.assertIn(cp.id, [s.id for s in m.checkpoints()])
        t.assertEqual(m.restore_checkpoint(cp.id).status, "running")
        t.assertEqual(m.files.read("/workspace/state.txt"), "v1")
        t.assertTrue(m.pin_checkpoint(cp.id).pinned)
        snap = m.create_snapshot()
        child = self.M.create(snapshot_id=snap.id)
        self.made.append(child.id)
        t.assertEqual(child.files.read("/workspace/state.txt"), "v1")
        kids = m.fork(2)
        self.made.extend(k.id for k in kids)
        t.assertEqual(len({k.id for k in kids}), 2)
        t.assertEqual(kids[1].files.read("/workspace/state.txt"), "v1")
        paused = m.pause()
        t.assertEqual(paused.kind, "hibernate")
        pinfo = self.M.get_info_by_id(m.id)
        t.assertEqual((pinfo.status, pinfo.snapshot_id), ("paused", paused.id))
        with t.assertRaises(errors.MachineNotRunningError):
            m.files.read("/workspace/state.txt")
        resumed = self.M.resume(paused.id)
        self.made.append(resumed.id)
        t.assertEqual(self.M.get_info_by_id(m.id).latest_id, resumed.id)
        t.assertEqual(resumed.files.read("/workspace/state.txt"), "v1")
        t.assertEqual({x.id for x in self.M.list(metadata={"suite": self.tag})}, {resumed.id})
        t.assertIn(m.id, {x.id for x in self.M.list(metadata={"suite": self.tag}, include_aliases=True)})
        t.assertTrue(resumed.kill())
        t.assertEqual(self.M.get_info_by_id(m.id).status, "killed")
        t.assertFalse(self.M.kill("mch_00000000000000000000"))

    def test_stop_start_wait(self) -> None:
        t: Any = self
        m = self.machine(command=["sh", "-c", "echo booted >> /workspace/boots; sleep 1; exit 7"])
        t.assertEqual(m.wait(timeout=30).exit_code, 7)
        t.assertEqual(m.stop(grace=0).status, "stopped")
        t.assertEqual(m.start().status, "running")
        live.eventually("the main process runs again at start",
                        lambda: m.files.read("/workspace/boots") == "booted\nbooted\n")
        # connect starts a stopped machine too, under the same id.
        m.stop(grace=0)
        again = self.M.connect(m.id)
        t.assertEqual((again.id, again.info.status), (m.id, "running"))
        m2 = self.machine(command="sleep 100")
        with t.assertRaises(errors.TimeoutError):
            m2.wait(timeout=0.5)

    def test_with_block_kills(self) -> None:
        t: Any = self
        with self.M.create(template="base") as m:
            self.made.append(m.id)
            m.pause()
            resumed = self.M.connect(m.id)
        # The latest execution goes, and so the whole machine.
        t.assertEqual(self.M.get_info_by_id(resumed.id).status, "killed")

    # -- leases

    def test_leases_and_keep_alive(self) -> None:
        t: Any = self
        m = self.machine(timeout=3)
        lease = m.set_timeout(30, timeout_action="hibernate")
        t.assertEqual((lease.timeout_ms, lease.timeout_action), (30_000, "hibernate"))
        t.assertTrue(25_000 < lease.remaining_ms <= 30_000)
        t.assertIsNotNone(lease.timeout_at)
        m.set_timeout(3, timeout_action="destroy")
        with m.keep_alive(timeout_secs=3) as ka:
            time.sleep(10)
            t.assertEqual(m.get_info().status, "running")
        t.assertGreaterEqual(ka.refreshes, 5)
        t.assertIsNone(ka.error)
        # Once stopped, the 3 s lease runs out.
        live.eventually("the lease ends the machine", lambda: m.get_info().status == "killed", timeout=30)

        # A refresh that cannot succeed is surfaced at the block's end.
        m2 = self.machine(timeout=30)
        with t.assertRaises(errors.KeepAliveError) as cm:
            with m2.keep_alive(timeout_secs=4, refresh_every_secs=0.5):
                m2.kill()
                time.sleep(2)
        t.assertIsInstance(cm.exception.__cause__, errors.NullspaceError)
        with t.assertRaises(errors.InvalidArgumentError):
            with m2.keep_alive(timeout_secs=2, refresh_every_secs=5):
                pass

    # -- metrics, monitor, events, urls

    def test_metrics_and_monitor(self) -> None:
        t: Any = self
        m = self.machine()
        metrics = live.eventually("samples", m.get_metrics)
        t.assertIsInstance(metrics[0], nullspace.Metric)
        t.assertGreater(metrics[-1].mem_total, 0)
        mon = m.monitor()
        got = []
        for sample in mon:
            got.append(sample)
            if len(got) == 2:
                break
        mon.close()
        t.assertLess(got[0].timestamp, got[1].timestamp)

    def test_events(self) -> None:
        t: Any = self
        c = self.make_client()
        m = self.machine()
        m.pause()
        types = [e.type for e in c.events(machine_id=m.id, follow=False)]
        t.assertEqual(types[0], "machine.created")
        t.assertIn("machine.paused", types)
        it = c.events(machine_id=m.id, types=["machine.paused"])
        first = next(iter(it))
        t.assertEqual((first.type, first.machine_id), ("machine.paused", m.id))
        it.close()
        c.close()

    def test_get_url(self) -> None:
        t: Any = self
        m = self.machine()
        m.files.write("/workspace/index.html", "hi from the edge")
        m.commands.run("python3 -m http.server 8000 --bind 0.0.0.0", cwd="/workspace", background=True)
        url = m.get_url(8000)
        t.assertTrue(url.startswith("http"))
        t.assertTrue(url.ws_url.startswith("ws"))
        status, body = live.eventually("the server answers", lambda: live.fetch(url + "/index.html"))
        t.assertEqual(body, b"hi from the edge")
        t.assertIsNotNone(m.get_url(8000, expires_in=60).expires_at)
        with t.assertRaises(errors.InvalidArgumentError):
            m.get_url(0)

    # -- errors

    def test_typed_errors(self) -> None:
        t: Any = self
        with t.assertRaises(errors.AuthenticationError):
            bad = self.make_client(api_key="not-a-key")
            self.M.get_info_by_id("mch_00000000000000000000", client=bad)
        with t.assertRaises(errors.MachineNotFoundError):
            self.M.get_info_by_id("mch_00000000000000000000")
        with t.assertRaises(errors.MachineNotFoundError):
            self.M.connect("mch_00000000000000000000")
        with t.assertRaises(errors.InvalidArgumentError) as cm:
            self.M.create(template="base", auto_resume=True)
        t.assertEqual(cm.exception.code, "auto_resume_requires_pause")
        with t.assertRaises(errors.TemplateNotFoundError):
            self.M.create(template="no-such-template")
        with t.assertRaises(errors.SnapshotNotFoundError):
            self.M.resume("snp_00000000000000000000")
        c = self.make_client()
        with t.assertRaises(errors.VolumeNotFoundError):
            c.volumes.delete("no-such-volume")
        m = self.machine()
        first = m.pause()
        r1 = self.M.connect(m.id)
        self.made.append(r1.id)
        r1.pause()
        with t.assertRaises(errors.SnapshotSupersededError):
            self.M.resume(first.id)
        with t.assertRaises(errors.ConflictError) as cm2:
            c.snapshots.delete(self.M.get_info_by_id(r1.id).snapshot_id)
        t.assertEqual(cm2.exception.code, "snapshot_in_use")
        with t.assertRaises(errors.MachineNotRunningError) as cm3:
            r1.commands.run("true")
        t.assertIn("connect", cm3.exception.suggested_action)
        # request_timeout is the wait for an answer; a machine's lease is
        # its timeout. A wait for a main process that runs on never answers.
        m3 = self.machine(command="sleep 100")
        start = time.monotonic()
        with t.assertRaises(errors.TimeoutError) as cm4:
            m3.wait(request_timeout=1)
        t.assertEqual(cm4.exception.code, "request_timeout")
        t.assertLess(time.monotonic() - start, 30)
        t.assertEqual(m3.get_info().status, "running")
        c.close()

    # -- paging, snapshots, volumes, templates

    def test_list_paging(self) -> None:
        t: Any = self
        ids = {self.machine(metadata={"page": self.tag}).id for _ in range(3)}
        c = self.make_client()
        got = [x.id for x in self.M.list(metadata={"page": self.tag}, client=c)]
        t.assertEqual(sorted(got), sorted(ids))
        got = [x.id for x in self.M.list(metadata={"page": self.tag}, page_size=1, client=c)]
        t.assertEqual(sorted(got), sorted(ids))
        with t.assertRaises(errors.InvalidArgumentError):
            list(self.M.list(page_size=5000, client=c))
        # One row per page: every machine once, in creation order.
        pages = []
        tok = None
        while True:
            page = c.call(nullspace._ops.list_machines(None, {"page": self.tag}, None, False, 1, tok))
            pages.append([x["id"] for x in page["machines"]])
            tok = page["next_token"]
            if not tok:
                break
        t.assertEqual(sorted(sum(pages, [])), sorted(ids))
        t.assertTrue(all(len(p) <= 1 for p in pages))
        c.close()

    def test_template_upload(self) -> None:
        """A template built from an uploaded tarball (the minimal template's
        root filesystem and two files of other owners, gzip; from a path
        through Machine, from an open file through AsyncMachine), a machine
        made from it, and its files' owner and group."""
        t: Any = self
        c = self.make_client()
        name = f"upload-{self.tag}"
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "rootfs.tar.gz")
            with tarfile.open(path, "w:gz") as tf:
                tf.add(live.test_rootfs(), arcname=".")
                for arcname, uid, data in (("./workspace/mine", 1000, b"uploaded\n"), ("./workspace/nobody", 4242, b"")):
                    info = tarfile.TarInfo(arcname)
                    info.size, info.uid, info.gid, info.mode = len(data), uid, uid, 0o640
                    tf.addfile(info, io.BytesIO(data))
            with t.assertRaises(errors.InvalidArgumentError):
                c.templates.build(name, from_template="minimal", tarball=path)
            if self.M is nullspace.Machine:
                tmpl = c.templates.build(name, tarball=path, steps=["cat /workspace/mine > /from-step"],
                                         workdir="/workspace")
            else:
                with open(path, "rb") as f:
                    tmpl = c.templates.build(name, tarball=f, steps=["cat /workspace/mine > /from-step"],
                                             workdir="/workspace")
        try:
            t.assertEqual((tmpl.name, tmpl.state, tmpl.source, tmpl.error), (name, "ready", "upload", ""))
            m = self.machine(template=name)
            r = m.commands.run("cat /from-step && pwd && busybox | head -1", shell=True)
            t.assertEqual(r.exit_code, 0, r.stderr)
            t.assertEqual(r.stdout.splitlines()[:2], ["uploaded", "/workspace"])
            t.assertIn("BusyBox", r.stdout)
            got = {e.name: (e.owner, e.group) for e in m.files.list("/workspace")}
            t.assertEqual((got["mine"], got["nobody"]), (("user", "user"), ("4242", "4242")))
            st = m.files.stat("/from-step")
            t.assertEqual((st.owner, st.group), ("root", "root"))
            m.kill()
            c.templates.delete(name)
            with t.assertRaises(errors.TemplateNotFoundError):
                c.templates.get(name)
        finally:
            for mid in self.made:
                live.kill_quietly(mid)
            try:
                c.templates.delete(name)
            except errors.NullspaceError:
                pass  # deleted above, or the test failed before
            c.close()

    def test_snapshots_volumes_templates(self) -> None:
        t: Any = self
        c = self.make_client()
        vol = f"v{self.tag}"
        t.assertEqual(c.volumes.create(vol).name, vol)
        with t.assertRaises(errors.ConflictError):
            c.volumes.create(vol)
        m = self.machine(volumes=[nullspace.VolumeMount(vol, "/data")])
        m.files.write("/data/shared.txt", "on the volume")
        other = self.machine(volumes={vol: "/mnt/v"})
        t.assertEqual(other.files.read("/mnt/v/shared.txt"), "on the volume")
        t.assertIn(vol, [v.name for v in c.volumes.list()])
        snap = m.create_snapshot()
        got = c.snapshots.get(snap.id)
        t.assertEqual((got.kind, got.lineage_id), ("snapshot", m.id))
        t.assertIn(snap.id, [s.id for s in c.snapshots.list(machine_id=m.id, kind="snapshot")])
        c.snapshots.delete(snap.id)
        with t.assertRaises(errors.SnapshotNotFoundError):
            c.snapshots.get(snap.id)
        t.assertIn("base", [x.name for x in c.templates.list()])
        t.assertEqual(c.templates.get("base").state, "ready")
        m.kill()
        other.kill()
        c.volumes.delete(vol)
        c.close()


class SyncSurface(Surface, unittest.TestCase):
    M = nullspace.Machine
    make_client = staticmethod(nullspace.Client)


class AsyncSurface(Surface, unittest.TestCase):
    M = facade.Machine
    make_client = staticmethod(facade.Client)


class ThreadSafetyTest(unittest.TestCase):
    def test_one_client_many_threads(self) -> None:
        with nullspace.Client() as c:
            m = nullspace.Machine.create(template="base", client=c)
            try:
                outs: List[str] = []
                ts = [threading.Thread(target=lambda i=i: outs.append(m.commands.run(f"echo {i}").stdout))
                      for i in range(16)]
                for th in ts:
                    th.start()
                for th in ts:
                    th.join()
                self.assertEqual(sorted(outs, key=lambda s: int(s)), [f"{i}\n" for i in range(16)])
            finally:
                m.kill()


if __name__ == "__main__":
    unittest.main()
