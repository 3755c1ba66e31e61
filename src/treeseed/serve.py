"""``treeseed serve``: the cache as a content-addressed HTTP mirror for a LAN or a CI runner.

Endpoints (docs/serve.md has the full contract)::

    GET|HEAD /bt2-<hex>.tar                a deterministic tar of the package (treeseed.tarstream)
    GET|HEAD /bt2-<hex>.torrent            the package's v2 .torrent (treeseed.swarm.torrents)
    GET|HEAD /bt2-<hex>/package/<path>     one file of the package: BEP 19 web seeding
    GET|HEAD /alias/<format>/<value>       307 to /bt2-<hex>.tar for a zig, nar, git ... hash
    GET|HEAD /sha256/<hex or nix32>        a kept archive, Nix's hashed-mirror layout
    GET|HEAD /                             plain-text list of the public packages
    GET|HEAD /nix-cache-info               Nix's binary-cache protocol (treeseed.interop.nixcache):
    GET|HEAD /<32 nix32>.narinfo           a signed narinfo for a store path treeseed may publish,
    GET|HEAD /nar/bt2-<hex>.nar            a package's tree as a NAR,
    GET|HEAD /nar/sha256-<hex>.nar         a kept archive as a NAR (a flat store path)
    GET|HEAD /ipfs/<cid>?format=car|raw    a trustless IPFS gateway (treeseed.gateway): a CAR of
                                           the DAG below a CID, or one block

Every response body is named by a hash, so each has a strong ETag and is cacheable forever;
``Range`` (one range) and ``If-None-Match``/``If-Range`` work on all of them. Private packages
(:class:`PublicPackages`) answer exactly like absent ones, on every endpoint. Anything that is
not one of those exact paths is 404: request paths are matched, never joined to the disk.

Connections: a reception loop reads request heads without blocking, each against a deadline,
and hands whole ones to a fixed pool of worker threads (:class:`MirrorServer`, :class:`Limits`),
so slow or silent clients cost a descriptor, not a thread, and a normal client is still
answered. Bodies are streamed from the package files (``sendfile`` for large pieces, gathered
small writes for headers and small files), so no response is ever held in memory or written
to disk; a client that stops reading is dropped after ``write_timeout``. It is all standard
library: no dependency, and blocking ``sendfile`` and file reads suit worker threads.
"""

from __future__ import annotations

import io
import os
import queue
import re
import selectors
import signal
import socket
import sqlite3
import stat
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING, TextIO
from urllib.parse import quote, unquote, urlsplit

from .cache import Cache
from .errors import TreeseedError
from .ids import is_bt2
from .tarstream import FileSlice, TarLayout

if TYPE_CHECKING:
    from .config import Settings
    from .interop.nixcache import NixCache

DEFAULT_BIND = "127.0.0.1:8750"
IMMUTABLE = "public, max-age=31536000, immutable"
NOT_CACHEABLE = "no-store"  # a 404 or a redirect may change once the package is fetched
ALIAS_FORMATS = ("zig", "nar", "git", "swhid", "archive-sha256", "git-commit")
_FLUSH = 256 << 10  # gather small pieces up to this much before one send
_SENDFILE_MIN = 64 << 10  # file pieces at least this big go out with sendfile
_LAYOUTS_KEPT = 16

_TAR = re.compile(r"/(bt2-[0-9a-f]{64})\.tar")
_TORRENT = re.compile(r"/(bt2-[0-9a-f]{64})\.torrent")
_WEB_SEED = re.compile(r"/(bt2-[0-9a-f]{64})/package/(.+)")
_SHA256 = re.compile(r"/sha256/([0-9a-f]{64}|[0-9abcdfghijklmnpqrsvwxyz]{52})")
_ALIAS = re.compile(r"/alias/([a-z0-9-]+)/(.+)")
_NARINFO = re.compile(r"/([0-9abcdfghijklmnpqrsvwxyz]{32})\.narinfo")
_TREE_NAR = re.compile(r"/nar/(bt2-[0-9a-f]{64})\.nar")
_FLAT_NAR = re.compile(r"/nar/sha256-([0-9a-f]{64})\.nar")
_IPFS = re.compile(r"/ipfs/([A-Za-z0-9]{8,120})/?")
_ETAG = re.compile(r'\s*(W/)?("[^"]*")\s*(?:,|$)')


class ServeError(TreeseedError):
    """The mirror cannot start: a bad --bind, a port in use, an unreadable settings file."""


# --------------------------------------------------------------------------- what is served


@dataclass
class Resource:
    """A response body: its length, validator and type, and its bytes on demand."""

    size: int
    etag: str  # quoted, strong
    content_type: str
    pieces: Callable[[int, int], Iterator[bytes | FileSlice]]
    headers: dict[str, str] = field(default_factory=dict)
    cache_control: str = IMMUTABLE


@dataclass
class Redirect:
    location: str


@dataclass
class Text:
    """A small generated page (the index); not content-addressed, so never cached."""

    body: bytes


def bytes_resource(data: bytes, etag: str, content_type: str) -> Resource:
    return Resource(len(data), etag, content_type, lambda a, b: iter((data[a:b],)))


def file_resource(path: Path, size: int, etag: str, content_type: str,
                  headers: dict[str, str] | None = None) -> Resource:
    """A whole file as a resource; its size is checked again as each piece is copied."""
    raw = os.fsencode(path)

    def pieces(start: int, stop: int) -> Iterator[bytes | FileSlice]:
        if stop > start:
            yield FileSlice(raw, size, start, stop - start)

    return Resource(size, etag, content_type, pieces, headers or {})


class Privacy:
    """The settings that decide what may be served (``private``, ``share``), re-read whenever
    the settings file changes while serving, so a package made private takes effect without a
    restart. If the file turns unreadable or invalid, every package is treated as private
    until it is fixed: never publish by accident."""

    def __init__(self, log: Callable[[str], None]) -> None:
        from .config import config_path, settings

        self._path = config_path()
        self._log = log
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._settings: Settings | None = settings()  # errors stop startup

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def settings(self) -> Settings | None:
        """The current settings; None means "they are broken: hide everything"."""
        stamp = self._stat()
        with self._lock:
            if stamp != self._stamp:
                self._stamp = stamp
                self._settings = self._reload()
            return self._settings

    def _reload(self) -> Settings | None:
        from .config import settings

        try:
            return settings()
        except TreeseedError as exc:
            self._log(f"treeseed serve: serving no package until the settings are fixed: {exc}")
            return None


def _dir_stamp(path: Path) -> tuple[int, int, int] | None:
    """What changes when an entry is added to or removed from a directory."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_nlink, st.st_ino)


class PublicPackages:
    """The set of cached packages that may be served, computed ahead of requests.

    Why a set: deciding at request time meant reading a package's manifest only when the
    package exists, so a private package's 404 took measurably longer than an absent one's, a
    timing oracle for what a cache holds. Now every request costs the same two ``stat`` calls
    (the settings file and ``p/``, whatever the hash) and one set lookup; the decision
    (:meth:`treeseed.sharing.Sharing.publishable`, the one place that makes it) is taken only
    when ``p/`` or the settings change, and every :data:`RELIST` seconds (a change within one
    mtime tick, or new index marks), never for the hash being asked. A package's manifest
    cannot change under its hash, so each is read once.
    """

    RELIST = 5.0

    def __init__(self, cache_root: Path, privacy: Privacy) -> None:
        self._cache_root = cache_root
        self._packages_dir = Cache(cache_root).packages_dir
        self._privacy = privacy
        self._lock = threading.Lock()
        self._manifests: dict[str, tuple[str | None, bool]] = {}
        self._public: frozenset[str] = frozenset()
        self._computed_for: tuple[object, ...] | None = None
        self._stop = threading.Event()

    def __contains__(self, package_hash: str) -> bool:
        return package_hash in self.current()

    def current(self, force: bool = False) -> frozenset[str]:
        """The public hashes, recomputed first if ``p/`` or the settings changed."""
        settings = self._privacy.settings()
        decides = None if settings is None else (tuple(settings.private), tuple(settings.share))
        key = (_dir_stamp(self._packages_dir), decides)
        with self._lock:
            if force or key != self._computed_for:
                self._recompute(settings)
                self._computed_for = key
            return self._public

    def start(self) -> None:
        """Relist ``p/`` every :data:`RELIST` seconds on a thread of its own, off the request
        path: it catches a change that left ``p/``'s mtime as it was (within one tick)."""
        def relist() -> None:
            while not self._stop.wait(self.RELIST):
                self.current(force=True)

        threading.Thread(target=relist, name="treeseed-serve-relist", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _recompute(self, settings: Settings | None) -> None:
        from .sharing import Sharing

        try:
            names = os.listdir(self._packages_dir)
        except OSError:
            names = []
        hashes = {n for n in names if is_bt2(n)}
        self._manifests = {h: m for h, m in self._manifests.items() if h in hashes}
        if settings is None:  # broken settings: nothing goes out
            self._public = frozenset()
            return
        # Sharing reads the index through a connection of its own, per thread.
        self._public = Sharing(Cache(self._cache_root), settings, self._manifests).publishable(hashes)


class Mirror:
    """Maps request paths to what the cache holds; knows nothing of sockets (testable alone).

    Each request gets its own :class:`Cache` (closed after it): the index's SQLite connection
    must not cross threads, and opening one costs far less than a request.
    """

    def __init__(self, cache_root: Path, privacy: Privacy, log: Callable[[str], None],
                 nix_lookup_wait: float = 60.0) -> None:
        self.cache_root = cache_root
        self.privacy = privacy
        self.packages = PublicPackages(cache_root, privacy)
        self.log = log
        self.nix = _nix_cache(cache_root, privacy, self.public, log, nix_lookup_wait)
        self._layouts: OrderedDict[str, TarLayout] = OrderedDict()
        self._lock = threading.Lock()
        from .gateway import Gateway

        self.ipfs = Gateway(self.public, self.packages.current,
                            lambda h: Cache(cache_root).path(h), self._ipfs_owner, log)

    def route(self, target: str, accept: str = "") -> Resource | Redirect | Text | None:
        """What ``target`` (a request target) names, or None for 404. ``accept`` (the
        request's ``Accept`` header) matters only to the IPFS gateway."""
        try:
            parts = urlsplit(target)
            path = parts.path
        except ValueError:  # "//[x": urlsplit refuses a bracketed host it cannot parse
            return None
        if m := _IPFS.fullmatch(path):
            return self._ipfs(m[1], parts.query, accept)
        cache = Cache(self.cache_root)
        try:
            return self._route(cache, path)
        finally:
            cache.close()

    def _route(self, cache: Cache, path: str) -> Resource | Redirect | Text | None:
        if path == "/":
            return self._index(cache)
        if m := _TAR.fullmatch(path):
            return self._tar(cache, m[1])
        if m := _TORRENT.fullmatch(path):
            return self._torrent(cache, m[1])
        if m := _WEB_SEED.fullmatch(path):
            return self._package_file(cache, m[1], m[2])
        if m := _SHA256.fullmatch(path):
            return self._archive(cache, m[1])
        if m := _ALIAS.fullmatch(path):
            return self._alias(cache, m[1], m[2])
        return self._route_nix(cache, path)

    def _route_nix(self, cache: Cache, path: str) -> Resource | None:
        """Nix's binary-cache protocol; what it means is :mod:`treeseed.interop.nixcache`'s."""
        from .interop.nixcache import CACHE_INFO

        if path == "/nix-cache-info":
            return bytes_resource(CACHE_INFO, '"nix-cache-info"', "text/x-nix-cache-info")
        if m := _NARINFO.fullmatch(path):
            body = self.nix.narinfo(cache, m[1])
            if body is None:
                return None
            import hashlib

            res = bytes_resource(body, f'"narinfo-{hashlib.sha256(body).hexdigest()[:32]}"',
                                 "text/x-nix-narinfo")
            res.cache_control = NOT_CACHEABLE  # a package made private must stop being offered
            return res
        if m := _TREE_NAR.fullmatch(path):
            layout = self.nix.tree_layout(cache, m[1]) if self.public(m[1]) else None
            if layout is None:
                return None
            return Resource(layout.size, f'"{m[1]}.nar"', "application/x-nix-nar", layout.pieces)
        if m := _FLAT_NAR.fullmatch(path):
            return self._flat_nar(cache, m[1])
        return None

    def _ipfs(self, cid: str, query: str, accept: str) -> Resource | None:
        """The trustless gateway; what it means is :mod:`treeseed.gateway`'s."""
        from urllib.parse import parse_qsl

        got = self.ipfs.answer(cid, dict(parse_qsl(query)), accept)
        if got is None:
            return None
        return Resource(got.size, got.etag, got.content_type, got.pieces, got.headers)

    def _ipfs_owner(self, cid: str) -> str | None:
        cache = Cache(self.cache_root)
        try:
            return self._owner(cache, "ipfs", cid)
        finally:
            cache.close()

    # ---- privacy: the one gate every package-bearing endpoint goes through

    def public(self, package_hash: str) -> bool:
        """Is the package in the cache and allowed out? Private ones look exactly absent, and
        cost exactly as much to refuse: a lookup in a set made ahead of time, no file read."""
        return package_hash in self.packages

    def _owner(self, cache: Cache, fmt: str, value: str) -> str | None:
        """The public package the index knows by ``value`` in ``fmt``. Unlike
        :meth:`Cache.resolve` this never stats the owner's directory, so an alias of a private
        package and an unknown alias take the same path."""
        allowed = self.packages.current()  # first, so a hit and a miss cost the same
        if not (cache.root / "index.sqlite").exists():
            return None
        row = cache.db.execute("SELECT hash FROM aliases WHERE format = ? AND value = ?",
                               (fmt, value)).fetchone()
        return row[0] if row is not None and row[0] in allowed else None

    # ---- endpoints

    def _tar(self, cache: Cache, package_hash: str) -> Resource | None:
        layout = self.layout(cache, package_hash) if self.public(package_hash) else None
        if layout is None:
            return None
        return Resource(layout.size, f'"{package_hash}"', "application/x-tar", layout.pieces)

    def _torrent(self, cache: Cache, package_hash: str) -> Resource | None:
        if not self.public(package_hash):
            return None
        from .swarm.torrents import torrent_file

        data = torrent_file(cache, package_hash)
        return bytes_resource(data, f'"{package_hash}.torrent"', "application/x-bittorrent")

    def _package_file(self, cache: Cache, package_hash: str, quoted: str) -> Resource | None:
        """One regular file, where a BEP 19 web seed asks for it: ``/<hash>/package/<path>``
        (``package`` is the torrent's name). Only paths the package lists are served."""
        try:
            rel = unquote(quoted, errors="strict")
        except UnicodeDecodeError:
            return None
        layout = self.layout(cache, package_hash) if self.public(package_hash) else None
        entry = layout.files.get(rel) if layout is not None else None
        if entry is None:
            return None
        return file_resource(cache.path(package_hash) / rel, entry.size,
                             f'"{package_hash}/{quote(rel)}"', "application/octet-stream")

    def _archive(self, cache: Cache, digest: str) -> Resource | None:
        """A kept archive, served only while the package it unpacked to is cached and public:
        an archive is that package's source, and nothing else tells whether it may go out."""
        hex_digest = digest if len(digest) == 64 else _nix32_to_hex(digest)
        if hex_digest is None:
            return None
        if self._owner(cache, "archive-sha256", hex_digest) is None:
            return None
        path = cache.archive_path(hex_digest)
        try:
            size = path.stat().st_size
        except OSError:
            return None
        import base64

        stated = base64.b64encode(bytes.fromhex(hex_digest)).decode()
        return file_resource(path, size, f'"sha256-{hex_digest}"', "application/octet-stream",
                             {"Repr-Digest": f"sha-256=:{stated}:"})

    def _flat_nar(self, cache: Cache, digest: str) -> Resource | None:
        """A kept archive as the NAR of a flat store path: served exactly when ``/sha256/``
        serves the archive itself."""
        if self._owner(cache, "archive-sha256", digest) is None:
            return None
        from .narstream import NarLayout

        path = cache.archive_path(digest)
        try:
            size = path.stat().st_size
        except OSError:
            return None
        layout = NarLayout.for_file(path, size)
        return Resource(layout.size, f'"sha256-{digest}.nar"', "application/x-nix-nar",
                        layout.pieces)

    def _alias(self, cache: Cache, fmt: str, quoted: str) -> Redirect | None:
        if fmt not in ALIAS_FORMATS:
            return None
        value = _alias_value(fmt, unquote(quoted))
        owner = self._owner(cache, fmt, value) if value else None
        if owner is None:
            return None
        return Redirect(f"/{owner}.tar")

    def _index(self, cache: Cache) -> Text:
        lines = []
        for info in sorted(cache.list(), key=lambda p: p.hash):
            if self.public(info.hash):
                label = " ".join(x for x in (info.name, info.version) if x)
                lines.append(f"{info.hash}\t{info.size}\t{label}".rstrip())
        head = f"# treeseed mirror: {len(lines)} packages (GET /<hash>.tar, /<hash>.torrent)\n"
        return Text((head + "".join(f"{line}\n" for line in lines)).encode())

    # ---- tar layouts, kept for the packages served most recently

    def layout(self, cache: Cache, package_hash: str) -> TarLayout | None:
        """The package's tar layout; scanned once, then reused (a package never changes)."""
        with self._lock:
            layout = self._layouts.get(package_hash)
            if layout is not None:
                self._layouts.move_to_end(package_hash)
                return layout
        from .package import scan_tree

        try:
            entries = scan_tree(cache.path(package_hash), package_hash)
        except (OSError, TreeseedError) as exc:  # removed meanwhile, or damaged on disk
            self.log(f"treeseed serve: cannot list {package_hash}: {exc}; check it with "
                     f"'treeseed cache verify {package_hash}'")
            return None
        layout = TarLayout(cache.path(package_hash), package_hash, entries)
        with self._lock:
            self._layouts[package_hash] = layout
            while len(self._layouts) > _LAYOUTS_KEPT:
                self._layouts.popitem(last=False)
        return layout

    def forget(self, package_hash: str) -> None:
        """Drop a layout that no longer matches the disk (the package was removed or damaged)."""
        with self._lock:
            self._layouts.pop(package_hash, None)
        self.nix.forget(package_hash)
        self.ipfs.forget(package_hash)


def _nix_cache(cache_root: Path, privacy: Privacy, public: Callable[[str], bool],
               log: Callable[[str], None], lookup_wait: float) -> NixCache:
    """The Nix binary cache of this mirror: the signing key (made on first use; without one,
    no narinfo is served and the log says why), the store-path indexer and swarm lookups."""
    from .interop.nixcache import NixCache, StoreLookups, StorePathIndexer
    from .interop.nixkey import load_or_create

    try:
        key = load_or_create()
    except TreeseedError as exc:
        log(f"treeseed serve: Nix binary cache off: {exc}")
        key = None
    lookups = StoreLookups(cache_root, privacy.settings, log, lookup_wait)
    indexer = StorePathIndexer(cache_root, log, lookups.enabled)
    lookups.on_found = lambda _: indexer.wake()
    return NixCache(cache_root, public, key, lookups, indexer)


def _nix32_to_hex(text: str) -> str | None:
    from .hashing.nar import from_nix32

    try:
        return from_nix32(text).hex()
    except ValueError:
        return None


def _alias_value(fmt: str, value: str) -> str | None:
    """The spelling the index stores: NAR hashes as SRI (any Nix spelling accepted), archive
    digests as lowercase hex (or nix32); other formats exactly as given."""
    if fmt == "nar":
        from .hashing.nar import parse_nix_hash, sri

        try:
            return sri(parse_nix_hash(value))
        except TreeseedError:
            return None
    if fmt == "archive-sha256":
        if re.fullmatch(r"[0-9a-fA-F]{64}", value):
            return value.lower()
        return _nix32_to_hex(value) if len(value) == 52 else None
    return value


# --------------------------------------------------------------------------- HTTP semantics


class Unsatisfiable(Exception):
    """The Range names no byte of the resource (or is malformed): answer 416."""


_RANGE_SPEC = re.compile(r"[ \t]*([0-9]*)-([0-9]*)[ \t]*")  # ASCII digits only: "²" is no digit
_HUGE = 1 << 80  # stands for any position past every possible size


def _position(digits: str) -> int:
    """A byte position from ASCII digits. Python refuses int() on very long digit strings
    (a ValueError that used to drop the connection); any number of more than 24 significant
    digits is past the end of every resource, so it compares as :data:`_HUGE`."""
    significant = digits.lstrip("0")
    return int(significant or "0") if len(significant) <= 24 else _HUGE


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The one byte range ``[start, stop)`` a ``Range`` header asks for, or None to send the
    whole resource (no header, another unit, or several ranges, which RFC 9110 lets a server
    ignore). A malformed or unsatisfiable ``bytes`` range raises :class:`Unsatisfiable`, which
    RFC 9110 14.2 allows for an invalid ranges-specifier; it never raises anything else."""
    if header is None:
        return None
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    if "," in spec:
        return None
    m = _RANGE_SPEC.fullmatch(spec)
    if m is None or not (m[1] or m[2]):
        raise Unsatisfiable(header)
    if not m[1]:  # suffix: the last N bytes
        count = _position(m[2])
        if count == 0 or size == 0:
            raise Unsatisfiable(header)
        return max(0, size - count), size
    start = _position(m[1])
    last = _position(m[2]) if m[2] else None
    if (last is not None and last < start) or start >= size:
        raise Unsatisfiable(header)
    return start, size if last is None else min(size, last + 1)


def etag_matches(header: str, etag: str) -> bool:
    """``If-None-Match``: ``*`` or a list of entity tags, compared weakly (RFC 9110 13.1.2)."""
    if header.strip() == "*":
        return True
    pos = 0
    while pos < len(header):
        m = _ETAG.match(header, pos)
        if not m:
            return False
        if m[2] == etag:
            return True
        pos = m.end()
    return False


class _Abort(Exception):
    """The body cannot be completed (a file vanished or changed): close the connection."""


class _Sink:
    """Writes a body to the socket: small pieces gathered, large file pieces by sendfile."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.sent = 0

    def write(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) >= _FLUSH:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            self.sock.sendall(self.buffer)
            self.sent += len(self.buffer)
            self.buffer.clear()

    def copy(self, piece: FileSlice) -> None:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # a fifo must not block
        try:
            fd = os.open(piece.path, flags)
        except OSError as exc:
            raise _Abort(f"cannot open {os.fsdecode(piece.path)}: {exc.strerror}") from None
        with open(fd, "rb", buffering=0) as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _Abort(f"{os.fsdecode(piece.path)} is no longer a regular file")
            if st.st_size != piece.size:
                raise _Abort(f"{os.fsdecode(piece.path)} is {st.st_size} bytes, not the "
                             f"{piece.size} it had when listed")
            if piece.count < _SENDFILE_MIN:
                data = os.pread(fd, piece.count, piece.offset)
                if len(data) != piece.count:
                    raise _Abort(f"{os.fsdecode(piece.path)} shrank while being sent")
                self.write(data)
                return
            self.flush()
            sent = self.sock.sendfile(f, piece.offset, piece.count)
            self.sent += sent
            if sent != piece.count:
                raise _Abort(f"{os.fsdecode(piece.path)} shrank while being sent")


class Handler(BaseHTTPRequestHandler):
    """One request, whose head the server has already read in full (:class:`MirrorServer`).

    HTTP/1.1 keep-alive: every response has a Content-Length (or none of a body at all), so
    clients reuse connections for the many Range requests of a web seed. Between requests the
    connection goes back to the server's reception loop, so a worker is held only while a
    response is being written."""

    protocol_version = "HTTP/1.1"
    server_version = "treeseed-serve"
    # Headers and body go out in separate sends; with Nagle's algorithm the body would wait
    # for the client's delayed ACK of the headers (40 ms per small response).
    disable_nagle_algorithm = True
    error_content_type = "text/plain; charset=utf-8"
    error_message_format = "%(code)d %(message)s\n"
    server: MirrorServer

    def __init__(self, sock: socket.socket, head: bytes, client_address: tuple,
                 server: MirrorServer) -> None:
        self._head = head
        super().__init__(sock, client_address, server)  # type: ignore[arg-type]

    def setup(self) -> None:
        """Read the request from the head already received; write straight to the socket,
        whose timeout (``write_timeout``) bounds every send."""
        self.connection = self.request
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rfile = io.BytesIO(self._head)
        self.wfile = _SocketWriter(self.connection)

    def handle(self) -> None:
        self.close_connection = True
        self.handle_one_request()
        if self.headers is not None and _has_body(self.headers):
            self.close_connection = True  # its body was never read: the stream is out of step

    def finish(self) -> None:
        pass  # nothing buffered; the server decides whether the connection lives on

    def version_string(self) -> str:
        return self.server_version

    def do_GET(self) -> None:
        self._respond(head=False)

    def do_HEAD(self) -> None:
        self._respond(head=True)

    def _respond(self, head: bool) -> None:
        try:
            found = self.server.mirror.route(self.path, ", ".join(self.headers.get_all("Accept", [])))
        except (TreeseedError, OSError, sqlite3.Error) as exc:  # damaged package, locked index
            self.server.log(f"treeseed serve: {self.path}: {exc}")
            self._text(500, b"internal error: see the server's log\n", head)
            return
        if found is None:
            self._text(404, b"not found\n", head)
        elif isinstance(found, Redirect):
            self.send_response(307)
            self.send_header("Location", found.location)
            self.send_header("Cache-Control", NOT_CACHEABLE)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif isinstance(found, Text):
            self._text(200, found.body, head)
        else:
            self._resource(found, head)

    def _text(self, status: int, body: bytes, head: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", NOT_CACHEABLE)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _resource(self, res: Resource, head: bool) -> None:
        if etag_matches(self.headers.get("If-None-Match", ""), res.etag):
            self.send_response(304)
            self._validators(res)
            self.end_headers()
            return
        wanted = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if if_range is not None and if_range.strip() != res.etag:
            wanted = None  # the client's copy is another version (or dated): send it all
        try:
            span = parse_range(wanted, res.size)
        except Unsatisfiable:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{res.size}")
            self.send_header("Content-Length", "0")
            self._validators(res)
            self.end_headers()
            return
        start, stop = span if span is not None else (0, res.size)
        self.send_response(206 if span is not None else 200)
        self.send_header("Content-Type", res.content_type)
        self.send_header("Content-Length", str(stop - start))
        if span is not None:
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{res.size}")
        for name, value in res.headers.items():
            self.send_header(name, value)
        self._validators(res)
        self.end_headers()
        if not head:
            self._body(res, start, stop)

    def _validators(self, res: Resource) -> None:
        self.send_header("ETag", res.etag)
        self.send_header("Cache-Control", res.cache_control)
        self.send_header("Accept-Ranges", "bytes")

    def _body(self, res: Resource, start: int, stop: int) -> None:
        """Stream the body; on any failure close the connection, so the client sees a short
        body (its Content-Length was promised) and never mistakes it for a whole one."""
        sink = _Sink(self.connection)
        try:
            for piece in res.pieces(start, stop):
                if isinstance(piece, FileSlice):
                    sink.copy(piece)
                else:
                    sink.write(piece)
            sink.flush()
        except (ConnectionError, TimeoutError) as exc:  # the client left or stalled
            self.close_connection = True
            self.server.note(f"treeseed serve: {self.path}: client gone after {sink.sent} of "
                             f"{stop - start} bytes ({exc.__class__.__name__})")
        except (_Abort, OSError) as exc:  # the package changed or vanished; a read failed
            self.close_connection = True
            self._forget(res)
            self.server.log(f"treeseed serve: {self.path}: stopped after {sink.sent} of "
                            f"{stop - start} bytes: {exc}; the client gets a short body")

    def _forget(self, res: Resource) -> None:
        m = re.match(r'"(bt2-[0-9a-f]{64})', res.etag)
        if m:
            self.server.mirror.forget(m[1])

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.server.note(f'{self.address_string()} "{self.requestline}" {code}')

    def log_message(self, format: str, *args: object) -> None:
        self.server.note(f"{self.address_string()} {format % args}")


def _has_body(headers: object) -> bool:
    get = headers.get  # type: ignore[attr-defined]
    return bool(get("Transfer-Encoding")) or (get("Content-Length") or "0").strip() != "0"


class _SocketWriter:
    """``wfile`` for a handler: every write is one ``sendall``, bounded by the socket timeout."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def write(self, data: bytes) -> int:
        self._sock.sendall(data)
        return len(data)

    def flush(self) -> None:
        pass


def _env_number(name: str, default: float, integer: bool = False) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        value = -1
    if value <= 0:
        kind = "a whole number" if integer else "a number of seconds"
        raise ServeError(f"{name}={raw!r} is not {kind} above 0; fix or unset it")
    return value


@dataclass(frozen=True)
class Limits:
    """How much of the server slow or many clients may hold (docs/serve.md, "Connections").

    Why these: a thread per connection with only a per-read timeout let a few hundred clients
    that trickle one header byte every few seconds hold a thread each forever. Now a request
    head must arrive whole within ``head_timeout``; until it has, a connection costs a file
    descriptor and a buffer, never a thread, and at most ``max_connections`` are kept. Only
    ``workers`` threads write responses, and a client that takes no data for
    ``write_timeout`` seconds (or more than that for one 256 KiB write) is dropped. A Nix
    narinfo request for a store path only the swarm may have waits at most
    ``nix_lookup_wait`` for it (:class:`treeseed.interop.nixcache.StoreLookups`), then is 404.
    """

    workers: int = 32
    max_connections: int = 512
    head_timeout: float = 10.0
    idle_timeout: float = 60.0
    write_timeout: float = 30.0
    nix_lookup_wait: float = 60.0

    @classmethod
    def from_env(cls) -> Limits:
        """The defaults, each overridden by ``TREESEED_SERVE_<NAME>`` when set."""
        d = cls()
        return cls(
            workers=int(_env_number("TREESEED_SERVE_WORKERS", d.workers, integer=True)),
            max_connections=int(_env_number("TREESEED_SERVE_MAX_CONNECTIONS", d.max_connections,
                                            integer=True)),
            head_timeout=_env_number("TREESEED_SERVE_HEAD_TIMEOUT", d.head_timeout),
            idle_timeout=_env_number("TREESEED_SERVE_IDLE_TIMEOUT", d.idle_timeout),
            write_timeout=_env_number("TREESEED_SERVE_WRITE_TIMEOUT", d.write_timeout),
            nix_lookup_wait=_env_number("TREESEED_SERVE_NIX_LOOKUP_WAIT", d.nix_lookup_wait))


MAX_HEAD = 64 << 10  # a request head (request line and headers) larger than this gets 431
_ACCEPTS_PER_WAKE = 64  # so reading heads goes on while a flood of connections arrives


def _canned(status: str, body: str) -> bytes:
    """A whole response sent with one non-blocking send by the reception loop."""
    data = body.encode()
    return (f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(data)}\r\nCache-Control: no-store\r\nRetry-After: 1\r\n"
            f"Connection: close\r\n\r\n").encode() + data


_BUSY = _canned("503 Service Unavailable", "busy: too many connections; try again shortly\n")
_TOO_LARGE = _canned("431 Request Header Fields Too Large",
                     f"request head over {MAX_HEAD} bytes\n")


@dataclass(eq=False)
class _Waiting:
    """A connection waiting for (the rest of) a request head, in the reception loop."""

    sock: socket.socket
    address: tuple
    buffer: bytearray
    deadline: float
    begun: bool  # has a byte of this request arrived? (before that, idle_timeout applies)


def _head_end(buffer: bytearray) -> int | None:
    """Where the request head in ``buffer`` ends (after its blank line), or None if it has
    not all arrived. Empty lines before a request line are dropped (RFC 9112 2.2)."""
    blank = len(buffer) - len(buffer.lstrip(b"\r\n"))
    if blank:
        del buffer[:blank]
    ends = [i + len(sep) for sep in (b"\n\r\n", b"\n\n") if (i := buffer.find(sep)) >= 0]
    return min(ends) if ends else None


class MirrorServer:
    """The listening socket, a reception loop that reads request heads, and a pool of workers
    that answer them; ``mirror`` answers, ``note`` logs requests.

    The reception loop (in the thread that calls :meth:`serve_forever`) accepts connections
    and reads request heads without blocking, each against its deadline, so a slow or silent
    client costs a descriptor, not a thread. A complete head goes to a worker; after the
    response a keep-alive connection comes back to wait for its next request.
    """

    def __init__(self, address: tuple[str, int], mirror: Mirror, quiet: bool,
                 err: TextIO, family: socket.AddressFamily = socket.AF_INET,
                 limits: Limits | None = None) -> None:
        self.mirror = mirror
        self.quiet = quiet
        self.err = err
        self.limits = limits or Limits()
        self._err_lock = threading.Lock()
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind(address)
            self.socket.listen(128)
        except OSError:
            self.socket.close()
            raise
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()
        self._waiting: OrderedDict[socket.socket, _Waiting] = OrderedDict()  # oldest first
        self._lock = threading.Lock()  # guards _busy and _returned
        self._busy = 0  # connections handed to the workers and not closed or taken back
        self._returned: list[tuple[socket.socket, tuple, bytes]] = []
        self._jobs: queue.SimpleQueue[tuple[socket.socket, tuple, bytes, bytes] | None] = \
            queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._stopping = threading.Event()
        self._running = threading.Event()
        self._stopped = threading.Event()
        self._workers: list[threading.Thread] = []

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}"

    def log(self, line: str) -> None:
        """Problems: always shown."""
        with self._err_lock:
            print(line, file=self.err, flush=True)

    def note(self, line: str) -> None:
        """Request lines, dropped and timed-out clients: hidden with -q."""
        if not self.quiet:
            self.log(line)

    def handle_error(self, request: object, client_address: object) -> None:
        """One line instead of a traceback; the server carries on."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            self.note(f"treeseed serve: {client_address}: connection lost ({exc})")
        else:
            self.log(f"treeseed serve: {client_address}: internal error: {exc!r}")

    # ---- the reception loop

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Accept and read request heads until :meth:`shutdown` (or an exception, such as the
        one SIGINT raises in the main thread)."""
        self._start_workers()
        self.mirror.packages.start()
        self.mirror.nix.indexer.start()
        self._selector.register(self.socket, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._running.set()
        try:
            while not self._stopping.is_set():
                for key, _ in self._selector.select(self._next_wait(poll_interval)):
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        self._take_returned()
                    elif key.data.sock in self._waiting:  # not closed earlier in this batch
                        self._read(key.data)
                self._expire()
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop :meth:`serve_forever`, running in another thread, and wait for it to return."""
        self._stopping.set()
        self._wake()
        if self._running.is_set():
            self._stopped.wait()

    def server_close(self) -> None:
        """Close the listening socket and every waiting connection; workers finish the
        response they are writing and stop."""
        self._stopping.set()
        self.mirror.packages.stop()
        self.mirror.nix.indexer.stop()
        for sock in (self.socket, *self._waiting):
            sock.close()
        self._waiting.clear()
        for _ in self._workers:
            self._jobs.put(None)
        self._selector.close()
        self._wake_w.close()
        self._wake_r.close()

    def _start_workers(self) -> None:
        for i in range(self.limits.workers):
            worker = threading.Thread(target=self._work, name=f"treeseed-serve-worker-{i}",
                                      daemon=True)  # a stalled client never holds up stopping
            worker.start()
            self._workers.append(worker)

    def _next_wait(self, poll_interval: float) -> float:
        if not self._waiting:
            return poll_interval
        soonest = min(w.deadline for w in self._waiting.values())
        return max(0.0, min(poll_interval, soonest - time.monotonic()))

    def _accept(self) -> None:
        for _ in range(_ACCEPTS_PER_WAKE):
            try:
                sock, address = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors: make room, and say what to raise
                self.log(f"treeseed serve: cannot accept a connection: {exc.strerror or exc}; "
                         "raise the open-files limit (ulimit -n) or lower "
                         "TREESEED_SERVE_MAX_CONNECTIONS")
                if self._waiting:
                    self._close_waiting(next(iter(self._waiting.values())))
                return
            self._admit(sock, address)

    def _admit(self, sock: socket.socket, address: tuple) -> None:
        """Keep a new connection, within ``max_connections``: at the cap, the connection that
        has waited longest for its request head is closed to make room; if every connection
        is being answered, the new one gets a 503."""
        with self._lock:
            held = len(self._waiting) + self._busy
        if held >= self.limits.max_connections:
            if not self._waiting:
                self._refuse(sock, _BUSY)
                return
            oldest = next(iter(self._waiting.values()))
            self.note(f"{oldest.address[0]} closed: {self.limits.max_connections} connections "
                      "open, and this one waited longest for its request")
            self._close_waiting(oldest)
        sock.setblocking(False)
        deadline = time.monotonic() + self.limits.head_timeout
        self._wait(_Waiting(sock, address, bytearray(), deadline, begun=True))

    def _wait(self, waiting: _Waiting) -> None:
        """Wait for the rest of a request head, or hand a complete one to a worker at once
        (pipelined requests arrive with the previous one)."""
        if _head_end(waiting.buffer) is not None:
            self._dispatch(waiting)
            return
        self._waiting[waiting.sock] = waiting
        self._selector.register(waiting.sock, selectors.EVENT_READ, waiting)

    def _read(self, waiting: _Waiting) -> None:
        try:
            data = waiting.sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close_waiting(waiting)
            return
        if not waiting.begun:  # a kept-alive connection starts its next request
            waiting.begun = True
            waiting.deadline = time.monotonic() + self.limits.head_timeout
        waiting.buffer += data
        if _head_end(waiting.buffer) is not None:
            self._unwait(waiting)
            self._dispatch(waiting)
        elif len(waiting.buffer) > MAX_HEAD:
            self._unwait(waiting)
            self._refuse(waiting.sock, _TOO_LARGE)

    def _expire(self) -> None:
        now = time.monotonic()
        for waiting in [w for w in self._waiting.values() if w.deadline <= now]:
            if waiting.begun:
                self.note(f"{waiting.address[0]} closed: no whole request within "
                          f"{self.limits.head_timeout:g} s")
            self._close_waiting(waiting)

    def _unwait(self, waiting: _Waiting) -> None:
        self._selector.unregister(waiting.sock)
        del self._waiting[waiting.sock]

    def _close_waiting(self, waiting: _Waiting) -> None:
        self._unwait(waiting)
        waiting.sock.close()

    def _refuse(self, sock: socket.socket, answer: bytes) -> None:
        """Send a canned answer if the socket takes it at once, then close."""
        try:
            sock.send(answer, socket.MSG_DONTWAIT)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        sock.close()

    def _dispatch(self, waiting: _Waiting) -> None:
        end = _head_end(waiting.buffer)
        assert end is not None
        head, rest = bytes(waiting.buffer[:end]), bytes(waiting.buffer[end:])
        with self._lock:
            self._busy += 1
        self._jobs.put((waiting.sock, waiting.address, head, rest))

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:  # full (a wake-up is already pending) or closed
            pass

    def _take_returned(self) -> None:
        """Kept-alive connections back from the workers: wait for their next request."""
        try:
            self._wake_r.recv(4096)
        except OSError:
            pass
        with self._lock:
            returned, self._returned = self._returned, []
            self._busy -= len(returned)
        now = time.monotonic()
        for sock, address, rest in returned:  # a pipelined request has begun already
            sock.setblocking(False)
            wait = self.limits.head_timeout if rest else self.limits.idle_timeout
            self._wait(_Waiting(sock, address, bytearray(rest), now + wait, begun=bool(rest)))

    # ---- the workers

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            sock, address, head, rest = job
            if self._answer(sock, address, head) and not self._stopping.is_set():
                with self._lock:
                    self._returned.append((sock, address, rest))
                self._wake()
                continue
            with self._lock:
                self._busy -= 1
            sock.close()

    def _answer(self, sock: socket.socket, address: tuple, head: bytes) -> bool:
        """Answer one request; True if the connection may carry another."""
        try:
            sock.settimeout(self.limits.write_timeout)
            return not Handler(sock, head, address, self).close_connection
        except Exception:  # one line in the log; the server carries on
            self.handle_error(sock, address)
            return False


# --------------------------------------------------------------------------- starting


def parse_bind(text: str) -> tuple[str, int, socket.AddressFamily]:
    """``HOST:PORT``, ``[V6]:PORT`` or a bare ``PORT`` (on 127.0.0.1); port 0 picks a free one."""
    m = re.fullmatch(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9._-]*)):(?P<port>\d{1,5})"
                     r"|(?P<bare>\d{1,5})", text.strip())
    port = int(m["port"] or m["bare"]) if m else -1
    if not m or port > 65535:
        raise ServeError(f"--bind {text!r}: expected HOST:PORT, [IPV6]:PORT or PORT "
                         f"(e.g. 127.0.0.1:8750, 0.0.0.0:8750, [::1]:8750, 0 for any free port)")
    if m["v6"]:
        return m["v6"], port, socket.AF_INET6
    return m["host"] or "127.0.0.1", port, socket.AF_INET


def make_server(cache_root: Path, bind: str = DEFAULT_BIND, quiet: bool = False,
                err: TextIO | None = None, limits: Limits | None = None) -> MirrorServer:
    """A bound, not yet running mirror of the cache at ``cache_root``; ``limits`` default to
    :meth:`Limits.from_env`."""
    err = err or sys.stderr
    host, port, family = parse_bind(bind)
    limits = _fit_open_files(limits or Limits.from_env())

    def log(line: str) -> None:
        print(line, file=err, flush=True)

    mirror = Mirror(cache_root, Privacy(log), log, limits.nix_lookup_wait)
    try:
        return MirrorServer((host, port), mirror, quiet, err, family, limits)
    except OSError as exc:
        raise ServeError(f"cannot listen on {bind}: {exc.strerror or exc}; choose another "
                         "address with --bind (port 0 picks a free one)") from None


def _fit_open_files(limits: Limits) -> Limits:
    """Raise the soft open-files limit to hold ``max_connections`` (plus files being sent and
    the index), as far as the hard limit allows: running out would stop accepting at all."""
    import resource

    needed = limits.max_connections + 2 * limits.workers + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            target = soft
        if target < needed:
            raise ServeError(f"TREESEED_SERVE_MAX_CONNECTIONS={limits.max_connections} needs "
                             f"{needed} open files but the limit is {target}; raise it with "
                             "'ulimit -n' or lower TREESEED_SERVE_MAX_CONNECTIONS")
    return limits


class _Stop(BaseException):
    """Raised in the main thread by SIGINT or SIGTERM: ends serve_forever, not the process."""


def serve(cache_root: Path, bind: str = DEFAULT_BIND, quiet: bool = False,
          out: TextIO | None = None, err: TextIO | None = None) -> None:
    """Serve until SIGINT or SIGTERM. The first line on ``out`` says where (tests read it)."""
    out = out or sys.stdout
    cache_root = Path(cache_root).absolute()  # files are opened by absolute path, in any thread
    server = make_server(cache_root, bind, quiet, err)
    # Both signals are set here, not inherited: a parent that ignores SIGINT (a job runner)
    # must still be able to stop the mirror. Only the main thread may set handlers.
    stops = (signal.SIGINT, signal.SIGTERM)
    in_main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, _raise_stop) for sig in stops} if in_main else {}
    try:
        print(f"serving {cache_root} on {server.url}", file=out, flush=True)
        server.serve_forever(poll_interval=0.5)
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        server.server_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop()
