"""``treeseed zig fetch`` and ``treeseed zig add``: treeseed as the fetcher for Zig
(:mod:`treeseed.interop.zig`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import (
    is_offline,
    is_quiet,
    open_cache,
    plural,
    positive_int,
    settings_for,
)

ZIG_VERSIONS = ("auto", "0.14", "0.15", "0.16", "0.17")


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser,
             torrent: argparse.ArgumentParser) -> None:
    zig = sub.add_parser("zig", parents=[common], help="fetch a Zig project's dependencies for zig build")
    zsub = zig.add_subparsers(metavar="ACTION")
    p = zsub.add_parser("fetch", parents=[common, torrent],
                        help="fetch, verify and place the build.zig.zon dependencies where Zig looks")
    p.add_argument("--fetch", dest="fetch_mode", choices=("needed", "all"), default="needed",
                   help="needed: skip lazy dependencies (default); all: fetch them too")
    _where_zig_looks(p)
    p.add_argument("-j", "--jobs", type=positive_int, default=4,
                   help="packages fetched at once (default 4)")
    p.add_argument("--json", action="store_true", help="print what was placed as JSON")
    p.set_defaults(run=cmd_zig_fetch, fetches=True)

    p = zsub.add_parser("add", parents=[common, torrent],
                        help="what 'zig fetch --save' does, through treeseed: fetch, place, and "
                             "write .url and .hash into build.zig.zon, keeping its comments")
    p.add_argument("url", help="the package's URL (http(s)://, git+https://...#ref, file://, or "
                               "a local path)")
    p.add_argument("--name", help="dependency name (default: the package's .name, else the "
                                  "package's own name or its URL's)")
    p.add_argument("--lazy", action="store_true", help="write .lazy = true")
    _where_zig_looks(p)
    p.add_argument("--json", action="store_true", help="print what was added as JSON")
    p.set_defaults(run=cmd_zig_add, fetches=True)
    zig.set_defaults(run=lambda a: zig.print_help() or 2)


def _where_zig_looks(p: argparse.ArgumentParser) -> None:
    """The options both actions take to find where the Zig that will build looks for packages."""
    p.add_argument("--zig-version", default="auto", choices=ZIG_VERSIONS,
                   help="the Zig that will build (auto: ask 'zig version')")
    p.add_argument("--global-cache-dir", type=Path,
                   help="Zig's global cache (default: $ZIG_GLOBAL_CACHE_DIR, else Zig's default)")
    p.add_argument("--pkg-dir", type=Path,
                   help="Zig 0.16+: the project's package directory (default: zig-pkg)")


def cmd_zig_fetch(args: argparse.Namespace) -> int:
    from ..config import fetchers as configured_fetchers
    from ..interop.zig import ZigFetch, detect_version, layout_for

    project = Path.cwd()
    version = detect_version() if args.zig_version == "auto" else args.zig_version
    layout = layout_for(version, project, args.global_cache_dir, args.pkg_dir)
    current = settings_for(args)
    job = ZigFetch(open_cache(args), layout, args.fetch_mode, is_offline(args), args.jobs,
                   configured_fetchers(), current.mirrors, current)
    placed = job.run(project)
    if args.json:
        print(json.dumps([p.as_json() for p in placed], indent=2))
    elif not is_quiet(args):
        for p in placed:
            print(f"{p.hash}\t{p.path}")
        new = sum(p.status == "placed" for p in placed)
        where = layout.pkg_dir or layout.global_cache / "p"
        print(f"{plural(len(placed), 'package')} for Zig {version} in {where}: {new} placed, "
              f"{len(placed) - new} already there", file=sys.stderr)
    return 0


def cmd_zig_add(args: argparse.Namespace) -> int:
    from ..interop.zig import detect_version, layout_for, zig_add
    from .fetch import display

    project = Path.cwd()
    version = detect_version() if args.zig_version == "auto" else args.zig_version
    layout = layout_for(version, project, args.global_cache_dir, args.pkg_dir)
    with display(args) as progress:
        added = zig_add(project, args.url, open_cache(args), layout, settings_for(args),
                        args.name, args.lazy, is_offline(args), progress)
    if args.json:
        print(json.dumps(added.as_json(), indent=2))
    elif not is_quiet(args):
        print(f"{added.hash}\t{added.path}")
        print(f"{added.status} {added.name} in {project / 'build.zig.zon'} for Zig {version}",
              file=sys.stderr)
    return 0
