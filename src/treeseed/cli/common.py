"""What the command modules share: the cache, settings and limits a command's options ask for,
quiet and verbose output, the --offline rule and the download progress display.

Nothing heavy is imported here at module level: the library is imported inside each helper,
when a command calls it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import TreeseedError

if TYPE_CHECKING:
    from ..cache import Cache
    from ..config import Settings
    from ..progress import StallWatch
    from ..unpack import Limits

ALL_FORMATS = ("bt2", "zig", "nar", "git", "swhid", "archive-sha256")


def positive_int(text: str) -> int:
    """argparse type for -j/--jobs: a pool of no workers would wait forever, and a traceback
    is no way to say so."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give 1 or more") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be 1 or more (how many run at once)")
    return value


def open_cache(args: argparse.Namespace) -> Cache:
    """The cache --cache-dir names (else $TREESEED_CACHE_DIR, else the user cache directory)."""
    from ..cache import Cache

    return Cache(getattr(args, "cache_dir", None))


def settings_for(args: argparse.Namespace) -> Settings:
    """The user's settings with this command's --torrent / --no-torrent applied."""
    from ..config import settings

    return settings().with_overrides(torrent=getattr(args, "torrent", None))


def limits_for(args: argparse.Namespace) -> Limits:
    """Unpacking limits: --max-size, else $TREESEED_MAX_UNPACK_SIZE, else the default."""
    from ..unpack import Limits, parse_size

    raw = getattr(args, "max_size", None)
    return Limits.from_env(parse_size(raw) if raw else None)


def is_quiet(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "quiet", False))


def say(args: argparse.Namespace, text: str) -> None:
    """A line on stderr with -v only."""
    if getattr(args, "verbose", 0):
        print(text, file=sys.stderr)


def is_offline(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "offline", False)) or os.environ.get("TREESEED_OFFLINE") == "1"


def refuse_network(url: str) -> None:
    """--offline: a network URL is an error."""
    from ..schemes import is_network

    if is_network(url):
        raise TreeseedError(f"{url}: --offline forbids the network; use a local path, or a "
                            "package already in the cache")


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class DownloadProgress:
    """A rich progress bar on a terminal for large downloads, and on any stderr a line when the
    download receives nothing for a while (so a quiet server is not silence); -q: nothing."""

    THRESHOLD = 4 << 20

    def __init__(self, args: argparse.Namespace) -> None:
        self.enabled = not is_quiet(args)
        self.bar_allowed = sys.stderr.isatty() and not getattr(args, "json", False)
        self.label = str(getattr(args, "url", None) or "the download")
        self._bar = None
        self._task = None
        self._stalls: StallWatch | None = None

    def __enter__(self) -> Callable[[int, int | None], None] | None:
        if not self.enabled:
            return None
        from ..progress import StallWatch

        self._stalls = StallWatch()
        self._stalls.start(self.label)
        return self.update

    def update(self, done: int, total: int | None) -> None:
        self._notice_stall(done)
        if not self.bar_allowed:
            return
        if self._bar is None:
            if (total or done) < self.THRESHOLD:
                return
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._bar = Progress(TextColumn("downloading"), BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), TimeRemainingColumn(), transient=True)
            self._bar.start()
            self._task = self._bar.add_task("download", total=total)
        self._bar.update(self._task, completed=done, total=total)

    def _notice_stall(self, done: int) -> None:
        assert self._stalls is not None
        quiet = self._stalls.update(self.label, done)
        if quiet is None:
            return
        line = f"treeseed: {self._stalls.notice(self.label, quiet, done)}"
        if self._bar is not None:
            self._bar.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=sys.stderr, flush=True)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
