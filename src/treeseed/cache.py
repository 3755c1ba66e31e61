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
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import CacheError, TreeseedError
from .ids import is_bt2

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
"""


#: What :meth:`Cache.verify` says of a hash that is not in the cache at all.
NOT_CACHED = "not in the cache"


def default_cache_dir() -> Path:
    """``TREESEED_CACHE_DIR``, else the platform's user cache directory + ``treeseed``."""
    env = os.environ.get("TREESEED_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("treeseed", appauthor=False))


@dataclass
class PackageInfo:
    """One index row, as ``cache list`` shows it."""

    hash: str
    size: int
    files: int
    added: float
    last_used: float
    source: str | None
    name: str | None
    version: str | None
    private: bool


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

    def is_private(self, package_hash: str, listed: Sequence[str] = ()) -> bool:
        """Private packages are never announced, seeded, served or looked up in the swarm:
        those whose own manifest says ``private = true``, and those ``listed`` (the ``private``
        setting) by hash or by name. Read from the package itself, not the index, so a stale
        or rebuilt index can never make a private package public."""
        if package_hash in listed:
            return True
        from .manifest import MANIFEST_NAME, load

        path = self.path(package_hash) / MANIFEST_NAME
        if not path.is_file():
            return False
        try:
            manifest = load(path, f"{package_hash}: {MANIFEST_NAME}")
        except TreeseedError:
            return True  # unreadable: err on the side of not publishing it
        return bool(manifest.private) or (manifest.name is not None and manifest.name in listed)

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
                db = sqlite3.connect(self.root / "index.sqlite", timeout=60, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(_SCHEMA)
            except sqlite3.Error as exc:
                raise CacheError(f"cache index {self.root / 'index.sqlite'} is unusable ({exc}); "
                                 "it holds only derived data: delete it and it is rebuilt") from None
            self._db = db
        return self._db

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

    def add_aliases(self, package_hash: str, aliases: dict[str, str]) -> None:
        """Remember other formats' hashes of a package (the newest mapping for a value wins)."""
        self.db.executemany(
            "INSERT OR REPLACE INTO aliases (format, value, hash) VALUES (?, ?, ?)",
            [(fmt, value, package_hash) for fmt, value in aliases.items() if value and fmt != "bt2"],
        )

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
        import secrets

        self._ensure_dirs()
        path = self.tmp_dir / f"w-{os.getpid()}-{secrets.token_hex(6)}"
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

    def install(self, tree: Path, package_hash: str) -> bool:
        """Rename the verified ``tree`` into ``p/<hash>``: the package appears whole or not at all.

        Returns False when the package was already there (another process, or an earlier fetch of
        the same tree from elsewhere): ours is simply dropped, as equal hashes mean equal trees.
        """
        dest = self.path(package_hash)
        try:
            os.rename(tree, dest)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not dest.is_dir():
                raise CacheError(f"cannot move {tree} into the cache at {dest}: {exc.strerror}") from None
            return False
        return True

    def remove(self, package_hash: str) -> bool:
        """Delete one package: renamed away first, so it disappears atomically.

        Only a bt2 hash names a package; anything else (``..``, a path) is not in the cache.
        """
        if not self.has(package_hash):
            if is_bt2(package_hash):
                self._forget(package_hash)
            return False
        dest = self.path(package_hash)
        import secrets

        self._ensure_dirs()
        trash = self.tmp_dir / f"rm-{package_hash}-{secrets.token_hex(4)}"
        os.rename(dest, trash)
        self._forget(package_hash)
        _rmtree(trash)
        return True

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
        """Re-hash packages; yield (hash, None) when intact, (hash, problem) when not."""
        from .errors import TreeseedError
        from .hashing import hash_tree
        from .package import scan_tree

        targets = list(hashes) if hashes else sorted(self._package_dirs())
        for h in targets:
            if not self.has(h):
                yield h, NOT_CACHED
                continue
            try:
                entries = scan_tree(self.path(h), h)
                actual = hash_tree(self.path(h), entries, ["bt2"], source=h)["bt2"]
            except (TreeseedError, OSError) as exc:
                yield h, f"unreadable: {exc}"
                continue
            yield h, None if actual == h else f"contents changed: they now hash to {actual}"


def _rmtree(path: Path) -> None:
    """Remove a tree we own, fixing permissions that would stop the removal."""

    def onerror(func, p, exc_info):  # type: ignore[no-untyped-def]
        try:
            os.chmod(os.path.dirname(p), 0o755)
            func(p)
        except OSError:
            pass

    import shutil

    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, onerror=onerror)
