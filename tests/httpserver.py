"""A real HTTP server on 127.0.0.1 that each test scripts, for the HTTP and dependency tests.

:class:`Server` is ``http.server.ThreadingHTTPServer`` on port 0 in a daemon thread; its route
table (``routes``) says what each path answers (status, headers, body, and an announced length
that may lie), and ``hits`` records every path requested, in order, so a test can assert what a
client asked for (and that a second run asked for nothing). ``requests`` keeps each request's
headers and the status it got, so a test can see what was conditional and what was a 304.

Conditional requests are honoured as a real server would: a 200 route with an ``ETag`` header
answers ``If-None-Match`` naming it with a 304 (no body), one with ``Last-Modified`` answers
an ``If-Modified-Since`` of that same date with a 304. ``Reply.hold`` withholds the body (from
byte ``hold_at`` on) until the test sets the event, so a test can prove a client did not need
it, or see what a client shows while it waits.

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
from http.server import BaseHTTPRequestHandler

import pytest
from helpers import NonBlockingAcceptServer


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
    # Send ``hold_at`` bytes of the body, then wait until the test sets ``hold`` (at most
    # HOLD_LIMIT seconds) before the rest.
    hold: threading.Event | None = None
    hold_at: int = 0


HOLD_LIMIT = 120.0  # longest a held body waits for its test


@dataclass
class Request:
    """One request as the server saw it: path, headers (lower-case names), the status sent."""

    path: str
    headers: dict[str, str]
    status: int


def _not_modified(reply: Reply, headers) -> bool:  # type: ignore[no-untyped-def]
    """Whether a conditional request matches the route's validators (RFC 9110, weak compare)."""
    if reply.status != 200:
        return False
    etag = reply.headers.get("ETag")
    asked = headers.get("If-None-Match")
    if asked is not None:
        if etag is None:
            return False
        tags = [t.strip().removeprefix("W/") for t in asked.split(",")]
        return "*" in tags or etag.removeprefix("W/") in tags
    since = headers.get("If-Modified-Since")
    return since is not None and since == reply.headers.get("Last-Modified")


class Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: the server closes the connection after every reply, so a short body ends early.
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        reply = self.server.routes.get(self.path)  # type: ignore[attr-defined]
        if reply is None:
            reply = Reply(404, b"no route", {"Content-Type": "text/plain"})
        if _not_modified(reply, self.headers):
            validators = {k: v for k, v in reply.headers.items() if k in ("ETag", "Last-Modified")}
            reply = Reply(304, b"", validators)
        with self.server.lock:  # type: ignore[attr-defined]
            self.server.hits.append(self.path)  # type: ignore[attr-defined]
            self.server.requests.append(Request(  # type: ignore[attr-defined]
                self.path, {k.lower(): v for k, v in self.headers.items()}, reply.status))
        if reply.barrier is not None:
            try:
                reply.barrier.wait()
            except threading.BrokenBarrierError:
                reply = Reply(503, b"barrier broken: the requests did not arrive together",
                              {"Content-Type": "text/plain"})
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.status != 304:  # a 304 has no body, so no length either
            self.send_header("Content-Length",
                             str(len(reply.body) if reply.length is None else reply.length))
        self.end_headers()
        try:
            if reply.hold is not None:
                self.wfile.write(reply.body[:reply.hold_at])
                self.wfile.flush()
                reply.hold.wait(HOLD_LIMIT)
                self.wfile.write(reply.body[reply.hold_at:])
            elif reply.trickle:
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
        self.httpd = NonBlockingAcceptServer(("127.0.0.1", 0), handler)
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
        self.httpd.requests = []  # type: ignore[attr-defined]
        self.httpd.lock = threading.Lock()  # type: ignore[attr-defined]
        self.start()

    @property
    def routes(self) -> dict[str, Reply]:
        return self.httpd.routes  # type: ignore[attr-defined]

    @property
    def hits(self) -> list[str]:
        return self.httpd.hits  # type: ignore[attr-defined]

    @property
    def requests(self) -> list[Request]:
        return self.httpd.requests  # type: ignore[attr-defined]

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
