"""A loopback image host that fails in the ways a real one can (a test helper, not a test module).

`MediaOrigin` serves, on 127.0.0.1 in a thread of the test process:

- `/good.png`: the PNG it was given;
- `/stall.png`: accepts the request and never answers;
- `/loop.png`: a redirect to itself, forever;
- `/unavailable.png`: 503, every time;
- `/endless.png`: a 200 whose body never ends (no Content-Length);
- `/declared.png`: a 200 declaring a 2 GiB body.

`refused_url` is a port bound but not listening (the kernel refuses connections
to it); nothing here leaves the machine.
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = b"\0" * 65536
DECLARED_BYTES = 2**31
UNRESOLVABLE_URL = "http://nowhere.invalid/x.png"  # .invalid never resolves (RFC 6761)


class MediaOrigin:
    def __init__(self, png: bytes):
        self.png = png
        self.stop = threading.Event()
        self.body_bytes_sent: dict[str, int] = {}  # what the endless bodies got out before the client hung up
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        # Bound and never listening, and held for the origin's life, so no one else takes the port.
        self._refusing = socket.socket()
        self._refusing.bind(("127.0.0.1", 0))
        self.base = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self.refused_url = f"http://127.0.0.1:{self._refusing.getsockname()[1]}/x.png"

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def close(self) -> None:
        self.stop.set()  # releases the stalled and the endless handlers
        self._httpd.shutdown()
        self._httpd.server_close()
        self._refusing.close()

    def _handler(self):
        origin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                if self.path == "/good.png":
                    self._head(200, len(origin.png))
                    self.wfile.write(origin.png)
                elif self.path == "/stall.png":
                    origin.stop.wait(600)
                elif self.path == "/loop.png":
                    self.send_response(302)
                    self.send_header("Location", self.path)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif self.path == "/unavailable.png":
                    self._head(503, 0)
                elif self.path in ("/endless.png", "/declared.png"):
                    self._head(200, DECLARED_BYTES if self.path == "/declared.png" else None)
                    self._stream_until_hung_up()
                else:
                    self._head(404, 0)

            def _head(self, status: int, length: int | None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "image/png")
                if length is not None:
                    self.send_header("Content-Length", str(length))
                self.end_headers()

            def _stream_until_hung_up(self) -> None:
                sent = 0
                try:
                    while not origin.stop.is_set() and sent < DECLARED_BYTES:
                        self.wfile.write(CHUNK)
                        sent += len(CHUNK)
                except OSError:  # the client stopped reading: what a download cap should do
                    pass
                origin.body_bytes_sent[self.path] = sent

        return Handler
