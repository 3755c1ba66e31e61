"""The built-in fetcher program: ``python -m treeseed.fetcher [--format F ...] URL``.

Run by the cache (:mod:`treeseed.fetchers`) in a scratch working directory, it speaks the
protocol of docs/fetcher-protocol.md: every hash it learns goes to the fifo ``$TREESEED_HASHES``
as one line ``<format> <value>`` the moment it is known (a git commit after ref resolution,
an archive's SHA-256 before unpacking, then ``bt2`` and any other formats of the tree), the
package lands in ``./package`` and a summary in ``./result.json``. The cache may stop it at
any announcement, so nothing here assumes it will get to the end.

Progress goes to stdout as ``progress <bytes> <total or ->`` lines; errors to stderr as
``treeseed: error: ...`` with exit status 1.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import TreeseedError

# Imported where used, after the first announcement: the pipeline (fetch, unpack, hashing),
# argparse and json. An unchanged dependency is stopped at its git-commit or archive-sha256,
# so this program's start-up up to that line is most of what `treeseed update` costs.

PACKAGE_DIR = "package"
RESULT_FILE = "result.json"


#: After these, the next step is the expensive one (downloading objects, unpacking): wait for
#: the cache's ``continue`` first, so a "stop, I have it" always wins the race.
GATED = ("git-commit", "archive-sha256")


class Announcer:
    """Writes ``<format> <value>`` lines to the hashes fifo, each flushed at once."""

    def __init__(self, path: str | None, gate=None) -> None:  # type: ignore[no-untyped-def]
        self._file = open(path, "w", buffering=1, encoding="ascii") if path else None
        self._gate = gate  # the cache's answers (our stdin), or None outside the cache
        self.sent: dict[str, str] = {}

    def __call__(self, fmt: str, value: str) -> None:
        if self.sent.get(fmt) == value:
            return
        self.sent[fmt] = value
        if self._file is not None:
            self._file.write(f"{fmt} {value}\n")
            self._file.flush()
            if fmt in GATED and self._gate is not None:
                self._gate.readline()  # "continue", or end of file: go on either way

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def run(url: str, formats: Sequence[str], max_size: int | None, announce: Announcer) -> dict:
    """Fetch ``url`` into ./package, announcing hashes as they become known."""
    from .sources import open_source

    work = Path.cwd()
    source = open_source(url)
    got = source.fetch(work, _progress, announce)
    digest = got.archive_sha256
    if got.kind == "archive":
        if digest is None:  # a local archive, read in place
            from .assemble import sha256_file

            digest = sha256_file(got.path)
        announce("archive-sha256", digest)
    # The pipeline only now, after the go-ahead for the early hashes (see the imports above).
    from .assemble import adopt_tree, copy_tree, finish_tree, seal_dirs
    from .hashing import hash_tree
    from .unpack import Limits, unpack_archive

    if got.kind == "archive":
        unpacked = unpack_archive(got.path, work / "tree", url, Limits.from_env(max_size),
                                  archive_sha256=digest, read_only=True)
    elif got.kind == "tree":
        unpacked = adopt_tree(got.path, url)
    else:
        unpacked = copy_tree(got.path, work / "tree", url)
    package = finish_tree(unpacked, url)
    announce("bt2", package.hash)
    from .swarm.torrents import write as write_swarm_files

    # The .torrent and every block hash, from the digests taken while writing: the cache keeps
    # them so the package can be seeded without ever being hashed again.
    write_swarm_files(work, package.hash, package.entries, package.digests, url, package.info)
    extra = [f for f in formats if f not in ("bt2", "archive-sha256")]
    if extra:
        for fmt, value in hash_tree(package.root, package.entries, extra, url).items():
            announce(fmt, value)
    # An unpacked archive's files were created read-only; its directories follow, last, once
    # nothing more is deleted or written: the cache then installs it with a rename alone.
    sealed = got.kind == "archive"
    if sealed:
        seal_dirs(package.root, unpacked.dirs)
    os.rename(package.root, work / PACKAGE_DIR)
    manifest = package.rules.manifest
    return {
        "bt2": package.hash,
        "files": len(package.entries),
        "bytes": package.size,
        "transferred": got.bytes_transferred,
        "revision": got.revision,
        "source": source.canonical,
        "name": manifest.name if manifest else None,
        "version": manifest.version if manifest else None,
        "private": bool(manifest and manifest.private),
        "aliases": dict(announce.sent),  # every hash this program derived, bt2 included
        "sealed": sealed,  # files and directories below the root already read-only
    }


def preload(url: str) -> None:
    """Import now what a run for ``url`` imports after its first announcement: the pipeline
    and the URL's source. For a process that has the time now and forks fetchers later
    (:mod:`treeseed.forking`: a spare, or the parent of many forks)."""
    import importlib
    import json  # noqa: F401  (each: imported for the run's sake, see the docstring)

    from . import assemble, hashing, package, rules, unpack  # noqa: F401
    from .hashing import bt2  # noqa: F401
    from .schemes import SCHEMES, scheme_name
    from .swarm import torrents  # noqa: F401

    try:
        from isal import isal_zlib  # noqa: F401  (gzip's inflater, which unpack imports where used)
    except ImportError:
        pass
    scheme = SCHEMES.get(scheme_name(url))
    if scheme is not None:
        importlib.import_module(f".sources.{scheme.module}", __package__)
        if scheme.module == "http":
            try:
                import urllib3  # noqa: F401  (the http source imports it where used)
            except ImportError:
                pass


def _progress(done: int, total: int | None) -> None:
    print(f"progress {done} {total if total is not None else '-'}", flush=True)


def stop_cleanly() -> None:
    """On SIGTERM (the cache stopping us, or the cache process dying), kill the git commands
    we started (each runs in a process group of its own) before exiting, so nothing keeps
    writing into the work directory. Also ask Linux to send that SIGTERM if the cache dies."""
    import signal

    def on_term(signum: int, frame: object) -> None:
        git = sys.modules.get("treeseed.sources.git")
        if git is not None:
            git.kill_active()
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    parent = os.environ.get("TREESEED_PARENT_PID")
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent and os.getppid() != int(parent):  # it died before the line above ran
        os._exit(1)


def parse_args(argv: Sequence[str]) -> tuple[str, list[str], int | None]:
    """(URL, formats, max size) from ``URL [--format F ...] [--max-size N]``.

    The command line the cache writes is read by hand: argparse, with the gettext and
    terminal-size look-ups it makes while building a parser, costs milliseconds of the
    start-up an unchanged update waits for. Anything else (``--help``, a mistake, another
    spelling) goes to argparse, for its usual help and messages.
    """
    url: str | None = None
    formats: list[str] = []
    max_size: int | None = None
    rest = list(argv)
    while rest:
        arg = rest.pop(0)
        if arg == "--format" and rest and not rest[0].startswith("-"):
            formats.append(rest.pop(0))
        elif arg == "--max-size" and rest and rest[0].isascii() and rest[0].isdigit():
            max_size = int(rest.pop(0))
        elif url is None and arg and not arg.startswith("-"):
            url = arg
        else:
            url = None
            break
    if url is not None:
        return url, formats, max_size
    import argparse

    parser = argparse.ArgumentParser(prog="python -m treeseed.fetcher")
    parser.add_argument("url")
    parser.add_argument("--format", action="append", default=[], dest="formats")
    parser.add_argument("--max-size", type=int)
    args = parser.parse_args(argv)
    return args.url, args.formats, args.max_size


def main(argv: Sequence[str] | None = None) -> int:
    stop_cleanly()
    url, formats, max_size = parse_args(sys.argv[1:] if argv is None else argv)
    announce = Announcer(os.environ.get("TREESEED_HASHES"), sys.stdin)
    try:
        result = run(url, formats, max_size, announce)
        import json

        Path(RESULT_FILE).write_text(json.dumps(result), encoding="utf-8")
    except TreeseedError as exc:
        print(f"treeseed: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        announce.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
