"""One way out: the single place that decides what may leave the cache and what may be asked of
the swarm.

Two questions, each answered only here:

- :meth:`Sharing.may_publish`: may this cached package be announced, seeded, served by
  ``treeseed serve`` or offered as a web seed? No if it is private (its own manifest says
  ``private = true``; the ``private`` setting names its hash or its ``[package] name``; a
  consumer's dependency entry said ``private = true``, which the index remembers), or if it
  came only from this machine (a local path or ``file://``): such a tree may hold anything
  (a home directory, a work in progress), so it is published only when the user says so
  (the ``share`` setting, or ``treeseed seed --share HASH``).
- :meth:`Sharing.may_look_up`: may the swarm be asked for this package at all (DHT query,
  tracker announce, peer handshake)? Not if it is private by hash, by a name it is known by,
  or by the dependency entry asking for it: a lookup alone tells the world who wants what.

Both read the package's own manifest rather than the index where they can, and every doubt
(an unreadable manifest, an index that lost its rows) ends in "no": a package is never
published by accident. docs/security.md states the guarantees and names their tests.

>>> Sharing(cache, settings).may_publish("bt2-...")   # doctest: +SKIP
'came only from this machine (...); share it with ...'
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from .errors import TreeseedError

if TYPE_CHECKING:
    from .cache import Cache
    from .config import Settings

#: Index marks (:meth:`treeseed.cache.Cache.mark`): where the bytes came from, what users said.
NETWORK = "network"  # installed from an http(s)/git+http(s) origin, a mirror or the swarm
LOCAL = "local"  # installed from a local path, file:// or git+file://
PRIVATE = "private"  # a dependency entry said private = true

#: Sources the bytes of a package can come from, besides URLs.
SWARM_SOURCE = "swarm"


def origin_mark(source: str) -> str:
    """The mark a package gets from where its bytes came: a URL, ``swarm``, or a mirror's URL."""
    from .schemes import is_network

    return NETWORK if source == SWARM_SOURCE or is_network(source) else LOCAL


class Sharing:
    """The sharing policy of one cache under one set of settings."""

    def __init__(self, cache: Cache, settings: Settings,
                 manifests: dict[str, tuple[str | None, bool]] | None = None) -> None:
        import threading

        self.cache = cache
        #: (name, private) per package, read once: a package's manifest cannot change under
        #: its hash. A caller deciding again and again (``serve``) passes the same dict.
        self._manifests = manifests if manifests is not None else {}
        self.private: frozenset[str] = frozenset(settings.private)
        self.share: frozenset[str] = frozenset(settings.share)
        # The seeder and serve decide on several threads, and an index connection cannot cross
        # threads: each thread reads the marks through a Cache of its own, dropped (and its
        # connection closed) when the thread ends.
        self._per_thread = threading.local()

    def may_look_up(self, package_hash: str, names: Iterable[str | None] = (),
                    private: bool = False) -> str | None:
        """None if the swarm may be asked for ``package_hash``; else why not. ``names`` are the
        names the caller knows it by (a dependency key, a build.zig.zon name); ``private`` is
        the dependency entry's own ``private = true``."""
        if private:
            return "its dependency entry says private = true"
        if package_hash in self.private:
            return "the 'private' setting"
        named = sorted(n for n in names if n and n in self.private)
        if named:
            return f"the 'private' setting names {named[0]}"
        return None

    def may_publish(self, package_hash: str, marks: set[str] | None = None) -> str | None:
        """None if the cached package may be announced, seeded and served; else why not.
        ``marks`` are its index marks when the caller read them already (:meth:`publishable`)."""
        if package_hash in self.private:
            return "private: the 'private' setting names its hash"
        name, private = self._manifest(package_hash)
        if private:
            return "private: its manifest says private = true"
        if name is not None and name in self.private:
            return f"private: the 'private' setting names it ({name})"
        if marks is None:
            marks = self._index().marks(package_hash)
        if PRIVATE in marks:
            return "private: a dependency entry asking for it says private = true"
        if package_hash in self.share or (name is not None and name in self.share):
            return None
        if NETWORK in marks:
            return None
        return ("came only from this machine (a local path or file://), so it is not published; "
                f"share it with 'treeseed seed --share {package_hash}'")

    def publishable(self, hashes: Iterable[str]) -> frozenset[str]:
        """Those of ``hashes`` that :meth:`may_publish`, deciding for many with one index query."""
        marks = self._index().all_marks()
        return frozenset(h for h in hashes if self.may_publish(h, marks.get(h, set())) is None)

    def _index(self) -> Cache:
        own = getattr(self._per_thread, "cache", None)
        if own is None:
            from .cache import Cache

            own = self._per_thread.cache = Cache(self.cache.root)
        return own

    def _manifest(self, package_hash: str) -> tuple[str | None, bool]:
        """(name, private) from the package's own treeseed.toml, read from the tree itself so
        a stale or rebuilt index cannot make a private package public. Unreadable: private."""
        known = self._manifests.get(package_hash)
        if known is None:
            known = self._manifests[package_hash] = self._read_manifest(package_hash)
        return known

    def _read_manifest(self, package_hash: str) -> tuple[str | None, bool]:
        from .manifest import MANIFEST_NAME, load

        path = self.cache.path(package_hash) / MANIFEST_NAME
        if not path.is_file():
            return None, False
        try:
            manifest = load(path, f"{package_hash}: {MANIFEST_NAME}")
        except (TreeseedError, OSError):
            return None, True
        return manifest.name, bool(manifest.private)


def lookup_refusal(package_hash: str, who: str, why: str) -> str:
    """The one wording of "the swarm was not asked", for skipped-source lists."""
    return f"swarm: not asked, {private_because(who or package_hash, why)}"


def private_because(who: str, why: str) -> str:
    """The one wording of a lookup refused for privacy."""
    return f"{who} is private ({why}): it is never looked up in the swarm"
