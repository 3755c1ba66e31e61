"""Fetchers as processes: the ``hashes`` fifo, early stops, ``treeseed update``, configured fetchers.

Everything here is real: git repositories served by ``git http-backend`` over smart HTTP on
127.0.0.1 (tests/gitserver.py), archives served by an HTTP server on 127.0.0.1, the real
``treeseed`` CLI in a subprocess, and configured fetchers that are Python scripts written by the
test and named in a ``$TREESEED_CONFIG`` file.

What proves what, without a single wall-clock assertion:

* "Recognised before any object is fetched": the git server's request log has the protocol v2
  ``command`` of every ``git-upload-pack`` POST; an unchanged dependency shows ``ls-refs`` and
  never ``fetch``.
* "Not downloaded / not unpacked": servers here can *withhold* a body (or its rest) until the
  client hangs up, for up to :data:`HOLD` seconds. A client that needed the body would wait for
  it, and the server would then record the body as sent in full. So a fetch that returns the
  cached package while the server records "client hung up, body never completed" proves the
  fetcher was stopped on the announced digest, before it had the archive (and so before any
  unpacking, which needs the whole archive).
* "Stopped / killed": configured fetchers write their pid (and the signals they receive) into a
  state directory; a process is gone when ``/proc`` no longer has it alive (a zombie counts as
  gone: the container's init may never reap orphans). Every such wait is bounded.
"""

from __future__ import annotations

import base64
import glob
import hashlib
import json
import os
import select
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import tomllib
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from gitserver import GitServer, _v2_command, file_url, make_repo
from gitserver import _Handler as GitHandler
from helpers import make_tree, run_cli
from httpserver import LoopbackServer, Reply, Server, tar_gz_bytes
from waiting import WaitTimeout, wait_for

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads /proc and relies on PR_SET_PDEATHSIG")

HOLD = 30.0  # longest a server here withholds a body, and any test waits for anything
PY = shlex.quote(sys.executable)

V1 = {"README": b"lib version 1\n", "src/lib.c": b"int v = 1;\n"}
V2 = {"README": b"lib version 2\n", "src/lib.c": b"int v = 2;\n", "NEWS": b"tag moved\n"}
TOOLS = {"tool.sh": ("x", b"#!/bin/sh\necho tool\n")}


# --------------------------------------------------------------------------- helpers


def fetch_json(cache: Path, url: str, env: dict[str, str] | None = None) -> dict:
    return json.loads(run_cli("fetch", url, "--json", cache=cache, env=env).stdout)


def tree_hash(tmp_path: Path, spec: dict) -> str:
    """``treeseed hash`` of a plain directory holding ``spec`` (in a cache of its own)."""
    (tmp_path / "expected").mkdir(exist_ok=True)
    root = make_tree(Path(tempfile.mkdtemp(dir=tmp_path / "expected")) / "tree", spec)
    return run_cli("hash", str(root), cache=tmp_path / "hash-cache").stdout.strip()


def packages(cache: Path) -> set[str]:
    p = cache / "p"
    return set(os.listdir(p)) if p.exists() else set()


def tmp_entries(cache: Path) -> list[str]:
    t = cache / "tmp"
    return sorted(os.listdir(t)) if t.exists() else []


def assert_error(proc: subprocess.CompletedProcess[str], cache: Path, before: set[str],
                 *needles: str) -> str:
    """Exit 1, one ``treeseed: error:`` line naming every needle, no traceback, nothing new in
    p/, nothing left in tmp/."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("treeseed: error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert packages(cache) == before
    assert tmp_entries(cache) == []
    return lines[0]


# --------------------------------------------------------------------------- processes


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, state) of ``pid`` from /proc, or None when there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return int(fields[1]), fields[0]


def alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[1] not in ("Z", "X")


def descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                children.setdefault(st[0], []).append(int(name))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def survivors(pids: set[int], timeout: float = 15.0) -> set[int]:
    """The pids still alive after waiting (bounded) for all of them to go."""
    with suppress(WaitTimeout):
        wait_for("every process to exit", lambda: not any(alive(p) for p in pids), timeout=timeout)
    return {p for p in pids if alive(p)}


def kill_all(pids: set[int]) -> None:
    """Clean up processes this test started (directly or not) that outlived it."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start_cli(cache: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "treeseed", "--cache-dir", str(cache), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def finish_cli(proc: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    out, err = proc.communicate(timeout=HOLD * 2)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# --------------------------------------------------------------------------- withholding servers


def _hung_up(conn: socket.socket, timeout: float) -> bool:
    """Wait (at most ``timeout`` s) for the client to close ``conn``; True if it did."""

    def closed() -> bool:
        if not select.select([conn], [], [], 0.05)[0]:
            return False
        try:
            return conn.recv(1, socket.MSG_PEEK) == b""  # else the client sent something
        except OSError:
            return True

    with suppress(WaitTimeout):
        return wait_for("the client to hang up", closed, timeout=timeout)
    return False


@dataclass
class Held:
    """One request to a :class:`HoldingServer` and what became of its body."""

    path: str
    size: int
    sent: int = 0
    hung_up: bool = False  # the client closed the connection while the body was withheld
    completed: bool = False  # the whole body went out


class _HoldingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        owner: HoldingServer = self.server.owner  # type: ignore[attr-defined]
        route = owner.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        body, headers, first = route
        record = Held(self.path, len(body))
        with owner.lock:
            owner.log.append(record)
        try:
            self.send_response(200)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:first])
            self.wfile.flush()
            record.sent = first
            owner.holding.set()
            if _hung_up(self.connection, HOLD):
                record.hung_up = True
                return
            self.wfile.write(body[first:])
            record.sent, record.completed = len(body), True
        except (BrokenPipeError, ConnectionResetError):
            record.hung_up = True

    def log_message(self, format: str, *args: object) -> None:
        pass


class HoldingServer(LoopbackServer):
    """Sends headers and the first ``first`` bytes of a body, then withholds the rest until the
    client hangs up (or :data:`HOLD` seconds pass, then sends it). ``log`` says what happened."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[bytes, dict[str, str], int]] = {}
        self.log: list[Held] = []
        self.lock = threading.Lock()
        self.holding = threading.Event()
        super().__init__(_HoldingHandler)
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.start()

    def serve(self, path: str, body: bytes, headers: dict[str, str] | None = None,
              first: int = 0) -> str:
        self.routes[path] = (body, {"Content-Type": "application/gzip", **(headers or {})}, first)
        return self.url(path)


@pytest.fixture
def holding() -> Iterator[HoldingServer]:
    srv = HoldingServer()
    try:
        yield srv
    finally:
        srv.close()


class _HoldingGitHandler(GitHandler):
    """The git server's handler, but a protocol v2 ``fetch`` (the pack request) is answered only
    once the client hangs up, or after :data:`HOLD` seconds: a git fetch caught in the act."""

    def _body(self) -> bytes:
        body = super()._body()
        owner = self.server.owner
        if _v2_command(body, self.headers.get("Content-Encoding", "")) == "fetch":
            owner.pack_requested.set()  # type: ignore[attr-defined]
            _hung_up(self.connection, HOLD)
        return body


def hold_packs(srv: GitServer) -> threading.Event:
    srv.pack_requested = threading.Event()  # type: ignore[attr-defined]
    srv.httpd.RequestHandlerClass = _HoldingGitHandler
    return srv.pack_requested  # type: ignore[attr-defined]


def upload_pack_commands(srv: GitServer, repo: str | None = None) -> list[str]:
    return [r.command for r in srv.calls("git-upload-pack", "POST")
            if repo is None or r.path.startswith(f"/{repo}/")]


# --------------------------------------------------------------------------- configured fetchers


PRELUDE = '''\
import os, signal, subprocess, sys, time
STATE = sys.argv[1]
URL = sys.argv[-1]

def mark(name, text=""):
    tmp = os.path.join(STATE, name + ".tmp")
    old = open(os.path.join(STATE, name)).read() if os.path.exists(os.path.join(STATE, name)) else ""
    with open(tmp, "w") as f:
        f.write(old + text)
    os.replace(tmp, os.path.join(STATE, name))

def announce(raw):
    with open(os.environ["TREESEED_HASHES"], "wb", buffering=0) as f:
        f.write(raw)

def nap(seconds=30):  # bounded: nothing here outlives the test by much
    for _ in range(int(seconds * 10)):
        time.sleep(0.1)

mark("pid", str(os.getpid()))
'''


class Demo:
    """A configured fetcher for ``demo://`` URLs: a Python script whose body the test writes, run
    as ``python script.py STATE [ARGS...] URL`` with its state (pid, signals) in ``state``."""

    def __init__(self, tmp_path: Path, body: str, *args: str, name: str = "demo") -> None:
        self.dir = tmp_path / f"fetcher-{name}"
        self.state = self.dir / "state"
        self.state.mkdir(parents=True)
        self.script = self.dir / "fetch.py"
        self.script.write_text(PRELUDE + body)
        self.config = self.dir / "config.toml"
        command = " ".join([PY, shlex.quote(str(self.script)), shlex.quote(str(self.state)),
                            *map(shlex.quote, args)])
        self.config.write_text(f'# test fetchers\n[fetchers]\n"demo" = {json.dumps(command)}\n')
        self.env = {"TREESEED_CONFIG": str(self.config)}

    def read(self, name: str) -> str | None:
        path = self.state / name
        return path.read_text() if path.exists() else None

    @property
    def pid(self) -> int:
        text = self.read("pid")
        assert text, "the fetcher never ran"
        return int(text)

    def fetch(self, cache: Path, url: str = "demo://pkg", *extra: str,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return run_cli("fetch", url, *extra, cache=cache, env={**self.env, **(env or {})},
                       check=False)


WRITE_PACKAGE = '''
os.makedirs("package/src", exist_ok=True)
with open("package/README", "w") as f:
    f.write("from a configured fetcher\\n")
with open("package/src/demo.c", "w") as f:
    f.write("int demo;\\n")
'''
DEMO_TREE = {"README": b"from a configured fetcher\n", "src/demo.c": b"int demo;\n"}


# --------------------------------------------------------------------------- update: git over smart HTTP


MANIFEST = """\
# app: a package with two git dependencies
[package]
name = "app"
version = "1.0.0"

[dependencies.lib]
# the library, by tag
url = "{lib_url}"
hash = "{lib_hash}"  # keep this comment
lazy = false

[dependencies.tools]
url = "{tools_url}"
hash = "{tools_hash}"
rev = "{tools_rev}"

# end of file
"""


@pytest.fixture
def app(tmp_path: Path, cache_dir: Path, git_server: GitServer) -> dict:
    """``lib.git`` (tag v1) and ``tools.git`` (main) on the git server, both fetched into the cache,
    and a package ``app`` depending on them; ``lib`` has no ``rev`` yet."""
    lib_commit = make_repo(git_server.repo("lib.git"), V1, tag="v1")
    tools_commit = make_repo(git_server.repo("tools.git"), TOOLS)
    lib_url, tools_url = git_server.url("lib.git", "v1"), git_server.url("tools.git", "main")
    lib = fetch_json(cache_dir, lib_url)
    tools = fetch_json(cache_dir, tools_url)
    assert (lib["revision"], tools["revision"]) == (lib_commit, tools_commit)
    root = tmp_path / "app"
    root.mkdir()
    text = MANIFEST.format(lib_url=lib_url, lib_hash=lib["hash"], tools_url=tools_url,
                           tools_hash=tools["hash"], tools_rev=tools_commit)
    (root / "treeseed.toml").write_text(text)
    git_server.clear()
    return {"root": root, "text": text, "lib": lib, "tools": tools, "lib_commit": lib_commit}


def update(cache: Path, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("-C", str(root), "update", *args, cache=cache, check=False)


def test_unchanged_git_dependency_is_recognised_from_its_commit(cache_dir: Path,
                                                                git_server: GitServer,
                                                                app: dict) -> None:
    """``git-commit`` is announced after ls-refs; the cache knows it and stops the fetcher before
    a single pack request reaches the server."""
    proc = update(cache_dir, app["root"], "tools", "--json")
    assert proc.returncode == 0, proc.stderr
    [row] = json.loads(proc.stdout)
    assert row["name"] == "tools" and row["error"] is None
    assert row["changed"] is False and row["old"] == row["new"] == app["tools"]["hash"]
    assert row["transferred"] == 0
    assert row["revision"] == app["tools"]["revision"]
    assert upload_pack_commands(git_server) == ["ls-refs"]  # and no `fetch`: no objects
    assert (app["root"] / "treeseed.toml").read_text() == app["text"]  # nothing to write
    assert tmp_entries(cache_dir) == []


def test_update_adds_a_missing_rev_without_fetching(cache_dir: Path, git_server: GitServer,
                                                    app: dict) -> None:
    proc = update(cache_dir, app["root"], "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert not rows["lib"]["changed"] and not rows["tools"]["changed"]
    assert rows["lib"]["transferred"] == rows["tools"]["transferred"] == 0
    assert "fetch" not in upload_pack_commands(git_server)
    new = (app["root"] / "treeseed.toml").read_text().splitlines()
    old = app["text"].splitlines()
    at = old.index("lazy = false") + 1
    assert new == old[:at] + [f'rev = "{app["lib_commit"]}"'] + old[at:]


def test_a_moved_tag_is_updated_in_one_fetch(tmp_path: Path, cache_dir: Path,
                                             git_server: GitServer, app: dict) -> None:
    moved = make_repo(git_server.repo("lib.git"), V2, tag="v1")  # v1 now names a new commit
    expected = tree_hash(tmp_path, V2)
    root, old_hash = app["root"], app["lib"]["hash"]

    proc = update(cache_dir, root)
    assert proc.returncode == 0, proc.stderr
    # One fetch of lib: its ref listing and one pack; tools is recognised from its commit.
    assert upload_pack_commands(git_server, "lib.git") == ["ls-refs", "fetch"]
    assert upload_pack_commands(git_server, "tools.git") == ["ls-refs"]
    # The table: name, old hash, new hash, source revision, bytes downloaded.
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["name", "old", "new", "revision", "downloaded"]
    lib_row = next(line for line in lines if line.startswith("lib "))
    tools_row = next(line for line in lines if line.startswith("tools "))
    assert old_hash[:16] in lib_row and expected[:16] in lib_row and moved[:12] in lib_row
    assert lib_row.rstrip().endswith("changed") and " 0 B " not in lib_row
    assert tools_row.rstrip().endswith("unchanged") and " 0 B " in tools_row
    assert "1 of 2 changed" in proc.stderr

    # The manifest: lib's hash replaced and its rev added; every other line as it was.
    text = (root / "treeseed.toml").read_text()
    data = tomllib.loads(text)
    assert data["dependencies"]["lib"]["hash"] == expected
    assert data["dependencies"]["lib"]["rev"] == moved
    old_lines, new_lines = app["text"].splitlines(), text.splitlines()
    hash_at = old_lines.index(f'hash = "{old_hash}"  # keep this comment')
    at = old_lines.index("lazy = false") + 1
    want = list(old_lines)
    want[hash_at] = f'hash = "{expected}"  # keep this comment'
    want.insert(at, f'rev = "{moved}"')
    assert new_lines == want
    assert expected in packages(cache_dir)

    # A second run: nothing changed, nothing downloaded, nothing written.
    git_server.clear()
    again = update(cache_dir, root, "--json")
    assert again.returncode == 0, again.stderr
    for row in json.loads(again.stdout):
        assert row["changed"] is False and row["transferred"] == 0, row
    assert "fetch" not in upload_pack_commands(git_server)
    assert (root / "treeseed.toml").read_text() == text


def test_dry_run_writes_nothing(tmp_path: Path, cache_dir: Path, git_server: GitServer,
                                app: dict) -> None:
    make_repo(git_server.repo("lib.git"), V2, tag="v1")
    before = (app["root"] / "treeseed.toml").read_bytes()
    proc = update(cache_dir, app["root"], "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "1 of 2 would change" in proc.stderr
    assert (app["root"] / "treeseed.toml").read_bytes() == before


def test_add_uses_the_same_machinery(tmp_path: Path, cache_dir: Path, git_server: GitServer,
                                     app: dict) -> None:
    """``treeseed add`` of a source whose commit the cache knows: no pack, rev recorded, and the
    ``update`` that follows has nothing to do."""
    root = tmp_path / "other"
    root.mkdir()
    (root / "treeseed.toml").write_text('[package]\nname = "other"\n')
    run_cli("-C", str(root), "add", git_server.url("tools.git", "main"), "--name", "t",
            cache=cache_dir)
    assert upload_pack_commands(git_server) == ["ls-refs"]
    dep = tomllib.loads((root / "treeseed.toml").read_text())["dependencies"]["t"]
    assert dep["hash"] == app["tools"]["hash"] and dep["rev"] == app["tools"]["revision"]
    before = (root / "treeseed.toml").read_bytes()
    assert json.loads(update(cache_dir, root, "--json").stdout)[0]["changed"] is False
    assert (root / "treeseed.toml").read_bytes() == before


# --------------------------------------------------------------------------- archives


def _archive(size: int = 1 << 20) -> tuple[bytes, str]:
    body = tar_gz_bytes(os.urandom(size), "pkg/blob")  # gzip level 0: about ``size`` bytes
    return body, hashlib.sha256(body).hexdigest()


def _repr_digest(hex_digest: str) -> str:
    return "sha-256=:" + base64.b64encode(bytes.fromhex(hex_digest)).decode() + ":"


def test_known_archive_at_a_content_addressed_url_is_not_downloaded(
        cache_dir: Path, server: Server, holding: HoldingServer) -> None:
    body, digest = _archive()
    server.routes["/dl/pkg-1.0.tar.gz"] = Reply(200, body, {"Content-Type": "application/gzip"})
    first = fetch_json(cache_dir, server.url("/dl/pkg-1.0.tar.gz"))
    assert first["archive_sha256"] == digest

    # The same bytes at a content-addressed mirror URL, whose body is withheld: the digest in
    # the URL is announced before the request, and the cache stops the fetcher on it.
    url = holding.serve(f"/cas/sha256/{digest}", body)
    got = fetch_json(cache_dir, url)
    assert got["cached"] is True and got["hash"] == first["hash"] and got["transferred"] == 0
    assert not any(r.completed for r in holding.log), holding.log  # never had the archive
    assert packages(cache_dir) == {first["hash"]}
    assert tmp_entries(cache_dir) == []


def test_repr_digest_is_announced_before_the_body(cache_dir: Path, server: Server,
                                                  holding: HoldingServer) -> None:
    body, digest = _archive(4 << 20)
    server.routes["/dl/pkg.tar.gz"] = Reply(200, body, {"Content-Type": "application/gzip"})
    first = fetch_json(cache_dir, server.url("/dl/pkg.tar.gz"))

    # Another URL, not content-addressed, stating the digest in Repr-Digest: 64 KiB of the body
    # go out, the rest waits for the client, which hangs up instead.
    url = holding.serve("/elsewhere/pkg.tar.gz", body, {"Repr-Digest": _repr_digest(digest)},
                        first=64 << 10)
    got = fetch_json(cache_dir, url)
    assert got["cached"] is True and got["hash"] == first["hash"]
    [record] = holding.log
    assert record.hung_up and not record.completed, record
    assert record.sent == 64 << 10 < record.size
    assert packages(cache_dir) == {first["hash"]} and tmp_entries(cache_dir) == []


def test_known_archive_at_a_plain_url_is_recognised(cache_dir: Path, server: Server) -> None:
    """Without a digest up front the archive is downloaded; its ``archive-sha256``, announced
    before unpacking, names the cached package, which is used."""
    body, digest = _archive()
    for path in ("/a/pkg.tar.gz", "/b/renamed.tar.gz"):
        server.routes[path] = Reply(200, body, {"Content-Type": "application/gzip"})
    first = fetch_json(cache_dir, server.url("/a/pkg.tar.gz"))
    got = fetch_json(cache_dir, server.url("/b/renamed.tar.gz"))
    assert got["cached"] is True and got["hash"] == first["hash"]
    assert got["archive_sha256"] == digest
    assert packages(cache_dir) == {first["hash"]} and tmp_entries(cache_dir) == []


def test_a_lying_repr_digest_is_an_error(cache_dir: Path, server: Server) -> None:
    body, digest = _archive(64 << 10)
    stated = hashlib.sha256(b"something else").hexdigest()
    server.routes["/pkg.tar.gz"] = Reply(200, body, {"Content-Type": "application/gzip",
                                                     "Repr-Digest": _repr_digest(stated)})
    url = server.url("/pkg.tar.gz")
    proc = run_cli("fetch", url, cache=cache_dir, check=False)
    assert_error(proc, cache_dir, set(), url, stated, digest)


# --------------------------------------------------------------------------- configured fetchers


def test_configured_fetcher_is_installed_and_rehashed(tmp_path: Path, cache_dir: Path) -> None:
    expected = tree_hash(tmp_path, DEMO_TREE)
    demo = Demo(tmp_path, WRITE_PACKAGE + 'announce(("bt2 " + sys.argv[2] + "\\n").encode())\n',
                expected)
    proc = demo.fetch(cache_dir, "demo://pkg", "--json")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["hash"] == expected and got["cached"] is False and got["files"] == 2
    assert packages(cache_dir) == {expected} and tmp_entries(cache_dir) == []
    run_cli("cache", "verify", cache=cache_dir)
    # Fetched again: the fetcher's bt2 names a cached package and it is stopped there.
    again = demo.fetch(cache_dir, "demo://pkg", "--json")
    assert json.loads(again.stdout)["cached"] is True


def test_configured_fetcher_announcing_a_false_bt2_is_refused(tmp_path: Path,
                                                               cache_dir: Path) -> None:
    real = tree_hash(tmp_path, DEMO_TREE)
    claimed = "bt2-" + "0" * 64
    demo = Demo(tmp_path, WRITE_PACKAGE + f'announce(b"bt2 {claimed}\\n")\n')
    line = assert_error(demo.fetch(cache_dir), cache_dir, set(), "demo://pkg", claimed, real,
                        "nothing was cached")
    assert "announced" in line


@pytest.mark.parametrize("garbage", [
    b"hello world\n",  # unknown format
    b"git-commit not-a-commit\n",  # a known format, a value of the wrong shape
    b"bt2 bt2-\xff\xfe\n",  # not ASCII
    b"archive-sha256 " + b"a" * 600,  # no end of line, past the longest line allowed
], ids=["unknown-format", "bad-value", "not-ascii", "too-long"])
def test_garbage_on_the_fifo_is_reported(tmp_path: Path, cache_dir: Path, garbage: bytes) -> None:
    demo = Demo(tmp_path, f"announce({garbage!r})\n" + WRITE_PACKAGE + "nap()\n")
    line = assert_error(demo.fetch(cache_dir), cache_dir, set(), "demo://pkg", "malformed line")
    assert "fifo" in line
    assert survivors({demo.pid}) == set()  # stopped, not left napping


def test_fetcher_exit_status_and_stderr_are_quoted(tmp_path: Path, cache_dir: Path) -> None:
    demo = Demo(tmp_path, 'print("disk on fire", file=sys.stderr)\nsys.exit(3)\n')
    assert_error(demo.fetch(cache_dir), cache_dir, set(), "demo://pkg", "exited with status 3",
                 "disk on fire")


def test_fetcher_leaving_no_package_is_an_error(tmp_path: Path, cache_dir: Path) -> None:
    demo = Demo(tmp_path, "pass\n")
    assert_error(demo.fetch(cache_dir), cache_dir, set(), "demo://pkg", "package/")


@linux_only
def test_hung_fetcher_is_stopped_at_the_timeout(tmp_path: Path, cache_dir: Path) -> None:
    """The fetcher and its own child (same process group) are both stopped."""
    demo = Demo(tmp_path, WRITE_PACKAGE + '''
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
mark("child", str(child.pid))
nap()
''')
    proc = demo.fetch(cache_dir, env={"TREESEED_FETCH_TIMEOUT": "2"})
    assert_error(proc, cache_dir, set(), "demo://pkg", "within 2 s", "TREESEED_FETCH_TIMEOUT")
    assert survivors({demo.pid, int(demo.read("child") or 0)}) == set()


@linux_only
def test_fetcher_killed_midway_leaves_nothing(tmp_path: Path, cache_dir: Path) -> None:
    demo = Demo(tmp_path, 'os.makedirs("package")\nopen("package/part", "w").write("half")\n'
                          'mark("wrote")\nnap()\n')
    cli = start_cli(cache_dir, "fetch", "demo://pkg", env=demo.env)
    try:
        wait_for("the fetcher to write part of package/", lambda: demo.read("wrote") is not None,
                 timeout=HOLD, poll=0.02)
        os.kill(demo.pid, signal.SIGKILL)
    finally:
        proc = finish_cli(cli)
    assert_error(proc, cache_dir, set(), "demo://pkg", "killed by signal 9")


@linux_only
def test_killed_treeseed_takes_a_configured_fetcher_with_it(tmp_path: Path,
                                                            cache_dir: Path) -> None:
    demo = Demo(tmp_path, 'os.makedirs("package")\nopen("package/part", "w").write("half")\n'
                          'mark("wrote")\nnap()\n')
    cli = start_cli(cache_dir, "fetch", "demo://pkg", env=demo.env)
    try:
        wait_for("the partial file", lambda: glob.glob(str(cache_dir / "tmp" / "*" / "package" / "part")),
                 timeout=HOLD, poll=0.02)
        cli.kill()
        cli.communicate(timeout=HOLD)
        left = survivors({demo.pid}, timeout=10)
    finally:
        kill_all({demo.pid})
    assert packages(cache_dir) == set()
    run_cli("cache", "gc", cache=cache_dir)
    assert tmp_entries(cache_dir) == []
    assert left == set(), "the configured fetcher outlived the treeseed that started it"


@linux_only
def test_killed_treeseed_takes_its_own_fetcher_with_it(cache_dir: Path,
                                                       holding: HoldingServer) -> None:
    """treeseed SIGKILLed while its fetcher is half way through a download: the fetcher dies
    with it, nothing is installed, and ``cache gc`` removes the work directory left behind."""
    body, _ = _archive()
    url = holding.serve("/slow.tar.gz", body, first=64 << 10)
    cli = start_cli(cache_dir, "fetch", url)
    try:
        assert holding.holding.wait(HOLD), "the download never started"
        fetchers = descendants(cli.pid)
        assert fetchers, "no fetcher process"
        cli.kill()
        cli.communicate(timeout=HOLD)
        left = survivors(fetchers)
    finally:
        kill_all(descendants(cli.pid))
    assert left == set()
    [record] = holding.log
    assert not record.completed
    assert packages(cache_dir) == set()
    assert len(tmp_entries(cache_dir)) == 1  # the dead fetch's work directory ...
    gc = run_cli("cache", "gc", cache=cache_dir)
    assert "tmp/w-" in gc.stdout
    assert tmp_entries(cache_dir) == []  # ... which gc removes


def _held_git_fetch(cache: Path, srv: GitServer, **env: str) -> tuple[subprocess.Popen[str], set[int]]:
    """Start ``treeseed fetch`` of a git repository whose server holds back the pack; return the
    CLI process and, once the pack was asked for, every process below it (fetcher, git, helpers)."""
    make_repo(srv.repo("big.git"), {"blob": os.urandom(1 << 20)})
    pack_requested = hold_packs(srv)
    cli = start_cli(cache, "fetch", srv.url("big.git", "main"), env=env)
    if not pack_requested.wait(HOLD):
        cli.kill()
        raise AssertionError(f"git never asked for the pack: {finish_cli(cli).stderr}")
    running = descendants(cli.pid)
    assert any("git" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")
               for p in running if alive(p)), "no git process below the fetcher"
    return cli, running


@linux_only
def test_stopping_a_git_fetch_stops_git(cache_dir: Path, git_server: GitServer) -> None:
    """A git fetch stopped at the timeout while the server holds its pack: no git process may
    keep running (and downloading) after treeseed has given up."""
    cli, running = _held_git_fetch(cache_dir, git_server, TREESEED_FETCH_TIMEOUT="3")
    try:
        proc = finish_cli(cli)
        left = survivors(running, timeout=5)
    finally:
        kill_all(running)
    assert_error(proc, cache_dir, set(), git_server.url("big.git", "main"), "within 3 s")
    assert left == set(), "git processes outlived the stopped fetch"


@linux_only
def test_killed_treeseed_takes_git_with_it(cache_dir: Path, git_server: GitServer) -> None:
    """treeseed SIGKILLed in the middle of a git fetch: its fetcher and every git command below
    it go too, nothing is installed, and ``cache gc`` removes the work directory."""
    cli, running = _held_git_fetch(cache_dir, git_server)
    try:
        cli.kill()
        cli.communicate(timeout=HOLD)
        left = survivors(running, timeout=10)
    finally:
        kill_all(running)
    assert left == set(), "processes outlived the killed treeseed"
    assert packages(cache_dir) == set()
    run_cli("cache", "gc", cache=cache_dir)
    assert tmp_entries(cache_dir) == []


# --------------------------------------------------------------------------- early stop of a configured fetcher


STOPPABLE = '''
def on_term(signum, frame):
    mark("signals", "TERM\\n")
    if sys.argv[3] == "polite":
        sys.exit(0)

signal.signal(signal.SIGTERM, on_term)
announce(("git-commit " + sys.argv[2] + "\\n").encode())
nap()
mark("finished")
'''


@linux_only
@pytest.mark.parametrize("manners", ["polite", "stubborn"])
def test_configured_fetcher_is_stopped_when_it_names_a_cached_package(
        tmp_path: Path, cache_dir: Path, manners: str) -> None:
    """A fetcher announcing the commit of a package the cache got over git is stopped with
    SIGTERM and the cached package is used; one that ignores SIGTERM is SIGKILLed after the
    grace period."""
    repo = tmp_path / "repo"
    commit = make_repo(repo, V1)
    cached = fetch_json(cache_dir, file_url(repo, "main"))
    demo = Demo(tmp_path, STOPPABLE, commit, manners)
    proc = demo.fetch(cache_dir, "demo://pkg", "--json")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["cached"] is True and got["hash"] == cached["hash"]
    assert got["revision"] == commit
    assert demo.read("signals") == "TERM\n"  # asked politely first, once
    assert survivors({demo.pid}) == set()
    assert demo.read("finished") is None  # it never ran to its end
    assert packages(cache_dir) == {cached["hash"]} and tmp_entries(cache_dir) == []


# --------------------------------------------------------------------------- the start-up an unchanged update waits for


def _imported(importtime: str) -> set[str]:
    """Module names in ``python -X importtime`` output."""
    return {line.rsplit("|", 1)[1].strip() for line in importtime.splitlines()
            if line.startswith("import time:") and line.count("|") == 2}


#: What neither process needs to find out that a git dependency is unchanged.
PIPELINE = {"treeseed.unpack", "treeseed.hashing", "treeseed.package", "treeseed.rules", "tomlkit",
            "urllib3", "zstandard", "pathspec"}


def test_builtin_fetcher_finds_treeseed_by_the_path_it_is_handed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It starts without site (-S) for git and local sources, with this process's sys.path, and
    with the directory holding treeseed even when only an import hook knew it (an editable
    install); HTTP(S) keeps site. Run by hand, ``python -m treeseed.fetcher`` still works."""
    import treeseed
    from treeseed.fetchers import fetcher_for

    holder = os.path.dirname(os.path.dirname(os.path.abspath(treeseed.__file__)))
    monkeypatch.setattr(sys, "path", [p for p in sys.path if os.path.abspath(p or ".") != holder])
    argv = fetcher_for("git+file:///nowhere/repo.git", configured={}).argv
    assert argv[0] == sys.executable and "-S" in argv[1:argv.index("-c")]
    web = fetcher_for("https://example.org/a.tar.gz", configured={}).argv
    assert "-S" not in web[1:web.index("-c")]
    for cmd in ([*argv[:-1], "--help"], [sys.executable, "-m", "treeseed.fetcher", "--help"]):
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60,
                              check=False)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("usage: python -m treeseed.fetcher")


@linux_only
def test_builtin_fetcher_loads_only_the_ref_lookup_before_announcing(tmp_path: Path) -> None:
    """Up to its ``git-commit`` (where an unchanged dependency is stopped) the fetcher has not
    read site's .pth files nor imported the pipeline, argparse, json or dataclasses; SIGTERM
    while it waits for the go-ahead ends it at once."""
    from treeseed.fetchers import fetcher_for

    commit = make_repo(tmp_path / "repo", V1)
    argv = fetcher_for(file_url(tmp_path / "repo", "main"), configured={}).argv
    work = tmp_path / "work"
    work.mkdir()
    fifo = work / "hashes"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    log = open(work / "stderr", "w+")  # noqa: SIM115
    proc = subprocess.Popen([argv[0], "-X", "importtime", *argv[1:]], cwd=work, stdin=subprocess.PIPE,
                            stderr=log, env={**os.environ, "TREESEED_HASHES": str(fifo)})
    try:
        line = b""

        def whole_line() -> bool:
            nonlocal line
            if select.select([reader], [], [], 1)[0]:
                line += os.read(reader, 512)
            return line.endswith(b"\n")

        with suppress(WaitTimeout):
            wait_for("the fetcher's hash line", whole_line, timeout=HOLD, poll=0)
        assert line == f"git-commit {commit}\n".encode()
        proc.send_signal(signal.SIGTERM)  # waiting for "continue" on its stdin
        assert proc.wait(timeout=HOLD) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(reader)
    log.seek(0)
    imported = _imported(log.read())
    log.close()
    assert "treeseed.sources.git" in imported
    assert not imported & (PIPELINE | {"site", "treeseed.fetch", "treeseed.cache", "argparse", "json",
                                       "dataclasses"})
    assert not (work / "checkout").exists()  # nothing fetched before the go-ahead


def test_unchanged_update_loads_no_pipeline(cache_dir: Path, git_server: GitServer,
                                            app: dict) -> None:
    """The cache side of an unchanged update: no unpacking, hashing, manifest writing or HTTP
    modules, and no thread pool for a single dependency."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "treeseed", "--cache-dir",
                           str(cache_dir), "-C", str(app["root"]), "update", "tools", "--json"],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["changed"] is False
    assert upload_pack_commands(git_server) == ["ls-refs"]
    imported = _imported(proc.stderr)
    assert "treeseed.fetch" in imported
    assert not imported & (PIPELINE | {"concurrent.futures"})


def test_update_uses_the_root_packages_own_fetchers(tmp_path: Path, cache_dir: Path) -> None:
    """A scheme configured in the package's own ``[fetchers]`` (not the user's config) serves
    ``treeseed update`` as it serves ``treeseed fetch``."""
    demo = Demo(tmp_path, WRITE_PACKAGE)
    command = demo.config.read_text().split('"demo" = ', 1)[1].strip()
    root = tmp_path / "app"
    root.mkdir()
    (root / "treeseed.toml").write_text(
        f'[package]\nname = "app"\n\n[fetchers]\n"demo" = {command}\n\n'
        '[dependencies.pkg]\nurl = "demo://pkg"\n')
    proc = update(cache_dir, root, "--json")  # no TREESEED_CONFIG: only the package names it
    assert proc.returncode == 0, proc.stderr
    [row] = json.loads(proc.stdout)
    assert row["error"] is None and row["changed"] and row["new"].startswith("bt2-")
    assert demo.read("pid") is not None  # the package's fetcher ran
    assert f'hash = "{row["new"]}"' in (root / "treeseed.toml").read_text()
