"""``treeseed nix prefetch``, ``nix key`` and ``nix import``: treeseed as the fetcher and the
binary cache of Nix (:mod:`treeseed.interop.nix`, :mod:`treeseed.interop.nixkey`,
:mod:`treeseed.interop.niximport`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import is_offline, is_quiet, limits_for, open_cache, refuse_network


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    nix = sub.add_parser("nix", parents=[common],
                         help="Nix hashes of a URL, and treeseed as a Nix binary cache")
    nsub = nix.add_subparsers(metavar="ACTION")
    p = nsub.add_parser("prefetch", parents=[common],
                        help="print what nix-prefetch-url prints (nix32), then the SRI form")
    p.add_argument("url", help="http(s)://, file:// URL or a local path")
    p.add_argument("--unpack", action="store_true",
                   help="the NAR hash of the unpacked archive (fetchzip), not of the file (fetchurl)")
    p.add_argument("--name", help="the store path name to offer it under in 'treeseed serve' "
                                  "(default: the URL's last component, as nix-prefetch-url names it)")
    p.add_argument("--max-size", help="refuse archives that unpack past this size (e.g. 16G)")
    p.set_defaults(run=cmd_nix_prefetch, fetches=True)
    p = nsub.add_parser("key", parents=[common],
                        help="print the public key 'treeseed serve' signs narinfos with "
                             "(NAME:BASE64, for trusted-public-keys); made on first use")
    p.set_defaults(run=cmd_nix_key)
    p = nsub.add_parser("import", parents=[common],
                        help="take fixed-output sources from a Nix store (/nix/store/...-source) "
                             "into the cache, so 'treeseed serve' and the swarm can offer them")
    p.add_argument("paths", nargs="+", metavar="PATH", help="store paths (directories or files)")
    p.add_argument("--share", action="store_true",
                   help="publish them (seed, serve): store paths come from this machine and "
                        "may be private (a flake's own source), so this is never the default")
    p.set_defaults(run=cmd_nix_import)
    nix.set_defaults(run=lambda a: nix.print_help() or 2)


def cmd_nix_prefetch(args: argparse.Namespace) -> int:
    from ..config import fetchers as configured_fetchers
    from ..interop.nix import prefetch
    from ..schemes import absolute

    if is_offline(args):
        refuse_network(args.url)
    url = absolute(args.url)  # a local path: the fetcher runs in its work directory
    result = prefetch(url, open_cache(args), args.unpack, limits_for(args), configured_fetchers(),
                      name=args.name)
    print(result.nix32)
    print(result.sri)
    if result.note and not is_quiet(args):
        print(f"treeseed: note: {result.note}", file=sys.stderr)
    return 0


def cmd_nix_key(args: argparse.Namespace) -> int:
    from ..interop.nixkey import key_path, load_or_create

    existed = key_path().exists()
    key = load_or_create()
    print(key.public)
    if not existed and not is_quiet(args):
        print(f"treeseed: made a new Nix signing key in {key.path} (keep it private; add the "
              "line above to trusted-public-keys in nix.conf)", file=sys.stderr)
    return 0


def cmd_nix_import(args: argparse.Namespace) -> int:
    """Import each path; report each on one line, and every failure together at the end."""
    from ..errors import TreeseedError
    from ..interop.niximport import import_path

    cache = open_cache(args)
    failures = []
    for raw in args.paths:
        try:
            done = import_path(Path(raw).absolute(), cache, share=args.share)
        except TreeseedError as exc:
            failures.append(str(exc))
            continue
        print(f"{done.package}\t{done.store_path}")
    if not args.share and len(failures) < len(args.paths) and not is_quiet(args):
        print("treeseed: note: not published: store paths may hold private sources; run "
              "'treeseed nix import --share' for those 'treeseed serve' may offer", file=sys.stderr)
    if failures:
        raise TreeseedError(f"{len(failures)} of {len(args.paths)} store paths not imported:\n"
                            + "\n".join(f"  {f}" for f in failures))
    return 0
