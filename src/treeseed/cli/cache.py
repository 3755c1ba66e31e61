"""``treeseed cache list | verify | rm | gc``: inspecting and maintaining the cache
(:class:`treeseed.cache.Cache`)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from ..errors import TreeseedError
from .common import is_quiet, open_cache, plural, say


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    cache = sub.add_parser("cache", parents=[common], help="inspect and maintain the cache")
    csub = cache.add_subparsers(metavar="ACTION")
    p = csub.add_parser("list", parents=[common], help="list cached packages")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_cache_list)
    p = csub.add_parser("verify", parents=[common], help="re-hash packages, report corruption")
    p.add_argument("hashes", nargs="*", metavar="HASH")
    p.add_argument("--repair", action="store_true",
                   help="remove corrupt packages and fetch them again from where they came from")
    p.set_defaults(run=cmd_cache_verify)
    p = csub.add_parser("rm", parents=[common], help="remove packages")
    p.add_argument("hashes", nargs="+", metavar="HASH")
    p.set_defaults(run=cmd_cache_rm)
    p = csub.add_parser("gc", parents=[common],
                        help="remove packages unused for a while and stale temporary files")
    p.add_argument("--older-than", default="30d",
                   help="unused for this long: 90s, 45m, 12h, 30d (default 30d); 0 removes all")
    p.add_argument("--dry-run", action="store_true")
    p.set_defaults(run=cmd_cache_gc)
    cache.set_defaults(run=lambda a: cache.print_help() or 2)


def cmd_cache_list(args: argparse.Namespace) -> int:
    packages = open_cache(args).list()
    if args.json:
        print(json.dumps([p.as_dict() for p in packages], indent=2))
        return 0
    for p in packages:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(p.last_used))
        label = f"{p.name} {p.version or ''}".strip() if p.name else (p.source or "")
        print(f"{p.hash}  {human(p.size):>9}  {p.files:>7} files  {used}  {label}")
    if not is_quiet(args):
        total = sum(p.size for p in packages)
        print(f"{plural(len(packages), 'package')}, {human(total)}", file=sys.stderr)
    return 0


def cmd_cache_verify(args: argparse.Namespace) -> int:
    from ..cache import NOT_CACHED

    bad = 0
    checked = 0
    cache = open_cache(args)
    for package_hash, problem in cache.verify(args.hashes):
        checked += 1
        if problem == NOT_CACHED:
            bad += 1
            print(f"MISSING {package_hash}: not in the cache")
        elif problem:
            bad += 1
            done = (cache.repair(package_hash, problem) if args.repair else
                    f"run 'treeseed cache verify --repair {package_hash}' to fetch it again")
            print(f"CORRUPT {package_hash}: {problem}; {done}")
        else:
            say(args, f"ok {package_hash}")
    if not is_quiet(args):
        print(f"{checked} checked, {bad} corrupt", file=sys.stderr)
    return 1 if bad else 0


def cmd_cache_rm(args: argparse.Namespace) -> int:
    cache = open_cache(args)
    missing = [h for h in args.hashes if not cache.remove(h)]
    for h in missing:
        print(f"treeseed: {h} is not in the cache", file=sys.stderr)
    return 1 if missing else 0


def cmd_cache_gc(args: argparse.Namespace) -> int:
    seconds = parse_duration(args.older_than)
    removed, stale = open_cache(args).gc(seconds, args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for h in removed:
        print(f"{verb} {h}")
    for path in stale:
        print(f"{verb} {path}")
    if not is_quiet(args):
        print(f"{len(removed)} packages, {len(stale)} temporary entries {verb}", file=sys.stderr)
    return 0


def parse_duration(text: str) -> float:
    """--older-than: 90s, 45m, 12h, 30d, 2w; a bare number is seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    raw = text.strip().lower()
    unit = raw[-1] if raw[-1:] in units else "s"
    number = raw[:-1] if raw[-1:] in units else raw
    try:
        return float(number) * units[unit]
    except ValueError:
        raise TreeseedError(f"--older-than {text!r}: not a duration (examples: 90s, 12h, 30d)") from None


def human(n: int) -> str:
    """Sizes in binary units (KiB, MiB, GiB), as the cache listing shows them."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
