"""treeseed's packages as a Nix binary cache: store paths, narinfos, signatures, swarm lookups.

Nix asks its substituters for every output path before it builds, fixed-output sources
included (``fetchFromGitHub``, ``fetchzip``, ``fetchgit``: recursive, named "source";
``fetchurl``: flat, named after the URL). Such a path follows from its name and hash alone
(Nix's ``makeFixedOutputPath``), and treeseed knows the hashes, so ``treeseed serve`` can answer
for them (docs/interop.md has the ``nix.conf`` lines, docs/serve.md the endpoints)::

    GET /nix-cache-info               StoreDir: /nix/store
    GET /<32 nix32>.narinfo           a signed narinfo, for a path treeseed may publish
    GET /nar/bt2-<hex>.nar            a package's tree as a NAR (recursive paths)
    GET /nar/sha256-<hex>.nar         a kept archive as a NAR (flat paths)

Which store paths a cache offers is recorded in its index as aliases (one row per path):

- ``nix-store``: ``<hash>`` of ``/nix/store/<hash>-source``, the package's NAR under the name
  fetchers use (the format :mod:`treeseed.swarm.aliases` publishes in the DHT). Recorded for
  every package by :class:`StorePathIndexer` once treeseed has hashed the tree's NAR itself;
- ``nix-path``: ``<hash>-<name>`` for the same NAR under another name a path was imported
  (``treeseed nix import``) or prefetched (``treeseed nix prefetch --unpack``) with;
- ``nix-flat``: ``<hash>-<name>`` for a kept archive's flat SHA-256 under a file name it was
  prefetched with; the row names the package the archive unpacked to, whose publicness it
  follows (as ``/sha256/`` does).

A narinfo is signed only after its store path has been computed again from the hash it
states (:func:`offers`), so a row that does not add up is ignored, never signed. No ``CA``
field is sent: Nix accepts a narinfo with one without any signature, and the point of
``trusted-public-keys`` is that the user chooses whom to trust.

A store hash nobody here knows may be asked of the swarm (:class:`StoreLookups`): the DHT's
``nix-store`` alias names a bt2 hash, the package is fetched and verified by
:func:`treeseed.locate.obtain_by_alias`, and treeseed checks once more that its NAR gives that
exact store path before anything is offered.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..cache import Cache
from ..errors import TreeseedError
from ..hashing.nar import (
    STORE_DIR,
    flat_store_path_hash,
    is_store_hash,
    is_store_name,
    nix32,
    parse_nix_hash,
    sri,
    store_path_hash,
)
from ..ids import is_bt2

if TYPE_CHECKING:
    from ..config import Settings
    from ..narstream import NarLayout
    from .nixkey import SigningKey

#: Index alias formats (see the module docstring).
NIX_STORE = "nix-store"
NIX_PATH = "nix-path"
NIX_FLAT = "nix-flat"
#: The name nixpkgs' fetchers give their outputs.
SOURCE = "source"

#: What ``/nix-cache-info`` says. Priority 30 puts a LAN mirror before cache.nixos.org (40).
CACHE_INFO = f"StoreDir: {STORE_DIR}\nWantMassQuery: 1\nPriority: 30\n".encode()


# --------------------------------------------------------------------------- what is offered


@dataclass(frozen=True)
class Offer:
    """One store path this cache can substitute: a package's tree or a kept archive's bytes."""

    store_hash: str
    name: str
    package: str  # the bt2 hash whose publicness decides
    archive: str | None = None  # the kept archive's SHA-256 (hex) for a flat path

    @property
    def store_path(self) -> str:
        return f"{STORE_DIR}/{self.store_hash}-{self.name}"

    @property
    def nar_url(self) -> str:
        """Relative to the cache, as narinfos give it: named by content, not by store path."""
        return f"nar/sha256-{self.archive}.nar" if self.archive else f"nar/{self.package}.nar"


def offers(cache: Cache, store_hash: str, public: Callable[[str], bool]) -> tuple[list[Offer], bool]:
    """The paths the index records for ``store_hash`` whose package is ``public``, still in
    the cache, and whose store path follows from the hashes the index holds; and whether the
    index knows ``store_hash`` at all (then the swarm is not asked). Rows of packages that may
    not be published are dropped by a set lookup before anything else is read, so such a path
    costs what an unknown one does. ``store_hash`` must be valid
    (:func:`~treeseed.hashing.nar.is_store_hash`)."""
    if not (cache.root / "index.sqlite").exists():
        return [], False
    rows = cache.db.execute(
        "SELECT format, value, hash FROM aliases WHERE (format = ? AND value = ?)"
        " OR (format IN (?, ?) AND value > ? AND value < ?)",
        (NIX_STORE, store_hash, NIX_PATH, NIX_FLAT, f"{store_hash}-", f"{store_hash}.")).fetchall()
    found = []
    for fmt, value, package in rows:
        if not public(package):
            continue
        name = SOURCE if fmt == NIX_STORE else value[len(store_hash) + 1:]
        offer = _checked(cache, fmt, store_hash, name, package)
        if offer is not None:
            found.append(offer)
    return found, bool(rows)


def _checked(cache: Cache, fmt: str, store_hash: str, name: str, package: str) -> Offer | None:
    """The offer a row stands for, if its store path is what its hashes give."""
    if not (is_bt2(package) and is_store_name(name) and cache.has(package)):
        return None
    if fmt == NIX_FLAT:
        for archive in _kept_archives(cache, package):
            if flat_store_path_hash(bytes.fromhex(archive), name) == store_hash:
                return Offer(store_hash, name, package, archive)
        return None
    nar = cache.aliases(package).get("nar")
    if nar is None or store_path_hash(parse_nix_hash(nar), name) != store_hash:
        return None
    return Offer(store_hash, name, package)


def _kept_archives(cache: Cache, package: str) -> list[str]:
    rows = cache.db.execute("SELECT value FROM aliases WHERE format = 'archive-sha256' AND hash = ?",
                            (package,))
    return [v for (v,) in rows if len(v) == 64 and cache.archive_path(v).is_file()]


# --------------------------------------------------------------------------- recording paths


def record_tree_path(cache: Cache, package: str, nar_digest: bytes, name: str = SOURCE) -> str:
    """Record that ``package``'s tree, whose NAR hash treeseed computed itself, is offered as
    ``/nix/store/<hash>-<name>``; returns that store path. ``source`` is recorded as the
    ``nix-store`` alias (which :func:`treeseed.locate.obtain_by_alias` resolves), any other
    name as ``nix-path``."""
    if not is_store_name(name):
        raise TreeseedError(f"{name!r} is not a Nix store path name (letters, digits and "
                            "+-._?= only, not starting with '.')")
    from ..install import record_aliases

    store_hash = store_path_hash(nar_digest, name)
    aliases = {"nar": sri(nar_digest)}
    if name == SOURCE:
        aliases[NIX_STORE] = store_hash
    else:
        aliases[NIX_PATH] = f"{store_hash}-{name}"
    record_aliases(cache, package, aliases)
    return f"{STORE_DIR}/{store_hash}-{name}"


def record_flat_path(cache: Cache, package: str, archive_sha256: str, name: str) -> str | None:
    """Record a kept archive's flat store path under ``name`` (fetchurl's name: the URL's last
    component); None when Nix would refuse that name, so there is nothing to offer."""
    if not is_store_name(name) or not cache.archive_path(archive_sha256).is_file():
        return None
    from ..install import record_aliases

    store_hash = flat_store_path_hash(bytes.fromhex(archive_sha256), name)
    record_aliases(cache, package, {NIX_FLAT: f"{store_hash}-{name}"})
    return f"{STORE_DIR}/{store_hash}-{name}"


def url_name(url: str) -> str:
    """The name ``fetchurl`` and ``nix-prefetch-url`` give a URL's output: its last component."""
    from urllib.parse import unquote, urlsplit

    path = urlsplit(url).path if "://" in url else url
    return unquote(path.rstrip("/").rsplit("/", 1)[-1])


# --------------------------------------------------------------------------- narinfo


def fingerprint(store_path: str, nar_digest: bytes, nar_size: int,
                references: tuple[str, ...] = ()) -> str:
    """What a narinfo's signature signs (Nix's ``ValidPathInfo::fingerprint``):
    ``1;<path>;sha256:<nix32 NAR hash>;<NAR size>;<comma-separated references>``."""
    return f"1;{store_path};sha256:{nix32(nar_digest)};{nar_size};{','.join(references)}"


def narinfo(offer: Offer, nar_digest: bytes, nar_size: int, key: SigningKey) -> bytes:
    """The signed narinfo of ``offer``. Sources have no references; the NAR goes uncompressed,
    so its file hash and size are the NAR's own and any byte range of it can be served."""
    hash_text = f"sha256:{nix32(nar_digest)}"
    lines = [
        f"StorePath: {offer.store_path}",
        f"URL: {offer.nar_url}",
        "Compression: none",
        f"FileHash: {hash_text}",
        f"FileSize: {nar_size}",
        f"NarHash: {hash_text}",
        f"NarSize: {nar_size}",
        "References: ",
        f"Sig: {key.sign(fingerprint(offer.store_path, nar_digest, nar_size))}",
    ]
    return ("\n".join(lines) + "\n").encode()


def flat_nar_digest(path: Path, archive_sha256: str) -> tuple[bytes, int]:
    """(NAR hash, NAR size) of a kept archive as a flat store path, reading it once; its
    SHA-256 is checked on the way, so a damaged archive is never described as whole."""
    from ..hashing.nar import flat_nar_pieces
    from ..package import Entry

    size = path.stat().st_size
    nar, flat = hashlib.sha256(), hashlib.sha256()
    total = 0
    with open(path, "rb", buffering=0) as f:
        for piece in flat_nar_pieces(Entry(path.name, "file", size)):
            if isinstance(piece, bytes):
                nar.update(piece)
                total += len(piece)
                continue
            read = 0
            while chunk := f.read(1 << 20):
                nar.update(chunk)
                flat.update(chunk)
                read += len(chunk)
            if read != size:
                raise TreeseedError(f"{path} changed while being read ({read} of {size} bytes)")
            total += read
    if flat.hexdigest() != archive_sha256:
        raise TreeseedError(f"{path}: the kept archive's SHA-256 is {flat.hexdigest()}, not the "
                            f"{archive_sha256} it is named by; run 'treeseed cache verify'")
    return nar.digest(), total


# --------------------------------------------------------------------------- indexing


class StorePathIndexer:
    """Gives every package in the cache its ``nix-store`` alias, on a thread of its own.

    A store path is a one-way function of the NAR hash, so a narinfo request can only be
    answered for packages whose NAR hash is known ahead of time. Most packages arrive with
    only their bt2 hash; this hashes each one's NAR once (reading the tree, as ``treeseed
    fetch --format nar`` would), checks it against the ``nar`` alias if the index has one, and
    records both. Private packages are indexed too: then a request for a private package's
    path is known here, and is never passed on to the swarm (:attr:`done_once` says when
    the first pass is over, before which nothing is asked of the swarm; the log says so too
    when swarm lookups are on, ``lookups_on``).
    """

    INTERVAL = 2.0

    def __init__(self, cache_root: Path, log: Callable[[str], None],
                 lookups_on: Callable[[], bool] = lambda: False) -> None:
        self.cache_root = cache_root
        self.log = log
        self.lookups_on = lookups_on
        self.done_once = threading.Event()
        self._seen: set[str] = set()
        self._stop = threading.Event()
        self._wake = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._run, name="treeseed-serve-nix-index", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def wake(self) -> None:
        """Look for new packages now (one was just installed)."""
        self._wake.set()

    def _run(self) -> None:
        cache = Cache(self.cache_root)
        try:
            while not self._stop.is_set():
                self._pass(cache)
                if not self.done_once.is_set():
                    self._first_pass_done()
                self._wake.wait(self.INTERVAL)
                self._wake.clear()
        finally:
            cache.close()

    def _first_pass_done(self) -> None:
        """From now on a path the index lacks is unknown, not private: the swarm may be asked.
        Said in the log only when it changes something (swarm lookups are on)."""
        self.done_once.set()
        if self.lookups_on():
            n = len(self._seen)
            self.log(f"treeseed serve: Nix store paths known for {n} package"
                     f"{'' if n == 1 else 's'}; narinfos for paths the cache lacks are asked of "
                     "the swarm from now on")

    def _pass(self, cache: Cache) -> None:
        try:
            names = os.listdir(cache.packages_dir)
        except OSError:
            return
        for package in sorted(n for n in names if is_bt2(n) and n not in self._seen):
            if self._stop.is_set():
                return
            self._seen.add(package)
            try:
                index_package(cache, package)
            except (TreeseedError, OSError, ValueError) as exc:
                self.log(f"treeseed serve: no Nix store path for {package}: {exc}; check it "
                         f"with 'treeseed cache verify {package}'")


def index_package(cache: Cache, package: str) -> str | None:
    """Record ``package``'s ``/nix/store/<hash>-source`` path unless the index has it; the NAR
    hash is computed from the tree here and must agree with a ``nar`` alias already recorded."""
    known = cache.aliases(package) if cache.has(package) else None
    if known is None or NIX_STORE in known:
        return None
    from ..hashing import hash_tree
    from ..package import scan_tree

    root = cache.path(package)
    nar = hash_tree(root, scan_tree(root, package), ["nar"], package)["nar"]
    if known.get("nar", nar) != nar:
        raise TreeseedError(f"its tree's NAR hash is {nar}, but the index says {known['nar']}")
    return record_tree_path(cache, package, parse_nix_hash(nar))


# --------------------------------------------------------------------------- the swarm


class StoreLookups:
    """Asks the swarm for store paths nobody here knows, within bounds.

    A narinfo request is answered by a worker of ``treeseed serve``; the DHT lookup and the
    download run on a thread of their own (:meth:`find` starts it or joins one under way),
    and the worker waits for it at most ``wait`` seconds, then answers 404 (Nix falls back
    to its other substituters or builds). A lookup that finishes later still installs its
    package, so Nix's next request finds it. Bounds, since any client may ask for any hash:
    at most ``running`` lookups at once and ``waiting`` workers waiting on them (beyond
    either, 404 at once), and a hash that was not found is not asked again for ``retry_after``
    seconds.
    """

    def __init__(self, cache_root: Path, settings: Callable[[], Settings | None],
                 log: Callable[[str], None], wait: float, running: int = 4, waiting: int = 8,
                 retry_after: float = 60.0, on_found: Callable[[str], None] | None = None) -> None:
        self.cache_root = cache_root
        self.settings = settings
        self.log = log
        self.wait = wait
        self.running = running
        self.retry_after = retry_after
        self.on_found = on_found
        self._lock = threading.Lock()
        self._in_flight: dict[str, threading.Event] = {}
        self._missed: OrderedDict[str, float] = OrderedDict()
        self._waiters = threading.BoundedSemaphore(waiting)

    def enabled(self) -> bool:
        settings = self.settings()
        return settings is not None and settings.torrent and settings.dht

    def find(self, store_hash: str) -> bool:
        """True once ``/nix/store/<store_hash>-source`` is in the cache, verified; False when
        the swarm cannot say within the bounds (the caller answers 404)."""
        done = self._start(store_hash)
        if done is None or not self._waiters.acquire(blocking=False):
            return False
        try:
            return done.wait(self.wait) and store_hash not in self._missed
        finally:
            self._waiters.release()

    def _start(self, store_hash: str) -> threading.Event | None:
        settings = self.settings()
        if settings is None or not (settings.torrent and settings.dht):
            return None
        with self._lock:
            missed = self._missed.get(store_hash)
            if missed is not None and time.monotonic() - missed < self.retry_after:
                return None
            self._missed.pop(store_hash, None)
            done = self._in_flight.get(store_hash)
            if done is not None:
                return done
            if len(self._in_flight) >= self.running:
                return None
            done = self._in_flight[store_hash] = threading.Event()
        threading.Thread(target=self._look_up, args=(store_hash, settings, done),
                         name=f"treeseed-serve-nix-lookup-{store_hash[:8]}", daemon=True).start()
        return done

    def _look_up(self, store_hash: str, settings: Settings, done: threading.Event) -> None:
        found = False
        try:
            found = self._fetch_and_check(store_hash, settings)
        except Exception as exc:  # anything from the swarm: logged, and the answer is 404
            self.log(f"treeseed serve: /nix/store/{store_hash}-source: swarm lookup failed: {exc}")
        finally:
            with self._lock:
                if not found:
                    self._missed[store_hash] = time.monotonic()
                    while len(self._missed) > 4096:
                        self._missed.popitem(last=False)
                del self._in_flight[store_hash]
            done.set()

    def _fetch_and_check(self, store_hash: str, settings: Settings) -> bool:
        """obtain_by_alias fetches by the DHT's hint and checks the tree; the NAR is hashed
        here once more, and only a tree whose NAR gives exactly this store path is recorded."""
        from ..hashing import hash_tree
        from ..locate import announce_new, obtain_by_alias
        from ..package import scan_tree

        self.log(f"treeseed serve: asking the swarm for /nix/store/{store_hash}-source")
        cache = Cache(self.cache_root)
        try:
            result = obtain_by_alias(cache, NIX_STORE, store_hash, settings)
            nar = hash_tree(result.path, scan_tree(result.path, result.hash), ["nar"],
                            result.hash)["nar"]
            got = store_path_hash(parse_nix_hash(nar))
            if got != store_hash:
                self.log(f"treeseed serve: the swarm's {result.hash} is /nix/store/{got}-source, "
                         f"not {store_hash}; not offered")
                return False
            record_tree_path(cache, result.hash, parse_nix_hash(nar))
            announce_new(cache, result, settings)
        finally:
            cache.close()
        self.log(f"treeseed serve: /nix/store/{store_hash}-source is {result.hash}, from the swarm")
        if self.on_found is not None:
            self.on_found(result.hash)
        return True


# --------------------------------------------------------------------------- the cache as served


class NixCache:
    """What ``treeseed serve`` asks to answer Nix: narinfos and NAR layouts, decided by the
    mirror's ``public`` (the one privacy gate) and signed with the user's key.

    ``key`` is None when the key could not be read or made: then no narinfo is served (an
    unsigned one would only be refused), which the log says once at start.
    """

    _LAYOUTS_KEPT = 16
    _FLAT_KEPT = 256

    def __init__(self, cache_root: Path, public: Callable[[str], bool], key: SigningKey | None,
                 lookups: StoreLookups | None, indexer: StorePathIndexer) -> None:
        self.cache_root = cache_root
        self.public = public
        self.key = key
        self.lookups = lookups
        self.indexer = indexer
        self._lock = threading.Lock()
        self._layouts: OrderedDict[str, NarLayout] = OrderedDict()
        self._flat: OrderedDict[str, tuple[bytes, int]] = OrderedDict()

    def narinfo(self, cache: Cache, store_hash: str) -> bytes | None:
        """The signed narinfo for ``store_hash``, or None (404). A hash the cache knows only
        through a non-public package is never asked of the swarm."""
        if self.key is None or not is_store_hash(store_hash):
            return None
        found, known = offers(cache, store_hash, self.public)
        answer = self._answer(cache, found)
        if answer is not None or known or self.lookups is None:
            return answer
        if not self.indexer.done_once.is_set():  # cannot yet tell private from unknown
            return None
        if self.lookups.find(store_hash):
            return self._answer(cache, offers(cache, store_hash, self.public)[0])
        return None

    def _answer(self, cache: Cache, found: list[Offer]) -> bytes | None:
        assert self.key is not None
        for offer in found:
            described = self._describe(cache, offer)
            if described is not None:
                return narinfo(offer, *described, self.key)
        return None

    def _describe(self, cache: Cache, offer: Offer) -> tuple[bytes, int] | None:
        """(NAR hash, NAR size) of what ``offer``'s NAR URL serves."""
        if offer.archive is not None:
            return self.flat(cache, offer.archive)
        layout = self.tree_layout(cache, offer.package)
        nar = cache.aliases(offer.package).get("nar")
        if layout is None or nar is None:
            return None
        return parse_nix_hash(nar), layout.size

    def tree_layout(self, cache: Cache, package: str) -> NarLayout | None:
        """The NAR of a cached package; listed once, then kept for the most recent ones."""
        from ..narstream import NarLayout
        from ..package import scan_tree

        with self._lock:
            layout = self._layouts.get(package)
            if layout is not None:
                self._layouts.move_to_end(package)
                return layout
        root = cache.path(package)
        try:
            layout = NarLayout.for_tree(root, scan_tree(root, package), package)
        except (OSError, TreeseedError):
            return None
        with self._lock:
            self._layouts[package] = layout
            while len(self._layouts) > self._LAYOUTS_KEPT:
                self._layouts.popitem(last=False)
        return layout

    def flat(self, cache: Cache, archive: str) -> tuple[bytes, int] | None:
        """(NAR hash, NAR size) of a kept archive, read and checked once per archive."""
        with self._lock:
            known = self._flat.get(archive)
        if known is not None:
            return known
        try:
            known = flat_nar_digest(cache.archive_path(archive), archive)
        except (OSError, TreeseedError):
            return None
        with self._lock:
            self._flat[archive] = known
            while len(self._flat) > self._FLAT_KEPT:
                self._flat.popitem(last=False)
        return known

    def forget(self, package: str) -> None:
        with self._lock:
            self._layouts.pop(package, None)
