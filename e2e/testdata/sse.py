# A Server-Sent Events server for the edge tests: each GET gets three
# events one second apart, then the stream ends.
import http.server
import sys
import time


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        for i in range(3):
            self.wfile.write(b"data: %d\n\n" % i)
            self.wfile.flush()
            time.sleep(1)
        self.close_connection = True

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()
