"""``treeseed serve`` for the tests: a running mirror (:class:`Mirror`), the ``serve`` fixture
that starts mirrors and stops them when the test ends, and one request (:func:`get`)."""

from __future__ import annotations

import http.client
import os
import select
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

TIMEOUT = 60  # seconds any single wait may take before the test fails instead of hanging


class Mirror:
    """A running ``treeseed serve`` on an ephemeral port; stderr goes to ``log``."""

    def __init__(self, cache: Path, log: Path, args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> None:
        self.log = log
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "treeseed", "--cache-dir", str(cache), "serve",
                 "--bind", "127.0.0.1:0", *args],
                stdout=subprocess.PIPE, stderr=err, env={**os.environ, **(env or {})})
        self.line = self._first_line()
        assert self.line.startswith(f"serving {cache} on http://127.0.0.1:"), self.line
        self.url = self.line.rsplit(" ", 1)[1]
        self.port = int(self.url.rsplit(":", 1)[1])

    def _first_line(self) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], TIMEOUT)
        if not ready:
            self.proc.kill()
            raise AssertionError(f"treeseed serve printed nothing in {TIMEOUT} s: {self.logged()}")
        line = self.proc.stdout.readline().decode()
        if not line:
            self.proc.wait(timeout=TIMEOUT)
            raise AssertionError(f"treeseed serve exited {self.proc.returncode}: {self.logged()}")
        return line.strip()

    def logged(self) -> str:
        return self.log.read_text(errors="replace")

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=TIMEOUT)
            raise AssertionError("treeseed serve did not stop on a signal") from None


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Mirror]]:
    """Start mirrors of a cache; every one is stopped when the test ends."""
    started: list[Mirror] = []

    def start(cache: Path, *args: str, env: dict[str, str] | None = None) -> Mirror:
        started.append(Mirror(cache, tmp_path / f"serve-{len(started)}.log", args, env))
        return started[-1]

    try:
        yield start
    finally:
        for mirror in started:
            mirror.stop()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def get(mirror: Mirror, path: str, headers: dict[str, str] | None = None, method: str = "GET",
        conn: http.client.HTTPConnection | None = None) -> Reply:
    """One request (on ``conn`` to reuse a keep-alive connection); the whole body is read."""
    own = conn is None
    conn = conn or mirror.connect()
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body)
    finally:
        if own:
            conn.close()
