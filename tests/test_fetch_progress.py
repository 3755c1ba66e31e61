"""The progress of one fetch: named after the package, plain lines off a terminal, quiet with
``-q`` and ``--json``.

End to end, a real server on 127.0.0.1 sends half an archive and then *holds* the rest until
the test has read the line it expects on the fetch's stderr (a pipe, not a terminal): the line
can only be there if the fetch said it while it waited, and the test never sleeps. The phase
after the download (unpacking, hashing) and the quiet modes are checked on
:class:`treeseed.progress.FetchProgress` itself, each tick called by the test.
"""

from __future__ import annotations

import io
import os
import select
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from httpserver import Reply, Server, tar_gz_bytes

from treeseed.progress import FetchProgress

BOUND = 120.0  # longest the test waits for any one line


@pytest.fixture
def hold() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


def lines_until(proc: subprocess.Popen, wanted) -> list[str]:  # type: ignore[no-untyped-def]
    """stderr lines of ``proc`` up to the first for which ``wanted(line)`` holds."""
    assert proc.stderr is not None
    seen: list[str] = []
    buffer = b""
    fd = proc.stderr.fileno()
    while True:
        ready, _, _ = select.select([fd], [], [], BOUND)
        assert ready, f"no line within {BOUND:.0f} s; so far: {seen}"
        chunk = os.read(fd, 65536)
        assert chunk, f"stderr closed before the line came; said: {seen}"
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for raw in complete:
            seen.append(raw.decode())
            if wanted(seen[-1]):
                return seen


def test_a_long_download_off_a_terminal_says_how_far_it_is(cache_dir: Path, server: Server,
                                                             hold: threading.Event) -> None:
    body = tar_gz_bytes(os.urandom(1 << 20))
    half = len(body) // 2
    server.routes["/lib-1.0.tar.gz"] = Reply(200, body, {"Content-Type": "application/gzip"},
                                             hold=hold, hold_at=half)
    env = {**os.environ, "TREESEED_PROGRESS_INTERVAL": "0.1"}
    proc = subprocess.Popen([sys.executable, "-m", "treeseed", "--cache-dir", str(cache_dir),
                             "fetch", server.url("/lib-1.0.tar.gz")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        percent = f"({100 * half // len(body)}%)"
        said = lines_until(proc, lambda line: percent in line)
        hold.set()
        out, _ = proc.communicate(timeout=BOUND)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0
    line = said[-1]
    assert line.startswith("treeseed: fetching lib: ") and " of " in line, said
    assert out.decode().startswith("bt2-")


@pytest.mark.parametrize("flag", ["-q", "--json"])
def test_quiet_and_json_print_no_progress(cache_dir: Path, server: Server, flag: str) -> None:
    """With -q or --json, a download that takes many intervals prints nothing on stderr: the
    server trickles the body (16 pieces 0.05 s apart: dozens of intervals of 0.01 s)."""
    body = tar_gz_bytes(os.urandom(1 << 20))
    server.routes["/lib.tar.gz"] = Reply(200, body, {"Content-Type": "application/gzip"},
                                         trickle=0.05)
    env = {**os.environ, "TREESEED_PROGRESS_INTERVAL": "0.01"}
    args = ["fetch", server.url("/lib.tar.gz"), flag] if flag == "--json" else \
        [flag, "fetch", server.url("/lib.tar.gz")]
    proc = subprocess.run([sys.executable, "-m", "treeseed", "--cache-dir", str(cache_dir), *args],
                          capture_output=True, text=True, env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def progress(interval: float = 60.0) -> tuple[FetchProgress, io.StringIO]:
    out = io.StringIO()
    return FetchProgress("zlib", terminal=False, interval=interval, stream=out), out


def test_the_lines_say_how_far_and_then_that_it_unpacks() -> None:
    shown, out = progress()
    with shown as report:
        assert report is not None
        shown.tick()  # not one byte yet: the stall notice's business, not a line
        report(10_000_000, 40_000_000)
        shown.tick()
        shown.tick()  # no news since the last line: nothing
        report(40_000_000, 40_000_000)  # all in: unpacking and hashing from here on
        shown.tick()
        shown.tick()  # each interval while it unpacks says so again
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith("treeseed: fetching zlib: 10.0 MB of 40.0 MB (25%), ")
    assert lines[1].startswith("treeseed: fetching zlib: 40.0 MB downloaded; unpacking and hashing, ")
    assert lines[2].startswith("treeseed: fetching zlib: 40.0 MB downloaded; unpacking and hashing, ")


def test_quiet_progress_is_no_callback_and_no_thread() -> None:
    out = io.StringIO()
    shown = FetchProgress("zlib", quiet=True, terminal=False, interval=0.001, stream=out)
    with shown as report:
        assert report is None
    assert shown._thread is None and out.getvalue() == ""
