"""``treeseed nix prefetch``: treeseed as the fetcher for Nix (:mod:`treeseed.interop.nix`)."""

from __future__ import annotations

import argparse
import sys

from .common import is_offline, is_quiet, limits_for, open_cache, refuse_network


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    nix = sub.add_parser("nix", parents=[common], help="Nix hashes of a URL, fetched through treeseed")
    nsub = nix.add_subparsers(metavar="ACTION")
    p = nsub.add_parser("prefetch", parents=[common],
                        help="print what nix-prefetch-url prints (nix32), then the SRI form")
    p.add_argument("url", help="http(s)://, file:// URL or a local path")
    p.add_argument("--unpack", action="store_true",
                   help="the NAR hash of the unpacked archive (fetchzip), not of the file (fetchurl)")
    p.add_argument("--max-size", help="refuse archives that unpack past this size (e.g. 16G)")
    p.set_defaults(run=cmd_nix_prefetch, fetches=True)
    nix.set_defaults(run=lambda a: nix.print_help() or 2)


def cmd_nix_prefetch(args: argparse.Namespace) -> int:
    from ..config import fetchers as configured_fetchers
    from ..interop.nix import prefetch
    from ..schemes import absolute

    if is_offline(args):
        refuse_network(args.url)
    url = absolute(args.url)  # a local path: the fetcher runs in its work directory
    result = prefetch(url, open_cache(args), args.unpack, limits_for(args), configured_fetchers())
    print(result.nix32)
    print(result.sri)
    if result.note and not is_quiet(args):
        print(f"treeseed: note: {result.note}", file=sys.stderr)
    return 0
