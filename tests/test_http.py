"""HTTP(S) fetching against a real server on 127.0.0.1 that each test scripts.

The server (tests/httpserver.py) is ``http.server.ThreadingHTTPServer`` on port 0 in a daemon
thread; a route table says what each path answers (status, headers, body, and an announced
length that may lie). The client is the real ``treeseed fetch`` in a subprocess. Every failure
must be exactly one ``treeseed: error:`` line naming the URL and the reason, exit status 1, and
leave nothing in the cache's ``p/`` or ``tmp/``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest
from helpers import make_tree, run_cli, run_on_terminal
from httpserver import (
    Reply,
    Server,
    closed_port,
    tar_gz_bytes,
)

# --------------------------------------------------------------------------- helpers


def make_archive(tmp_path: Path, spec: dict[str, object] | None = None, name: str = "pkg.tar.gz") -> Path:
    root = make_tree(tmp_path / "src-tree" / name, spec or {
        "README": b"hello\n", "bin/run": ("x", b"#!/bin/sh\n"), "src/lib.c": b"int x;\n" * 100,
    })
    archive = tmp_path / name
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(root, arcname="pkg-1.0")
    return archive


def archive_reply(archive: Path, ctype: str = "application/gzip") -> Reply:
    return Reply(200, archive.read_bytes(), {"Content-Type": ctype})


def fetch(cache: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("fetch", url, *args, cache=cache, check=False)


def hash_of(cache: Path, archive: Path) -> str:
    return run_cli("hash", str(archive), cache=cache).stdout.strip()


def assert_cache_clean(cache: Path) -> None:
    for sub in ("p", "tmp"):
        d = cache / sub
        assert not d.exists() or not any(d.iterdir()), f"{d} holds {sorted(os.listdir(d))}"


def assert_fails(cache: Path, url: str, *needles: str) -> str:
    proc = fetch(cache, url)
    assert proc.returncode == 1, proc
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("treeseed: error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert_cache_clean(cache)
    return lines[0]


# --------------------------------------------------------------------------- success


@pytest.mark.parametrize("ctype", ["application/gzip", "text/plain", None],
                         ids=["gzip", "lying-text-plain", "no-content-type"])
def test_download_hashes_like_the_file(tmp_path: Path, cache_dir: Path, server: Server,
                                       ctype: str | None) -> None:
    archive = make_archive(tmp_path)
    server.routes["/dl/pkg-1.0.tar.gz"] = Reply(200, archive.read_bytes(),
                                                {"Content-Type": ctype} if ctype else {})
    url = server.url("/dl/pkg-1.0.tar.gz")
    proc = run_cli("fetch", url, "--json", cache=cache_dir)
    got = json.loads(proc.stdout)
    assert got["hash"] == hash_of(tmp_path / "other-cache", archive)
    assert (got["cached"], got["source"], got["files"]) == (False, url, 3)
    assert got["transferred"] == archive.stat().st_size
    assert sorted(os.listdir(cache_dir / "p")) == [got["hash"]]
    assert os.listdir(cache_dir / "tmp") == []


def test_redirect_chain_to_archive(tmp_path: Path, cache_dir: Path, server: Server) -> None:
    archive = make_archive(tmp_path)
    server.routes["/start"] = Reply(301, headers={"Location": "/next"})
    server.routes["/next"] = Reply(302, headers={"Location": server.url("/mirror/a?x=1")})
    server.routes["/mirror/a?x=1"] = Reply(307, headers={"Location": "../files/pkg.tar.gz"})
    server.routes["/files/pkg.tar.gz"] = archive_reply(archive)
    got = json.loads(run_cli("fetch", server.url("/start"), "--json", cache=cache_dir).stdout)
    assert got["hash"] == hash_of(tmp_path / "other-cache", archive)
    assert server.hits == ["/start", "/next", "/mirror/a?x=1", "/files/pkg.tar.gz"]


def test_ten_redirects_are_fine_eleven_are_not(tmp_path: Path, cache_dir: Path, server: Server) -> None:
    archive = make_archive(tmp_path)
    for i in range(11):
        server.routes[f"/r{i}"] = Reply(302, headers={"Location": f"/r{i + 1}"})
    server.routes["/r11"] = archive_reply(archive)
    assert fetch(cache_dir, server.url("/r1")).returncode == 0  # r1 -> ... -> r11: 10 hops
    run_cli("cache", "rm", *os.listdir(cache_dir / "p"), cache=cache_dir)
    line = assert_fails(cache_dir, server.url("/r0"), server.url("/r0"), "more than 10 redirects")
    assert "/r10" in line


def test_large_download_prints_only_the_result(tmp_path: Path, cache_dir: Path, server: Server) -> None:
    body = tar_gz_bytes(os.urandom(6 << 20))  # past the progress bar's threshold
    server.routes["/big.tar.gz"] = Reply(200, body, {"Content-Type": "application/octet-stream"})
    # A fetch longer than TREESEED_PROGRESS_INTERVAL prints how far it is; a quick one nothing.
    proc = run_cli("fetch", server.url("/big.tar.gz"), cache=cache_dir,
                   env={"TREESEED_PROGRESS_INTERVAL": "600"})
    assert proc.stderr == ""
    (line,) = proc.stdout.splitlines()
    package_hash, path = line.split("\t")
    assert package_hash.startswith("bt2-") and Path(path).name == package_hash


def test_large_download_shows_progress_on_a_terminal(cache_dir: Path, server: Server) -> None:
    """On a terminal (a real pty), a large download draws a progress bar with bytes and rate."""
    body = tar_gz_bytes(os.urandom(6 << 20))
    server.routes["/big.tar.gz"] = Reply(200, body, {"Content-Type": "application/octet-stream"})
    text = run_on_terminal("fetch", server.url("/big.tar.gz"), cache=cache_dir)
    assert "downloading" in text
    assert "MB" in text and "/s" in text  # bytes so far and the rate
    assert "bt2-" in text


# --------------------------------------------------------------------------- failures


def test_http_404(cache_dir: Path, server: Server) -> None:
    page = b"<!DOCTYPE html><html><head><title>Release asset not found</title></head>" \
           b"<body><h1>404</h1><p>Nothing here.</p></body></html>"
    server.routes["/gone.tar.gz"] = Reply(404, page, {"Content-Type": "text/html; charset=utf-8"})
    url = server.url("/gone.tar.gz")
    assert_fails(cache_dir, url, url, "HTTP 404", "Release asset not found")


def test_http_500(cache_dir: Path, server: Server) -> None:
    server.routes["/boom.tar.gz"] = Reply(500, b"database\non fire\n", {"Content-Type": "text/plain"})
    url = server.url("/boom.tar.gz")
    assert_fails(cache_dir, url, url, "HTTP 500", "database on fire")


def test_html_page_with_status_200(cache_dir: Path, server: Server) -> None:
    page = b"<html><head><title>Sign in - Example Git</title></head><body>login</body></html>"
    server.routes["/pkg.tar.gz"] = Reply(200, page, {"Content-Type": "text/html"})
    url = server.url("/pkg.tar.gz")
    assert_fails(cache_dir, url, url, "HTML", "Sign in - Example Git")


def test_html_page_served_as_binary(cache_dir: Path, server: Server) -> None:
    page = b"\n  <!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>" + b"x" * 2000 + b"</body></html>"
    server.routes["/pkg.tar.gz"] = Reply(200, page, {"Content-Type": "application/octet-stream"})
    url = server.url("/pkg.tar.gz")
    assert_fails(cache_dir, url, url, "HTML")


def test_redirect_loop(cache_dir: Path, server: Server) -> None:
    server.routes["/a"] = Reply(302, headers={"Location": "/b"})
    server.routes["/b"] = Reply(302, headers={"Location": "/a"})
    a, b = server.url("/a"), server.url("/b")
    assert_fails(cache_dir, a, "redirect loop", f"{a} -> {b} -> {a}")


def test_short_body(tmp_path: Path, cache_dir: Path, server: Server) -> None:
    body = make_archive(tmp_path).read_bytes()
    server.routes["/cut.tar.gz"] = Reply(200, body, {"Content-Type": "application/gzip"},
                                         length=len(body) + 5000)
    url = server.url("/cut.tar.gz")
    assert_fails(cache_dir, url, url, f"announced {len(body) + 5000} bytes but sent {len(body)}",
                 "5000 bytes missing")


def test_connection_refused(cache_dir: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/pkg.tar.gz"
    assert_fails(cache_dir, url, url, "connection refused")


# --------------------------------------------------------------------------- silent servers

BOUND = 60.0  # generous outer bound for the stall tests: their budget is one second


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and answers each with ``head`` (raw bytes: status
    line, headers, a first part of the body), or nothing, then never another byte."""

    def __init__(self, head: bytes = b"") -> None:
        self.head = head
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}{path}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            self.accepted.append(conn)
            if self.head:
                conn.recv(65536)  # the request
                conn.sendall(self.head)

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


def fetch_stalled(cache: Path, url: str) -> str:
    """Fetch with a one-second stall budget; the single error line it ends with."""
    env = {**os.environ, "TREESEED_STALL_TIMEOUT": "1"}
    proc = subprocess.run([sys.executable, "-m", "treeseed", "--cache-dir", str(cache), "fetch", url],
                          capture_output=True, text=True, env=env, timeout=BOUND)
    assert proc.returncode == 1, proc
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("treeseed: error: ")]
    assert len(errors) == 1, proc.stderr
    assert_cache_clean(cache)
    return errors[0]


def test_server_that_never_answers_costs_one_stall_budget(cache_dir: Path) -> None:
    """Accepted, never answered: one connection (a silent read is not retried) and an error
    naming the URL, the bytes (none), the silence and the variable that allows longer."""
    silent = SilentServer()
    try:
        url = silent.url("/pkg.tar.gz")
        line = fetch_stalled(cache_dir, url)
        assert len(silent.accepted) == 1
    finally:
        silent.close()
    for needle in (url, "stalled", "nothing received for", "after 0 bytes", "TREESEED_STALL_TIMEOUT"):
        assert needle in line, f"{needle!r} not in {line!r}"


def test_stall_after_a_megabyte_says_a_megabyte_arrived(cache_dir: Path) -> None:
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/gzip\r\nContent-Length: 4000000\r\n\r\n"
            + b"\0" * 1_000_000)
    silent = SilentServer(head)
    try:
        url = silent.url("/pkg.tar.gz")
        line = fetch_stalled(cache_dir, url)
    finally:
        silent.close()
    assert url in line and "after 1000000 of 4000000 bytes" in line, line
    assert "TREESEED_STALL_TIMEOUT" in line


def test_a_long_silence_is_reported_off_a_terminal(cache_dir: Path) -> None:
    """stderr is a pipe, not a terminal: the wait is announced in a plain line instead of
    silence. The budget (20 s) is far beyond the notice (a quarter of it), and the test stops
    the fetch as soon as the line is read, so nothing here races the stall error."""
    silent = SilentServer()
    env = {**os.environ, "TREESEED_STALL_TIMEOUT": "20"}
    url = silent.url("/pkg.tar.gz")
    proc = subprocess.Popen([sys.executable, "-m", "treeseed", "--cache-dir", str(cache_dir),
                             "fetch", url], stderr=subprocess.PIPE, text=True, env=env)
    watchdog = threading.Timer(BOUND, proc.kill)  # a fetch that says nothing fails the test
    watchdog.start()
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait()
        silent.close()
    assert line.startswith(f"treeseed: waiting for {url}: nothing received for "), line
    assert "0 B so far" in line and "TREESEED_STALL_TIMEOUT" in line
