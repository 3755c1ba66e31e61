"""How a dependency fetch looks to a person: a live display on a terminal, plain lines otherwise.

:func:`reporter` returns a :class:`~treeseed.deps.Events` sink plus a context manager. On a
terminal, rich draws one bar per package in flight and a total line (packages, bytes, rate);
elsewhere (CI logs, pipes) each finished package is one line on stderr. Both end with the same
summary. rich is imported only when a terminal will show it.

A download that receives nothing for a while (:class:`StallWatch`) is said so: a plain line
``waiting for NAME: nothing received for N s ...`` off a terminal, the bar's label on one, so a
quiet server is not silence until it is given up.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from .deps import Events, Resolved
from .manifest import Dependency


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class StallWatch:
    """Notices downloads whose byte count stops growing.

    Fed every progress report (the HTTP source repeats its last count every few seconds while
    it waits), it answers how long a key has gone without new bytes once that passes the
    notice threshold, and then again each time it doubles: a few lines over a long wait, not
    one per report. The threshold is a quarter of the stall budget, at most 10 s, so the
    notice always comes well before the download is given up.
    """

    def __init__(self) -> None:
        self._since: dict[str, tuple[int, float, float]] = {}  # key -> (bytes, since, notice at)
        self._first: float | None = None
        self._lock = threading.Lock()

    def start(self, key: str) -> None:
        """A download of ``key`` begins (it may stall before its first progress report)."""
        with self._lock:
            self._since[key] = (0, time.monotonic(), 0.0)

    def update(self, key: str, done: int) -> float | None:
        """Record ``done`` bytes for ``key``; the seconds without news if a notice is due."""
        now = time.monotonic()
        with self._lock:
            last, since, due = self._since.get(key) or (-1, now, 0.0)
            if done != last:
                self._since[key] = (done, now, 0.0)
                return None
            quiet = now - since
            if quiet < max(due, self._threshold()):
                return None
            self._since[key] = (last, since, 2 * quiet)
            return quiet

    def silence(self, key: str) -> float:
        """Seconds ``key`` has gone without new bytes, when past the notice threshold; else 0."""
        with self._lock:
            state = self._since.get(key)
        quiet = time.monotonic() - state[1] if state else 0.0
        return quiet if state and quiet >= self._threshold() else 0.0

    def forget(self, key: str) -> None:
        with self._lock:
            self._since.pop(key, None)

    def budget(self) -> float:
        from .sources.http import stall_budget

        return stall_budget()

    def _threshold(self) -> float:
        if self._first is None:  # read on the first download: a cached run never needs it
            self._first = min(10.0, self.budget() / 4)
        return self._first

    def notice(self, name: str, quiet: float, done: int) -> str:
        """The plain line for a download ``quiet`` seconds without news."""
        return (f"waiting for {name}: nothing received for {quiet:.0f} s ({human(done)} so far); "
                f"it is given up after {self.budget():g} s of silence (TREESEED_STALL_TIMEOUT)")


class Summary:
    """Counts what a run did, for the closing line."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.fetched: list[Resolved] = []
        self.cached: list[Resolved] = []
        self._lock = threading.Lock()

    def add(self, resolved: Resolved) -> None:
        with self._lock:
            (self.cached if resolved.cached else self.fetched).append(resolved)

    def line(self) -> str:
        total = len(self.fetched) + len(self.cached)
        moved = sum(r.transferred for r in self.fetched)
        took = time.monotonic() - self.start
        noun = "dependency" if total == 1 else "dependencies"
        return (f"{total} {noun}: {len(self.fetched)} fetched ({human(moved)}), "
                f"{len(self.cached)} already cached, in {took:.2f} s")


@contextmanager
def reporter(quiet: bool = False, force_plain: bool = False) -> Iterator[tuple[Events, Summary]]:
    """Yield (events, summary); prints progress while the block runs, the summary after."""
    summary = Summary()
    if quiet:
        yield Events(finished=summary.add), summary
        return
    if sys.stderr.isatty() and not force_plain:
        with _live(summary) as events:
            yield events, summary
    else:
        yield _plain(summary), summary
    print(summary.line(), file=sys.stderr)


def _interrupted() -> bool:
    """Whether the process is being interrupted: the fetches then fail one after another, and
    a warning for each would bury the one line that says so."""
    fetchers = sys.modules.get("treeseed.fetchers")
    return fetchers is not None and fetchers.interrupted()


def _plain(summary: Summary) -> Events:
    stalls = StallWatch()

    def started(dep: Dependency, url: str) -> None:
        stalls.start(dep.name)

    def progress(dep: Dependency, done: int, total: int | None) -> None:
        quiet = stalls.update(dep.name, done)
        if quiet is not None:
            print(stalls.notice(dep.name, quiet, done), file=sys.stderr, flush=True)

    def finished(resolved: Resolved) -> None:
        summary.add(resolved)
        stalls.forget(resolved.name)
        if not resolved.cached:
            size = f", {human(resolved.transferred)}" if resolved.transferred else ""
            print(f"fetched {resolved.name} {resolved.hash}{size} from {resolved.url}",
                  file=sys.stderr)

    def failed(dep: Dependency, url: str, why: str) -> None:
        if not _interrupted():
            print(f"warning: {dep.name}: {why}; trying the next URL", file=sys.stderr)

    return Events(started=started, progress=progress, finished=finished, failed_url=failed)


@contextmanager
def _live(summary: Summary) -> Iterator[Events]:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    bars = Progress(TextColumn("{task.description:<28}"), BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), transient=True)
    overall = bars.add_task("packages: 0 done", total=None)
    tasks: dict[str, int] = {}
    moved: dict[str, int] = {}  # bytes per package, summed into the total line
    lock = threading.Lock()
    stalls = StallWatch()

    def started(dep: Dependency, url: str) -> None:
        stalls.start(dep.name)
        with lock:
            if dep.name not in tasks:
                tasks[dep.name] = bars.add_task(dep.name, total=None)

    def progress(dep: Dependency, done: int, total: int | None) -> None:
        stalls.update(dep.name, done)
        quiet = stalls.silence(dep.name)
        with lock:
            if dep.name in tasks:
                label = f"{dep.name} (silent {quiet:.0f} s)" if quiet else dep.name
                bars.update(tasks[dep.name], completed=done, total=total, description=label)
            moved[dep.name] = done
            bars.update(overall, completed=sum(moved.values()))

    def finished(resolved: Resolved) -> None:
        summary.add(resolved)
        with lock:
            task = tasks.pop(resolved.name, None)
            if task is not None:
                bars.remove_task(task)
            if not resolved.cached:
                bars.console.print(f"fetched [bold]{resolved.name}[/] {resolved.hash}")
            count = len(summary.fetched) + len(summary.cached)
            bars.update(overall, description=f"packages: {count} done, {len(tasks)} in flight")

    def failed(dep: Dependency, url: str, why: str) -> None:
        if not _interrupted():
            bars.console.print(f"[yellow]warning[/]: {dep.name}: {why}; trying the next URL")

    with bars:
        yield Events(started=started, progress=progress, finished=finished, failed_url=failed)
