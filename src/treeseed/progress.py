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
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # a single fetch's display (FetchProgress) needs neither
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
        from .deps import Events

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
    from .deps import Events

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

    from .deps import Events

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


class FetchProgress:
    """The display of one fetch (``treeseed fetch URL``, ``add``, ``zig add``), named after the
    package it brings.

    Used as a context manager, it yields the ``progress`` callback a fetch takes (None when
    ``quiet``: ``-q`` or ``--json``, nothing is printed at all). On a terminal a rich bar,
    labelled with the name, appears once a download passes :attr:`BAR_AT` bytes; when the
    bytes are all in, the label says the archive is being unpacked and hashed, with the time
    it has taken so far. Elsewhere (CI logs, pipes) a plain line comes every ``interval``
    seconds (``TREESEED_PROGRESS_INTERVAL``, default 5) for as long as the work lasts, so a
    long fetch is never silence until its end; a fetch shorter than that prints nothing.

    The fetcher reports bytes only while it downloads; afterwards it unpacks and hashes
    without reporting (docs/fetcher-protocol.md has no such line yet), so that phase is
    recognised by all bytes being in, or by reports having stopped (a live download reports
    at least every few seconds, even a silent one).
    """

    BAR_AT = 4 << 20
    INTERVAL_VARIABLE = "TREESEED_PROGRESS_INTERVAL"

    def __init__(self, name: str, quiet: bool = False, terminal: bool | None = None,
                 interval: float | None = None, stream=None,  # type: ignore[no-untyped-def]
                 source: str | None = None) -> None:
        self.name = name
        self.source = source or name  # what a stall notice names: the URL being waited for
        self._told: tuple[int, bool] | None = None  # what the last plain line said
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = self.stream.isatty() if terminal is None else terminal
        self._interval = interval
        self._done = 0
        self._total: int | None = None
        self._started = time.monotonic()
        self._last_report: float | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stalls = StallWatch()
        self._bar = None
        self._task = None

    # --------------------------------------------------------------- the context manager

    def __enter__(self):  # type: ignore[no-untyped-def]
        if self.quiet:
            return None
        self._started = time.monotonic()
        self._stalls.start(self.source)
        self._thread = threading.Thread(target=self._tick_loop, name="treeseed-progress",
                                        daemon=True)
        self._thread.start()
        return self.update

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._bar is not None:
            self._bar.stop()

    # --------------------------------------------------------------- reports and ticks

    def update(self, done: int, total: int | None) -> None:
        """A byte count from the fetch (also repeated while a download waits)."""
        with self._lock:
            self._done, self._total = done, total
            self._last_report = time.monotonic()
        quiet = self._stalls.update(self.source, done)
        if quiet is not None:
            self._say(f"treeseed: {self._stalls.notice(self.source, quiet, done)}")
        if self.terminal and (self._bar is not None or (total or done) >= self.BAR_AT):
            self._draw()

    def tick(self) -> None:
        """What one interval shows: the bar's label on a terminal, a plain line elsewhere.

        A plain line only when there is news (more bytes, or unpacking going on): a download
        that receives nothing is the stall notice's to report (:class:`StallWatch`).
        """
        if self.terminal:
            if self._bar is not None:
                self._draw()
            return
        with self._lock:
            done = self._done
        unpacking = self.unpacking()
        if (done, unpacking) == self._told and not unpacking:
            return
        if done == 0 and not unpacking:
            return  # not one byte yet: nothing to say that the stall notice will not
        self._told = (done, unpacking)
        self._say(f"treeseed: {self.line()}")

    def line(self) -> str:
        """``fetching NAME: 12.0 MB of 40.0 MB (30%), 6 s`` or, once the bytes are in,
        ``fetching NAME: 40.0 MB downloaded; unpacking and hashing, 9 s``."""
        with self._lock:
            done, total = self._done, self._total
        took = f"{time.monotonic() - self._started:.0f} s"
        if self.unpacking():
            return f"fetching {self.name}: {human(done)} downloaded; unpacking and hashing, {took}"
        if total:
            return (f"fetching {self.name}: {human(done)} of {human(total)} "
                    f"({100 * done // total}%), {took}")
        return f"fetching {self.name}: {human(done)} so far, {took}"

    def unpacking(self) -> bool:
        """Whether the download is over and the archive is being unpacked and hashed."""
        from .sources.http import HEARTBEAT

        with self._lock:
            done, total, last = self._done, self._total, self._last_report
        if total is not None and done >= total:
            return True
        return last is not None and done > 0 and time.monotonic() - last > 2 * HEARTBEAT

    def interval(self) -> float:
        if self._interval is None:
            from .env import env_seconds

            self._interval = env_seconds(self.INTERVAL_VARIABLE, 5.0)
        return self._interval

    def _tick_loop(self) -> None:
        while not self._stop.wait(self.interval()):
            self.tick()

    def _say(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self.stream, flush=True)

    def _draw(self) -> None:
        with self._lock:
            done, total = self._done, self._total
        if self._bar is None:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TransferSpeedColumn,
            )

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), TimeElapsedColumn(), transient=True,
                                 console=Console(file=self.stream))
            self._bar.start()
            self._task = self._bar.add_task(f"downloading {self.name}", total=total)
        label = (f"{self.name}: unpacking and hashing" if self.unpacking()
                 else f"downloading {self.name}")
        self._bar.update(self._task, completed=done, total=total, description=label)
