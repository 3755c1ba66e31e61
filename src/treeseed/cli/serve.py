"""``treeseed serve``: the cache as a content-addressed HTTP mirror (:mod:`treeseed.serve`)."""

from __future__ import annotations

import argparse

from .common import is_quiet, open_cache


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("serve", parents=[common],
                       help="serve the cache over HTTP: a content-addressed mirror (docs/serve.md)")
    p.add_argument("--bind", default=None, metavar="HOST:PORT",
                   help="where to listen (default 127.0.0.1:8750; port 0 picks a free one)")
    p.set_defaults(run=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; both end it normally (exit 0)."""
    from ..serve import DEFAULT_BIND, serve

    serve(open_cache(args).root, args.bind or DEFAULT_BIND, quiet=is_quiet(args))
    return 0
