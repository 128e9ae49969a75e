"""Every Python example of the reference documents 000, 001 and 002, run as
written against a live server.

The examples are kept here as copies, and test_copies_are_verbatim checks
each one is in the documents (docs/reference/, themselves checked against
../shared/reference/ when it is there), so a change to either side fails.
Examples that continue an earlier one run in its namespace; an example that
uses a machine it does not create gets one from ``setup``. Two kinds of
edits are made, both named in ``edits``: the placeholder ``"mch_..."``
becomes a real id, and where an example needs time to pass (a lease
running out) only the number is shortened.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import textwrap
import time
import unittest
from typing import Any, Dict, List, Tuple

from nullspace import Machine

import live

DOCS = os.path.join(live.REPO, "docs", "reference")
SHARED = os.path.join(live.REPO, "..", "shared", "reference")


def doc(prefix: str) -> str:
    name = next(n for n in os.listdir(DOCS) if n.startswith(prefix))
    with open(os.path.join(DOCS, name), encoding="utf-8") as f:
        return f.read()


EXAMPLES: Dict[str, Dict[str, str]] = {
    "000": {
        "pause": """
from nullspace import Machine

machine = Machine.create(template="base")
machine.files.write("/workspace/report.txt", "draft\\n")
snapshot = machine.pause()
print(snapshot.id)
""",
        "resume": """
resumed = Machine.resume(snapshot.id)
print(resumed.files.read("/workspace/report.txt"))
resumed.kill()
""",
        "alias": """
original_id = machine.id
snapshot = machine.pause()

resumed = Machine.connect(original_id)
print(original_id, resumed.id)
""",
        "reusable": """
snapshot = machine.create_snapshot()

child_a = Machine.create(snapshot_id=snapshot.id)
child_b = Machine.create(snapshot_id=snapshot.id)

child_a.kill()
child_b.kill()
""",
    },
    "001": {
        "create": """
from nullspace import Machine

machine = Machine.create(
    template="base",
    timeout=600,
    on_timeout="pause",
    auto_resume=True,
)
""",
        "server": """
server = machine.commands.run(
    "python3 -m http.server 8080 --bind 0.0.0.0",
    shell=True,
    cwd="/workspace",
    background=True,
)

url = machine.get_url(8080)
print(url)
""",
        "connect": """
from nullspace import Machine

machine = Machine.connect("mch_...")
result = machine.commands.run("echo resumed", shell=True)
print(result.stdout)
""",
        "info": """
info = Machine.get_info_by_id("mch_...")
print(info.status, info.snapshot_id)
""",
        "alias": """
original_id = machine.id
snapshot = machine.pause()

resumed = Machine.connect(original_id)
print(original_id, resumed.id)
""",
    },
    "002": {
        "metrics": """
from nullspace import Machine

with Machine.create(template="base") as machine:
    for metric in machine.get_metrics():
        print(metric)
""",
        "timeout": """
machine = Machine.create(template="base", timeout=600)
machine.set_timeout(120, timeout_action="destroy")
""",
        "lease": """
lease = machine.set_timeout(120, timeout_action="destroy")
print(lease.remaining_ms, lease.timeout_at)
""",
        "pause_policy": """
machine = Machine.create(
    template="base",
    timeout=600,
    on_timeout="pause",
    auto_resume=True,
)
""",
        "keep_alive": """
with machine.keep_alive(timeout_secs=300):
    run_long_agent_loop(machine)   # lease refreshed in the background
# refresher stopped here; the normal timeout takes over again
""",
    },
}


def setUpModule() -> None:
    live.require_server()


class ReferenceExamples(unittest.TestCase):
    def setUp(self) -> None:
        self.made: List[str] = []

    def tearDown(self) -> None:
        for mid in self.made:
            live.kill_quietly(mid)

    def run_example(self, docid: str, name: str, ns: Dict[str, Any],
                    edits: Tuple[Tuple[str, str], ...] = ()) -> str:
        """Runs one example in ns and returns what it printed."""
        code = textwrap.dedent(EXAMPLES[docid][name]).strip("\n")
        for old, new in edits:
            self.assertIn(old, code, f"edit {old!r} does not apply to {docid}/{name}")
            code = code.replace(old, new)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, f"<reference {docid} {name}>", "exec"), ns)
        for v in list(ns.values()):
            if isinstance(v, Machine):
                self.made.append(v.id)
        return out.getvalue()

    def fresh_machine(self, **kw: Any) -> Machine:
        m = Machine.create(template="base", **kw)
        self.made.append(m.id)
        return m

    def test_copies_are_verbatim(self) -> None:
        for docid, examples in EXAMPLES.items():
            text = doc(docid)
            if os.path.isdir(SHARED):
                with open(os.path.join(SHARED, next(n for n in os.listdir(SHARED) if n.startswith(docid))),
                          encoding="utf-8") as f:
                    self.assertEqual(text, f.read(), f"docs/reference/{docid} differs from ../shared/reference")
            for name, code in examples.items():
                with self.subTest(doc=docid, example=name):
                    self.assertIn(textwrap.dedent(code).strip("\n"), text)
        # Every line of the documents that starts like Python is in a copy.
        for docid, examples in EXAMPLES.items():
            copied = "\n".join(examples.values())
            for line in doc(docid).splitlines():
                if re.match(r"^(from nullspace import |\w+ = [Mm]achine\.|[Mm]achine\.\w+\(.*\)$|with [Mm]achine\.)", line):
                    self.assertIn(line, copied, f"{docid}: an example line is not covered: {line!r}")

    # -- 000: persistence

    def test_000_pause_and_resume(self) -> None:
        ns: Dict[str, Any] = {}
        printed = self.run_example("000", "pause", ns)
        snap = ns["snapshot"]
        self.assertEqual(printed.strip(), snap.id)
        self.assertTrue(snap.id.startswith("snp_"))
        self.assertEqual(Machine.get_info_by_id(ns["machine"].id).status, "paused")
        printed = self.run_example("000", "resume", ns)
        self.assertEqual(printed, "draft\n\n")
        self.assertNotEqual(ns["resumed"].id, ns["machine"].id)
        self.assertEqual(Machine.get_info_by_id(ns["resumed"].id).status, "killed")

    def test_000_paused_alias(self) -> None:
        ns: Dict[str, Any] = {"Machine": Machine, "machine": self.fresh_machine()}
        printed = self.run_example("000", "alias", ns)
        original, resumed = printed.split()
        self.assertEqual(original, ns["original_id"])
        self.assertNotEqual(original, resumed)
        info = Machine.get_info_by_id(original)
        self.assertEqual((info.status, info.latest_id), ("paused", resumed))
        self.assertEqual(Machine.get_info_by_id(resumed).status, "running")

    def test_000_reusable_snapshots(self) -> None:
        m = self.fresh_machine()
        m.files.write("/workspace/seed.txt", "from the parent")
        ns: Dict[str, Any] = {"Machine": Machine, "machine": m}
        self.run_example("000", "reusable", ns)
        self.assertEqual(ns["snapshot"].kind, "snapshot")
        self.assertEqual(m.get_info().status, "running")
        for child in (ns["child_a"], ns["child_b"]):
            self.assertEqual(Machine.get_info_by_id(child.id).status, "killed")

    # -- 001: auto-resume

    def test_001_wake_from_public_traffic(self) -> None:
        ns: Dict[str, Any] = {}
        # The lease has to run out for the machine to pause: 600 s -> 3 s.
        self.run_example("001", "create", ns, edits=(("timeout=600", "timeout=3"),))
        machine = ns["machine"]
        info = machine.get_info()
        self.assertEqual((info.on_timeout, info.auto_resume), ("pause", True))
        machine.files.write("/workspace/hello.txt", "hello from the machine\n")
        printed = self.run_example("001", "server", ns)
        url = ns["url"]
        self.assertEqual(printed.strip(), url)
        status, body = live.eventually("the server answers", lambda: live.fetch(url + "/hello.txt"))
        self.assertEqual((status, body), (200, b"hello from the machine\n"))
        # Timed out and paused, then woken by the request.
        live.eventually("the lease pauses the machine",
                        lambda: Machine.get_info_by_id(machine.id).status == "paused", timeout=60)
        status, body = live.fetch(url + "/hello.txt")
        self.assertEqual((status, body), (200, b"hello from the machine\n"))
        woken = Machine.get_info_by_id(machine.id)
        self.assertNotEqual(woken.latest_id, machine.id)
        self.made.append(woken.latest_id)
        self.assertEqual(Machine.get_info_by_id(woken.latest_id).status, "running")

    def test_001_wake_from_sdk_calls(self) -> None:
        paused = self.fresh_machine(timeout=600, on_timeout="pause", auto_resume=True)
        paused.pause()
        ns: Dict[str, Any] = {}
        printed = self.run_example("001", "connect", ns, edits=(('"mch_..."', repr(paused.id)),))
        self.assertEqual(printed, "resumed\n\n")
        self.assertNotEqual(ns["machine"].id, paused.id)
        printed = self.run_example("001", "info", ns, edits=(('"mch_..."', repr(paused.id)),))
        status, snapshot_id = printed.split()
        self.assertEqual(status, "paused")
        self.assertTrue(snapshot_id.startswith("snp_"))
        # get_info_by_id did not wake anything: still the same latest.
        self.assertEqual(Machine.get_info_by_id(paused.id).latest_id, ns["machine"].id)

    def test_001_paused_alias(self) -> None:
        ns: Dict[str, Any] = {"Machine": Machine, "machine": self.fresh_machine(on_timeout="pause", auto_resume=True)}
        original, resumed = self.run_example("001", "alias", ns).split()
        self.assertEqual(Machine.get_info_by_id(original).latest_id, resumed)

    # -- 002: metrics, timeouts, keep-alive

    def test_002_metrics(self) -> None:
        ns: Dict[str, Any] = {}
        printed = self.run_example("002", "metrics", ns)
        # Asked right after create: the first sample is taken on the call.
        self.assertTrue(printed.startswith("Metric(timestamp="), printed)
        self.assertEqual(Machine.get_info_by_id(ns["machine"].id).status, "killed")

    def test_002_timeout_and_lease(self) -> None:
        ns: Dict[str, Any] = {"Machine": Machine}
        self.run_example("002", "timeout", ns)
        printed = self.run_example("002", "lease", ns)
        remaining, _ = printed.split(" ", 1)
        self.assertTrue(110_000 < int(remaining) <= 120_000, printed)
        lease = ns["lease"]
        self.assertEqual((lease.timeout_ms, lease.timeout_action), (120_000, "destroy"))
        self.assertEqual(ns["machine"].get_info().timeout_action, "destroy")

    def test_002_pause_policy(self) -> None:
        ns: Dict[str, Any] = {"Machine": Machine}
        self.run_example("002", "pause_policy", ns)
        info = ns["machine"].get_info()
        self.assertEqual((info.timeout_ms, info.on_timeout, info.auto_resume), (600_000, "pause", True))

    def test_002_keep_alive(self) -> None:
        loops: List[float] = []

        def run_long_agent_loop(machine: Machine) -> None:
            start = time.monotonic()
            while time.monotonic() - start < 7:
                machine.commands.run("true")
                time.sleep(0.5)
            loops.append(time.monotonic() - start)

        machine = self.fresh_machine(timeout=3)
        ns: Dict[str, Any] = {"machine": machine, "run_long_agent_loop": run_long_agent_loop}
        # A 3 s window held open for 7 s: 300 -> 3.
        self.run_example("002", "keep_alive", ns, edits=(("timeout_secs=300", "timeout_secs=3"),))
        self.assertEqual(len(loops), 1)
        self.assertEqual(machine.get_info().status, "running")


if __name__ == "__main__":
    unittest.main()
