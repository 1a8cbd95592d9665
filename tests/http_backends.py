"""Real HTTP backends on loopback for the integration tests: each answers every request
with a small JSON document (its name, the Host header, method and body it saw), and can
be told to answer a failure status (with ``Retry-After``), to be slow, or to stop."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def _answer(self) -> None:
        server: HttpBackend = self.server  # type: ignore[assignment]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with server.lock:
            server.served += 1
            server.seen.append((self.command, time.monotonic()))
            status, retry_after, delay = server.status, server.retry_after, server.delay_s
        if delay:
            time.sleep(delay)
        payload = json.dumps({"name": server.name, "host": self.headers.get("Host"),
                              "method": self.command, "path": self.path,
                              "body": body.decode()}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        if retry_after is not None:
            self.send_header("Retry-After", retry_after)
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = _answer


class HttpBackend(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, name: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.name = name
        self.status = 200
        self.retry_after: str | None = None
        self.delay_s = 0.0
        self.lock = threading.Lock()
        self.served = 0
        self.seen: list[tuple[str, float]] = []
        self.thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def fail(self, status: int = 500, retry_after: str | None = None) -> None:
        with self.lock:
            self.status, self.retry_after = status, retry_after

    def recover(self) -> None:
        self.fail(200, None)

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
