"""The global content-addressed cache.

Layout under the cache root::

    p/<bt2 hash>/     one verified package per directory; only ever created by rename
    a/<sha256 hex>    archives kept as downloaded (for Nix's flat hashes); checked, renamed in
    t/<bt2 hash>.*    derived swarm data: the .torrent and every block hash (treeseed.swarm)
    tmp/w-<random>/   a fetch in progress, locked (flock) by its owner while it lives
    locks/<key>.lock  serialises processes fetching the same package or source
    index.sqlite      derived data: sizes, last use, aliases (zig, nar, git, archive-sha256 ...)

The invariant: a directory in ``p/`` is a complete package whose bt2 hash is its name. Packages
are assembled in ``tmp/`` and renamed into ``p/`` in one step, so a crash leaves either nothing
or a whole package; a killed process's work directory is unlocked and gc removes it. The index
is never trusted over the directories: a row whose directory is gone is ignored (and dropped),
and a directory without a row is indexed when next seen.

Installed packages are read-only (files 0444 or 0555, directories 0555), so a build step cannot
change a dependency under every later build that trusts ``p/<hash>`` by its name. Whatever
re-hashes a cached package and finds it changed calls :meth:`Cache.evict_corrupt`: the entry is
at fault, not the source it came from, and it is removed so that it is fetched again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import CacheError, TreeseedError
from .ids import is_bt2
from .record import Record

if TYPE_CHECKING:
    import sqlite3

# sqlite3, hashlib, secrets and shutil are imported where used: a fully cached `treeseed
# fetch` only checks directories, and it is measured against the cost of starting Python.

_SCHEMA = """
CREATE TABLE IF NOT EXISTS packages (
    hash      TEXT PRIMARY KEY,
    size      INTEGER NOT NULL,
    files     INTEGER NOT NULL,
    added     REAL NOT NULL,
    last_used REAL NOT NULL,
    source    TEXT,
    name      TEXT,
    version   TEXT,
    private   INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS aliases (
    format TEXT NOT NULL,
    value  TEXT NOT NULL,
    hash   TEXT NOT NULL,
    PRIMARY KEY (format, value)
);
CREATE INDEX IF NOT EXISTS aliases_by_hash ON aliases(hash);
CREATE TABLE IF NOT EXISTS marks (
    hash TEXT NOT NULL,
    mark TEXT NOT NULL,
    PRIMARY KEY (hash, mark)
);
CREATE TABLE IF NOT EXISTS validators (
    url           TEXT PRIMARY KEY,
    etag          TEXT,
    last_modified TEXT,
    hash          TEXT NOT NULL,
    checked       REAL NOT NULL
);
"""


#: What :meth:`Cache.verify` says of a hash that is not in the cache at all.
NOT_CACHED = "not in the cache"

#: Modes of an installed package. Only the owner's executable bit is part of the hash, so these
#: never change one: scan_tree reads 0555 as executable and 0444 as not, as it read 0755/0644.
FILE_MODE, EXEC_MODE, DIR_MODE = 0o444, 0o555, 0o555


def default_cache_dir() -> Path:
    """``TREESEED_CACHE_DIR``, else the platform's user cache directory + ``treeseed``."""
    env = os.environ.get("TREESEED_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("treeseed", appauthor=False))


class PackageInfo(Record):
    """One index row, as ``cache list`` shows it."""

    __slots__ = ("hash", "size", "files", "added", "last_used", "source", "name", "version",
                 "private")

    def __init__(self, hash: str, size: int, files: int, added: float, last_used: float,  # noqa: A002
                 source: str | None, name: str | None, version: str | None, private: bool) -> None:
        self.hash = hash
        self.size = size
        self.files = files
        self.added = added
        self.last_used = last_used
        self.source = source
        self.name = name
        self.version = version
        self.private = private


class Cache:
    """A cache root; cheap to create (nothing is touched until used)."""

    def __init__(self, root: Path | str | None = None) -> None:
        # Absolute: fetchers run in work directories and are handed paths inside the cache.
        self.root = (Path(root) if root is not None else default_cache_dir()).absolute()
        self.packages_dir = self.root / "p"
        self.tmp_dir = self.root / "tmp"
        self.locks_dir = self.root / "locks"
        self.archives_dir = self.root / "a"
        self.torrents_dir = self.root / "t"
        self._db: sqlite3.Connection | None = None

    # ------------------------------------------------------------------ paths and lookups

    def path(self, package_hash: str) -> Path:
        return self.packages_dir / package_hash

    def has(self, package_hash: str) -> bool:
        return is_bt2(package_hash) and self.path(package_hash).is_dir()

    def resolve(self, fmt: str, value: str) -> str | None:
        """The bt2 hash of a cached package known by ``value`` in format ``fmt``, if any."""
        if fmt == "bt2":
            return value if self.has(value) else None
        if not (self.root / "index.sqlite").exists():
            return None
        row = self.db.execute(
            "SELECT hash FROM aliases WHERE format = ? AND value = ?", (fmt, value)
        ).fetchone()
        if row and self.has(row[0]):
            return row[0]
        return None

    def archive_path(self, sha256_hex: str) -> Path:
        """Where an archive whose SHA-256 is ``sha256_hex`` is kept, if it is kept at all."""
        if not re.fullmatch(r"[0-9a-f]{64}", sha256_hex):
            raise CacheError(f"{sha256_hex!r} is not a SHA-256 in lowercase hex")
        return self.archives_dir / sha256_hex

    def keep_archive(self, source: Path, expected_sha256: str | None = None) -> str:
        """Keep a copy of the archive at ``source`` as ``a/<its SHA-256>``; return that hex.

        The copy is hashed as it is written into ``tmp/`` and renamed into ``a/`` only once its
        digest is known (and equals ``expected_sha256``, when given), so a file in ``a/`` is
        always whole and always named by its contents: ``treeseed serve`` hands it out under
        that name (Nix's hashed-mirror layout) without reading it first.
        """
        import hashlib
        import secrets

        self._ensure_dirs()
        tmp = self.tmp_dir / f"a-{os.getpid()}-{secrets.token_hex(6)}"
        h = hashlib.sha256()
        try:
            with open(source, "rb") as src, open(tmp, "xb") as out:
                while chunk := src.read(1 << 20):
                    h.update(chunk)
                    out.write(chunk)
                os.fchmod(out.fileno(), 0o644)
            digest = h.hexdigest()
            if expected_sha256 is not None and digest != expected_sha256.lower():
                raise CacheError(f"{source}: SHA-256 is {digest}, not the expected "
                                 f"{expected_sha256}; the archive was not kept")
            self.archives_dir.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, self.archive_path(digest))
        except OSError as exc:
            raise CacheError(f"cannot keep {source} in {self.archives_dir}: "
                             f"{exc.strerror or exc}") from None
        finally:
            tmp.unlink(missing_ok=True)
        return digest

    def mark(self, package_hash: str, *marks: str) -> None:
        """Remember facts about a package that its tree cannot tell: where its bytes came from
        and what its users said (:mod:`treeseed.sharing`). Marks only add up; losing them (a
        deleted index) only ever makes :mod:`treeseed.sharing` say no."""
        self.db.executemany("INSERT OR IGNORE INTO marks (hash, mark) VALUES (?, ?)",
                            [(package_hash, m) for m in marks])

    def marks(self, package_hash: str) -> set[str]:
        if not (self.root / "index.sqlite").exists():
            return set()
        rows = self.db.execute("SELECT mark FROM marks WHERE hash = ?", (package_hash,))
        return {r[0] for r in rows}

    def all_marks(self) -> dict[str, set[str]]:
        """Every package's marks in one query (``serve`` decides for the whole cache at once)."""
        found: dict[str, set[str]] = {}
        if (self.root / "index.sqlite").exists():
            for package_hash, mark in self.db.execute("SELECT hash, mark FROM marks"):
                found.setdefault(package_hash, set()).add(mark)
        return found

    def validators(self, url: str) -> tuple[str | None, str | None, str] | None:
        """(ETag, Last-Modified, package hash) the server at ``url`` gave when it last served
        that package, for a conditional request (:mod:`treeseed.update`); None when unknown
        or when the package is no longer cached: like an alias, a validator means nothing
        without the package it names."""
        if not (self.root / "index.sqlite").exists():
            return None
        row = self.db.execute("SELECT etag, last_modified, hash FROM validators WHERE url = ?",
                              (url,)).fetchone()
        if row is None or not self.has(row[2]):
            return None
        return row[0], row[1], row[2]

    def remember_validators(self, url: str, etag: str | None, last_modified: str | None,
                            package_hash: str) -> None:
        """Record what ``url``'s server said identifies the representation that unpacked to
        ``package_hash``; without either validator there is nothing to ask with, so the row
        is dropped instead."""
        if etag is None and last_modified is None:
            self.db.execute("DELETE FROM validators WHERE url = ?", (url,))
            return
        self.db.execute(
            "INSERT OR REPLACE INTO validators (url, etag, last_modified, hash, checked)"
            " VALUES (?, ?, ?, ?, ?)", (url, etag, last_modified, package_hash, time.time()))

    def aliases(self, package_hash: str) -> dict[str, str]:
        rows = self.db.execute("SELECT format, value FROM aliases WHERE hash = ?", (package_hash,))
        return dict(rows.fetchall())

    # ------------------------------------------------------------------ the index

    @property
    def db(self) -> sqlite3.Connection:
        import sqlite3

        if self._db is None:
            self._ensure_dirs()
            try:
                with self._index_setup():
                    db = sqlite3.connect(self.root / "index.sqlite", timeout=60,
                                         isolation_level=None)
                    db.execute("PRAGMA journal_mode=WAL")
                    db.execute("PRAGMA synchronous=NORMAL")
                    db.executescript(_SCHEMA)
            except sqlite3.Error as exc:
                raise CacheError(f"cache index {self.root / 'index.sqlite'} is unusable ({exc}); "
                                 "it holds only derived data: delete it and it is rebuilt") from None
            self._db = db
        return self._db

    @contextlib.contextmanager
    def _index_setup(self) -> Iterator[None]:
        """One connection at a time sets the index up (journal mode, schema), across threads
        and processes. Two connections doing it at once can deadlock inside SQLite (one holds
        a read lock while the other waits to switch the journal to WAL), and SQLite breaks
        that by failing one at once, busy timeout or not: a fresh cache opened by the fetch
        threads of a project saw 'database is locked'."""
        fd = os.open(self.locks_dir / "index.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def touch(self, package_hash: str) -> None:
        self.db.execute("UPDATE packages SET last_used = ? WHERE hash = ?", (time.time(), package_hash))

    def record(
        self,
        package_hash: str,
        size: int,
        files: int,
        source: str | None = None,
        name: str | None = None,
        version: str | None = None,
        private: bool = False,
    ) -> None:
        now = time.time()
        self.db.execute(
            "INSERT INTO packages (hash, size, files, added, last_used, source, name, version, private)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(hash) DO UPDATE SET last_used = ?,"
            " source = COALESCE(packages.source, excluded.source)",
            (package_hash, size, files, now, now, source, name, version, int(private), now),
        )

    def add_aliases(self, package_hash: str, aliases: dict[str, str]) -> list[tuple[str, str, str]]:
        """Remember other formats' hashes of a package. An alias that already names another
        package still in the cache is never repointed: it is returned as (format, value, that
        package) for the caller to report. Only a dangling alias (its package gone) moves."""
        conflicts = []
        for fmt, value in aliases.items():
            if not value or fmt == "bt2":
                continue
            row = self.db.execute("SELECT hash FROM aliases WHERE format = ? AND value = ?",
                                  (fmt, value)).fetchone()
            if row is not None and row[0] != package_hash and self.has(row[0]):
                conflicts.append((fmt, value, row[0]))
                continue
            self.db.execute("INSERT OR REPLACE INTO aliases (format, value, hash) VALUES (?, ?, ?)",
                            (fmt, value, package_hash))
        return conflicts

    def info(self, package_hash: str) -> PackageInfo | None:
        row = self.db.execute("SELECT * FROM packages WHERE hash = ?", (package_hash,)).fetchone()
        return PackageInfo(*row[:-1], bool(row[-1])) if row else None

    def list(self) -> list[PackageInfo]:
        """Every package on disk, indexing any the index missed (a crash after the rename)."""
        on_disk = set(self._package_dirs())
        rows = {r[0]: PackageInfo(*r[:-1], bool(r[-1])) for r in self.db.execute("SELECT * FROM packages")}
        for gone in set(rows) - on_disk:
            self._forget(gone)
            del rows[gone]
        for missing in on_disk - set(rows):
            rows[missing] = self._reindex(missing)
        return sorted(rows.values(), key=lambda p: p.last_used, reverse=True)

    def last_used(self, info: PackageInfo) -> float:
        """The later of the index's last use and the directory's mtime, which a fully cached
        dependency fetch bumps without opening the index."""
        try:
            return max(info.last_used, self.path(info.hash).stat().st_mtime)
        except OSError:
            return info.last_used

    def _reindex(self, package_hash: str) -> PackageInfo:
        from .package import scan_tree

        entries = scan_tree(self.path(package_hash), package_hash)
        size = sum(e.size for e in entries)
        self.record(package_hash, size, len(entries))
        info = self.info(package_hash)
        assert info is not None
        return info

    def _forget(self, package_hash: str) -> None:
        self.db.execute("DELETE FROM packages WHERE hash = ?", (package_hash,))
        self.db.execute("DELETE FROM aliases WHERE hash = ?", (package_hash,))
        self.db.execute("DELETE FROM marks WHERE hash = ?", (package_hash,))

    def _package_dirs(self) -> Iterator[str]:
        if not self.packages_dir.is_dir():
            return
        for name in os.listdir(self.packages_dir):
            if is_bt2(name) and (self.packages_dir / name).is_dir():
                yield name

    # ------------------------------------------------------------------ writing

    def _ensure_dirs(self) -> None:
        try:
            for d in (self.packages_dir, self.tmp_dir, self.locks_dir):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(f"cannot create the cache at {self.root}: {exc.strerror}; "
                             "choose another with --cache-dir or TREESEED_CACHE_DIR") from None

    @contextlib.contextmanager
    def workdir(self) -> Iterator[Path]:
        """A private directory under tmp/, locked while alive and removed afterwards."""
        self._ensure_dirs()
        # os.urandom is what secrets.token_hex reads; the secrets module would import hmac,
        # and OpenSSL with it, on the way to every fetch.
        path = self.tmp_dir / f"w-{os.getpid()}-{os.urandom(6).hex()}"
        path.mkdir()
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield path
        finally:
            _rmtree(path)
            os.close(fd)

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[bool]:
        """Hold an exclusive lock named by ``key``; yields True when another process held it first.

        Two processes fetching the same thing queue here, so the second finds the package the
        first installed instead of unpacking it again.
        """
        import hashlib

        self._ensure_dirs()
        name = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        fd = os.open(self.locks_dir / f"{name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            waited = False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                waited = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield waited
        finally:
            os.close(fd)

    def install(self, tree: Path, package_hash: str, sealed: bool = False) -> bool:
        """Rename the verified ``tree`` into ``p/<hash>``: the package appears whole or not at all.

        Everything below the tree's root is made read-only first (:func:`seal`), so no package
        is ever visible with writable files; ``sealed`` says treeseed's own fetcher already did
        (it created the files read-only), which saves a walk and a chmod per file. The root itself loses its write bit right after the
        rename: rename(2) moves a directory to another parent only if it may rewrite the
        directory's ``..``, which takes the write bit for anyone but root.

        Returns False when the package was already there (another process, or an earlier fetch of
        the same tree from elsewhere): ours is simply dropped, as equal hashes mean equal trees.
        """
        dest = self.path(package_hash)
        try:
            if not sealed:
                seal(tree, include_root=False)
            os.rename(tree, dest)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not dest.is_dir():
                raise CacheError(f"cannot move {tree} into the cache at {dest}: {exc.strerror}") from None
            return False
        with contextlib.suppress(OSError):  # a tree that is in p/ is a package, whatever its mode
            os.chmod(dest, DIR_MODE)
        return True

    def remove(self, package_hash: str) -> bool:
        """Delete one package: renamed away first, so it disappears atomically.

        Only a bt2 hash names a package; anything else (``..``, a path) is not in the cache.
        The package's root gets its write bit back first: the rename rewrites its ``..``.
        """
        if not self.has(package_hash):
            if is_bt2(package_hash):
                self._forget(package_hash)
            return False
        dest = self.path(package_hash)
        import secrets

        self._ensure_dirs()
        trash = self.tmp_dir / f"rm-{package_hash}-{secrets.token_hex(4)}"
        try:
            os.chmod(dest, 0o755)
            os.rename(dest, trash)
        except OSError as exc:
            raise CacheError(f"cannot remove {dest}: {exc.strerror or exc}; the cache at "
                             f"{self.root} must be yours to change it") from None
        self._forget(package_hash)
        _rmtree(trash)
        return True

    def evict_corrupt(self, package_hash: str, why: str) -> str:
        """Remove a cached package that no longer hashes to its name; return the one line that
        says so, for the caller to print or add to its error.

        Every place that re-hashes a cached package and finds a mismatch calls this. Packages
        are verified before the rename and installed read-only, so the fault is the cache
        entry's (a build step running as root or changing modes, a hand edit, a disk error),
        never the source's: blaming the source would have the user pin the corrupt hash.
        Removing the entry makes the next fetch get the package again from its sources.
        """
        from .sharing import PRIVATE

        path = self.path(package_hash)
        # What users said of this hash (private) holds for its refetch; where the bytes came
        # from does not: the refetch records its own origin.
        kept = self.marks(package_hash) & {PRIVATE}
        self.remove(package_hash)
        if kept:
            self.mark(package_hash, *kept)
        return (f"cache entry {path} is corrupt ({why}): something changed it after it was "
                "installed; it was removed")

    def check(self, package_hash: str) -> str | None:
        """Re-hash one cached package: None when it still hashes to its name, else what is
        wrong with it (it is left in place: see :meth:`evict_corrupt`)."""
        from .hashing import hash_tree
        from .package import scan_tree

        path = self.path(package_hash)
        try:
            entries = scan_tree(path, package_hash)
            actual = hash_tree(path, entries, ["bt2"], source=package_hash)["bt2"]
        except (TreeseedError, OSError) as exc:
            return f"unreadable: {exc}"
        return None if actual == package_hash else f"its files now hash to {actual}"

    def repair(self, package_hash: str, why: str) -> str:
        """Evict a corrupt package (:meth:`evict_corrupt`) and fetch it again from the source
        it was first fetched from (the index's ``source``, checked against its hash); return
        what was done, for ``cache verify --repair`` to print after the problem."""
        from .fetch import fetch

        info = self.info(package_hash)
        source = info.source if info else None
        self.evict_corrupt(package_hash, why)
        if not source or source == "swarm":
            return (f"removed it; fetch it again with 'treeseed fetch {package_hash}' (mirrors "
                    "and swarm) or 'treeseed fetch' in a package that depends on it")
        try:
            fetch(source, self, expected=package_hash)
        except TreeseedError as exc:
            return f"removed it, but fetching it again from {source} failed: {exc}"
        return f"removed it and fetched it again from {source}"

    # ------------------------------------------------------------------ maintenance

    def gc(self, older_than: float, dry_run: bool = False) -> tuple[list[str], list[Path]]:
        """Remove packages unused for ``older_than`` seconds and abandoned tmp/ directories."""
        cutoff = time.time() - older_than
        victims = [p.hash for p in self.list() if self.last_used(p) < cutoff]
        stale = list(self.stale_tmp())
        if not dry_run:
            for h in victims:
                self.remove(h)
            for path in stale:
                _rmtree(path)
        return victims, stale

    def stale_tmp(self) -> Iterator[Path]:
        """tmp/ entries whose owner is gone: their directory lock can be taken."""
        if not self.tmp_dir.is_dir():
            return
        for child in self.tmp_dir.iterdir():
            if child.name.startswith("rm-"):
                yield child
                continue
            try:
                fd = os.open(child, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                yield child  # a stray file
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                yield child
            except BlockingIOError:
                pass  # a live fetch
            finally:
                os.close(fd)

    def verify(self, hashes: Sequence[str] | None = None) -> Iterator[tuple[str, str | None]]:
        """Re-hash packages; yield (hash, None) when intact, (hash, problem) when not.

        An intact package is sealed again (:func:`seal`): packages installed before installs
        were read-only, or whose root kept its write bit after a crash, become read-only too.
        """
        targets = list(hashes) if hashes else sorted(self._package_dirs())
        for h in targets:
            if not self.has(h):
                yield h, NOT_CACHED
                continue
            problem = self.check(h)
            if problem is None:
                with contextlib.suppress(OSError):  # a cache that is not ours to change
                    seal(self.path(h))
                yield h, None
            else:
                yield h, (f"cache entry {self.path(h)} is corrupt ({problem}): something changed "
                          "it after it was installed")


def seal(root: Path, include_root: bool = True) -> None:
    """Make a package tree read-only: files 0444, or 0555 when the owner may execute them,
    directories 0555; symlinks are left alone (their mode means nothing).

    One os.scandir walk, with byte paths and no Path objects per file: the kernel tree's 80k
    files come through here on every install.
    """
    stack = [os.fsencode(root)]
    if include_root:
        os.chmod(stack[0], DIR_MODE)
    while stack:
        with os.scandir(stack.pop()) as it:
            for de in it:
                if de.is_dir(follow_symlinks=False):
                    os.chmod(de.path, DIR_MODE)
                    stack.append(de.path)
                elif de.is_file(follow_symlinks=False):
                    executable = de.stat(follow_symlinks=False).st_mode & 0o100
                    os.chmod(de.path, EXEC_MODE if executable else FILE_MODE)


def _writable(root: bytes) -> None:
    """Give every directory of a tree we own its owner's rwx back, each before it is listed,
    so the tree can be deleted however its modes were left (read-only packages, a directory
    whose write bit a build removed)."""
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            os.chmod(d, 0o700)
            with os.scandir(d) as it:
                stack += [de.path for de in it if de.is_dir(follow_symlinks=False)]
        except OSError:
            continue  # not ours or gone: rmtree reports nothing and leaves it, as before


def _rmtree(path: Path) -> None:
    """Remove a tree we own, read-only or not (installed packages are 0555/0444).

    Errors are ignored: what cannot be removed stays in tmp/, where gc tries again.
    """
    import shutil

    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
        return
    _writable(os.fsencode(path))
    shutil.rmtree(path, ignore_errors=True)
