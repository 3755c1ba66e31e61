"""``treeseed update`` (re-resolve and re-pin dependencies) and ``treeseed path`` (where a pinned
dependency is in the cache)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..errors import TreeseedError
from .common import is_offline, is_quiet, open_cache, positive_int, settings_for


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser,
             torrent: argparse.ArgumentParser) -> None:
    p = sub.add_parser("update", parents=[common, torrent],
                       help="re-resolve dependencies' sources and record their new hashes")
    p.add_argument("names", nargs="*", metavar="NAME", help="dependencies to update (default: all)")
    p.add_argument("--dry-run", action="store_true", help="show what would change; write nothing")
    p.add_argument("--json", action="store_true")
    p.add_argument("-j", "--jobs", type=positive_int, default=4, help="dependencies resolved at once")
    p.set_defaults(run=cmd_update, fetches=True)

    p = sub.add_parser("path", parents=[common], help="print the cache path of a dependency")
    p.add_argument("name")
    p.set_defaults(run=cmd_path)


def cmd_update(args: argparse.Namespace) -> int:
    from ..deps import find_package
    from ..update import table, update

    root = find_package(Path.cwd())
    cache = open_cache(args)
    rows = update(root, cache, args.names, args.dry_run, is_offline(args), args.jobs)
    if getattr(args, "torrent", None) is not False and settings_for(args).torrent:
        from ..swarm.client import notify_added

        for row in rows:  # new packages are seeded at once by a running seeder
            if row.changed and row.new:
                notify_added(cache, row.new)
    if args.json:
        print(json.dumps([r.as_json() for r in rows], indent=2))
    elif not is_quiet(args):
        print(table(rows))
        changed = sum(r.changed for r in rows)
        verb = "would change" if args.dry_run else "changed"
        print(f"{changed} of {len(rows)} {verb}", file=sys.stderr)
    failed = [r for r in rows if r.error]
    return 1 if failed else 0


def cmd_path(args: argparse.Namespace) -> int:
    from ..deps import find_package
    from ..manifest import MANIFEST_NAME, load

    package = os.environ.get("TREESEED_PACKAGE_DIR")  # inside a command build
    root = Path(package) if package else find_package(Path.cwd())
    manifest = load(root / MANIFEST_NAME)
    dep = manifest.dependencies.get(args.name)
    if dep is None:
        raise TreeseedError(f"{manifest.path}: no dependency named {args.name!r}; it declares "
                            f"{', '.join(sorted(manifest.dependencies)) or 'none'}")
    cache = open_cache(args)
    if not dep.hash:
        raise TreeseedError(f"{manifest.path}:{dep.line}: dependency {args.name!r} has no hash "
                            "yet; run 'treeseed update' to pin it")
    if cache.has(dep.hash):
        print(cache.path(dep.hash))
        return 0
    if dep.lazy:
        from ..build_command import MISS_STATUS, record_miss

        if record_miss(args.name):
            print(f"treeseed: lazy dependency {args.name!r} is not fetched yet; the build runner "
                  "will fetch it and run the build again", file=sys.stderr)
        else:
            print(f"treeseed: lazy dependency {args.name!r} ({dep.hash}) is not in the cache; "
                  f"fetch it with 'treeseed build --fetch' or 'treeseed fetch --lazy'",
                  file=sys.stderr)
        return MISS_STATUS
    raise TreeseedError(f"dependency {args.name!r} ({dep.hash}) is not in the cache; run "
                        "'treeseed fetch' first")
