"""Tree hashes in every format treeseed speaks, computed in one read of each file.

Formats are named ``bt2`` (the package hash, :mod:`.bt2`), ``zig`` (:mod:`.zig`), ``nar``
(:mod:`.nar`), ``git`` and ``swhid`` (:mod:`.gittree`), ``ipfs`` (a UnixFS CID, :mod:`.ipfs`). Each format is a :class:`TreeFormat`
made for one tree; formats that hash file by file hand out a per-file hasher, and
:func:`hash_tree` streams every regular file exactly once through all of them (one thread:
measured faster than two, see :func:`hash_files`). A format whose digest is one ordered stream
over the whole tree (NAR) does its own pass in :meth:`TreeFormat.finish`.

>>> hash_tree(Path("pkg"), scan_tree(Path("pkg"), "pkg"), ["bt2", "git"])  # doctest: +SKIP
{'bt2': 'bt2-…', 'git': '…'}
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from ..errors import TreeseedError
from ..ids import ALL_FORMATS as ALL_FORMATS  # the format names live in ids (light to import)
from ..ids import TREE_FORMATS as TREE_FORMATS
from ..package import Entry
from . import bt2

READ_CHUNK = 1 << 20


class FileHasher(Protocol):
    """Consumes one regular file's bytes in order; ``finish`` returns the format's per-file value."""

    def update(self, data: bytes | bytearray | memoryview) -> None: ...

    def finish(self) -> Any: ...


class TreeFormat(Protocol):
    """One hash format, bound to one tree (so it can read that tree's own manifest)."""

    name: str

    def file_hasher(self, entry: Entry) -> FileHasher | None:
        """A hasher for this regular file, or None when the format ignores the file."""

    def finish(self, root: Path, entries: Sequence[Entry], digests: dict[str, Any]) -> str:
        """Combine the per-file values (keyed by path) into the tree's hash string."""


class Bt2Format:
    """The package hash as a :class:`TreeFormat`."""

    name = "bt2"

    def __init__(self, root: Path, source: str = "") -> None:
        self.source = source or str(root)

    def file_hasher(self, entry: Entry) -> bt2.MerkleHasher:
        return bt2.MerkleHasher()

    def finish(self, root: Path, entries: Sequence[Entry], digests: dict[str, Any]) -> str:
        return bt2.info_hash(entries, digests, self.source)


def make_format(name: str, root: Path, source: str = "") -> TreeFormat:
    """Instantiate format ``name`` for the tree at ``root``."""
    if name == "bt2":
        return Bt2Format(root, source)
    if name == "zig":
        from .zig import ZigFormat

        return ZigFormat(root, source)
    if name == "nar":
        from .nar import NarFormat

        return NarFormat(root, source)
    if name in ("git", "swhid"):
        from .gittree import GitTreeFormat

        return GitTreeFormat(root, source, swhid=name == "swhid")
    if name == "ipfs":
        from .ipfs import IpfsFormat

        return IpfsFormat(root, source)
    raise TreeseedError(f"unknown hash format {name!r}; known: {', '.join(ALL_FORMATS)}")


def hash_tree(
    root: Path,
    entries: Sequence[Entry],
    formats: Sequence[str] = ("bt2",),
    source: str = "",
    workers: int | None = None,
) -> dict[str, str]:
    """Hash the tree at ``root`` (already scanned into ``entries``) in each of ``formats``."""
    fmts = [make_format(name, root, source) for name in dict.fromkeys(formats)]
    digests = hash_files(root, entries, fmts, workers)
    return {f.name: f.finish(root, entries, digests[f.name]) for f in fmts}


def hash_files(
    root: Path, entries: Sequence[Entry], fmts: Sequence[TreeFormat], workers: int | None = None
) -> dict[str, dict[str, Any]]:
    """Read each regular file once, feeding every format that wants it; values keyed by path."""
    jobs: list[tuple[Entry, list[tuple[str, FileHasher]]]] = []
    for entry in entries:
        if entry.is_symlink:
            continue
        hashers = [(f.name, h) for f in fmts if (h := f.file_hasher(entry)) is not None]
        if hashers:
            jobs.append((entry, hashers))
    out: dict[str, dict[str, Any]] = {f.name: {} for f in fmts}
    base = os.fsencode(root)

    def run(job: tuple[Entry, list[tuple[str, FileHasher]]]) -> None:
        entry, hashers = job
        feed_file(os.path.join(base, os.fsencode(entry.path)), [h.update for _, h in hashers],
                  entry.size)
        for name, h in hashers:
            out[name][entry.path] = h.finish()

    # One thread by default: on the kernel tree (78k files, 1.3 GB) two hashing threads took
    # 6.2 s and one took 2.7 s; the GIL hand-offs after every 16 KiB hashlib call cost more
    # than the second core gives. (Unpacking uses the second core for decompression instead.)
    workers = workers or 1
    if workers == 1 or len(jobs) < 2:
        for job in jobs:
            run(job)
    else:  # imported here: concurrent.futures imports logging, ~4 ms of every fetcher's start
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="treeseed-hash") as pool:
            for _ in pool.map(run, jobs, chunksize=16):
                pass
    return out


_buffers = threading.local()


def feed_file(path: bytes | str, sinks: Sequence[Callable[[memoryview], None]],
              size_hint: int | None = None) -> int:
    """Stream a file through ``sinks``; return its size.

    A file known to fit in one chunk is read with one call; larger ones go through a 1 MiB
    buffer kept per thread. (A fresh 1 MiB buffer per file cost more than hashing the kernel
    tree's 78k mostly small files.)
    """
    with open(path, "rb", buffering=0) as f:
        if size_hint is not None and size_hint < READ_CHUNK:
            data = f.read(size_hint + 1)  # one more byte: notice a file that grew since the scan
            view = memoryview(data)
            for sink in sinks:
                sink(view)
            if len(data) > size_hint:
                return len(data) + _feed_rest(f, sinks)
            return len(data)
        return _feed_rest(f, sinks)


def _feed_rest(f, sinks: Sequence[Callable[[memoryview], None]]) -> int:  # type: ignore[no-untyped-def]
    buf = getattr(_buffers, "buf", None)
    if buf is None:
        buf = _buffers.buf = bytearray(READ_CHUNK)
    view = memoryview(buf)
    total = 0
    while n := f.readinto(buf):
        chunk = view[:n]
        for sink in sinks:
            sink(chunk)
        total += n
    return total
