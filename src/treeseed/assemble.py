"""The stages between a source and the cache: turn what a source delivered into a normalised,
hashed package tree in a work directory.

A source hands over an archive (unpacked by :mod:`treeseed.unpack`), a directory that is not
ours (:func:`copy_tree` copies what the package's rules keep, hashing while writing) or a tree
it built in the work directory (:func:`adopt_tree` trims and hashes it in place); then
:func:`finish_tree` applies the package's own rules and computes the bt2 hash from the
per-file digests, so no file is read twice.

The built-in fetcher program (:mod:`treeseed.fetcher`) runs these stages in its own process,
and imports only them: never the orchestrator (:mod:`treeseed.fetch`) that started it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from .record import Record

if TYPE_CHECKING:
    from .hashing.bt2 import FileDigest
    from .package import Entry
    from .rules import Rules
    from .unpack import Unpacked


class PackageTree(Record):
    """A normalised tree in a work directory, ready to be verified and installed.

    ``info`` is the bencoded info dict the hash was taken over: the .torrent embeds it as it
    is, so the tree is encoded once per fetch (:func:`treeseed.hashing.bt2.info_bytes`).
    """

    __slots__ = ("root", "entries", "digests", "rules", "hash", "info")

    def __init__(self, root: Path, entries: list[Entry], digests: dict[str, FileDigest],
                 rules: Rules, hash: str, info: bytes = b"") -> None:  # noqa: A002
        self.root = root
        self.entries = entries
        self.digests = digests
        self.rules = rules
        self.hash = hash
        self.info = info

    @property
    def size(self) -> int:
        return sum(e.size for e in self.entries)


def finish_tree(unpacked: Unpacked, source: str) -> PackageTree:
    """Apply the package's own rules to a fresh tree and compute its bt2 hash."""
    from .hashing.bt2 import hash_of_info, info_bytes
    from .package import apply_rules
    from .rules import rules_for

    rules = rules_for(unpacked.root, source)
    entries = apply_rules(unpacked.root, unpacked.entries, rules, source, unpacked.specials)
    info = info_bytes(entries, unpacked.digests, source)
    return PackageTree(unpacked.root, entries, unpacked.digests, rules, hash_of_info(info), info)


def copy_tree(src: Path, dest: Path, source: str) -> Unpacked:
    """Copy the files a directory's own rules keep into ``dest``, hashing while writing.

    Excluded files are never read. Files are copied on a thread per core (reads, writes and
    hashing all release the GIL).
    """
    from concurrent.futures import ThreadPoolExecutor

    from .package import Entry, scan_tree
    from .rules import rules_for
    from .unpack import Unpacked

    rules = rules_for(src)
    entries = scan_tree(src, source, rules)
    dest.mkdir()
    src_b, dest_b = os.fsencode(src), os.fsencode(dest)
    for d in sorted({os.path.dirname(e.path) for e in entries} - {""}):
        os.makedirs(os.path.join(dest_b, os.fsencode(d)), exist_ok=True)

    def copy(entry: Entry) -> tuple[str, FileDigest] | None:
        target = os.path.join(dest_b, os.fsencode(entry.path))
        if entry.is_symlink:
            os.symlink(os.fsencode(entry.target or ""), target)
            return None
        return entry.path, _copy_file(os.path.join(src_b, os.fsencode(entry.path)), target,
                                      entry.executable)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="treeseed-copy") as pool:
        digests = dict(d for d in pool.map(copy, entries, chunksize=16) if d)
    # Sizes as copied, not as scanned: a file that changed in between is hashed as written.
    copied = [Entry(e.path, e.kind, digests[e.path].size, e.executable) if e.path in digests else e
              for e in entries]
    return Unpacked(dest, copied, digests)


def adopt_tree(root: Path, source: str) -> Unpacked:
    """Take over a directory a source built in the work directory (a git checkout): delete what
    the package rules exclude, then hash the rest in place, without copying."""
    from .hashing import Bt2Format, hash_files
    from .package import prune_tree, scan_tree
    from .rules import rules_for
    from .unpack import Unpacked

    entries = scan_tree(root, source, rules_for(root, source))
    prune_tree(root, {e.path for e in entries})
    digests = hash_files(root, entries, [Bt2Format(root, source)])["bt2"]
    return Unpacked(root, entries, digests)


def _copy_file(src: bytes, dst: bytes, executable: bool) -> FileDigest:
    from .hashing import feed_file
    from .hashing.bt2 import MerkleHasher

    mode = 0o755 if executable else 0o644
    hasher = MerkleHasher()
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    with open(fd, "wb") as out:
        feed_file(src, [hasher.update, out.write])
        os.fchmod(out.fileno(), mode)
    return hasher.finish()


def seal_dirs(root: Path, dirs: Iterable[str]) -> None:
    """Make the directories below ``root`` read-only (0555), from the list the unpacker kept.

    With the files created read-only (``unpack_archive(..., read_only=True)``) this is all a
    tree needs before the cache may rename it into ``p/``, with no walk and no chmod per file
    (the cache's :func:`treeseed.cache.seal` costs both: 60 ms of a Django sdist). ``root``
    itself stays writable: renaming a directory to another parent rewrites its ``..``, which
    needs the write bit; the cache takes it away right after the rename into ``p/``. A
    directory the package rules emptied and removed is simply gone.
    """
    base = os.fsencode(root) + b"/"
    for d in dirs:
        try:
            os.chmod(base + os.fsencode(d), 0o555)
        except FileNotFoundError:
            continue


def sha256_file(path: Path) -> str:
    import hashlib

    from .hashing import feed_file

    h = hashlib.sha256()
    feed_file(path, [h.update])
    return h.hexdigest()


