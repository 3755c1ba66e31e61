"""The ``treeseed`` command: argument parsing and printing, nothing more.

Each subcommand is a few lines that call the library (:mod:`treeseed.fetch`,
:mod:`treeseed.cache`) and print its result. Heavy modules are imported inside the command
that needs them, so a no-op run costs little more than starting Python. Every
:class:`~treeseed.errors.TreeseedError` becomes one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from .errors import TreeseedError

if TYPE_CHECKING:
    from .progress import StallWatch

ALL_FORMATS = ("bt2", "zig", "nar", "git", "swhid", "archive-sha256")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    if getattr(args, "directory", None) is not None:
        try:
            os.chdir(args.directory)
        except OSError as exc:
            return _fail(args, f"-C {args.directory}: {exc.strerror}", "directory")
    if getattr(args, "fetches", False):
        _stop_on_signals()
    try:
        status = args.run(args) or 0
    except TreeseedError as exc:
        return _fail(args, str(exc), type(exc).__name__, _details(exc))
    except KeyboardInterrupt as exc:
        return _interrupted(args, getattr(exc, "signum", signal.SIGINT))
    except BrokenPipeError:
        return 1
    if status == 130 and _signals_seen and _signals_seen[0] != signal.SIGINT:
        return 128 + _signals_seen[0]  # a command that catches the interrupt itself (--watch)
    return status


def _fail(args: argparse.Namespace, message: str, what: str,
          details: dict[str, object] | None = None) -> int:
    """Report an error: one line on stderr; with --json also a JSON object on stdout, so a
    tool reading the output gets something it can parse instead of nothing."""
    print(f"treeseed: error: {message}", file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps({"error": message, "what": what, **(details or {})}), flush=True)
    return 1


#: Attributes of an error worth giving a tool reading --json (HashMismatch, ManifestError, ...).
_DETAILS = ("source", "expected", "actual", "path", "line", "key", "entry", "problem")


def _details(exc: BaseException) -> dict[str, object]:
    return {k: getattr(exc, k) for k in _DETAILS
            if isinstance(getattr(exc, k, None), str | int) and not isinstance(getattr(exc, k), bool)}


def _interrupted(args: argparse.Namespace, signum: int) -> int:
    """Exit 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM), after one line."""
    name = signal.Signals(signum).name
    message = (f"interrupted by {name}; the fetches in progress were stopped and their partial "
               "downloads removed")
    print(f"treeseed: {message}", file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps({"error": message, "what": name}), flush=True)
    return 128 + signum


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived: raised in the main thread, so everything unwinds (and the
    work directories are removed) as for Ctrl-C. ``signum`` decides the exit status."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_signals_seen: list[int] = []


def _stop_on_signals() -> None:
    """SIGINT and SIGTERM, for commands that fetch: stop every running fetcher at once
    (:func:`treeseed.fetchers.interrupt`; the threads waiting on them wake and unwind, removing
    their work directories), then raise :class:`Interrupted` in the main thread. SIGTERM's
    default would kill us on the spot and leave ``tmp/w-*`` behind. A second signal while
    that cleanup runs exits at once: the user insists, and gc collects what is left."""

    def on_signal(signum: int, frame: object) -> None:
        fetchers = sys.modules.get("treeseed.fetchers")  # not imported: no fetcher runs
        if fetchers is not None:
            fetchers.interrupt()
        _signals_seen.append(signum)
        if len(_signals_seen) > 1:
            os._exit(128 + _signals_seen[0])
        raise Interrupted(signum)

    # Both are set even when inherited as ignored (a job runner starting us in the background
    # ignores SIGINT), as serve does: whoever sends one means it.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)


def positive_int(text: str) -> int:
    """argparse type for -j/--jobs: a pool of no workers would wait forever, and a traceback
    is no way to say so."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give 1 or more") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be 1 or more (how many run at once)")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse with treeseed's one-line errors: the usage block argparse prints first buries
    the line that says what is wrong, so it points to --help instead."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cache-dir", type=Path, default=argparse.SUPPRESS,
                        help="cache root (default: $TREESEED_CACHE_DIR or the user cache dir)")
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS)
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS)
    common.add_argument("-C", dest="directory", type=Path, default=argparse.SUPPRESS,
                        help="run as if started in this directory")
    common.add_argument("--offline", action="store_true", default=argparse.SUPPRESS,
                        help="use no network at all (local paths and file:// still work)")

    torrent = argparse.ArgumentParser(add_help=False)
    flag = torrent.add_mutually_exclusive_group()
    flag.add_argument("--torrent", dest="torrent", action="store_true", default=None,
                      help="fetch from and seed to the BitTorrent swarm this time "
                           "('treeseed config set torrent on' keeps it on)")
    flag.add_argument("--no-torrent", dest="torrent", action="store_false",
                      help="no swarm this time, whatever the settings say")

    parser = _Parser(
        prog="treeseed", parents=[common],
        description="Fetch source packages by content hash into a verified global cache.",
    )
    sub = parser.add_subparsers(metavar="COMMAND")

    p = sub.add_parser("hash", parents=[common], help="print the hashes of a directory or archive")
    p.add_argument("path", type=Path, help="a directory or an archive")
    p.add_argument("--format", action="append", choices=ALL_FORMATS, dest="formats",
                   help="format(s) to print (default bt2; repeatable)")
    p.add_argument("--json", action="store_true", help="print every format as one JSON object")
    p.add_argument("--max-size", help="refuse archives that unpack past this size (e.g. 16G)")
    p.set_defaults(run=cmd_hash)

    p = sub.add_parser("fetch", parents=[common, torrent],
                       help="fetch a package into the cache, or (no URL) this package's dependencies")
    p.add_argument("url", nargs="?",
                   help="http(s)://, file://, git+...:// URL, a local path (archive or directory), "
                        "or a package hash bt2-<hex> (from mirrors, then the swarm); without it: "
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

    p = sub.add_parser("serve", parents=[common],
                       help="serve the cache over HTTP: a content-addressed mirror (docs/serve.md)")
    p.add_argument("--bind", default=None, metavar="HOST:PORT",
                   help="where to listen (default 127.0.0.1:8750; port 0 picks a free one)")
    p.set_defaults(run=cmd_serve)

    _add_interop_parsers(sub, common, torrent)

    config = sub.add_parser("config", parents=[common], help="show and change settings")
    xsub = config.add_subparsers(metavar="ACTION")
    p = xsub.add_parser("list", parents=[common], help="every setting, its value and its default")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_config_list)
    p = xsub.add_parser("get", parents=[common], help="print one setting")
    p.add_argument("key")
    p.set_defaults(run=cmd_config_get)
    p = xsub.add_parser("set", parents=[common], help="change a setting (lists: comma-separated)")
    p.add_argument("key")
    p.add_argument("value")
    p.set_defaults(run=cmd_config_set)
    p = xsub.add_parser("unset", parents=[common], help="return a setting to its default")
    p.add_argument("key")
    p.set_defaults(run=cmd_config_unset)
    config.set_defaults(run=lambda a: config.print_help() or 2)

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
    return parser


# ----------------------------------------------------------------------------- helpers


def _cache(args: argparse.Namespace):
    from .cache import Cache

    return Cache(getattr(args, "cache_dir", None))


def _settings(args: argparse.Namespace):
    """The user's settings with this command's --torrent / --no-torrent applied."""
    from .config import settings

    return settings().with_overrides(torrent=getattr(args, "torrent", None))


def _limits(args: argparse.Namespace):
    from .unpack import Limits, parse_size

    raw = getattr(args, "max_size", None)
    return Limits.from_env(parse_size(raw) if raw else None)


def _quiet(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "quiet", False))


def _say(args: argparse.Namespace, text: str) -> None:
    if getattr(args, "verbose", 0):
        print(text, file=sys.stderr)


# ----------------------------------------------------------------------------- commands


def cmd_hash(args: argparse.Namespace) -> int:
    from .fetch import hash_path

    formats = list(ALL_FORMATS) if args.json else (args.formats or ["bt2"])
    if args.json and not _is_archive(args.path):
        formats.remove("archive-sha256")
    report = hash_path(args.path, _cache(args), formats, _limits(args), skip_unavailable=args.json)
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


def cmd_fetch(args: argparse.Namespace) -> int:
    if args.url is None:
        return cmd_fetch_dependencies(args)
    from .fetch import fetch
    from .ids import is_bt2

    if is_bt2(args.url):
        result = _fetch_by_hash(args)
    else:
        if _offline(args) and not (args.expected and _cache(args).has(args.expected)):
            _refuse_network(args.url)
        if args.expected:
            result = _fetch_pinned(args)
        else:
            with _progress(args) as progress:
                result = fetch(args.url, _cache(args), None, args.formats, _limits(args), progress)
    if args.json:
        print(json.dumps(result.as_json(), indent=2))
    elif not _quiet(args):
        print(f"{result.hash}\t{result.path}")
        for fmt in args.formats:
            if fmt in result.formats:
                print(f"{fmt}\t{result.formats[fmt]}")
    return 0


def _fetch_pinned(args: argparse.Namespace):
    """``treeseed fetch URL --hash H``: had like any pinned package (:func:`treeseed.locate.obtain`:
    the cache, the mirrors, the URL and, torrenting on, the swarm), so an origin that is down
    is no reason to fail when the package can be had elsewhere."""
    from .ids import is_bt2
    from .install import cached_result
    from .locate import AllSourcesFailed, announce_new, obtain

    if not is_bt2(args.expected):
        raise TreeseedError(f"--hash {args.expected!r} is not a treeseed hash (bt2- and 64 hex digits)")
    cache, settings = _cache(args), _settings(args)
    with _progress(args) as progress:
        try:
            result = obtain(cache, args.expected, [args.url], settings, offline=_offline(args),
                            progress=progress, limits=_limits(args))
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
    from .install import cached_result
    from .locate import announce_new, obtain

    cache, settings = _cache(args), _settings(args)
    if not cache.has(args.url) and not settings.mirrors and not settings.torrent:
        raise TreeseedError(f"{args.url} is not in the cache, and with only a hash there is "
                            "nowhere to ask: list a mirror ('treeseed config set mirrors URL') "
                            "or turn the swarm on (--torrent, or 'treeseed config set torrent on')")
    with _progress(args) as progress:
        result = obtain(cache, args.url, [], settings, offline=_offline(args), progress=progress)
    announce_new(cache, result, settings)
    if args.formats:
        result = cached_result(cache, result.hash, result.source, args.formats)
    return result


def cmd_fetch_dependencies(args: argparse.Namespace) -> int:
    """``treeseed fetch`` in a package: every non-lazy dependency, transitively."""
    from .config import fetchers as configured_fetchers
    from .deps import Resolver, base_url_of, find_package
    from .manifest import MANIFEST_NAME, load
    from .progress import reporter

    root = find_package(Path.cwd())
    manifest = load(root / MANIFEST_NAME)
    with reporter(quiet=_quiet(args) or args.json) as (events, _summary):
        resolver = Resolver(_cache(args), offline=_offline(args), jobs=args.jobs, events=events,
                            fetchers=configured_fetchers(manifest.fetchers),
                            settings=_settings(args))
        resolved = resolver.fetch_all(manifest, base_url_of(root), include_lazy=args.lazy)
    if args.json:
        print(json.dumps([r.as_json() for r in resolved], indent=2))
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    from .deps import find_package
    from .fetch import fetch, package_name
    from .manifest import MANIFEST_NAME, Dependency, add_dependency

    root = find_package(Path.cwd())
    urls = [args.url, *args.mirrors]
    if _offline(args):
        for url in urls:
            _refuse_network(url)
    absolute = [u if "://" in u else Path(u).resolve().as_uri() for u in urls]
    cache = _cache(args)
    with _progress(args) as progress:
        result = fetch(absolute[0], cache, progress=progress)
    for mirror in absolute[1:]:  # every URL of a dependency must give the same package
        fetch(mirror, cache, result.hash, check_source=True)
    from .locate import announce_new

    announce_new(cache, result, _settings(args))  # torrenting on: seeded at once
    url = _manifest_url(args.url, root)
    name = args.name or package_name(result.path, args.url)
    dep = Dependency(name, url, tuple(_manifest_url(m, root) for m in args.mirrors), result.hash,
                     args.lazy, result.revision)
    add_dependency(root / MANIFEST_NAME, dep)
    if not _quiet(args):
        print(f"added {name} {result.hash} to {root / MANIFEST_NAME}")
    return 0


def _manifest_url(url: str, root: Path) -> str:
    """URLs stay as given; a local path is written relative to the package, as it will be read."""
    if "://" in url:
        return url
    return os.path.relpath(Path(url).resolve(), root)


def cmd_path(args: argparse.Namespace) -> int:
    from .deps import find_package
    from .manifest import MANIFEST_NAME, load

    package = os.environ.get("TREESEED_PACKAGE_DIR")  # inside a command build
    root = Path(package) if package else find_package(Path.cwd())
    manifest = load(root / MANIFEST_NAME)
    dep = manifest.dependencies.get(args.name)
    if dep is None:
        raise TreeseedError(f"{manifest.path}: no dependency named {args.name!r}; it declares "
                            f"{', '.join(sorted(manifest.dependencies)) or 'none'}")
    cache = _cache(args)
    if not dep.hash:
        raise TreeseedError(f"{manifest.path}:{dep.line}: dependency {args.name!r} has no hash "
                            "yet; run 'treeseed update' to pin it")
    if cache.has(dep.hash):
        print(cache.path(dep.hash))
        return 0
    if dep.lazy:
        from .build_command import MISS_STATUS, record_miss

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


def cmd_update(args: argparse.Namespace) -> int:
    from .deps import find_package
    from .update import table, update

    root = find_package(Path.cwd())
    cache = _cache(args)
    rows = update(root, cache, args.names, args.dry_run, _offline(args), args.jobs)
    if getattr(args, "torrent", None) is not False and _settings(args).torrent:
        from .swarm.client import notify_added

        for row in rows:  # new packages are seeded at once by a running seeder
            if row.changed and row.new:
                notify_added(cache, row.new)
    if args.json:
        print(json.dumps([r.as_json() for r in rows], indent=2))
    elif not _quiet(args):
        print(table(rows))
        changed = sum(r.changed for r in rows)
        verb = "would change" if args.dry_run else "changed"
        print(f"{changed} of {len(rows)} {verb}", file=sys.stderr)
    failed = [r for r in rows if r.error]
    return 1 if failed else 0


def cmd_build(args: argparse.Namespace) -> int:
    from .runner import BuildRequest, options_help, run

    if args.fetch not in (None, "needed", "all"):  # `--fetch player`: a step, not a mode
        args.steps.insert(0, args.fetch)
        args.fetch = "needed"
    overrides = {}
    for define in args.defines:
        name, sep, value = define.partition("=")
        if not sep or not name:
            raise TreeseedError(f"-D{define}: write -Dname=value; {options_help(_cache(args))}")
        overrides[name] = value
    request = BuildRequest(steps=args.steps, overrides=overrides, fetch=args.fetch,
                           list_only=args.list, watch=args.watch, jobs=args.jobs,
                           offline=_offline(args), quiet=_quiet(args), settings=_settings(args))
    return run(_cache(args), request)


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; both end it normally (exit 0)."""
    from .serve import DEFAULT_BIND, serve

    serve(_cache(args).root, args.bind or DEFAULT_BIND, quiet=_quiet(args))
    return 0


def _refuse_network(url: str) -> None:
    from .schemes import is_network

    if is_network(url):
        raise TreeseedError(f"{url}: --offline forbids the network; use a local path, or a "
                            "package already in the cache")


def _offline(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "offline", False)) or os.environ.get("TREESEED_OFFLINE") == "1"


class _progress:
    """A rich progress bar on a terminal for large downloads, and on any stderr a line when the
    download receives nothing for a while (so a quiet server is not silence); -q: nothing."""

    THRESHOLD = 4 << 20

    def __init__(self, args: argparse.Namespace) -> None:
        self.enabled = not _quiet(args)
        self.bar_allowed = sys.stderr.isatty() and not getattr(args, "json", False)
        self.label = str(getattr(args, "url", None) or "the download")
        self._bar = None
        self._task = None
        self._stalls: StallWatch | None = None

    def __enter__(self) -> Callable[[int, int | None], None] | None:
        if not self.enabled:
            return None
        from .progress import StallWatch

        self._stalls = StallWatch()
        self._stalls.start(self.label)
        return self.update

    def update(self, done: int, total: int | None) -> None:
        self._notice_stall(done)
        if not self.bar_allowed:
            return
        if self._bar is None:
            if (total or done) < self.THRESHOLD:
                return
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._bar = Progress(TextColumn("downloading"), BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), TimeRemainingColumn(), transient=True)
            self._bar.start()
            self._task = self._bar.add_task("download", total=total)
        self._bar.update(self._task, completed=done, total=total)

    def _notice_stall(self, done: int) -> None:
        assert self._stalls is not None
        quiet = self._stalls.update(self.label, done)
        if quiet is None:
            return
        line = f"treeseed: {self._stalls.notice(self.label, quiet, done)}"
        if self._bar is not None:
            self._bar.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=sys.stderr, flush=True)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()


def cmd_config_list(args: argparse.Namespace) -> int:
    from .config import KEYS, config_path, settings, show

    current = settings()
    if args.json:
        print(json.dumps({k: current.values[k] for k in KEYS}, indent=2))
        return 0
    print(f"# {config_path()}")
    for name in KEYS:
        value = show(name, current.values[name]) or '""'
        origin = "" if name in current.explicit else "  (default)"
        print(f"{name} = {value}{origin}")
    return 0


def cmd_config_get(args: argparse.Namespace) -> int:
    from .config import key, settings, show

    key(args.key)
    print(show(args.key, settings().values[args.key]))
    return 0


def cmd_config_set(args: argparse.Namespace) -> int:
    from .config import config_path, set_value, show

    value = set_value(args.key, args.value)
    if not _quiet(args):
        print(f"{args.key} = {show(args.key, value)}  ({config_path()})")
    return 0


def cmd_config_unset(args: argparse.Namespace) -> int:
    from .config import KEYS, show, unset

    removed = unset(args.key)
    if not _quiet(args) and args.key in KEYS:
        default = show(args.key, KEYS[args.key].default) or '""'
        print(f"{args.key} = {default}  (default{'' if removed else '; it was not set'})")
    elif not _quiet(args):
        print(f"removed the unknown setting {args.key}")
    return 0


def cmd_seed(args: argparse.Namespace) -> int:
    """Seed in the foreground until SIGINT/SIGTERM or `treeseed seed stop`."""
    from .swarm.client import run_detached
    from .swarm.seeder import Seeder, install_signal_handlers

    cache = _cache(args)
    if args.share:
        return _share(cache, args.share)
    settings = _settings(args)
    if args.detach:
        extra = ["--status-bind", args.status_bind]
        if args.torrent is not None:
            extra.insert(0, "--torrent" if args.torrent else "--no-torrent")
        status = run_detached(cache, extra)
        print(f"seeder running (pid {status['pid']}) for {cache.root}; {status['seeding']} "
              f"packages; listen port {status['listen_port']}")
        return 0
    log = None if _quiet(args) else (lambda line: print(f"treeseed: {line}", file=sys.stderr, flush=True))
    seeder = Seeder(cache, settings, args.status_bind, log)
    install_signal_handlers(seeder)
    seeder.run()
    return 0


def _share(cache, hashes: list[str]) -> int:  # type: ignore[no-untyped-def]
    """``treeseed seed --share HASH``: the user says a local package may be published."""
    from .config import set_value, settings
    from .ids import is_bt2
    from .swarm.client import notify_added

    for package_hash in hashes:
        if not is_bt2(package_hash):
            raise TreeseedError(f"--share {package_hash!r}: give a package's bt2 hash "
                                "('treeseed cache list' shows them)")
    current = list(settings().share)
    set_value("share", ",".join(current + [h for h in hashes if h not in current]))
    for package_hash in hashes:
        notify_added(cache, package_hash)
        print(f"shared {package_hash}" + ("" if cache.has(package_hash) else " (not in the cache yet)"))
    return 0


def cmd_seed_status(args: argparse.Namespace) -> int:
    from .swarm.client import SeederClient, read_info

    cache = _cache(args)
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
    from .progress import human

    print(f"seeder pid {status['pid']} for {status['cache']}: {status['seeding']} packages "
          f"({human(status['cache_bytes'])}), {status['peers']} peers, listen port "
          f"{status['listen_port']}, {'announcing' if status['announcing'] else 'not announcing yet'}")
    print(f"status page: {info.get('status_url')}")
    return 0


def cmd_seed_stop(args: argparse.Namespace) -> int:
    from .swarm.client import stop_running

    pid = stop_running(_cache(args))
    if pid is None:
        print("no seeder was running")
        return 0
    if not _quiet(args):
        print(f"stopped the seeder (pid {pid})")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from .progress import human
    from .swarm.client import seed_dir
    from .swarm.stats import Stats

    cache = _cache(args)
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


def cmd_cache_list(args: argparse.Namespace) -> int:
    packages = _cache(args).list()
    if args.json:
        print(json.dumps([p.__dict__ for p in packages], indent=2))
        return 0
    for p in packages:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(p.last_used))
        label = f"{p.name} {p.version or ''}".strip() if p.name else (p.source or "")
        print(f"{p.hash}  {_human(p.size):>9}  {p.files:>7} files  {used}  {label}")
    if not _quiet(args):
        total = sum(p.size for p in packages)
        print(f"{_plural(len(packages), 'package')}, {_human(total)}", file=sys.stderr)
    return 0


def cmd_cache_verify(args: argparse.Namespace) -> int:
    from .cache import NOT_CACHED

    bad = 0
    checked = 0
    cache = _cache(args)
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
            _say(args, f"ok {package_hash}")
    if not _quiet(args):
        print(f"{checked} checked, {bad} corrupt", file=sys.stderr)
    return 1 if bad else 0


def cmd_cache_rm(args: argparse.Namespace) -> int:
    cache = _cache(args)
    missing = [h for h in args.hashes if not cache.remove(h)]
    for h in missing:
        print(f"treeseed: {h} is not in the cache", file=sys.stderr)
    return 1 if missing else 0


def cmd_cache_gc(args: argparse.Namespace) -> int:
    seconds = parse_duration(args.older_than)
    removed, stale = _cache(args).gc(seconds, args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for h in removed:
        print(f"{verb} {h}")
    for path in stale:
        print(f"{verb} {path}")
    if not _quiet(args):
        print(f"{len(removed)} packages, {len(stale)} temporary entries {verb}", file=sys.stderr)
    return 0


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def parse_duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    raw = text.strip().lower()
    unit = raw[-1] if raw[-1:] in units else "s"
    number = raw[:-1] if raw[-1:] in units else raw
    try:
        return float(number) * units[unit]
    except ValueError:
        raise TreeseedError(f"--older-than {text!r}: not a duration (examples: 90s, 12h, 30d)") from None


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"



# ----------------------------------------------------------------------------- zig and nix


def _add_interop_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser,
                         torrent: argparse.ArgumentParser) -> None:
    """``treeseed zig ...`` and ``treeseed nix ...``: treeseed as the fetcher for Zig and Nix."""
    zig = sub.add_parser("zig", parents=[common], help="fetch a Zig project's dependencies for zig build")
    zsub = zig.add_subparsers(metavar="ACTION")
    p = zsub.add_parser("fetch", parents=[common, torrent],
                        help="fetch, verify and place the build.zig.zon dependencies where Zig looks")
    p.add_argument("--fetch", dest="fetch_mode", choices=("needed", "all"), default="needed",
                   help="needed: skip lazy dependencies (default); all: fetch them too")
    p.add_argument("--zig-version", default="auto", choices=("auto", "0.14", "0.15", "0.16", "0.17"),
                   help="the Zig that will build (auto: ask 'zig version')")
    p.add_argument("--global-cache-dir", type=Path,
                   help="Zig's global cache (default: $ZIG_GLOBAL_CACHE_DIR, else Zig's default)")
    p.add_argument("--pkg-dir", type=Path,
                   help="Zig 0.16+: the project's package directory (default: zig-pkg)")
    p.add_argument("-j", "--jobs", type=positive_int, default=4,
                   help="packages fetched at once (default 4)")
    p.add_argument("--json", action="store_true", help="print what was placed as JSON")
    p.set_defaults(run=cmd_zig_fetch, fetches=True)
    zig.set_defaults(run=lambda a: zig.print_help() or 2)

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


def cmd_zig_fetch(args: argparse.Namespace) -> int:
    from .config import fetchers as configured_fetchers
    from .config import settings
    from .interop.zig import ZigFetch, detect_version, layout_for

    project = Path.cwd()
    version = detect_version() if args.zig_version == "auto" else args.zig_version
    layout = layout_for(version, project, args.global_cache_dir, args.pkg_dir)
    current = settings().with_overrides(torrent=getattr(args, "torrent", None))
    job = ZigFetch(_cache(args), layout, args.fetch_mode, _offline(args), args.jobs,
                   configured_fetchers(), current.mirrors, current)
    placed = job.run(project)
    if args.json:
        print(json.dumps([p.as_json() for p in placed], indent=2))
    elif not _quiet(args):
        for p in placed:
            print(f"{p.hash}\t{p.path}")
        new = sum(p.status == "placed" for p in placed)
        where = layout.pkg_dir or layout.global_cache / "p"
        print(f"{_plural(len(placed), 'package')} for Zig {version} in {where}: {new} placed, "
              f"{len(placed) - new} already there", file=sys.stderr)
    return 0


def cmd_nix_prefetch(args: argparse.Namespace) -> int:
    from .config import fetchers as configured_fetchers
    from .interop.nix import prefetch

    if _offline(args):
        _refuse_network(args.url)
    url = args.url if "://" in args.url else str(Path(args.url).absolute())
    result = prefetch(url, _cache(args), args.unpack, _limits(args), configured_fetchers())
    print(result.nix32)
    print(result.sri)
    if result.note and not _quiet(args):
        print(f"treeseed: note: {result.note}", file=sys.stderr)
    return 0

if __name__ == "__main__":
    sys.exit(main())
