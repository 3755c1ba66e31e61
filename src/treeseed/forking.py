"""treeseed's own fetcher as a fork of the cache process, and a spare forked ahead of need.

A second interpreter (``python -m treeseed.fetcher``) costs a Python start-up plus the imports
before its first line of work: the larger part of fetching a medium archive. A fork of the
already-initialised process costs about a millisecond. The child is set up as the program
would be (:func:`_child`): its own session, the work directory as its cwd, pipes for stdin and
stdout, the log as stderr, the protocol's environment, nothing else open, default signals, and
it always leaves by ``os._exit`` so none of the parent's cleanup runs twice. The protocol of
docs/fetcher-protocol.md is unchanged: other fetchers are still programs.

A **spare** (:func:`fork_spare`) goes one step further for a single ``treeseed fetch URL``: it
is forked the moment the command line is parsed, and imports the pipeline (unpacker, hashers,
rules, the URL's source) on the second core while this process imports the cache, reads the
settings and opens the index. The first fetcher started then takes it (:func:`take_spare`)
instead of forking, and begins its work with everything imported: 20-30 ms sooner on a 2-core
machine. A spare nobody takes reads end-of-file on its stdin and exits.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import sys
from pathlib import Path

TYPE_CHECKING = False  # typing's, without importing typing (this runs before every fetcher)
if TYPE_CHECKING:
    from typing import BinaryIO

#: The spare's job: an 8-byte length, then that much JSON, on its stdin before anything else.
_LENGTH = struct.Struct("!Q")
_MAX_JOB = 1 << 20


def forking() -> bool:
    """Whether the built-in fetcher runs as a fork of this process (the default on POSIX)
    rather than as ``python -m treeseed.fetcher``: ``TREESEED_FETCHER=spawn`` asks for the
    program (the protocol's reference run, and a way to rule the fork out when debugging)."""
    return hasattr(os, "fork") and os.environ.get("TREESEED_FETCHER") != "spawn"


class Forked:
    """The parts of :class:`subprocess.Popen` :class:`~treeseed.fetchers.FetcherRun` uses, for a
    forked child."""

    def __init__(self, pid: int, stdin_fd: int, stdout_fd: int) -> None:
        self.pid = pid
        self.stdin = open(stdin_fd, "wb")  # noqa: SIM115  (closed by FetcherRun.close)
        self.stdout = open(stdout_fd, "rb")  # noqa: SIM115
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = self.pid, 0  # reaped elsewhere: nothing left to wait for
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is not None:
            return self.returncode
        if timeout is None:
            try:
                _, status = os.waitpid(self.pid, 0)
                self.returncode = os.waitstatus_to_exitcode(status)
            except ChildProcessError:
                self.returncode = 0
            return self.returncode
        import subprocess
        import time

        deadline = time.monotonic() + timeout
        delay = 0.0005
        while self.poll() is None:
            if time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"fetcher {self.pid}", timeout)
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
        return self.returncode  # type: ignore[return-value]


def fork_builtin(args: list[str], work: Path, env: dict[str, str], log: BinaryIO) -> Forked:
    """Start treeseed's own fetcher for ``args`` in ``work``, ``log`` (a file opened by path)
    as its stderr: the spare if one is waiting, else a fork made now. SIGINT and SIGTERM are
    blocked around the fork, so one arriving in between reaches the child only after its own
    handlers are set, never the cache's."""
    spare = take_spare()
    if spare is not None:
        started = spare.start(args, work, env, log.name)
        if started is not None:
            return started
    from . import fetcher as program  # light: the pipeline is imported by its run, after forking

    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    with _signals_blocked() as old_mask:
        pid = os.fork()
        if pid == 0:
            _child(program, args, work, env, (in_r, out_w, log.fileno()), old_mask)
    os.close(in_r)
    os.close(out_w)
    return Forked(pid, in_w, out_r)


class _signals_blocked:
    """Block SIGINT and SIGTERM for a fork; yields the mask to restore (in both processes)."""

    def __enter__(self) -> set[int]:
        _quiet_fork_warning()
        _flush_std()  # else what this process had buffered is written again by the child
        self.old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        return self.old

    def __exit__(self, *exc: object) -> None:
        signal.pthread_sigmask(signal.SIG_SETMASK, self.old)


def _child(program, args: list[str], work: Path, env: dict[str, str],  # type: ignore[no-untyped-def]
           fds: tuple[int, int, int], mask: set[int]) -> None:
    """The forked fetcher: set itself up as a fresh program would be, run, ``os._exit``."""
    import gc

    gc.freeze()  # the parent's objects are never collected here: no finaliser closes its fds
    status = 1
    try:
        if os.getsid(0) != os.getpid():  # a spare is its own session already
            os.setsid()
        for target, fd in enumerate(fds):
            if fd != target:
                os.dup2(fd, target)
        os.closerange(3, _fd_limit())  # the cache's index, locks and other fetches' pipes
        os.chdir(work)
        os.environ.update(env)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        sys.stdin = open(0, encoding="ascii", errors="replace", closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", buffering=1, encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="backslashreplace",  # noqa: SIM115
                          closefd=False)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        status = program.main(args)
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    except KeyboardInterrupt:
        status = 130
    except BaseException:  # noqa: BLE001  (reported like an uncaught error in a program)
        import traceback

        traceback.print_exc()
    finally:
        _leave(status)


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def _leave(status: int) -> None:
    """The child's only way out: flush what it wrote, then ``os._exit`` whatever happens."""
    try:
        _flush_std()
    except BaseException:  # noqa: BLE001, S110  (an interrupt mid-flush: leave all the same)
        pass
    os._exit(status)


# ---- the spare

class Spare:
    """A fork made ahead of the first fetcher, importing the pipeline while it waits for a job.

    Its stdin and stdout are the pipes the fetcher will use; the job (arguments, work
    directory, environment, log) comes first on stdin, framed by length so that no byte
    meant for the fetcher (the cache's ``continue`` lines) is read with it.
    """

    def __init__(self, pid: int, stdin_fd: int, stdout_fd: int) -> None:
        self.pid = pid
        self._stdin = stdin_fd
        self._stdout = stdout_fd

    def start(self, args: list[str], work: Path, env: dict[str, str], log: str) -> Forked | None:
        """Hand the spare its job; None if it is gone (the caller forks instead)."""
        job = json.dumps({"args": args, "work": os.fspath(work), "env": env, "log": log}).encode()
        data = memoryview(_LENGTH.pack(len(job)) + job)
        try:
            while data:  # it reads the job as soon as its imports are done
                data = data[os.write(self._stdin, data):]
        except OSError:  # it exited (an import failed, or someone killed it)
            self.discard()
            return None
        return Forked(self.pid, self._stdin, self._stdout)

    def discard(self) -> None:
        """Let it go: it reads end-of-file and exits; reaped if it already has."""
        for fd in (self._stdin, self._stdout):
            try:
                os.close(fd)
            except OSError:
                pass
        _unreaped.append(self.pid)
        _reap()


_spare: Spare | None = None
_unreaped: list[int] = []


def fork_spare(url: str) -> None:
    """Fork a spare fetcher for a fetch of ``url`` about to start (see the module's text).

    Only from the main thread with no other thread running (a fork copies one thread and
    every lock as it is), and only where the built-in fetcher is a fork at all. A spare
    already waiting is kept.
    """
    global _spare
    import threading

    if _spare is not None or not forking() or threading.active_count() != 1:
        return
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    with _signals_blocked() as old_mask:
        pid = os.fork()
        if pid == 0:
            os.close(in_w)
            os.close(out_r)
            _spare_main(url, in_r, out_w, old_mask)
    os.close(in_r)
    os.close(out_w)
    _spare = Spare(pid, in_w, out_r)


def take_spare() -> Spare | None:
    """The waiting spare, once: the next fetcher forks as usual."""
    global _spare
    spare, _spare = _spare, None
    return spare


def discard_spare() -> None:
    """Release a spare that no fetcher took (the package was cached, or another fetcher ran)."""
    spare = take_spare()
    if spare is not None:
        spare.discard()


def _reap() -> None:
    for pid in list(_unreaped):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            _unreaped.remove(pid)


def _spare_main(url: str, stdin_fd: int, stdout_fd: int, mask: set[int]) -> None:
    """The spare's life: its own session (a Ctrl-C at the terminal is the cache's to handle),
    default signals, the pipeline imported, then one job or, at end of file, nothing.

    Until its job it holds none of the cache's standard streams (they point at /dev/null): a
    program reading ``treeseed``'s output through a pipe sees it end when treeseed exits, not
    when a spare that nobody took has finished importing."""
    try:
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        os.setsid()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        from . import fetcher as program

        try:
            program.preload(url)
        except Exception:  # noqa: BLE001, S110  (the run imports it again, and its log says why)
            pass
        job = _read_job(stdin_fd)
        if job is None:
            os._exit(0)  # not _leave: the streams are still the cache's
        log_fd = os.open(job["log"], os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        _child(program, job["args"], Path(job["work"]), job["env"], (stdin_fd, stdout_fd, log_fd),
               mask)
    except BaseException:  # noqa: BLE001, S110  (a job it could not read: the cache sees status 1)
        pass
    os._exit(1)


def _read_job(fd: int) -> dict | None:
    """The job the cache wrote, or None at end of file (no fetcher needed this spare)."""
    head = _read_exactly(fd, _LENGTH.size)
    if head is None:
        return None
    (size,) = _LENGTH.unpack(head)
    body = _read_exactly(fd, size) if size <= _MAX_JOB else None
    return json.loads(body) if body is not None else None


def _read_exactly(fd: int, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def preload_pipeline() -> None:
    """Import, in this process, what every forked fetcher imports after its first hashes: the
    HTTP client, the unpacker, the hashers, the package rules and the swarm files.

    A fork inherits its parent's modules, so when many fetchers are about to run (a project's
    dependencies, cold) importing them once here saves each fetcher its own imports: ~25 ms
    of CPU per dependency with warm bytecode, more without. Not done for a single fetch,
    whose fetcher may be stopped at its first announcement (``treeseed update``, nothing
    changed) before it would have imported any of this. Call it from the main thread, before
    the fetching threads start (an import under way in another thread holds its module's
    lock across a fork)."""
    if not forking():
        return
    from . import fetcher

    fetcher.preload("https://")  # the http source, urllib3 with it


def _fd_limit() -> int:
    try:
        return os.sysconf("SC_OPEN_MAX")
    except (ValueError, OSError):
        return 65536


def _quiet_fork_warning() -> None:
    """Python 3.12+ warns when forking a process that has threads (the dependency pool). The
    child runs only treeseed's fetcher code, replaces stdio, closes every inherited descriptor
    and never touches the index, so the locks the warning is about are not ones it takes."""
    if sys.version_info >= (3, 12):
        import warnings

        warnings.filterwarnings("ignore", category=DeprecationWarning,
                                message=r".*fork\(\) may lead to deadlocks.*")
