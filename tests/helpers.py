"""Plain helpers shared by the tests: build trees and archives, run the real CLI.

Test modules import them from here (``from helpers import make_tree, run_cli``); fixtures live
in ``conftest.py`` and in the plugin modules it names in ``pytest_plugins``.
"""

from __future__ import annotations

import difflib
import io
import os
import socket
import subprocess
import sys
import tarfile
from collections.abc import Mapping
from http.server import ThreadingHTTPServer
from pathlib import Path


def make_tree(root: Path, spec: Mapping[str, object]) -> Path:
    """Build a tree: ``"path": bytes`` a file, ``("x", bytes)`` an executable file,
    ``("link", target)`` a symlink, ``None`` an empty directory."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, value in spec.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if value is None:
            path.mkdir(exist_ok=True)
        elif isinstance(value, tuple) and value[0] == "link":
            os.symlink(value[1], path)
        elif isinstance(value, tuple) and value[0] == "x":
            path.write_bytes(value[1])
            path.chmod(0o755)
        else:
            assert isinstance(value, bytes)
            path.write_bytes(value)
            path.chmod(0o644)
    return root


def run_cli(*args: str, cache: Path | None = None, env: Mapping[str, str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``python -m treeseed`` for real, as a user would."""
    cmd = [sys.executable, "-m", "treeseed"]
    if cache is not None:
        cmd += ["--cache-dir", str(cache)]
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(cmd + list(args), capture_output=True, text=True, env=full_env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"treeseed {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def tar_gz(files: dict[str, bytes], top: str) -> bytes:
    """A .tar.gz with one top-level directory ``top`` holding ``files``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for rel, data in sorted(files.items()):
            info = tarfile.TarInfo(f"{top}/{rel}")
            info.size = len(data)
            info.mode = 0o644
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def run_on_terminal(*args: str, cache: Path) -> str:
    """Run ``python -m treeseed`` on a real pty (so it sees a terminal) and return all it drew.

    Reads until the child closes the terminal; each read waits at most 60 s.
    """
    import pty
    import select

    controller, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "treeseed", "--cache-dir", str(cache), *args],
                            stdin=terminal, stdout=terminal, stderr=terminal,
                            env={**os.environ, "COLUMNS": "120", "TERM": "xterm"})
    os.close(terminal)
    screen = b""
    try:
        while True:
            ready, _, _ = select.select([controller], [], [], 60)
            if not ready:
                break
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the child side is closed
                break
            if not chunk:
                break
            screen += chunk
    finally:
        os.close(controller)
        assert proc.wait(timeout=60) == 0
    return screen.decode("utf-8", "replace")


class NonBlockingAcceptServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer whose listening socket never blocks in ``accept``.

    socketserver polls the listening socket, then calls a blocking ``accept``; when the
    readiness it saw has nothing behind it by then, that ``accept`` waits for the next
    client, and ``shutdown()`` waits with it (a test worker hung 40 minutes so). Non-blocking,
    such an ``accept`` raises, socketserver skips it, and the loop sees its shutdown flag.
    Each accepted connection is blocking, as handlers expect."""

    daemon_threads = True

    def server_activate(self) -> None:
        super().server_activate()
        self.socket.setblocking(False)

    def get_request(self) -> tuple[socket.socket, object]:
        conn, addr = self.socket.accept()
        conn.setblocking(True)
        return conn, addr


def only_insertions(old: str, new: str) -> str:
    """Assert ``new`` is ``old`` with lines inserted (nothing else changed); return them."""
    a, b = old.splitlines(keepends=True), new.splitlines(keepends=True)
    inserted = []
    for op, _i1, _i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        assert op in ("equal", "insert"), "".join(difflib.unified_diff(a, b))
        if op == "insert":
            inserted += b[j1:j2]
    return "".join(inserted)
