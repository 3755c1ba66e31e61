"""``treeseed build``: configure, fetch what this configuration needs, run steps
(:mod:`treeseed.runner`)."""

from __future__ import annotations

import argparse
import os

from ..errors import TreeseedError
from .common import is_offline, is_quiet, open_cache, positive_int, settings_for


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser,
             torrent: argparse.ArgumentParser) -> None:
    p = sub.add_parser("build", parents=[common, torrent],
                       help="configure (fetching what this configuration needs) and run steps")
    p.add_argument("steps", nargs="*", metavar="STEP", help="steps to run (default: the default step)")
    p.add_argument("-D", dest="defines", action="append", default=[], metavar="NAME=VALUE",
                   help="set a build option (repeatable)")
    p.add_argument("--fetch", nargs="?", const="needed", metavar="needed|all",
                   help="configure and fetch only: what this configuration needs (default), or all")
    p.add_argument("--list", action="store_true", help="show the options and steps; fetch nothing")
    p.add_argument("--watch", action="store_true",
                   help="keep running: rebuild when build.py, treeseed.toml or a package file changes")
    p.add_argument("-j", "--jobs", type=positive_int, default=os.cpu_count() or 2,
                   help="steps and packages at once")
    p.set_defaults(run=cmd_build, fetches=True)


def cmd_build(args: argparse.Namespace) -> int:
    from ..runner import BuildRequest, options_help, run

    if args.fetch not in (None, "needed", "all"):  # `--fetch player`: a step, not a mode
        args.steps.insert(0, args.fetch)
        args.fetch = "needed"
    overrides = {}
    for define in args.defines:
        name, sep, value = define.partition("=")
        if not sep or not name:
            raise TreeseedError(f"-D{define}: write -Dname=value; {options_help(open_cache(args))}")
        overrides[name] = value
    request = BuildRequest(steps=args.steps, overrides=overrides, fetch=args.fetch,
                           list_only=args.list, watch=args.watch, jobs=args.jobs,
                           offline=is_offline(args), quiet=is_quiet(args), settings=settings_for(args))
    return run(open_cache(args), request)
