"""One install: the only code that puts a package into the cache.

Every way a package arrives (a fetcher program, the swarm) ends here with a :class:`Delivery`:
a tree in a work directory whose bt2 hash treeseed computed itself, from the bytes as they
were written. :func:`install` then

1. refuses it unless it has the hash the caller expected (nothing is installed on a mismatch),
   and, when the caller came by a hint (:class:`AlsoHash`), unless it also has the other
   format's hash the hint was for;
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
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import AliasMismatch, HashMismatch, TreeseedError
from .record import Record
from .sharing import origin_mark

if TYPE_CHECKING:
    from .cache import Cache


class FetchResult(Record):
    """What ``treeseed fetch`` reports. (A plain class, not a dataclass: :mod:`treeseed.record`.)"""

    __slots__ = ("hash", "path", "files", "bytes", "source", "cached", "formats", "transferred",
                 "revision")

    def __init__(self, hash: str, path: Path, files: int, bytes: int, source: str, cached: bool,  # noqa: A002
                 formats: dict[str, str] | None = None, transferred: int = 0,
                 revision: str | None = None) -> None:
        self.hash = hash
        self.path = path
        self.files = files
        self.bytes = bytes
        self.source = source
        self.cached = cached
        self.formats = {} if formats is None else formats
        self.transferred = transferred
        self.revision = revision  # what a git reference resolved to

    def as_json(self) -> dict:
        out = {
            "hash": self.hash, "path": str(self.path), "files": self.files, "bytes": self.bytes,
            "source": self.source, "cached": self.cached, "transferred": self.transferred,
            **{k.replace("-", "_"): v for k, v in self.formats.items()},
        }
        if self.revision:
            out["revision"] = self.revision
        return out


class Delivery(Record):
    """A hashed package tree in a work directory, about to be installed.

    ``tree`` is the package tree, inside ``work``, the work directory, which also holds the
    swarm files (swarm.torrents.write); ``hash`` is the bt2 hash treeseed computed for
    ``tree``; ``source`` is where the bytes came from: a URL, a mirror's URL, or "swarm";
    ``private``: the package's own manifest says private = true. ``aliases`` are other
    formats' hashes treeseed derived itself (archive-sha256 of the bytes it read, the git
    commit it checked out, hashes of the tree): the only aliases ever recorded. ``sealed``:
    treeseed's own fetcher already made everything below the root read-only (it created the
    files so and sealed the directories), so the install is a rename; never set for a tree
    another program wrote, which the cache seals itself.
    """

    __slots__ = ("tree", "work", "hash", "files", "size", "source", "name", "version", "private",
                 "aliases", "transferred", "revision", "sealed")

    def __init__(self, tree: Path, work: Path, hash: str, files: int, size: int, source: str,  # noqa: A002
                 name: str | None = None, version: str | None = None, private: bool = False,
                 aliases: dict[str, str] | None = None, transferred: int = 0,
                 revision: str | None = None, sealed: bool = False) -> None:
        self.tree = tree
        self.work = work
        self.hash = hash
        self.files = files
        self.size = size
        self.source = source
        self.name = name
        self.version = version
        self.private = private
        self.aliases = {} if aliases is None else aliases
        self.transferred = transferred
        self.revision = revision
        self.sealed = sealed


class AlsoHash(Record):
    """Another format's hash the tree must have as well as its bt2 hash.

    A package known to the user only by, say, its NAR hash is found through a hint (a mirror's
    ``/alias`` or a DHT item anyone can write) naming a bt2 hash. The bt2 hash proves the bytes
    are that package's, not that the package is the one the user asked for: this does, and it
    does it before the install, so a wrong hint never puts a package into the cache, not even
    for a moment (a seeder would otherwise start publishing it).
    """

    __slots__ = ("fmt", "value")

    def __init__(self, fmt: str, value: str) -> None:
        #: zig, nar, git, nix-store or ipfs (:func:`treeseed.swarm.aliases.parse_hash`)
        object.__setattr__(self, "fmt", fmt)
        object.__setattr__(self, "value", value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __hash__(self) -> int:
        return hash((self.fmt, self.value))

    def check(self, tree: Path, package_hash: str) -> None:
        """Raise :class:`treeseed.errors.AliasMismatch` unless ``tree`` has this hash."""
        actual = hash_as(tree, self.fmt, self.value, package_hash)
        if actual != self.value:
            raise AliasMismatch(package_hash, self.fmt, self.value, actual)

    def as_json(self) -> dict[str, str]:
        return {"format": self.fmt, "value": self.value}

    @classmethod
    def from_json(cls, data: object) -> AlsoHash | None:
        """From a request another process sent (the seeder's socket): untrusted, so anything
        but two short strings is no check at all, and the caller refuses the request."""
        if not isinstance(data, dict):
            return None
        fmt, value = data.get("format"), data.get("value")
        if fmt not in ("zig", "nar", "git", "nix-store", "ipfs") or not isinstance(value, str) \
                or not 0 < len(value) <= 200:
            return None
        return cls(fmt, value)


def hash_as(root: Path, fmt: str, value: str, source: str) -> str | None:
    """The tree at ``root`` hashed in ``fmt``, spelled so that it compares with ``value``;
    None when a tree cannot be checked in that format (an archive digest)."""
    from .hashing import hash_tree
    from .hashing.nar import parse_nix_hash, store_path_hash
    from .package import scan_tree

    if fmt == "zig":
        from .interop.zig import zig_hash

        try:
            computed = zig_hash(root, source, allow_missing_paths=True)
        except TreeseedError as exc:
            return f"(no Zig hash: {exc})"
        return value if computed.matches(value) else computed.hash
    if fmt in ("nar", "git", "ipfs"):
        return hash_tree(root, scan_tree(root, source), [fmt], source)[fmt]
    if fmt == "nix-store":
        nar = hash_tree(root, scan_tree(root, source), ["nar"], source)["nar"]
        return store_path_hash(parse_nix_hash(nar))
    return None


def install(cache: Cache, delivery: Delivery, expected: str | None = None,
            marks: Iterable[str] = (), shown_as: str | None = None,
            also: AlsoHash | None = None) -> FetchResult:
    """Install ``delivery`` (see the module docstring); ``marks`` are added to the origin mark
    (e.g. :data:`treeseed.sharing.PRIVATE`); ``shown_as`` is the source reported to the user
    (default: the delivery's source); ``also`` is a hint's claim the tree must bear out."""
    if expected is not None and delivery.hash != expected:
        raise HashMismatch(shown_as or delivery.source, expected, delivery.hash)
    if also is not None:
        also.check(delivery.tree, delivery.hash)
    created = cache.install(delivery.tree, delivery.hash, sealed=delivery.sealed)
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
