"""Ctrl-C and SIGTERM in the middle of a multi-dependency ``treeseed fetch``.

A loopback server trickles bytes to every download and never finishes one. ``treeseed fetch``
runs as a real process in a package with several such dependencies; once the server has seen a
request for each (so every fetcher process is running and every work directory exists), the
test sends SIGINT or SIGTERM. The process must exit 130 or 143 with one line saying so, leave
no ``tmp/w-*`` in the cache and no fetcher process alive.

Nothing here times the exit: how fast it is depends on the mechanism (an interrupt wakes each
waiting thread through a pipe, the fetchers are stopped at once), and the outer waits only
bound a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from httpserver import LoopbackServer

DEPENDENCIES = ("alpha", "beta", "gamma")
BOUND = 60.0  # the longest any wait here may take before the test fails


class TrickleHandler(BaseHTTPRequestHandler):
    """Announces a gigabyte, then sends a kilobyte every 50 ms until the client hangs up."""

    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        srv: TrickleServer = self.server.owner  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Content-Length", str(1 << 30))
        self.end_headers()
        try:
            self.wfile.write(b"\0" * 1024)
            self.wfile.flush()
            srv.requests.release()
            while not srv.closing.wait(0.05):
                self.wfile.write(b"\0" * 1024)
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the fetcher was stopped: what the test wants

    def log_message(self, format: str, *args: object) -> None:
        pass


class TrickleServer(LoopbackServer):
    def __init__(self) -> None:
        super().__init__(TrickleHandler)
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.requests = threading.Semaphore(0)  # one release per download under way
        self.closing = threading.Event()
        self.start()

    def close(self) -> None:
        self.closing.set()
        super().close()


@pytest.fixture
def trickle() -> Iterator[TrickleServer]:
    srv = TrickleServer()
    try:
        yield srv
    finally:
        srv.close()


def make_project(root: Path, srv: TrickleServer) -> Path:
    """A package whose dependencies all point at the trickling server."""
    root.mkdir()
    lines = ['[package]\nname = "interrupted"\nversion = "0.1.0"\n']
    for i, name in enumerate(DEPENDENCIES):
        lines.append(f'[dependencies.{name}]\nurl = "{srv.url(f"/{name}.tar.gz")}"\n'
                     f'hash = "bt2-{str(i) * 64}"\n')
    (root / "treeseed.toml").write_text("\n".join(lines), encoding="utf-8")
    return root


def children_of(pid: int) -> list[int]:
    """Every live process whose parent is ``pid`` (fetchers are started from worker threads,
    so /proc/<pid>/task/<pid>/children alone would miss them)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _stat(int(entry))[1:2] == [str(pid)]:
            found.append(int(entry))
    return found


def _stat(pid: int) -> list[str]:
    """(state, ppid) of ``pid``, or [] once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return []
    return [fields[0].decode(), fields[1].decode()]


def alive(pid: int) -> bool:
    """A zombie counts as gone: it runs nothing, and the container's init may never reap it."""
    state = _stat(pid)
    return bool(state) and state[0] not in ("Z", "X")


def start_fetch(project: Path, cache: Path, trickle: TrickleServer,
                *args: str) -> subprocess.Popen[str]:
    """``treeseed fetch`` in ``project``, returned once every dependency's download is under way."""
    proc = subprocess.Popen([sys.executable, "-m", "treeseed", "--cache-dir", str(cache), "fetch",
                             *args], cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    for _ in DEPENDENCIES:
        if not trickle.requests.acquire(timeout=BOUND):
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"the downloads never all started:\n{err}")
    return proc


LINUX_ONLY = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
EACH_SIGNAL = pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                                      ids=["SIGINT", "SIGTERM"])


def interrupted_line(sig: int) -> str:
    """The one line treeseed prints on stderr when ``sig`` stops its fetches."""
    return (f"treeseed: interrupted by {signal.Signals(sig).name}; the fetches in progress were "
            "stopped and their partial downloads removed")


@contextlib.contextmanager
def killed_at_the_end(proc: subprocess.Popen[str]) -> Iterator[None]:
    """Whatever happens in the block, no treeseed process outlives the test."""
    try:
        yield
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def signal_and_wait(proc: subprocess.Popen[str], sig: int) -> tuple[str, str]:
    """Send ``sig`` and wait (an outer bound only) for the process to end; its output."""
    proc.send_signal(sig)
    return proc.communicate(timeout=BOUND)


@LINUX_ONLY
@EACH_SIGNAL
def test_signal_stops_every_fetch_and_leaves_nothing(tmp_path: Path, cache_dir: Path,
                                                      trickle: TrickleServer, sig: int,
                                                      status: int) -> None:
    project = make_project(tmp_path / "project", trickle)
    proc = start_fetch(project, cache_dir, trickle)
    with killed_at_the_end(proc):
        work_dirs = list((cache_dir / "tmp").glob("w-*"))
        fetchers = children_of(proc.pid)
        assert len(work_dirs) == len(DEPENDENCIES), work_dirs  # so their removal proves something
        assert len(fetchers) == len(DEPENDENCIES), fetchers
        out, err = signal_and_wait(proc, sig)
    assert proc.returncode == status, err
    assert err.splitlines() == [interrupted_line(sig)], err
    assert out == ""
    assert list((cache_dir / "tmp").glob("w-*")) == []
    assert [pid for pid in fetchers if alive(pid)] == []
    assert not (cache_dir / "p").exists() or list((cache_dir / "p").iterdir()) == []


@LINUX_ONLY
def test_interrupt_with_json_prints_an_error_object(tmp_path: Path, cache_dir: Path,
                                                     trickle: TrickleServer) -> None:
    """A tool running ``treeseed fetch --json`` learns of the interrupt on stdout too."""
    proc = start_fetch(make_project(tmp_path / "project", trickle), cache_dir, trickle, "--json")
    with killed_at_the_end(proc):
        out, err = signal_and_wait(proc, signal.SIGINT)
    assert proc.returncode == 130, err
    got = json.loads(out)
    assert got["what"] == "SIGINT" and got["error"].startswith("interrupted by SIGINT")


@LINUX_ONLY
def test_signal_stops_the_swarm_side_too(tmp_path: Path, cache_dir: Path,
                                         trickle: TrickleServer) -> None:
    """With torrenting on, each dependency races a swarm download (which waits on its stall
    budget, here ten minutes) against the trickling origin: one SIGINT still ends both sides
    of every race and leaves nothing behind."""
    from swarmkit import free_port, write_settings

    config = write_settings(tmp_path / "settings.toml", listen=f"127.0.0.1:{free_port()}")
    env = {**os.environ, "TREESEED_CONFIG": str(config), "TREESEED_SWARM_STALL": "600",
           "TREESEED_SWARM_HEAD_START": "0"}
    project = make_project(tmp_path / "project", trickle)
    proc = subprocess.Popen([sys.executable, "-m", "treeseed", "--cache-dir", str(cache_dir),
                             "fetch", "--torrent"], cwd=project, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    with killed_at_the_end(proc):
        for _ in DEPENDENCIES:  # the origins started, so every race is under way
            if not trickle.requests.acquire(timeout=BOUND):
                pytest.fail("the downloads never all started")
        _, err = signal_and_wait(proc, signal.SIGINT)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert list((cache_dir / "tmp").glob("w-*")) == []


@LINUX_ONLY
@EACH_SIGNAL
def test_signal_stops_a_single_fetch_run_by_the_spare(tmp_path: Path, cache_dir: Path,
                                                      trickle: TrickleServer, sig: int,
                                                      status: int) -> None:
    """``treeseed fetch URL`` hands its download to the spare fetcher it forked first
    (treeseed.forking): a signal stops that one too, and leaves nothing behind."""
    proc = subprocess.Popen([sys.executable, "-m", "treeseed", "--cache-dir", str(cache_dir),
                             "fetch", trickle.url("/single.tar.gz")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    with killed_at_the_end(proc):
        if not trickle.requests.acquire(timeout=BOUND):
            proc.kill()
            pytest.fail(f"the download never started:\n{proc.communicate()[1]}")
        fetchers = children_of(proc.pid)
        assert len(fetchers) == 1, fetchers  # the spare, now the fetcher: nothing else forked
        assert len(list((cache_dir / "tmp").glob("w-*"))) == 1
        out, err = signal_and_wait(proc, sig)
    assert proc.returncode == status, err
    assert err.splitlines() == [interrupted_line(sig)], err
    assert list((cache_dir / "tmp").glob("w-*")) == []
    assert [pid for pid in fetchers if alive(pid)] == []
