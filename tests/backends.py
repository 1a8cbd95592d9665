"""Real loopback TCP backends for the load-balancer tests: each answers one line per
connection, after an optional delay, and can fail or be killed."""

from __future__ import annotations

import socket
import socketserver
import threading
import time


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        server: TcpBackend = self.server  # type: ignore[assignment]
        if not self.rfile.readline():
            return
        with server.lock:
            server.served += 1
            server.active += 1
            server.peak = max(server.peak, server.active)
        try:
            if server.delay_s:
                time.sleep(server.delay_s)
            self.wfile.write(b"fail\n" if server.failing else f"{server.name}\n".encode())
        finally:
            with server.lock:
                server.active -= 1


class TcpBackend(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, name: str, delay_s: float = 0.0) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.name = name
        self.delay_s = delay_s
        self.failing = False
        self.lock = threading.Lock()
        self.served = self.active = self.peak = 0
        self.thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def kill(self) -> None:
        self.shutdown()
        self.server_close()


def call(address: str, timeout_s: float = 2.0) -> str:
    """One request to a backend: connect, send a line, read the answer."""
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=timeout_s) as s:
        s.sendall(b"hi\n")
        reply = s.makefile().readline().strip()
    if reply in ("", "fail"):
        raise ConnectionError(f"{address} answered {reply!r}")
    return reply
