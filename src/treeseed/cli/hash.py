"""``treeseed hash``: every hash format of a directory or an archive."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import ALL_FORMATS, limits_for, open_cache


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("hash", parents=[common], help="print the hashes of a directory or archive")
    p.add_argument("path", type=Path, help="a directory or an archive")
    p.add_argument("--format", action="append", choices=ALL_FORMATS, dest="formats",
                   help="format(s) to print (default bt2; repeatable)")
    p.add_argument("--json", action="store_true", help="print every format as one JSON object")
    p.add_argument("--max-size", help="refuse archives that unpack past this size (e.g. 16G)")
    p.set_defaults(run=cmd_hash)


def cmd_hash(args: argparse.Namespace) -> int:
    from ..fetch import hash_path

    formats = list(ALL_FORMATS) if args.json else (args.formats or ["bt2"])
    if args.json and not _is_archive(args.path):
        formats.remove("archive-sha256")
    report = hash_path(args.path, open_cache(args), formats, limits_for(args),
                       skip_unavailable=args.json)
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
        for fmt, problem in report.errors.items():
            print(f"treeseed: warning: no {fmt} hash: {problem}", file=sys.stderr)
        return 0
    for fmt in formats:
        value = report.hashes[fmt]
        print(value if len(formats) == 1 else f"{fmt}\t{value}")
    return 0


def _is_archive(path: Path) -> bool:
    return path.exists() and not path.is_dir()
