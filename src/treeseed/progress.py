"""How a dependency fetch looks to a person: a live display on a terminal, plain lines otherwise.

:func:`reporter` returns a :class:`~treeseed.deps.Events` sink plus a context manager. On a
terminal, rich draws one bar per package in flight and a total line (packages, bytes, rate);
elsewhere (CI logs, pipes) each finished package is one line on stderr. Both end with the same
summary. rich is imported only when a terminal will show it.
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


def _plain(summary: Summary) -> Events:
    def finished(resolved: Resolved) -> None:
        summary.add(resolved)
        if not resolved.cached:
            size = f", {human(resolved.transferred)}" if resolved.transferred else ""
            print(f"fetched {resolved.name} {resolved.hash}{size} from {resolved.url}",
                  file=sys.stderr)

    def failed(dep: Dependency, url: str, why: str) -> None:
        print(f"warning: {dep.name}: {why}; trying the next URL", file=sys.stderr)

    return Events(finished=finished, failed_url=failed)


@contextmanager
def _live(summary: Summary) -> Iterator[Events]:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    bars = Progress(TextColumn("{task.description:<28}"), BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), transient=True)
    overall = bars.add_task("packages: 0 done", total=None)
    tasks: dict[str, int] = {}
    moved: dict[str, int] = {}  # bytes per package, summed into the total line
    lock = threading.Lock()

    def started(dep: Dependency, url: str) -> None:
        with lock:
            if dep.name not in tasks:
                tasks[dep.name] = bars.add_task(dep.name, total=None)

    def progress(dep: Dependency, done: int, total: int | None) -> None:
        with lock:
            if dep.name in tasks:
                bars.update(tasks[dep.name], completed=done, total=total)
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
        bars.console.print(f"[yellow]warning[/]: {dep.name}: {why}; trying the next URL")

    with bars:
        yield Events(started=started, progress=progress, finished=finished, failed_url=failed)
