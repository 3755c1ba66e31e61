"""``treeseed build --watch``: rebuild when a file the build depends on changes.

What is watched: ``build.py``, ``treeseed.toml`` and every file the package's own rules keep.
The snapshot is taken *after* each build, so what the build itself writes (its outputs) never
triggers the next one. Polling (a stat of each watched file twice a second) rather than
inotify: a source package is small, and polling behaves the same on every platform and
filesystem, network mounts included. Ctrl-C stops it cleanly.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .errors import TreeseedError

POLL_SECONDS = 0.5
SETTLE_SECONDS = 0.2  # editors write in several steps: wait for the tree to stop changing


CONFIG_FILES = ("build.py", "treeseed.toml")


def snapshot(root: Path, only: tuple[str, ...] | None = None) -> dict[str, tuple[int, int]]:
    """(mtime_ns, size) of each watched file (or just ``only``); a vanished file counts as a
    change."""
    from .package import scan_tree
    from .rules import rules_for

    paths = set(only or CONFIG_FILES)
    if only is None:
        try:
            paths |= {e.path for e in scan_tree(root, str(root), rules_for(root))}
        except TreeseedError:
            pass  # a broken manifest: watch it until it is fixed
    out: dict[str, tuple[int, int]] = {}
    for rel in paths:
        try:
            st = os.lstat(root / rel)
        except OSError:
            continue
        out[rel] = (st.st_mtime_ns, st.st_size)
    return out


def changed(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> list[str]:
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def watch(root: Path, build: Callable[[], None], quiet: bool = False) -> int:
    """Build, then rebuild after every change, until interrupted; returns 130 on Ctrl-C."""
    say = (lambda text: None) if quiet else (lambda text: print(text, file=sys.stderr, flush=True))
    try:
        while True:
            scripts = snapshot(root, only=CONFIG_FILES)  # a build never writes these
            try:
                build()
                status = "build done; watching for changes (Ctrl-C to stop)"
            except TreeseedError as exc:
                say(f"treeseed: error: {exc}")
                status = "watching for changes (Ctrl-C to stop)"
            before = snapshot(root)  # before saying so: an edit seen after the message counts
            edited = changed(scripts, snapshot(root, only=CONFIG_FILES))
            if edited:  # saved while the build ran: it must not become the new baseline
                say(f"treeseed: changed: {', '.join(edited)} (while building)")
                continue
            say(f"treeseed: {status}")
            while True:
                time.sleep(POLL_SECONDS)
                now = snapshot(root)
                diff = changed(before, now)
                if diff:
                    time.sleep(SETTLE_SECONDS)
                    say(f"treeseed: changed: {', '.join(diff[:5])}{' ...' if len(diff) > 5 else ''}")
                    break
    except KeyboardInterrupt:
        say("treeseed: watch stopped")
        return 130
