"""One install: the only code that puts a package into the cache.

Every way a package arrives (a fetcher program, the swarm) ends here with a :class:`Delivery`:
a tree in a work directory whose bt2 hash treeseed computed itself, from the bytes as they
were written. :func:`install` then

1. refuses it unless it has the hash the caller expected (nothing is installed on a mismatch);
2. renames it into ``p/<hash>`` read-only (:meth:`treeseed.cache.Cache.install`), in one step;
3. keeps its swarm files (``t/``), so it can be seeded without being hashed again;
4. records its size, where its bytes came from (a URL, a mirror, the swarm) and the marks
   :mod:`treeseed.sharing` decides by (network or local, private);
5. records as aliases only hashes treeseed derived itself (:attr:`Delivery.aliases`), never an
   alias that already names another package (:meth:`treeseed.cache.Cache.add_aliases`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import HashMismatch
from .sharing import origin_mark

if TYPE_CHECKING:
    from .cache import Cache


@dataclass
class FetchResult:
    """What ``treeseed fetch`` reports."""

    hash: str
    path: Path
    files: int
    bytes: int
    source: str
    cached: bool
    formats: dict[str, str] = field(default_factory=dict)
    transferred: int = 0
    revision: str | None = None  # what a git reference resolved to

    def as_json(self) -> dict:
        out = {
            "hash": self.hash, "path": str(self.path), "files": self.files, "bytes": self.bytes,
            "source": self.source, "cached": self.cached, "transferred": self.transferred,
            **{k.replace("-", "_"): v for k, v in self.formats.items()},
        }
        if self.revision:
            out["revision"] = self.revision
        return out


@dataclass
class Delivery:
    """A hashed package tree in a work directory, about to be installed."""

    tree: Path  # the package tree, inside ``work``
    work: Path  # the work directory: also holds the swarm files (swarm.torrents.write)
    hash: str  # the bt2 hash treeseed computed for ``tree``
    files: int
    size: int
    source: str  # where the bytes came from: a URL, a mirror's URL, or "swarm"
    name: str | None = None
    version: str | None = None
    private: bool = False  # the package's own manifest says private = true
    #: Other formats' hashes treeseed derived itself (archive-sha256 of the bytes it read, the
    #: git commit it checked out, hashes of the tree): the only aliases ever recorded.
    aliases: dict[str, str] = field(default_factory=dict)
    transferred: int = 0
    revision: str | None = None


def install(cache: Cache, delivery: Delivery, expected: str | None = None,
            marks: Iterable[str] = (), shown_as: str | None = None) -> FetchResult:
    """Install ``delivery`` (see the module docstring); ``marks`` are added to the origin mark
    (e.g. :data:`treeseed.sharing.PRIVATE`); ``shown_as`` is the source reported to the user
    (default: the delivery's source)."""
    if expected is not None and delivery.hash != expected:
        raise HashMismatch(shown_as or delivery.source, expected, delivery.hash)
    created = cache.install(delivery.tree, delivery.hash)
    from .swarm.torrents import adopt as adopt_swarm_files

    adopt_swarm_files(cache, delivery.work, delivery.hash)
    cache.record(delivery.hash, delivery.size, delivery.files, delivery.source, delivery.name,
                 delivery.version, delivery.private)
    cache.mark(delivery.hash, origin_mark(delivery.source), *marks)
    record_aliases(cache, delivery.hash, delivery.aliases)
    return FetchResult(delivery.hash, cache.path(delivery.hash), delivery.files, delivery.size,
                       shown_as or delivery.source, not created,
                       {"bt2": delivery.hash, **delivery.aliases}, delivery.transferred,
                       delivery.revision)


def record_aliases(cache: Cache, package_hash: str, aliases: dict[str, str]) -> None:
    """Record derived aliases; one that already names another cached package is kept as it is
    and reported on stderr, never silently repointed (two trees claiming one archive digest or
    one commit means a bug or an attack, and the first verified answer stays)."""
    for fmt, value, other in cache.add_aliases(package_hash, aliases):
        print(f"treeseed: warning: {fmt} {value} already names {other}; not repointing it to "
              f"{package_hash} (run 'treeseed cache verify {other}' if that is unexpected)",
              file=sys.stderr)


def cached_result(
    cache: Cache, package_hash: str, url: str, formats: Sequence[str], transferred: int = 0
) -> FetchResult:
    """What a fetch reports for a package already in the cache, computing (and recording) the
    ``formats`` the index does not know yet."""
    cache.touch(package_hash)
    info = cache.info(package_hash)
    if info is None:
        cache.list()  # indexes a package the index missed
        info = cache.info(package_hash)
    assert info is not None
    known = {"bt2": package_hash, **cache.aliases(package_hash)}
    missing = [f for f in formats if f not in known and f != "archive-sha256"]
    if missing:
        from .hashing import hash_tree
        from .package import scan_tree

        root = cache.path(package_hash)
        computed = hash_tree(root, scan_tree(root, package_hash), missing, package_hash)
        record_aliases(cache, package_hash, computed)
        known.update(computed)
    return FetchResult(package_hash, cache.path(package_hash), info.files, info.size, url, True,
                       known, transferred)
