# A WebSocket echo server (RFC 6455, standard library only) for the edge
# tests and the benchmark: every text or binary message comes back
# prefixed with "echo:".
import base64
import hashlib
import socketserver
import struct
import sys

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        headers = {}
        self.rfile.readline()
        while True:
            line = self.rfile.readline().decode("latin-1")
            if line in ("\r\n", "\n", ""):
                break
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
        accept = base64.b64encode(hashlib.sha1((headers["sec-websocket-key"] + GUID).encode()).digest()).decode()
        self.wfile.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          "Sec-WebSocket-Accept: %s\r\n\r\n" % accept).encode())
        self.wfile.flush()
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                return
            op, n = head[0] & 0x0F, head[1] & 0x7F
            if n == 126:
                n = struct.unpack(">H", self.rfile.read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(n)))
            if op == 8:  # close
                self.wfile.write(b"\x88\x02\x03\xe8")
                self.wfile.flush()
                return
            if op == 9:  # ping: pong
                op, out = 10, data
            elif op in (1, 2):
                out = b"echo:" + data
            else:
                continue
            hdr = bytes([0x80 | op])
            if len(out) < 126:
                hdr += bytes([len(out)])
            elif len(out) < 65536:
                hdr += bytes([126]) + struct.pack(">H", len(out))
            else:
                hdr += bytes([127]) + struct.pack(">Q", len(out))
            self.wfile.write(hdr + out)
            self.wfile.flush()


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


Server(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()
