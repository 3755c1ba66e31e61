"""A real HTTP server on 127.0.0.1 that each test scripts, for the HTTP and dependency tests.

:class:`Server` is ``http.server.ThreadingHTTPServer`` on port 0 in a daemon thread; its route
table (``routes``) says what each path answers (status, headers, body, and an announced length
that may lie), and ``hits`` records every path requested, in order, so a test can assert what a
client asked for (and that a second run asked for nothing).

``tests/conftest.py`` registers this module in ``pytest_plugins``, so a test names the
``server`` fixture as an argument; ``servers`` makes as many more as a test needs, all closed at
its end. Classes and helpers are imported (``from httpserver import Reply, Server``).
"""

from __future__ import annotations

import io
import socket
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    length: int | None = None  # the Content-Length announced; default: the body's true length
    # Hold the reply until this many requests wait on the same barrier (each party gives up
    # after the barrier's own timeout and answers 503): proves requests run concurrently.
    barrier: threading.Barrier | None = None
    trickle: float = 0.0  # seconds to pause between 64 KiB pieces of the body


class Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: the server closes the connection after every reply, so a short body ends early.
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        reply = self.server.routes.get(self.path)  # type: ignore[attr-defined]
        if reply is None:
            reply = Reply(404, b"no route", {"Content-Type": "text/plain"})
        with self.server.lock:  # type: ignore[attr-defined]
            self.server.hits.append(self.path)  # type: ignore[attr-defined]
        if reply.barrier is not None:
            try:
                reply.barrier.wait()
            except threading.BrokenBarrierError:
                reply = Reply(503, b"barrier broken: the requests did not arrive together",
                              {"Content-Type": "text/plain"})
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body) if reply.length is None else reply.length))
        self.end_headers()
        try:
            if reply.trickle:
                for start in range(0, len(reply.body), 1 << 16):
                    self.wfile.write(reply.body[start:start + (1 << 16)])
                    self.wfile.flush()
                    time.sleep(reply.trickle)
            else:
                self.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up on an error page: fine

    def log_message(self, format: str, *args: object) -> None:
        pass


class LoopbackServer:
    """A ThreadingHTTPServer on 127.0.0.1, an ephemeral port, served from a daemon thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def start(self) -> None:
        self.thread.start()

    def url(self, path: str) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


class Server(LoopbackServer):
    def __init__(self) -> None:
        super().__init__(Handler)
        self.httpd.routes = {}  # type: ignore[attr-defined]
        self.httpd.hits = []  # type: ignore[attr-defined]
        self.httpd.lock = threading.Lock()  # type: ignore[attr-defined]
        self.start()

    @property
    def routes(self) -> dict[str, Reply]:
        return self.httpd.routes  # type: ignore[attr-defined]

    @property
    def hits(self) -> list[str]:
        return self.httpd.hits  # type: ignore[attr-defined]

@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
def servers() -> Iterator[Callable[[], Server]]:
    """A factory: each call starts one more server; all are closed when the test ends."""
    made: list[Server] = []

    def make() -> Server:
        made.append(Server())
        return made[-1]

    try:
        yield make
    finally:
        for srv in made:
            srv.close()


# --------------------------------------------------------------------------- helpers


def tar_gz_bytes(data: bytes, name: str = "pkg/blob") -> bytes:
    """A .tar.gz (uncompressed gzip, so it is quick to build) holding one file."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=0) as tf:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (connecting to it is refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
