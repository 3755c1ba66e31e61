"""Real git repositories for tests, and a smart-HTTP server for them.

:class:`GitServer` runs the real ``git http-backend`` CGI behind ``http.server`` on 127.0.0.1,
port 0, in a daemon thread. It serves every repository under its ``root`` (bare ones, and
non-bare ones: ``/repo.git`` is ``root/repo.git`` whether that holds ``.git`` or is bare) and
records every request, so a test can assert what a client asked for (``requests``) and how many
bytes of pack data it was sent (``sent("git-upload-pack")``).

:func:`make_repo` commits a tree given like ``helpers.make_tree`` (plus submodules) with fixed
identities and dates, so the same calls give the same commit ids on every machine.

``tests/conftest.py`` registers this module in ``pytest_plugins``, so a test names the
``git_server`` fixture as an argument; helpers are imported (``from gitserver import make_repo``).
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from helpers import NonBlockingAcceptServer

GIT_TIMEOUT = 120


# --------------------------------------------------------------------------- repositories


def git_env(home: Path | None = None) -> dict[str, str]:
    """An environment in which the user's own git configuration cannot change anything."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update({
        "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": "Treeseed Test", "GIT_AUTHOR_EMAIL": "test@treeseed.invalid",
        "GIT_COMMITTER_NAME": "Treeseed Test", "GIT_COMMITTER_EMAIL": "test@treeseed.invalid",
        "LC_ALL": "C", "LANG": "C",
    })
    if home is not None:
        env["HOME"] = str(home)
    return env


GIT_OPTS = ["-c", "init.defaultBranch=main", "-c", "core.autocrlf=false", "-c", "core.symlinks=true",
            "-c", "commit.gpgSign=false", "-c", "tag.gpgSign=false", "-c", "protocol.file.allow=always",
            "-c", "advice.detachedHead=false", "-c", "gc.auto=0"]


def git(repo: Path, *args: str, env: Mapping[str, str] | None = None, input: bytes | None = None) -> str:
    """Run ``git -C repo args``; return its stdout (stripped); raise with git's stderr if it fails."""
    proc = subprocess.run(["git", *GIT_OPTS, "-C", str(repo), *args], input=input,
                          capture_output=True, env={**git_env(), **(env or {})}, timeout=GIT_TIMEOUT)
    if proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} in {repo} failed ({proc.returncode}):\n"
                             f"{proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode().strip()


@dataclass(frozen=True)
class Submodule:
    """A gitlink in a :func:`make_repo` spec: the submodule at ``url``, pinned to ``commit``."""

    url: str
    commit: str


def make_repo(
    path: Path,
    files: Mapping[str, object],
    *,
    branch: str = "main",
    tag: str | None = None,
    annotated_tag: str | None = None,
    message: str = "commit",
    bare_copy: Path | None = None,
) -> str:
    """Commit exactly ``files`` on ``branch`` of the (non-bare) repository at ``path``; return the
    commit id.

    ``files`` is a ``helpers.make_tree`` spec (``bytes``, ``("x", bytes)``, ``("link", target)``)
    whose values may also be :class:`Submodule` (a gitlink plus its ``.gitmodules`` entry). The
    commit's tree is ``files`` and nothing else: files of the previous commit not named are
    deleted. A new branch starts from the current commit. ``tag`` adds a lightweight tag,
    ``annotated_tag`` an annotated one; both move if they exist. Dates are fixed: the n-th commit
    of a repository is dated 2001-09-09 + n minutes, so commit ids are reproducible.
    """
    from helpers import make_tree

    if not (path / ".git").exists():
        path.mkdir(parents=True, exist_ok=True)
        git(path, "init", "--quiet", "--template=", "-b", branch)
    current = git(path, "symbolic-ref", "--short", "HEAD")
    if current != branch:
        exists = git(path, "branch", "--list", branch)
        git(path, "checkout", "--quiet", *([] if exists else ["-b"]), branch)
    git(path, "rm", "-r", "-q", "--cached", "--ignore-unmatch", ".")
    for child in path.iterdir():
        if child.name != ".git":
            _remove(child)
    plain = {k: v for k, v in files.items() if not isinstance(v, Submodule)}
    subs = {k: v for k, v in files.items() if isinstance(v, Submodule)}
    if subs:
        plain[".gitmodules"] = "".join(
            f'[submodule "{p}"]\n\tpath = {p}\n\turl = {s.url}\n' for p, s in sorted(subs.items())
        ).encode()
    make_tree(path, plain)
    git(path, "add", "-A")
    for sub_path, sub in subs.items():
        (path / sub_path).mkdir(parents=True, exist_ok=True)
        git(path, "update-index", "--add", "--cacheinfo", f"160000,{sub.commit},{sub_path}")
    count = int(git(path, "rev-list", "--count", "--all") or 0) if _has_commits(path) else 0
    date = f"@{1_000_000_000 + 60 * count} +0000"
    dated = {"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
    git(path, "commit", "--quiet", "--allow-empty", "--no-verify", "-m", message, env=dated)
    commit = git(path, "rev-parse", "HEAD")
    if tag:
        git(path, "tag", "-f", tag, commit)
    if annotated_tag:
        git(path, "tag", "-f", "-a", "-m", f"tag {annotated_tag}", annotated_tag, commit, env=dated)
    if bare_copy is not None:
        publish(path, bare_copy)
    return commit


def publish(repo: Path, bare: Path) -> Path:
    """Mirror every ref of ``repo`` into the bare repository ``bare`` (created if needed)."""
    if not bare.exists():
        subprocess.run(["git", "init", "--quiet", "--bare", "--template=", str(bare)], check=True,
                       env=git_env(), capture_output=True, timeout=GIT_TIMEOUT)
    git(repo, "push", "--quiet", "--mirror", str(bare))
    return bare


def _has_commits(path: Path) -> bool:
    proc = subprocess.run(["git", "-C", str(path), "rev-parse", "--verify", "-q", "HEAD"],
                          capture_output=True, env=git_env(), timeout=GIT_TIMEOUT)
    return proc.returncode == 0


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        for child in path.iterdir():
            _remove(child)
        path.rmdir()
    else:
        path.unlink()


# --------------------------------------------------------------------------- the server


@dataclass
class Request:
    method: str
    path: str
    query: str
    git_protocol: str
    command: str = ""  # protocol v2 POSTs: "ls-refs" (ref listing) or "fetch" (objects)
    status: int = 0
    sent: int = 0  # body bytes of the reply


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection, so a reply never needs chunking.
    protocol_version = "HTTP/1.0"
    server: _Server

    def do_GET(self) -> None:
        self._cgi()

    def do_POST(self) -> None:
        self._cgi()

    def _cgi(self) -> None:
        parts = urlsplit(self.path)
        owner: GitServer = self.server.owner
        record = Request(self.command, parts.path, parts.query, self.headers.get("Git-Protocol", ""))
        with owner.lock:
            owner.requests.append(record)
        body = self._body()
        record.command = _v2_command(body, self.headers.get("Content-Encoding", ""))
        env = {
            **git_env(owner.root.parent),
            "GIT_PROJECT_ROOT": str(owner.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.0",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": parts.path,
            "QUERY_STRING": parts.query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": self.client_address[0],
        }
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        if owner.protocol_v2 and self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        try:
            proc = subprocess.run(["git", "http-backend"], input=body, capture_output=True,
                                  env=env, timeout=GIT_TIMEOUT)
            out = proc.stdout
        except subprocess.TimeoutExpired:
            out = b"Status: 504 Gateway Timeout\r\nContent-Type: text/plain\r\n\r\nhttp-backend hung\n"
        status, reason, headers, payload = _parse_cgi(out)
        record.status, record.sent = status, len(payload)
        self.send_response(status, reason)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        try:
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _body(self) -> bytes:
        if self.command != "POST":
            return b""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers, then the blank line
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def log_message(self, format: str, *args: object) -> None:
        pass


def _v2_command(body: bytes, encoding: str) -> str:
    """The ``command=`` of a protocol v2 request (its first pkt-line), or ""."""
    if "gzip" in encoding.lower():
        import gzip

        try:
            body = gzip.decompress(body)
        except OSError:
            return ""
    if body[4:12] == b"command=":
        return body[12:int(body[:4], 16)].decode("ascii", "replace").strip()
    return ""


def _parse_cgi(out: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
    """Split a CGI reply into status, reason, headers (without Status) and body."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        head, found, payload = out.partition(sep)
        if found:
            break
    else:
        return 502, "Bad Gateway", [("Content-Type", "text/plain")], b"http-backend sent no headers\n"
    status, reason, headers = 200, "OK", []
    for line in head.decode("latin-1").splitlines():
        name, _, value = line.partition(":")
        value = value.strip()
        if name.lower() == "status":
            code, _, reason = value.partition(" ")
            status = int(code)
        elif name:
            headers.append((name, value))
    return status, reason, headers, payload


class _Server(NonBlockingAcceptServer):
    owner: GitServer


class GitServer:
    """``git http-backend`` over HTTP for every repository under ``root``.

    ``protocol_v2 = False`` drops the client's ``Git-Protocol`` header, as an old or strict server
    would: the exchange is then protocol v0, which refuses commits no ref points at.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self.protocol_v2 = True
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.owner = self
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, name: str, ref: str | None = None) -> str:
        """The treeseed URL of repository ``name``: ``git+http://127.0.0.1:PORT/name[#ref]``."""
        return f"git+{self.base}/{name}" + (f"#{ref}" if ref else "")

    def repo(self, name: str) -> Path:
        return self.root / name

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()

    def calls(self, service: str | None = None, method: str | None = None) -> list[Request]:
        """Requests whose path ends with ``service`` (e.g. ``git-upload-pack``) or that ask
        for it in the query (``info/refs?service=...``)."""
        with self.lock:
            found = list(self.requests)
        if service is not None:
            found = [r for r in found if r.path.endswith("/" + service) or f"service={service}" in r.query]
        if method is not None:
            found = [r for r in found if r.method == method]
        return found

    def sent(self, service: str = "git-upload-pack") -> int:
        """Bytes the server sent in replies to ``service`` POSTs (where the packs travel)."""
        return sum(r.sent for r in self.calls(service, "POST"))

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def git_server(tmp_path: Path) -> Iterator[GitServer]:
    """A :class:`GitServer` serving ``tmp_path/"srv"``; ``make_repo(git_server.repo("x.git"), ...)``
    creates a repository it serves as ``git_server.url("x.git")``."""
    srv = GitServer(tmp_path / "srv")
    try:
        yield srv
    finally:
        srv.close()


def file_url(path: Path, ref: str | None = None) -> str:
    """The treeseed URL of a local repository: ``git+file:///abs/path[#ref]``."""
    return "git+" + path.absolute().as_uri() + (f"#{ref}" if ref else "")


def tracked_files(repo: Path, commit: str = "HEAD") -> Iterable[str]:
    return git(repo, "ls-tree", "-r", "--name-only", commit).splitlines()
