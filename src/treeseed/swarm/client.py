"""Talking to this cache's seeder from another process: find it, ask it, start it, stop it.

The daemon itself is :mod:`.seeder`; this module never imports it, so a ``treeseed fetch``
that hands a swarm download to a running seeder loads no libtorrent and no daemon code.
The protocol is JSON lines on a unix socket (``<cache>/seed/seeder.sock``): ``status``,
``stop``, ``added`` (seed a package just installed or shared) and ``fetch`` (progress lines,
then the result).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ..cache import Cache
from ..errors import AliasMismatch, FetchError, TreeseedError
from ..install import AlsoHash, FetchResult

_SOCKET_MAX = 100  # AF_UNIX paths are limited to 108 bytes


def seed_dir(cache: Cache) -> Path:
    return cache.root / "seed"


def socket_path(cache: Cache) -> Path:
    """``seed/seeder.sock``, or, when that path is too long for AF_UNIX, a name in the user's
    runtime directory derived from the cache path."""
    path = seed_dir(cache) / "seeder.sock"
    if len(os.fsencode(path)) <= _SOCKET_MAX:
        return path
    import hashlib

    import platformdirs

    digest = hashlib.sha256(os.fsencode(cache.root.resolve())).hexdigest()[:16]
    return Path(platformdirs.user_runtime_dir("treeseed", appauthor=False)) / f"seeder-{digest}.sock"


class SeederBusy(TreeseedError):
    """Another seeder already runs for this cache."""


def read_info(cache: Cache) -> dict | None:
    try:
        return json.loads((seed_dir(cache) / "seeder.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None


class SeederClient:
    """A connection to this cache's running seeder, if there is one."""

    def __init__(self, sock: socket.socket, cache: Cache) -> None:
        self.sock = sock
        self.cache = cache
        self.file = sock.makefile("rwb")

    @classmethod
    def connect(cls, cache: Cache, timeout: float = 5.0) -> SeederClient | None:
        path = socket_path(cache)
        if not path.exists():
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except OSError:
            sock.close()
            return None  # a socket file left by a seeder that died: nobody is listening
        return cls(sock, cache)

    def __enter__(self) -> SeederClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
            self.sock.close()

    def request(self, message: dict, timeout: float | None = 30.0) -> Iterator[dict]:
        self.sock.settimeout(timeout)
        self.file.write(json.dumps(message).encode() + b"\n")
        self.file.flush()
        while True:
            line = self.file.readline()
            if not line:
                raise FetchError("the seeder closed the connection without answering; see "
                                 "'treeseed seed status' and its log")
            reply = json.loads(line)
            yield reply
            if "progress" not in reply:
                return

    def call(self, message: dict, timeout: float = 30.0) -> dict:
        return list(self.request(message, timeout))[-1]

    def download(self, package_hash: str, progress: Callable[[int, int | None], None] | None,
              cancel: threading.Event | None,
              on_advice: Callable[[str], None] | None = None,
              also: AlsoHash | None = None) -> FetchResult:
        """Have the seeder fetch the package; closing the connection (on cancel) stops it.
        ``also`` goes with the request: the seeder checks it before it installs."""
        from ..install import cached_result
        from .download import stall_timeout

        done = threading.Event()
        if cancel is not None:
            threading.Thread(target=self._close_on, args=(cancel, done), daemon=True).start()
        try:
            request = {"op": "fetch", "hash": package_hash, "stall": stall_timeout()}
            if also is not None:
                request["also"] = also.as_json()
            for reply in self.request(request, timeout=None):
                if "progress" in reply and on_advice is not None:
                    on_advice(str(reply.get("origin", "")))
                if "progress" in reply and progress is not None:
                    progress(reply["progress"], reply.get("total"))
                elif "mismatch" in reply and also is not None:
                    raise AliasMismatch(package_hash, also.fmt, also.value,
                                        str(reply["mismatch"]))
                elif "error" in reply:
                    raise FetchError(reply["error"])
        except (OSError, ValueError) as exc:
            if cancel is not None and cancel.is_set():
                raise FetchError(f"swarm download of {package_hash} cancelled") from None
            raise FetchError(f"lost the seeder while it fetched {package_hash}: {exc}") from None
        finally:
            done.set()  # ends the watcher
        result = cached_result(self.cache, package_hash, "swarm", ())
        result.source = "swarm"
        return result

    def _close_on(self, cancel: threading.Event, done: threading.Event) -> None:
        """Closing our end is how a cancelled fetch tells the seeder to stop downloading."""
        while not done.is_set():
            if cancel.wait(0.1):
                with contextlib.suppress(OSError):
                    self.sock.shutdown(socket.SHUT_RDWR)
                return


def notify_added(cache: Cache, package_hash: str) -> None:
    """Tell a running seeder about a package just installed, so it seeds it at once rather
    than at its next scan. Silent when no seeder runs."""
    client = SeederClient.connect(cache, timeout=2.0)
    if client is None:
        return
    with client, contextlib.suppress(OSError, ValueError, FetchError):
        client.call({"op": "added", "hash": package_hash}, timeout=5.0)


def run_detached(cache: Cache, extra_args: list[str], timeout: float = 15.0) -> dict:
    """Start ``treeseed seed`` in the background (its own session, output to seeder.log) and
    wait until it answers on its socket."""
    import subprocess

    directory = seed_dir(cache)
    directory.mkdir(parents=True, exist_ok=True)
    running = SeederClient.connect(cache, timeout=2.0)
    if running is not None:  # else the loop below would report that seeder as the one started
        running.close()
        info = read_info(cache)
        pid = f" (pid {info['pid']})" if info else ""
        raise SeederBusy(f"a seeder already runs for the cache {cache.root}{pid}; 'treeseed "
                         "seed status' shows it, 'treeseed seed stop' stops it")
    log = open(directory / "seeder.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "treeseed", "--cache-dir", str(cache.root),
                             "seed", *extra_args], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            start_new_session=True, close_fds=True)
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (directory / "seeder.log").read_text(errors="replace").strip().splitlines()[-3:]
            raise TreeseedError("the seeder exited at once: " + (" / ".join(tail) or f"status {proc.returncode}"))
        client = SeederClient.connect(cache, timeout=2.0)
        if client is not None:
            with client:
                status = client.call({"op": "status"})
            if status.get("pid") == proc.pid:  # ours, not one that won a race to start
                return status
        time.sleep(0.05)
    proc.terminate()
    raise TreeseedError(f"the seeder did not answer within {timeout:.0f} s; see {directory / 'seeder.log'}")


def stop_running(cache: Cache, timeout: float = 15.0) -> int | None:
    """Stop this cache's seeder; returns its pid, or None if none ran."""
    info = read_info(cache)
    client = SeederClient.connect(cache)
    if client is None:
        return None
    with client:
        client.call({"op": "stop"})
    pid = info.get("pid") if info else None
    deadline = time.monotonic() + timeout
    while pid and time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    return pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited: only its parent has yet to collect it
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True
