"""``treeseed fetch`` (a URL, a hash, or the package's dependencies) and ``treeseed add``."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..errors import TreeseedError
from .common import (
    ALL_FORMATS,
    is_offline,
    is_quiet,
    limits_for,
    open_cache,
    positive_int,
    refuse_network,
    settings_for,
)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser,
             torrent: argparse.ArgumentParser) -> None:
    p = sub.add_parser("fetch", parents=[common, torrent],
                       help="fetch a package into the cache, or (no URL) this package's dependencies")
    p.add_argument("url", nargs="?",
                   help="http(s)://, file://, git+...:// URL, a local path (archive or directory), "
                        "or a package hash bt2-<hex> (from mirrors, then the swarm), or another "
                        "tool's hash of it: zig, Nix NAR (sha256-...) or store path, git tree, "
                        "swh:1:dir (found through the index, mirrors and DHT, then verified); "
                        "ipfs://CID or a bare CIDv1: the IPFS gateways, then the same; "
                        "without it: "
                        "every non-lazy dependency of the package here, and theirs")
    p.add_argument("--lazy", action="store_true",
                   help="without URL: also fetch the package's own lazy dependencies")
    p.add_argument("-j", "--jobs", type=positive_int, default=4,
                   help="packages fetched at once (default 4)")
    p.add_argument("--hash", dest="expected", help="expected bt2 hash: refuse anything else")
    p.add_argument("--format", action="append", choices=ALL_FORMATS, dest="formats", default=[],
                   help="also compute and record this format (repeatable)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--max-size", help="refuse archives that unpack past this size (e.g. 16G)")
    p.set_defaults(run=cmd_fetch, fetches=True)

    p = sub.add_parser("add", parents=[common, torrent],
                       help="fetch a package and add it to treeseed.toml with its hash")
    p.add_argument("url", help="the dependency's URL (or a local path)")
    p.add_argument("--name", help="dependency name (default: the package's own name, else the URL's)")
    p.add_argument("--lazy", action="store_true", help="mark it lazy: fetched only when a build asks")
    p.add_argument("--mirror", action="append", default=[], dest="mirrors",
                   help="another URL serving the same package (repeatable)")
    p.set_defaults(run=cmd_add, fetches=True)


def display(args: argparse.Namespace, name: str | None = None):  # type: ignore[no-untyped-def]
    """The progress display of one fetch, named after the package (:class:`FetchProgress`);
    quiet with -q and with --json."""
    from ..naming import name_from_url
    from ..progress import FetchProgress

    label = name or (args.url if args.url.startswith("bt2-") else name_from_url(args.url))
    return FetchProgress(label, quiet=is_quiet(args) or bool(getattr(args, "json", False)),
                         source=args.url)


def cmd_fetch(args: argparse.Namespace) -> int:
    if args.url is None:
        return cmd_fetch_dependencies(args)
    from ..ids import is_bt2

    alias = None if args.url.startswith("ipfs://") else _other_hash(args.url)
    if is_bt2(args.url):
        result = _fetch_by_hash(args)
    elif (args.url.startswith("ipfs://") or (alias and alias[0] == "ipfs")) and not args.expected:
        result = _fetch_by_cid(args, args.url if alias is None else f"ipfs://{alias[1]}")
    elif alias is not None:
        result = _fetch_by_alias(args, *alias)
    else:
        if is_offline(args) and not (args.expected and open_cache(args).has(args.expected)):
            refuse_network(args.url)
        result = _fetch_pinned(args) if args.expected else _fetch_url(args)
    if args.json:
        print(json.dumps(result.as_json(), indent=2))
    elif not is_quiet(args):
        print(f"{result.hash}\t{result.path}")
        for fmt in args.formats:
            if fmt in result.formats:
                print(f"{fmt}\t{result.formats[fmt]}")
    return 0


def _fetch_url(args: argparse.Namespace):
    """``treeseed fetch URL``: from that URL alone. Its fetcher is forked first, to import
    the pipeline on the other core while this process opens the cache (:mod:`treeseed.forking`).
    Without --max-size the fetcher reads TREESEED_MAX_UNPACK_SIZE itself: this process then
    never imports the unpacker, which only the fetcher runs."""
    from ..forking import discard_spare, fork_spare

    fork_spare(args.url)
    try:
        from ..fetch import fetch

        limits = limits_for(args) if args.max_size else None
        with display(args) as progress:
            return fetch(args.url, open_cache(args), None, args.formats, limits, progress)
    finally:
        discard_spare()


def _fetch_pinned(args: argparse.Namespace):
    """``treeseed fetch URL --hash H``: had like any pinned package (:func:`treeseed.locate.obtain`:
    the cache, the mirrors, the URL and, torrenting on, the swarm), so an origin that is down
    is no reason to fail when the package can be had elsewhere."""
    from ..ids import is_bt2
    from ..install import cached_result
    from ..locate import AllSourcesFailed, announce_new, obtain

    if not is_bt2(args.expected):
        raise TreeseedError(f"--hash {args.expected!r} is not a treeseed hash (bt2- and 64 hex digits)")
    cache, settings = open_cache(args), settings_for(args)
    with display(args) as progress:
        try:
            result = obtain(cache, args.expected, [args.url], settings, offline=is_offline(args),
                            progress=progress, limits=limits_for(args))
        except AllSourcesFailed as failed:
            if len(failed.reasons) == 1 and len(failed.errors) == 1:
                raise failed.errors[0] from None  # the URL was the only source: its own words
            raise
    announce_new(cache, result, settings)
    if args.formats:
        result = cached_result(cache, result.hash, result.source, args.formats)
    return result


def _fetch_by_hash(args: argparse.Namespace):
    """``treeseed fetch bt2-<hex>``: the cache, then the mirrors, then (torrenting on) the swarm."""
    from ..install import cached_result
    from ..locate import announce_new, obtain

    cache, settings = open_cache(args), settings_for(args)
    if not cache.has(args.url) and not settings.mirrors and not settings.torrent:
        raise TreeseedError(f"{args.url} is not in the cache, and with only a hash there is "
                            "nowhere to ask: list a mirror ('treeseed config set mirrors URL') "
                            "or turn the swarm on (--torrent, or 'treeseed config set torrent on')")
    with display(args) as progress:
        result = obtain(cache, args.url, [], settings, offline=is_offline(args), progress=progress)
    announce_new(cache, result, settings)
    if args.formats:
        result = cached_result(cache, result.hash, result.source, args.formats)
    return result


def _other_hash(text: str) -> tuple[str, str] | None:
    """(format, value) when ``text`` is another tool's hash of a tree (not a URL or an
    existing path): :func:`treeseed.swarm.aliases.parse_hash`."""
    if "://" in text or os.path.lexists(text):
        return None
    from ..swarm.aliases import parse_hash

    return parse_hash(text)


def _fetch_by_cid(args: argparse.Namespace, url: str):
    """``treeseed fetch ipfs://<cid>`` (or a bare CIDv1): the IPFS gateways, then the
    package's ipfs alias among treeseed mirrors and peers (:func:`treeseed.locate.obtain_by_cid`)."""
    from ..install import cached_result
    from ..locate import announce_new, obtain_by_cid

    cache, settings = open_cache(args), settings_for(args)
    limits = limits_for(args) if args.max_size else None
    with display(args) as progress:
        result = obtain_by_cid(cache, url, settings, offline=is_offline(args), progress=progress,
                               limits=limits)
    announce_new(cache, result, settings)
    if args.formats:
        result = cached_result(cache, result.hash, result.source, args.formats)
    return result


def _fetch_by_alias(args: argparse.Namespace, fmt: str, value: str):
    """``treeseed fetch HASH`` with a Zig, Nix (NAR or store path), git tree or SWHID hash:
    the cache's index, the mirrors, then the DHT name the package, which is then fetched by
    its bt2 hash and verified against the hash given (:func:`treeseed.locate.obtain_by_alias`)."""
    from ..install import cached_result
    from ..locate import announce_new, obtain_by_alias

    cache, settings = open_cache(args), settings_for(args)
    with display(args) as progress:
        result = obtain_by_alias(cache, fmt, value, settings, offline=is_offline(args),
                                 progress=progress)
    announce_new(cache, result, settings)
    if args.formats:
        result = cached_result(cache, result.hash, result.source, args.formats)
    return result


def cmd_fetch_dependencies(args: argparse.Namespace) -> int:
    """``treeseed fetch`` in a package: every non-lazy dependency, transitively."""
    from ..config import fetchers as configured_fetchers
    from ..deps import Resolver, base_url_of, find_package
    from ..manifest import MANIFEST_NAME, load
    from ..progress import reporter

    root = find_package(Path.cwd())
    manifest = load(root / MANIFEST_NAME)
    with reporter(quiet=is_quiet(args) or args.json) as (events, _summary):
        resolver = Resolver(open_cache(args), offline=is_offline(args), jobs=args.jobs,
                            events=events, fetchers=configured_fetchers(manifest.fetchers),
                            settings=settings_for(args))
        resolved = resolver.fetch_all(manifest, base_url_of(root), include_lazy=args.lazy)
    if args.json:
        print(json.dumps([r.as_json() for r in resolved], indent=2))
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    from ..add import add
    from ..deps import find_package

    root = find_package(Path.cwd())
    with display(args) as progress:
        added = add(root, args.url, open_cache(args), settings_for(args), args.name, args.lazy,
                    args.mirrors, is_offline(args), progress)
    if not is_quiet(args):
        print(f"added {added.dependency.name} {added.result.hash} to {added.manifest}")
    return 0
