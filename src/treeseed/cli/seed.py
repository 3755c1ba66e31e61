"""``treeseed seed`` (with ``--share``, ``status``, ``stop``) and ``treeseed stats``: this cache's
seeder (:mod:`treeseed.swarm`)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from ..errors import TreeseedError
from .common import is_quiet, open_cache, settings_for


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser,
             torrent: argparse.ArgumentParser) -> None:
    seed = sub.add_parser("seed", parents=[common, torrent],
                          help="run this cache's seeder: seed every public package to the swarm")
    seed.add_argument("--detach", action="store_true", help="run in the background")
    seed.add_argument("--share", action="append", default=[], metavar="HASH",
                      help="publish this package although it came from a local path (adds it to "
                           "the 'share' setting, tells a running seeder, and exits)")
    seed.add_argument("--status-bind", default="127.0.0.1:0", metavar="HOST:PORT",
                      help="where the status page listens (default: a free port on 127.0.0.1)")
    seed.set_defaults(run=cmd_seed)
    ssub = seed.add_subparsers(metavar="ACTION")
    p = ssub.add_parser("status", parents=[common], help="is a seeder running, and what it does")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_seed_status)
    p = ssub.add_parser("stop", parents=[common], help="stop this cache's seeder")
    p.set_defaults(run=cmd_seed_stop)

    p = sub.add_parser("stats", parents=[common], help="packages by bytes uploaded to the swarm")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_stats)


def cmd_seed(args: argparse.Namespace) -> int:
    """Seed in the foreground until SIGINT/SIGTERM or `treeseed seed stop`."""
    from ..swarm.client import run_detached
    from ..swarm.seeder import Seeder, install_signal_handlers

    cache = open_cache(args)
    if args.share:
        return _share(cache, args.share)
    settings = settings_for(args)
    if args.detach:
        extra = ["--status-bind", args.status_bind]
        if args.torrent is not None:
            extra.insert(0, "--torrent" if args.torrent else "--no-torrent")
        status = run_detached(cache, extra)
        print(f"seeder running (pid {status['pid']}) for {cache.root}; {status['seeding']} "
              f"packages; listen port {status['listen_port']}")
        return 0
    log = None if is_quiet(args) else (lambda line: print(f"treeseed: {line}", file=sys.stderr, flush=True))
    seeder = Seeder(cache, settings, args.status_bind, log)
    install_signal_handlers(seeder)
    seeder.run()
    return 0


def _share(cache, hashes: list[str]) -> int:  # type: ignore[no-untyped-def]
    """``treeseed seed --share HASH``: the user says a local package may be published."""
    from ..config import add_shared
    from ..ids import is_bt2
    from ..swarm.client import notify_added

    for package_hash in hashes:
        if not is_bt2(package_hash):
            raise TreeseedError(f"--share {package_hash!r}: give a package's bt2 hash "
                                "('treeseed cache list' shows them)")
    add_shared(hashes)
    for package_hash in hashes:
        notify_added(cache, package_hash)
        print(f"shared {package_hash}" + ("" if cache.has(package_hash) else " (not in the cache yet)"))
    return 0


def cmd_seed_status(args: argparse.Namespace) -> int:
    from ..swarm.client import SeederClient, read_info

    cache = open_cache(args)
    client = SeederClient.connect(cache)
    if client is None:
        print(f"no seeder runs for {cache.root}; start one with 'treeseed seed --detach'")
        return 3
    with client:
        status = client.call({"op": "status"})
    info = read_info(cache) or {}
    if args.json:
        print(json.dumps({**status, "status_url": info.get("status_url")}, indent=2))
        return 0
    from ..progress import human

    print(f"seeder pid {status['pid']} for {status['cache']}: {status['seeding']} packages "
          f"({human(status['cache_bytes'])}), {status['peers']} peers, listen port "
          f"{status['listen_port']}, {'announcing' if status['announcing'] else 'not announcing yet'}")
    print(f"status page: {info.get('status_url')}")
    return 0


def cmd_seed_stop(args: argparse.Namespace) -> int:
    from ..swarm.client import stop_running

    pid = stop_running(open_cache(args))
    if pid is None:
        print("no seeder was running")
        return 0
    if not is_quiet(args):
        print(f"stopped the seeder (pid {pid})")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from ..progress import human
    from ..swarm.client import seed_dir
    from ..swarm.stats import Stats

    cache = open_cache(args)
    store = Stats(seed_dir(cache))
    rows = store.all()
    store.close()
    for row in rows:
        info = cache.info(row.hash) if (cache.root / "index.sqlite").exists() else None
        row.size, row.name = (info.size, info.name) if info else (None, None)
    if args.json:
        print(json.dumps([r.as_json() for r in rows], indent=2))
        return 0
    if not rows:
        print("nothing uploaded yet")
        return 0
    print(f"{'package':<71} {'name':<16} {'uploaded':>10} {'peers':>5} {'copies':>7}  last served")
    for r in rows:
        last = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.last_served)) if r.last_served else "-"
        copies = f"{r.copies:.2f}" if r.copies is not None else "-"
        print(f"{r.hash:<71} {(r.name or '-'):<16} {human(r.uploaded):>10} {r.peers:>5} {copies:>7}  {last}")
    return 0
