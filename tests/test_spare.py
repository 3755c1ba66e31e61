"""The spare fetcher (treeseed.forking): forked when ``treeseed fetch URL`` starts, it imports
the pipeline while the cache process opens the cache, then runs the fetch it is handed.

Each case runs in a small program of its own (``python -c``), so the process that forks is a
fresh one with no threads, as the ``treeseed`` command is; what the spare did is read from the
program's output and from /proc, never timed. Waits are on a pidfd (readable the moment a
process exits), bounded only to fail instead of hanging.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_cli, tar_gz

BOUND = 60.0

pytestmark = pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs pidfd_open (Linux)")

#: Runs ``treeseed`` in this process, recording every fork it makes and every job handed to a
#: spare, and prints them as JSON after the command's own output.
RECORDING_CLI = """
import json, os, sys
from treeseed import forking

forks, handed = [], []
real_fork = os.fork

def fork():
    pid = real_fork()
    if pid:
        forks.append(pid)
    return pid

os.fork = fork
real_start = forking.Spare.start

def start(self, *args):
    started = real_start(self, *args)
    handed.append([self.pid, started.pid if started else None])
    return started

forking.Spare.start = start
{before}
from treeseed.cli import main
status = main(sys.argv[1:])
print(json.dumps({{"status": status, "forks": forks, "handed": handed}}))
"""


def recording_cli(cache: Path, *args: str, before: str = "") -> dict:
    proc = subprocess.run([sys.executable, "-c", RECORDING_CLI.format(before=before),
                           "--cache-dir", str(cache), *args],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])
    report["stderr"] = proc.stderr
    return report


def wait_exit(pid: int, bound: float = BOUND) -> bool:
    """True once ``pid`` has exited (a zombie counts: it runs nothing), False after ``bound``."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], bound)[0])
    finally:
        os.close(fd)


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    path = tmp_path / "pkg-1.0.tar.gz"
    path.write_bytes(tar_gz({"README": b"spare\n", "src/a.c": b"int a;\n" * 500}, "pkg-1.0"))
    return path


def test_the_fetch_runs_in_the_spare(archive: Path, cache_dir: Path) -> None:
    """One fork in all (the spare, made before the cache is opened), and the fetch it was
    handed gives the same package as hashing the archive."""
    report = recording_cli(cache_dir, "fetch", "--json", archive.as_uri())
    assert report["status"] == 0, report["stderr"]
    assert len(report["forks"]) == 1, report
    spare = report["forks"][0]
    assert report["handed"] == [[spare, spare]]
    fetched = json.loads(run_cli("fetch", "--json", archive.as_uri(), cache=cache_dir).stdout)
    expected = run_cli("hash", str(archive), cache=cache_dir).stdout.split()[0]
    assert fetched["hash"] == expected
    assert (Path(fetched["path"]) / "src" / "a.c").read_bytes() == b"int a;\n" * 500


def test_a_dead_spare_is_replaced_by_a_fork(archive: Path, cache_dir: Path) -> None:
    """A spare that died before its job (killed, out of memory) costs nothing but a fork."""
    kill_it = (f"forking.fork_spare({archive.as_uri()!r})\n"
               "import signal\n"
               "os.kill(forks[0], signal.SIGKILL); os.waitpid(forks[0], 0)\n")
    report = recording_cli(cache_dir, "fetch", "-q", archive.as_uri(), before=kill_it)
    assert report["status"] == 0, report["stderr"]
    dead, fetcher = report["forks"]
    assert report["handed"] == [[dead, None]]
    assert list((cache_dir / "p").iterdir())


def test_the_fetchers_errors_come_through_the_spare(tmp_path: Path, cache_dir: Path) -> None:
    """The spare writes to the fetch's log as a forked fetcher would: its error is the command's."""
    bad = tmp_path / "broken.tar.gz"
    bad.write_bytes(tar_gz({"a": b"x" * 4096}, "broken")[:-64])  # truncated
    proc = run_cli("fetch", bad.as_uri(), cache=cache_dir, check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("treeseed: error: ") and "broken.tar.gz" in proc.stderr, proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert list((cache_dir / "tmp").glob("w-*")) == []


SPARE_NOT_TAKEN = """
import os, sys
from treeseed import forking
sys.stdout.write("once")  # still in this process's buffer: stdout is a pipe
forking.fork_spare("file:///nowhere.tar.gz")
spare = forking.take_spare()
print(spare.pid, end=" ", flush=True)
{then}
"""


def test_a_spare_nobody_takes_exits_and_writes_nothing(tmp_path: Path) -> None:
    """Released, it reads end-of-file and leaves at once; it never flushes what the parent
    had buffered when it was forked (the output would appear twice)."""
    then = ("import select\n"
            "fd = os.pidfd_open(spare.pid)\n"
            "spare.discard()\n"
            "print('exited' if select.select([fd], [], [], 60)[0] else 'still running')\n")
    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    proc = subprocess.run([sys.executable, "-c", SPARE_NOT_TAKEN.format(then=then)],
                          capture_output=True, text=True, timeout=600, env=buffered)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("once") and proc.stdout.split()[-1] == "exited", proc.stdout
    assert proc.stdout.count("once") == 1, proc.stdout


def test_a_spare_dies_with_its_parent(tmp_path: Path) -> None:
    """The cache process killed outright: the spare sees its job pipe close and exits too."""
    then = "import signal\nos.kill(os.getpid(), signal.SIGKILL)\n"
    proc = subprocess.run([sys.executable, "-c", SPARE_NOT_TAKEN.format(then=then)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr
    spare = int(proc.stdout.removeprefix("once").split()[0])
    assert wait_exit(spare), f"spare {spare} outlived its parent"


def test_no_spare_when_the_fetcher_is_a_program(archive: Path, cache_dir: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """``TREESEED_FETCHER=spawn`` runs ``python -m treeseed.fetcher``: nothing is forked."""
    monkeypatch.setenv("TREESEED_FETCHER", "spawn")
    report = recording_cli(cache_dir, "fetch", "-q", archive.as_uri())
    assert report["status"] == 0, report["stderr"]
    assert report["forks"] == [] and report["handed"] == []


HOLDING = """
import os, sys
from treeseed import forking
forking.fork_spare("file:///nowhere.tar.gz")
spare = forking.take_spare()  # kept, with its job pipe open: the spare waits on
print(spare.pid, flush=True)
os.close(1)
os.close(2)
sys.stdin.read()  # until the test lets it go
"""


def test_a_spare_holds_none_of_the_callers_pipes() -> None:
    """A program reading treeseed's output sees it end when treeseed is done with it, not when
    a spare still waiting for its job is: the spare holds none of the standard streams."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDING], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out = _read_to_end(proc.stdout.fileno())  # type: ignore[union-attr]
        assert out is not None, "stdout never ended: the spare holds it"
        spare = int(out)
        assert _read_to_end(proc.stderr.fileno()) == b""  # type: ignore[union-attr]
        assert not wait_exit(spare, bound=0), "the spare should still be waiting for its job"
        assert {_fd_target(spare, fd) for fd in (0, 1, 2)} == {os.devnull}
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait(timeout=BOUND)
    assert wait_exit(spare)


def _read_to_end(fd: int) -> bytes | None:
    """Everything up to end of file, or None if it has not ended within BOUND."""
    data = b""
    while select.select([fd], [], [], BOUND)[0]:
        chunk = os.read(fd, 4096)
        if not chunk:
            return data
        data += chunk
    return None


def _fd_target(pid: int, fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return None  # it has exited
