"""A scripted HTTP/1.1 server on loopback for the SDK's unit tests: each
test queues the answers a route gives and reads back what was asked."""

from __future__ import annotations

import http.server
import json
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

Answer = Tuple[int, Dict[str, str], bytes]


def js(status: int, body: Any, headers: Optional[Dict[str, str]] = None) -> Answer:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(body).encode()


def err(status: int, code: str, retryable: bool = False, headers: Optional[Dict[str, str]] = None) -> Answer:
    return js(status, {"code": code, "message": f"test {code}", "retryable": retryable,
                       "suggested_action": "do the thing"}, headers)


class FakeServer:
    """Routes are "METHOD /path"; each has a queue of answers (the last one
    repeats) or a function of the request. ``requests`` records every
    request as (method, path with query, headers, body) and ``peers`` the
    client ports seen (one per connection)."""

    def __init__(self) -> None:
        self.routes: Dict[str, Any] = {}
        self.requests: List[Tuple[str, str, Dict[str, str], bytes]] = []
        self.peers: set = set()
        #: Routes answered without reading the request's body, then closed.
        self.no_read: set = set()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def _handle(self) -> None:
                fake.peers.add(self.client_address[1])
                body = b""
                if f"{self.command} {self.path.split('?')[0]}" in fake.no_read:
                    self.close_connection = True
                elif self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    while True:
                        size = int(self.rfile.readline().strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            break
                        body += self.rfile.read(size)
                        self.rfile.readline()
                elif self.headers.get("Content-Length"):
                    body = self.rfile.read(int(self.headers["Content-Length"]))
                path = self.path.split("?")[0]
                fake.requests.append((self.command, self.path, dict(self.headers), body))
                route = fake.routes.get(f"{self.command} {path}")
                if route is None:
                    status, headers, data = err(404, "not_found")
                elif callable(route):
                    res = route(self, body)
                    if res is None:  # the handler wrote its own answer
                        return
                    status, headers, data = res
                else:
                    status, headers, data = route.pop(0) if len(route) > 1 else route[0]
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if "Transfer-Encoding" not in headers:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._t = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._t.start()

    def route(self, key: str, *answers: Any) -> None:
        self.routes[key] = answers[0] if len(answers) == 1 and callable(answers[0]) else list(answers)

    def count(self, method: str, path: str) -> int:
        return sum(1 for m, p, _, _ in self.requests if m == method and p.split("?")[0] == path)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def ndjson_stream(lines: List[Any], then: Optional[Callable[[Any], None]] = None) -> Callable[[Any, bytes], None]:
    """A route answering a chunked NDJSON stream of lines; ``then`` runs
    after them with the handler (to cut the connection, say)."""

    def route(h: Any, _: bytes) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/x-ndjson")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        for line in lines:
            b = json.dumps(line).encode() + b"\n"
            h.wfile.write(b"%x\r\n%s\r\n" % (len(b), b))
            h.wfile.flush()
        if then is not None:
            then(h)
            return
        h.wfile.write(b"0\r\n\r\n")

    return route
