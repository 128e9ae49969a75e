"""The Python SDK's overhead beside the same calls made with raw HTTP, in
one run against one server (NULLSPACE_API_URL / NULLSPACE_API_KEY).

`make bench BENCH_FLAGS='-suite sdk'` runs it; alone:

    PYTHONPATH=sdk/python python3 sdk/python/bench/bench_sdk.py -n 20

Each iteration runs both sides, alternating which goes first. Raw HTTP is
http.client on one kept-alive connection with json.dumps/loads: what a
program without the SDK would do. One JSON object per sample goes to
stdout: {"metric", "side", "ms"}.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import time
import urllib.parse
from typing import Any, Callable, Dict, Optional

import nullspace
from nullspace import Machine

MIB = os.urandom(1 << 20)


class Raw:
    """The API over a bare http.client connection."""

    def __init__(self, url: str, key: str) -> None:
        u = urllib.parse.urlsplit(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=120)
        self.h = {"Authorization": "Bearer " + key}

    def do(self, method: str, path: str, body: Any = None, raw: Optional[bytes] = None) -> Any:
        h = dict(self.h)
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        self.conn.request(method, path, body=data, headers=h)
        r = self.conn.getresponse()
        out = r.read()
        if r.status >= 300:
            raise RuntimeError(f"{method} {path}: {r.status} {out[:200]!r}")
        if r.getheader("Content-Type", "").startswith("application/json"):
            return json.loads(out)
        return out


def timed(f: Callable[[], Any]) -> float:
    t = time.perf_counter()
    f()
    return (time.perf_counter() - t) * 1000


def emit(metric: str, side: str, ms: float) -> None:
    print(json.dumps({"metric": metric, "side": side, "ms": round(ms, 4)}), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=20)
    ap.add_argument("--template", default="minimal")
    args = ap.parse_args()
    url = os.environ["NULLSPACE_API_URL"]
    key = os.environ.get("NULLSPACE_API_KEY", "")
    client = nullspace.Client(url, key)
    raw = Raw(url, key)
    tmpl = args.template

    def sdk_create() -> None:
        m = Machine.create(template=tmpl, client=client)
        m.commands.run("true")
        state["sdk_new"] = m

    def raw_create() -> None:
        m = raw.do("POST", "/v1/machines", {"template": tmpl})
        raw.do("POST", f"/v1/machines/{m['id']}/commands", {"cmd": ["true"]})
        state["raw_new"] = m["id"]

    state: Dict[str, Any] = {}
    warm = Machine.create(template=tmpl, client=client)
    try:
        mid = warm.id
        for _ in range(3):  # warm both paths: connections, agent
            warm.commands.run("true")
            raw.do("POST", f"/v1/machines/{mid}/commands", {"cmd": ["true"]})
        sides = {
            "create_first_command": (sdk_create, raw_create),
            "exec_round_trip": (lambda: warm.commands.run("true"),
                                lambda: raw.do("POST", f"/v1/machines/{mid}/commands", {"cmd": ["true"]})),
            "file_write_1mib": (lambda: warm.files.write("/tmp/sdk.bin", MIB),
                                lambda: raw.do("PUT", f"/v1/machines/{mid}/files?path=/tmp/raw.bin", raw=MIB)),
            "file_read_1mib": (lambda: warm.files.read("/tmp/sdk.bin", format="bytes"),
                               lambda: raw.do("GET", f"/v1/machines/{mid}/files?path=/tmp/raw.bin")),
        }
        for i in range(args.n):
            for metric, (sdk, rawf) in sides.items():
                order = [("python_sdk", sdk), ("raw_http", rawf)]
                if i % 2:
                    order.reverse()
                for side, f in order:
                    emit(metric, side, timed(f))
            state.pop("sdk_new").kill()
            raw.do("DELETE", f"/v1/machines/{state.pop('raw_new')}")
        # import nullspace in a fresh interpreter, against an empty one.
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=here)
        probe = "import time; t=time.perf_counter(); import nullspace; print((time.perf_counter()-t)*1000)"
        for _ in range(args.n):
            out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
            emit("import_nullspace", "python_sdk", float(out.stdout))
    finally:
        warm.kill()
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
