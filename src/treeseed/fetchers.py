"""Running fetcher programs: the cache's side of docs/fetcher-protocol.md.

Every fetch runs a fetcher as its own process, in its own session, in the fetch's work
directory. Before starting it the cache creates the fifo ``hashes`` there and keeps it open at
both ends (so the fetcher can open it at any time, and so reading never sees a false end).
:class:`FetcherRun` yields each ``<format> <value>`` line the moment it arrives; the caller
looks it up and may :meth:`~FetcherRun.stop` the fetcher (SIGTERM to its process group, then
SIGKILL after a grace period) as soon as it recognises content it already has. A malformed
line, a non-zero exit, or a run past the timeout is a :class:`FetcherError` naming the source.

An interrupt (Ctrl-C, SIGTERM: :func:`interrupt`) is process-wide: every running fetcher is
stopped at once, woken by a pipe its wait watches rather than by a poll, and no new one starts,
so the threads fetching dependencies unwind (removing their work directories) within moments.

Which program fetches a URL: the built-in ``python -m treeseed.fetcher`` for http(s), file,
git+... and local paths; a command configured under ``[fetchers]`` (user config file, or the
root package's treeseed.toml) for any other scheme. Built-in fetchers are treeseed's own code,
hashing as they write, so their tree is installed on their word; a configured fetcher's tree is
re-hashed by the cache before anything is installed.
"""

from __future__ import annotations

import os
import re
import select
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import FetchError
from .forking import fork_builtin, forking
from .record import Record

if TYPE_CHECKING:
    import threading

FIFO_NAME = "hashes"
GRACE_SECONDS = 2.0
DEFAULT_TIMEOUT = 3600.0

#: What a fetcher may announce, and the shape each value must have.
FORMATS: dict[str, re.Pattern[str]] = {
    "bt2": re.compile(r"bt2-[0-9a-f]{64}"),
    "archive-sha256": re.compile(r"[0-9a-f]{64}"),
    "git-commit": re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}"),
    "git": re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}"),
    "swhid": re.compile(r"swh:1:dir:[0-9a-f]{40}"),
    "nar": re.compile(r"sha256-[A-Za-z0-9+/]{43}="),
    "zig": re.compile(r"[A-Za-z0-9_.+-]{1,64}-[A-Za-z0-9_-]{44}|1220[0-9a-f]{64}"),
    "ipfs": re.compile(r"b[a-z2-7]{58}"),  # a CIDv1 (dag-pb or raw, sha2-256) in base32
}
MAX_LINE = 512



class FetcherError(FetchError):
    """A fetcher program failed, hung, or broke the protocol."""


class FetchInterrupted(FetcherError):
    """The process is being interrupted (:func:`interrupt`): the fetcher was stopped, or not started."""


class _Interrupt:
    """The process-wide "stop fetching" switch.

    A signal handler sets it, so it takes no lock: a flag, and one byte written to a pipe whose
    read end every waiting :class:`FetcherRun` watches. The byte is never read, so the pipe
    stays readable and each wait, now or later, returns at once.
    """

    def __init__(self) -> None:
        self.triggered = False
        self.fd, self._write_fd = os.pipe()  # both close-on-exec: no fetcher inherits them
        os.set_blocking(self._write_fd, False)

    def trigger(self) -> None:
        if self.triggered:
            return
        self.triggered = True
        try:
            os.write(self._write_fd, b"!")
        except OSError:
            pass  # full or closed: the flag alone still stops every fetcher at its next tick


_interrupt = _Interrupt()


def interrupt() -> None:
    """Stop every running fetcher in this process and refuse to start new ones.

    Safe to call from a signal handler (it only sets a flag and writes a byte): the threads
    waiting on their fetchers wake, stop them (SIGTERM to the group, SIGKILL after the grace
    period) and raise :class:`FetchInterrupted`, so the work directories are removed as the
    stack unwinds. Meant for shutting the process down; there is no undoing it.
    """
    _interrupt.trigger()


def interrupted() -> bool:
    """True once :func:`interrupt` was called."""
    return _interrupt.triggered


class Fetcher(Record):
    """How to run the fetcher for one URL.

    ``trusted``: treeseed's own fetcher, whose hash is computed while writing, by our code.
    ``builtin_args`` are the built-in fetcher's own arguments (URL, --format, --max-size): it
    is run by forking this process (:func:`treeseed.forking.fork_builtin`), and ``argv`` is
    only the fallback program.
    """

    __slots__ = ("argv", "trusted", "builtin_args")

    def __init__(self, argv: list[str], trusted: bool, builtin_args: list[str] | None = None) -> None:
        self.argv = argv
        self.trusted = trusted
        self.builtin_args = builtin_args


def fetcher_for(url: str, formats: Sequence[str] = (), max_size: int | None = None,
                configured: dict[str, str] | None = None) -> Fetcher:
    """The fetcher for ``url``: a configured command for its scheme, else the built-in one."""
    from .schemes import SCHEMES, SUPPORTED, is_http, scheme_name

    scheme = scheme_name(url)
    command = (configured if configured is not None else _user_config_fetchers()).get(scheme)
    if command:
        return Fetcher(shlex.split(command) + [url], trusted=False)
    # An unknown git+ transport goes to the built-in fetcher, whose git source says which it takes.
    if scheme not in SCHEMES and not scheme.startswith("git+"):
        raise FetchError(f"{url}: no fetcher for scheme {scheme!r}; treeseed fetches {SUPPORTED}, "
                         "and runs a command you configure for others: [fetchers] "
                         f"\"{scheme}\" = \"command ...\" in the treeseed config file")
    args = [url]
    for fmt in formats:
        args += ["--format", fmt]
    if max_size is not None:
        args += ["--max-size", str(max_size)]
    return Fetcher([*builtin_command(site=is_http(url)), *args], trusted=True, builtin_args=args)


def builtin_command(site: bool = False) -> list[str]:
    """The command line of treeseed's own fetcher: ``python -m treeseed.fetcher``, in effect.

    Without ``site`` the interpreter starts with ``-S``: site's pass over the .pth files of
    site-packages (and the imports some of them make) costs more than the ref lookup that
    decides whether an update has anything to do. The fetcher gets this process's ``sys.path``
    instead, so it finds treeseed and its dependencies exactly where this process does (a
    venv, a user site, PYTHONPATH), plus the directory holding treeseed itself for an editable
    install whose .pth or import hook ``-S`` skips. HTTP(S) sources keep site: a .pth may set up
    the TLS trust (a company CA) that Python's own HTTPS then needs; git brings its own TLS.
    The interpreter's flags (-B, -E, -I, -X ...) are passed on as multiprocessing does.
    """
    flags = list(getattr(subprocess, "_args_from_interpreter_flags", list)())
    if not site and "-S" not in flags:
        flags.append("-S")
    bootstrap = (f"import sys; sys.path[:] = {_fetcher_path()!r}; "
                 "from treeseed.fetcher import main; sys.exit(main())")
    return [sys.executable, *flags, "-c", bootstrap]


def _fetcher_path() -> list[str]:
    """This process's ``sys.path`` for the fetcher: absolute, without the current directory
    (the fetcher's is its work directory), and with the directory that holds treeseed."""
    paths: list[str] = []
    for entry in sys.path:
        if isinstance(entry, str) and entry and os.path.abspath(entry) not in paths:
            paths.append(os.path.abspath(entry))
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if here not in paths:  # found through an import hook, which comes after sys.path too
        paths.append(here)
    return paths


class FetcherRun:
    """One running fetcher, started on creation; iterate :meth:`announcements`, then
    :meth:`finish` or :meth:`stop`. ``cancel``, set by another thread, stops the fetcher (the
    swarm won the race for this package)."""

    def __init__(self, fetcher: Fetcher, work: Path, source: str, timeout: float = DEFAULT_TIMEOUT,
                 progress: Callable[[int, int | None], None] | None = None,
                 cancel: threading.Event | None = None) -> None:
        self.fetcher = fetcher
        self.work = work
        self.source = source
        self.timeout = timeout
        self.progress = progress
        self.cancel = cancel
        self.announced: dict[str, str] = {}
        self._start()

    def _start(self) -> None:
        if _interrupt.triggered:  # before anything is opened: nothing to close
            raise FetchInterrupted(f"{self.source}: not started, treeseed is being interrupted")
        fifo = self.work / FIFO_NAME
        os.mkfifo(fifo, 0o600)
        # Both ends held by us: the fetcher can open it whenever it likes, and reads block
        # instead of returning end-of-file while the fetcher has not opened it yet.
        self._read_fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        self._write_fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        self._buffer = b""
        self._log = open(self.work / "fetcher.log", "w+b")
        env = {**os.environ, "TREESEED_HASHES": str(fifo), "TREESEED_FETCH_URL": self.source,
               "TREESEED_PARENT_PID": str(os.getpid()), "PYTHONUNBUFFERED": "1"}
        if not self.fetcher.trusted:
            _load_prctl()
        try:
            if self.fetcher.builtin_args is not None and forking():
                extra = {k: env[k] for k in ("TREESEED_HASHES", "TREESEED_FETCH_URL",
                                             "TREESEED_PARENT_PID")}
                self.proc = fork_builtin(self.fetcher.builtin_args, self.work, extra, self._log)
            else:
                self.proc = subprocess.Popen(
                    self.fetcher.argv, cwd=self.work, env=env, stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=self._log, start_new_session=True,
                    preexec_fn=None if self.fetcher.trusted else _die_with_parent,
                )
        except OSError as exc:
            self.close()
            raise FetcherError(f"{self.source}: cannot start fetcher {self.fetcher.argv[0]!r}: "
                               f"{exc.strerror}") from None
        self._exit_fd = _pidfd(self.proc.pid)  # readable the moment the fetcher exits
        self._deadline = time.monotonic() + self.timeout
        self._stdout_buffer = b""
        self.transferred = 0  # the last byte count the fetcher reported
        os.set_blocking(self.proc.stdout.fileno(), False)  # type: ignore[union-attr]

    def announcements(self) -> Iterator[tuple[str, str]]:
        """Yield (format, value) as the fetcher announces them, until it exits."""
        out_fd: int | None = self.proc.stdout.fileno()  # type: ignore[union-attr]
        exit_fd = self._exit_fd
        while True:
            exited = self.proc.poll() is not None
            watched = [self._read_fd, _interrupt.fd] + [fd for fd in (out_fd, exit_fd)
                                                        if fd is not None]
            ready, _, _ = select.select(watched, [], [], 0 if exited else 0.1)
            if _interrupt.triggered:
                self.stop()
                raise FetchInterrupted(f"{self.source}: interrupted; the fetcher was stopped")
            if exit_fd in ready and self.proc.poll() is None:
                exit_fd = None  # readable yet not reapable (a tracer in between): tick instead
            if out_fd is not None and out_fd in ready and not self._read_stdout(out_fd):
                out_fd = None  # the fetcher closed its stdout
            if self._read_fd in ready:
                yield from self._drain()
            if exited:
                yield from self._drain()
                if out_fd is not None:
                    self._read_stdout(out_fd)
                return
            if self.cancel is not None and self.cancel.is_set():
                self.stop()
                raise FetcherError(f"{self.source}: fetch cancelled (the package arrived "
                                   "from elsewhere first)")
            if time.monotonic() > self._deadline:
                self.stop()
                raise FetcherError(f"{self.source}: the fetcher did not finish within "
                                   f"{self.timeout:.0f} s and was stopped (a hung server? set "
                                   "TREESEED_FETCH_TIMEOUT to allow longer)")

    def _drain(self) -> Iterator[tuple[str, str]]:
        while True:
            try:
                chunk = os.read(self._read_fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            self._buffer += chunk
        while b"\n" in self._buffer:
            raw, self._buffer = self._buffer.split(b"\n", 1)
            yield self._parse(raw)
            self._go_ahead()  # the caller looked the value up and did not stop us
        if len(self._buffer) > MAX_LINE:
            self._protocol_error(self._buffer[:80])

    def _go_ahead(self) -> None:
        """Answer an announcement with ``continue`` on the fetcher's stdin. A fetcher may wait
        for it after an early hash, so that "stop, the cache has it" can never lose a race
        with its next download; one that does not read it loses nothing."""
        stdin = self.proc.stdin
        if stdin is None:
            return
        try:
            stdin.write(b"continue\n")
            stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def _parse(self, raw: bytes) -> tuple[str, str]:
        try:
            line = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            self._protocol_error(raw[:80])
        fmt, _, value = line.partition(" ")
        pattern = FORMATS.get(fmt)
        if pattern is None or not pattern.fullmatch(value):
            self._protocol_error(raw[:80])
        self.announced[fmt] = value
        return fmt, value

    def _protocol_error(self, raw: bytes) -> None:
        self.stop()
        raise FetcherError(f"{self.source}: the fetcher wrote a malformed line to its hashes fifo: "
                           f"{raw!r}; expected '<format> <value>' with format one of "
                           f"{', '.join(FORMATS)} (docs/fetcher-protocol.md)")

    def _read_stdout(self, fd: int) -> bool:
        """Read what the fetcher printed (progress lines); False at end of file."""
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        self._stdout_buffer += chunk
        *lines, self._stdout_buffer = self._stdout_buffer.split(b"\n")
        for line in lines:
            parts = line.split()
            if len(parts) == 3 and parts[0] == b"progress":
                try:
                    done, total = int(parts[1]), None if parts[2] == b"-" else int(parts[2])
                except ValueError:
                    continue
                self.transferred = done
                if self.progress is not None:
                    self.progress(done, total)
        return True

    def finish(self) -> None:
        """Wait for a normal exit; a failure becomes an error quoting the fetcher's stderr."""
        status = self.proc.wait()
        if status != 0:
            raise FetcherError(self._failure(status))

    def _failure(self, status: int) -> str:
        self._log.seek(0)
        lines = [ln for ln in self._log.read().decode("utf-8", "replace").splitlines() if ln.strip()]
        said = [ln.removeprefix("treeseed: error: ") for ln in lines if ln.startswith("treeseed: error: ")]
        if said:
            return said[-1]  # our own fetcher already names the source and the cause
        how = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
        tail = "; it said: " + " | ".join(lines[-3:]) if lines else ""
        return f"{self.source}: the fetcher {how}{tail}"

    def stop(self) -> None:
        """SIGTERM the fetcher's process group, SIGKILL it after a grace period."""
        if self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGTERM)
            if not self._wait_exit(GRACE_SECONDS):
                _signal_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        _signal_group(self.proc.pid, signal.SIGKILL)  # stragglers (git children)
        _wait_group_gone(self.proc.pid)

    def _wait_exit(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the fetcher to exit; True if it did. The pidfd
        wakes us at the exit itself; ``Popen.wait(timeout)`` alone polls with sleeps that
        double up to 50 ms, which a stopped fetcher's few milliseconds would round up."""
        deadline = time.monotonic() + timeout
        if self._exit_fd is not None and self.proc.poll() is None:
            waiter = select.poll()
            waiter.register(self._exit_fd, select.POLLIN)
            waiter.poll(timeout * 1000)
        try:
            self.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return False
        return True

    def close(self) -> None:
        for fd in (self._read_fd, self._write_fd, getattr(self, "_exit_fd", None)):
            if fd is None:
                continue
            try:
                os.close(fd)
            except OSError:
                pass
        self._exit_fd = None
        self._log.close()
        proc = getattr(self, "proc", None)
        for stream in (getattr(proc, "stdin", None), getattr(proc, "stdout", None)):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass


def _user_config_fetchers() -> dict[str, str]:
    """The ``[fetchers]`` of the user config file ($TREESEED_CONFIG), when the caller passed none."""
    from .configfile import fetchers

    return fetchers()


def _wait_group_gone(pgid: int, limit: float = 5.0) -> None:
    """Wait (bounded) until no live process of the fetcher's group is left, so none can write
    into the work directory while it is being removed. Zombies count as gone: they write
    nothing, and in a container without a proper init they may linger for seconds."""
    deadline = time.monotonic() + limit
    delay = 0.0005
    while time.monotonic() < deadline and _live_members(pgid):
        time.sleep(delay)
        delay = min(delay * 2, 0.01)


def _pidfd(pid: int) -> int | None:
    """A descriptor that becomes readable when ``pid`` exits (Linux 5.3+), else None."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _live_members(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True  # no /proc: trust killpg
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        # after the command name: state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


_prctl = None  # resolved before any fork (_load_prctl): the child side must only make the call


def _load_prctl() -> None:
    """Look up prctl(2) for :func:`_die_with_parent`; ctypes is imported only for configured
    fetchers, never on the way to the built-in one."""
    global _prctl
    if _prctl is None:
        try:
            import ctypes

            _prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            _prctl = False


def _die_with_parent() -> None:
    """In a configured fetcher's child, before exec: SIGKILL it if the cache process dies
    (Linux PR_SET_PDEATHSIG). treeseed's own fetcher arranges this itself, with a SIGTERM it
    handles to stop its git commands."""
    if _prctl:
        _prctl(1, signal.SIGKILL)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
