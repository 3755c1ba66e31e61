"""The ``treeseed`` command: argument parsing and printing, nothing more.

This package is the entry point (:func:`main`; :func:`run`, the console script ``treeseed.cli:run``
and ``python -m treeseed``), the parser (:func:`build_parser`) and the error handling every command
shares. Each command family is a small module that registers its subparsers and holds its
``cmd_*`` functions, each a few lines that call the library (:mod:`treeseed.fetch`,
:mod:`treeseed.cache`, ...) and print the result:

* :mod:`.hash`: ``hash``
* :mod:`.fetch`: ``fetch`` (a URL, a hash, the package's dependencies), ``add``
* :mod:`.build`: ``build``
* :mod:`.deps`: ``update``, ``path``
* :mod:`.serve`: ``serve``
* :mod:`.zig`: ``zig fetch``
* :mod:`.nix`: ``nix prefetch``
* :mod:`.config`: ``config list | get | set | unset``
* :mod:`.seed`: ``seed`` (``--share``, ``status``, ``stop``), ``stats``
* :mod:`.cache`: ``cache list | verify | rm | gc``
* :mod:`.common`: what they share (the cache, settings and limits options ask for, --offline,
  -q and -v)

The command modules import only the standard library and :mod:`.common` at module level; heavy
modules are imported inside the command that needs them, so a no-op run costs little more than
starting Python. Every :class:`~treeseed.errors.TreeseedError` becomes one line on stderr and
exit status 1; SIGINT and SIGTERM during a fetch exit 130 and 143 after one line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import NoReturn

from ..errors import TreeseedError
from . import build, cache, config, deps, fetch, hash, nix, seed, serve, zig
from .cache import parse_duration
from .common import ALL_FORMATS, positive_int

__all__ = ["ALL_FORMATS", "Interrupted", "build_parser", "main", "parse_duration", "positive_int",
           "run"]


def run() -> NoReturn:
    """The program: :func:`main`, then exit without tearing the interpreter down.

    Finalising an interpreter that has imported a fetch's modules (freeing every module, then
    every object) takes about 10 ms, as long as fetching a small archive's files, and frees
    nothing the kernel would not. So when main returns and no other thread is left, the
    standard streams are flushed, the atexit functions run (a library's, should one have
    registered any: treeseed has none) and the process leaves by ``os._exit``. A thread still
    running gets the ordinary exit, which waits for it. Every file treeseed writes is closed
    (or committed, for the index) before main returns, so nothing is lost by skipping the rest.
    """
    status = main()
    import atexit
    import threading

    if threading.active_count() != 1:
        sys.exit(status)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (``| head``), as Python's own exit reports
            status = status or 120
    atexit._run_exitfuncs()
    os._exit(status)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(command_of(argv))
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
        if _needs_swarm(args):  # say so before anything starts, not after a fetch fell back
            from ..swarm.lt import libtorrent

            libtorrent()
        status = args.run(args) or 0
    except TreeseedError as exc:
        exc = _swarm_unavailable(exc) or exc
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


def _needs_swarm(args: argparse.Namespace) -> bool:
    """The command cannot do what it was asked without libtorrent: ``--torrent`` given
    explicitly, or ``treeseed seed`` itself (not ``--share``, ``status`` or ``stop``, which only
    write the settings or talk to the socket)."""
    return getattr(args, "torrent", None) is True or (
        args.run is seed.cmd_seed and not getattr(args, "share", None))


def _swarm_unavailable(exc: BaseException) -> BaseException | None:
    """The missing-libtorrent error behind ``exc``, if that is what it comes down to (a swarm-only
    fetch wraps it as the swarm's reason): its one line says it all."""
    from ..swarm.lt import SwarmUnavailable

    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, SwarmUnavailable):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


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


class _Parser(argparse.ArgumentParser):
    """argparse with treeseed's one-line errors: the usage block argparse prints first buries
    the line that says what is wrong, so it points to --help instead."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


#: Each command, and the module that registers it (with its siblings).
FAMILIES = {"hash": hash, "fetch": fetch, "add": fetch, "build": build, "update": deps,
            "path": deps, "serve": serve, "zig": zig, "nix": nix, "config": config,
            "seed": seed, "stats": seed, "cache": cache}
#: The options before a command that take a value as the next argument.
_VALUED = {"--cache-dir", "-C"}


def command_of(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names, if it is a known one: the first argument that is neither an
    option nor an option's value."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _VALUED:
            skip = True
        elif not arg.startswith("-"):
            return arg if arg in FAMILIES else None
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or, given the ``command`` about to run, only its family's
    subcommands: building every subparser (argparse looks up a translation for each help
    string) is a fifth of a small fetch's start-up, and one family is what parsing needs."""
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
    if command is not None:
        _register(FAMILIES[command], sub, common, torrent)
        return parser
    # In the order `treeseed --help` lists them.
    hash.register(sub, common)
    fetch.register(sub, common, torrent)  # fetch, add
    build.register(sub, common, torrent)
    deps.register(sub, common, torrent)  # update, path
    serve.register(sub, common)
    zig.register(sub, common, torrent)
    nix.register(sub, common)
    config.register(sub, common)
    seed.register(sub, common, torrent)  # seed, stats
    cache.register(sub, common)
    return parser


def _register(module: ModuleType, sub: argparse._SubParsersAction, common: argparse.ArgumentParser,
              torrent: argparse.ArgumentParser) -> None:
    """``module.register`` with the parents it takes (the families that fetch take --torrent)."""
    if module in (fetch, build, deps, zig, seed):
        module.register(sub, common, torrent)
    else:
        module.register(sub, common)
