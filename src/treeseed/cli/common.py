"""What the command modules share: the cache, settings and limits a command's options ask for,
quiet and verbose output and the --offline rule.

Nothing heavy is imported here at module level: the library is imported inside each helper,
when a command calls it.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from ..errors import TreeseedError
from ..ids import ALL_FORMATS as ALL_FORMATS  # the --format choices, without importing hashers

if TYPE_CHECKING:
    from ..cache import Cache
    from ..config import Settings
    from ..unpack import Limits


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
