"""Safe, streaming unpacking of tar (plain, gz, xz, bz2, zst) and zip archives.

The shape, from outside in:

* :func:`detect_format` sniffs the first bytes (names lie; servers send HTML error pages).
* A tar stream is decompressed on its own thread (zlib, lzma, bz2 and zstandard all release the
  GIL), which also takes the SHA-256 of the raw archive bytes, so the main thread only parses
  headers, writes files and hashes them: two cores, one read of the archive.
* Every entry goes through one :class:`TreeWriter`, the only code that touches the destination.
  It validates names in one place, rejects duplicates and entries below a file or symlink,
  writes regular files with ``O_EXCL | O_NOFOLLOW`` while feeding the BEP 52 hasher, and defers
  symlinks and hard links until every regular file is written, so no write can ever pass
  through a link. Only the owner-executable bit survives (0644 / 0755).
* :meth:`TreeWriter.finish` decides the root (a single top-level directory is stripped),
  resolves links against that root and reports what it wrote.

Nothing here knows about the cache: the caller passes a fresh directory under ``<cache>/tmp``.
"""

from __future__ import annotations

import bz2
import contextlib
import hashlib
import lzma
import os
import queue
import stat
import sys
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import BadPackage, UnpackError
from .hashing.bt2 import BLOCK_SIZE, FileDigest, MerkleHasher, digest_block
from .package import Entry, check_path
from .record import FrozenRecord, Record
from .tar import MAX_META_TOTAL, TarReader

CHUNK = 1 << 20
MAX_LINK_TARGET = 4096
DEFAULT_MAX_BYTES = 16 << 30
DEFAULT_MAX_ENTRIES = 2_000_000
_QUEUE_DEPTH = 16


class Limits(FrozenRecord):
    """How much an archive may expand to; beyond it the archive is rejected as a bomb.

    ``max_entries`` counts every entry offered (repeats included) and, in a tar, every header
    (PAX and long-name headers included); ``max_meta_bytes`` bounds a tar's PAX and long-name
    data over the whole archive. Both keep the work an archive can cause linear in its size.
    """

    __slots__ = ("max_bytes", "max_entries", "max_meta_bytes")

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, max_entries: int = DEFAULT_MAX_ENTRIES,
                 max_meta_bytes: int = MAX_META_TOTAL) -> None:
        _set = object.__setattr__
        _set(self, "max_bytes", max_bytes)
        _set(self, "max_entries", max_entries)
        _set(self, "max_meta_bytes", max_meta_bytes)

    @classmethod
    def from_env(cls, max_bytes: int | None = None) -> Limits:
        """Limits from ``--max-size`` (passed in) or ``TREESEED_MAX_UNPACK_SIZE``."""
        if max_bytes is None:
            raw = os.environ.get("TREESEED_MAX_UNPACK_SIZE")
            max_bytes = parse_size(raw) if raw else DEFAULT_MAX_BYTES
        return cls(max_bytes=max_bytes)


def parse_size(text: str) -> int:
    """Parse ``123``, ``64K``, ``512M``, ``16G`` (binary units) into bytes."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    raw = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = raw[-1:] if raw[-1:] in units else ""
    number = raw[: len(raw) - len(unit)]
    try:
        return int(float(number) * units[unit])
    except ValueError:
        raise UnpackError("size limit", text, "not a size (examples: 500M, 16G)") from None


class Unpacked(Record):
    """What an unpack produced: the package root and every entry with its bt2 file digest.

    ``specials`` maps path -> "a fifo", ... (entries not created). ``dirs`` is every directory
    created below ``root`` (relative paths), so the tree can be sealed without a walk
    (:func:`treeseed.assemble.seal_dirs`); some may be gone after the rules.
    """

    __slots__ = ("root", "entries", "digests", "specials", "dirs", "archive_sha256",
                 "archive_bytes")

    def __init__(self, root: Path, entries: list[Entry], digests: dict[str, FileDigest],
                 specials: dict[str, str] | None = None, dirs: list[str] | None = None,
                 archive_sha256: str | None = None, archive_bytes: int = 0) -> None:
        self.root = root
        self.entries = entries
        self.digests = digests
        self.specials = {} if specials is None else specials
        self.dirs = [] if dirs is None else dirs
        self.archive_sha256 = archive_sha256
        self.archive_bytes = archive_bytes


# --------------------------------------------------------------------------- format detection

_MAGIC = [
    (b"\x1f\x8b", "gz"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"BZh", "bz2"),
    (b"\x28\xb5\x2f\xfd", "zst"),
    (b"PK\x03\x04", "zip"),
    (b"PK\x05\x06", "zip"),
]


def detect_format(head: bytes, source: str) -> str:
    """Name the archive format from its first bytes: tar, gz, xz, bz2, zst or zip."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    if len(head) >= 512 and _is_v7_tar_header(head[:512]):
        return "tar"
    lowered = head[:512].lstrip().removeprefix(b"\xef\xbb\xbf").lstrip().lower()
    if lowered.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")):
        raise UnpackError(source, "", "is an HTML/XML page, not an archive (an error or login "
                          f"page served in its place?); it starts with {head[:60]!r}")
    if not head:
        raise UnpackError(source, "", "is empty, not an archive")
    raise UnpackError(source, "", "is not a tar, tar.gz, tar.xz, tar.bz2, tar.zst or zip archive "
                      f"(it starts with {head[:16]!r})")


def _is_v7_tar_header(block: bytes) -> bool:
    """An old-style tar header has a valid checksum; that is the only signature it carries."""
    try:
        stored = int(block[148:156].replace(b"\x00", b" ").strip() or b"-1", 8)
    except ValueError:
        return False
    computed = sum(block[:148]) + 8 * 32 + sum(block[156:])
    return stored == computed


# --------------------------------------------------------------------------- the tree writer


class TreeWriter:
    """Writes archive entries under ``dest``, safely, hashing files as they are written.

    Paths are the archive's own (before any top-level directory is stripped). Regular files are
    written at once; symlinks and hard links are recorded and created by :meth:`finish`, after
    all regular files, so a link can never redirect a later write.
    """

    def __init__(self, dest: Path, source: str, limits: Limits, read_only: bool = False) -> None:
        self.dest = dest
        #: File modes, plain and executable. ``read_only`` creates files with the modes they
        #: keep in the cache (0444 / 0555): the open that creates a file may write it whatever
        #: the mode, so nothing needs a chmod per file afterwards (the cache's seal did one).
        self._modes = (0o444, 0o555) if read_only else (0o644, 0o755)
        self.source = source
        self.limits = limits
        self._dest_b = os.fsencode(dest)
        dest.mkdir(exist_ok=True)  # files at the archive's top level are written straight into it
        self.kinds: dict[str, str] = {}  # path -> "file" | "dir" | "symlink" | "hardlink" | "special"
        self.files: dict[str, tuple[bool, FileDigest]] = {}
        self.links: dict[str, str] = {}
        self.hardlinks: dict[str, tuple[str, bool]] = {}
        self.specials: dict[str, str] = {}
        self._made_dirs: set[str] = {""}
        self.total_bytes = 0
        self.seen = 0  # every entry offered, repeats included: each costs work, so each counts

    # ---- recording entries

    def _tick(self, raw_path: str) -> None:
        """Count one archive entry against the limit, before any work is done for it.

        Counting distinct paths is not enough: a repeated directory entry is legal and adds no
        path, so an archive of millions of identical headers would cost time for free.
        """
        self.seen += 1
        if self.seen > self.limits.max_entries:
            raise UnpackError(self.source, raw_path, f"more than {self.limits.max_entries} entries "
                              "(repeated entries included): a hostile or broken archive")

    def _claim(self, raw_path: str, kind: str) -> str:
        return self._claim_clean(self._clean(raw_path), raw_path, kind)

    def _claim_clean(self, path: str, raw_path: str, kind: str) -> str:
        """:meth:`_claim` of a path :meth:`_clean` already returned (checked once, not twice)."""
        if not path:
            raise UnpackError(self.source, raw_path, f"a {kind} entry names the package root itself")
        if len(self.kinds) >= self.limits.max_entries:
            raise UnpackError(self.source, path, f"more than {self.limits.max_entries} entries")
        previous = self.kinds.get(path)
        if previous is not None and not (previous == "dir" and kind == "dir"):
            raise UnpackError(self.source, path, f"duplicate entry (already a {previous})")
        self._claim_parents(path)
        self.kinds[path] = kind
        return path

    def _claim_parents(self, path: str) -> None:
        """Record ``path``'s ancestors as directories, deepest first; stop at a known directory
        (its own ancestors were recorded with it). Any ancestor that is not a directory is an
        error: writing below a file or a symlink is how archives escape."""
        parent = path.rpartition("/")[0]
        new: list[str] = []
        while parent:
            parent_kind = self.kinds.get(parent)
            if parent_kind == "dir":
                break
            if parent_kind is not None:
                raise UnpackError(self.source, path, f"lies below {parent!r}, which is a {parent_kind}")
            new.append(parent)
            parent = parent.rpartition("/")[0]
        for directory in new:
            self.kinds[directory] = "dir"

    def _clean(self, raw_path: str) -> str:
        """Normalise the harmless spellings archivers use (``./a``, ``a/``), reject the rest."""
        path = raw_path
        while path.startswith("./"):
            path = path[2:]
        path = path.rstrip("/") if path not in ("/", "") else path
        if path in (".", ""):
            return ""
        if "//" in path or path.startswith("/") or path.startswith("../") or "/../" in path \
                or path.endswith("/..") or path == "..":
            raise UnpackError(self.source, raw_path, "path leaves the package (absolute or '..')")
        try:
            check_path(path, self.source)
        except BadPackage as exc:
            raise UnpackError(exc.source, exc.entry, exc.problem) from None
        return path

    def add_dir(self, raw_path: str) -> None:
        self._tick(raw_path)
        path = self._clean(raw_path)
        if path:
            self._claim_clean(path, raw_path, "dir")

    def add_special(self, raw_path: str, what: str) -> None:
        """Record a device, fifo or socket: an error unless the package rules exclude it."""
        self._tick(raw_path)
        path = self._claim(raw_path, "special")
        self.specials[path] = what

    def add_symlink(self, raw_path: str, target: str) -> None:
        self._tick(raw_path)
        path = self._claim(raw_path, "symlink")
        if not target:
            raise UnpackError(self.source, path, "symlink with an empty target")
        if len(target.encode("utf-8", "surrogateescape")) > MAX_LINK_TARGET:
            raise UnpackError(self.source, path, f"symlink target longer than {MAX_LINK_TARGET} bytes")
        if "\x00" in target:
            raise UnpackError(self.source, path, "symlink target contains a NUL byte")
        self.links[path] = target

    def add_hardlink(self, raw_path: str, raw_target: str, executable: bool) -> None:
        self._tick(raw_path)
        path = self._claim(raw_path, "hardlink")
        try:
            target = self._clean(raw_target)
        except UnpackError as exc:  # name the link, not just its target
            raise UnpackError(self.source, path, f"hard link to {raw_target!r}: {exc.problem}") from None
        self.hardlinks[path] = (self._hardlink_source(path, raw_target, target), executable)

    def _hardlink_source(self, path: str, raw_target: str, target: str) -> str:
        """The earlier regular file or symlink a hard link copies, found in one step.

        Each recorded hard link points straight at a file or symlink (a link to a link takes
        that link's source), so a link to itself, a cycle or a chain that ends nowhere can never
        be recorded, and :meth:`finish` needs no loop: O(1) per link however long the chain.
        """
        if target == path:
            raise UnpackError(self.source, path, f"hard link to itself ({raw_target!r}): a broken or "
                              "hostile archive; re-create it, or fetch another release")
        target = self.hardlinks.get(target, (target, False))[0]
        if target not in self.files and target not in self.links:
            raise UnpackError(self.source, path, f"hard link to {raw_target!r}, which is not an "
                              "earlier file of the archive: a broken or hostile archive; re-create it "
                              "with the file before its links")
        return target

    def add_file(
        self, raw_path: str, executable: bool, size: int, chunks: Iterator[bytes | memoryview]
    ) -> None:
        """Write one regular file of ``size`` bytes from ``chunks``, hashing it on the way.

        The size limit is checked against the header's size before anything is read. Writing
        stays on this thread: handing files to writer threads (per file or in batches) was
        measured 10-40% slower on a kernel tarball, lost to GIL and futex traffic; the second
        core decompresses instead.
        """
        self._tick(raw_path)
        path = self._claim(raw_path, "file")
        self._reserve(path, size)
        fs_path = self._prepare(path)
        mode = self._modes[executable]
        try:
            fd = _create(fs_path, mode)
            try:
                digest = _write_small(fd, chunks) if size <= BLOCK_SIZE else _write_hashed(fd, chunks)
            finally:
                os.close(fd)
        except OSError as exc:
            raise UnpackError(self.source, path, f"cannot write: {exc.strerror}") from None
        self._check_size(path, size, digest.size)
        self.files[path] = (executable, digest)

    def _reserve(self, path: str, size: int) -> None:
        self.total_bytes += size
        if self.total_bytes > self.limits.max_bytes:
            raise UnpackError(self.source, path, f"archive expands past the size limit of "
                              f"{self.limits.max_bytes} bytes (raise it with --max-size or "
                              "TREESEED_MAX_UNPACK_SIZE if the package really is that large)")

    def _check_size(self, path: str, expected: int, actual: int) -> None:
        if actual != expected:
            raise UnpackError(self.source, path, f"entry holds {actual} bytes, its header says "
                              f"{expected} (truncated or corrupt archive)")

    def _prepare(self, path: str) -> bytes:
        """Create the parent directories of ``path`` (no symlinks exist yet, so none is followed)."""
        parent, _, _ = path.rpartition("/")
        if parent not in self._made_dirs:
            self._make_dirs(path, parent)
        return self._dest_b + b"/" + os.fsencode(path)

    def _make_dirs(self, path: str, parent: str) -> None:
        """Create ``parent`` and its missing ancestors, outermost first, with one mkdir each:
        every directory this writer made is in ``_made_dirs``, so nothing needs a stat
        (``os.makedirs`` costs a stat per level, per call)."""
        missing = []
        part = parent
        while part and part not in self._made_dirs:
            missing.append(part)
            part = part.rpartition("/")[0]
        try:
            for directory in reversed(missing):
                os.mkdir(self._dest_b + b"/" + os.fsencode(directory), 0o755)
                self._made_dirs.add(directory)
        except OSError as exc:
            raise UnpackError(self.source, path, f"cannot write: {exc.strerror}") from None

    # ---- finishing

    def finish(self) -> Unpacked:
        """Strip a single top-level directory, create links, and list the resulting entries."""
        prefix = self._strip_prefix()
        for path, (target, executable) in self.hardlinks.items():
            self._materialise_hardlink(path, target, executable)
        for path, target in self.links.items():
            try:
                os.symlink(os.fsencode(target), self._prepare(path))
            except OSError as exc:
                raise UnpackError(self.source, path, f"cannot create symlink: {exc.strerror}") from None
        root = self.dest / prefix if prefix else self.dest
        if prefix:
            root.mkdir(exist_ok=True)
        cut = len(prefix) + 1 if prefix else 0
        entries: list[Entry] = []
        digests: dict[str, FileDigest] = {}
        for path, (executable, digest) in self.files.items():
            rel = path[cut:]
            entries.append(Entry(rel, "file", digest.size, executable))
            digests[rel] = digest
        for path, target in self.links.items():
            entries.append(Entry(path[cut:], "symlink", 0, False, target))
        entries.sort(key=lambda e: e.path.encode("utf-8"))
        specials = {path[cut:]: what for path, what in self.specials.items()}
        below = prefix + "/" if prefix else ""
        dirs = [d[cut:] for d in self._made_dirs if d.startswith(below) and len(d) > cut]
        return Unpacked(root, entries, digests, specials, dirs)

    def _strip_prefix(self) -> str:
        """The single top-level directory every entry lies in, or "" (Zig's and Nix's rule)."""
        tops = {p.split("/", 1)[0] for p in self.kinds}
        if len(tops) != 1:
            return ""
        (top,) = tops
        return top if self.kinds.get(top) == "dir" else ""

    def _materialise_hardlink(self, path: str, target: str, executable: bool) -> None:
        """A hard link becomes an independent copy: cache entries never share inodes.

        ``target`` is already the chain's end (:meth:`_hardlink_source`): no loop here, so no
        archive can make this spin.
        """
        if target in self.links:
            self.links[path] = self.links[target]
            self.kinds[path] = "symlink"
            return
        source = self.files.get(target)
        if source is None:  # unreachable through add_hardlink; refuse rather than trust it
            raise UnpackError(self.source, path, f"hard link to {target!r}, which is not a file of "
                              "the archive: a broken or hostile archive; re-create it")
        digest = source[1]
        self._reserve(path, digest.size)  # every copy counts, or links would dodge the limit
        src = os.path.join(self._dest_b, os.fsencode(target))
        dst = self._prepare(path)
        mode = self._modes[executable]
        try:
            with open(src, "rb") as fin, open(_create(dst, mode), "wb") as fout:
                while chunk := fin.read(CHUNK):
                    fout.write(chunk)
        except OSError as exc:
            raise UnpackError(self.source, path, f"cannot write: {exc.strerror}") from None
        self.files[path] = (executable, digest)
        self.kinds[path] = "file"


# --------------------------------------------------------------------------- file creation


def _create(fs_path: bytes, mode: int) -> int:
    """Create a new file for writing and return its descriptor: never an existing file, never
    through a symlink. The mode is set with fchmod so the umask cannot change what is stored.
    Raw descriptors, not file objects: ``open()`` adds an ioctl and an lseek per file, which
    is measurable over the 80,000 files of a kernel tree.
    """
    fd = os.open(fs_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    if mode & _umask():
        try:
            os.fchmod(fd, mode)
        except OSError:
            os.close(fd)
            raise
    return fd


_UMASK: list[int] = []


def _umask() -> int:
    """The process's umask, read once from /proc (``os.umask`` can only be read by setting it,
    which would race with other threads creating files). When it takes nothing from 0644 and
    0755 (the usual 022), ``open`` already sets the mode and the fchmod per file is skipped;
    unknown, every file gets its fchmod."""
    if not _UMASK:
        value = 0o777
        try:
            with open("/proc/self/status", "rb") as f:
                for line in f:
                    if line.startswith(b"Umask:"):
                        value = int(line.split()[1], 8)
                        break
        except (OSError, ValueError, IndexError):
            pass
        _UMASK.append(value)
    return _UMASK[0]


def _write_small(fd: int, chunks: Iterator[bytes | memoryview]) -> FileDigest:
    """Write a file whose header says it fits one 16 KiB block, in one write, and hash it as
    one leaf. The readers yield no more than the header's size (tar) or the declared size
    (zip), so the join is bounded; a file that comes up short fails the caller's size check."""
    data = b"".join(chunks)
    if data:
        _write_all(fd, data)
    return digest_block(data)


def _write_hashed(fd: int, chunks: Iterator[bytes | memoryview]) -> FileDigest:
    """Write a file chunk by chunk while the BEP 52 hasher reads the same buffers."""
    hasher = MerkleHasher()
    for chunk in chunks:
        hasher.update(chunk)
        _write_all(fd, chunk)
    return hasher.finish()


def _write_all(fd: int, data: bytes | memoryview) -> None:
    written = os.write(fd, data)
    if written == len(data):  # a regular file takes it all at once: no view needed
        return
    view = memoryview(data)[written:]
    while view:
        view = view[os.write(fd, view):]


# --------------------------------------------------------------------------- decompression


class _Pipe:
    """A read-only, forward-only stream fed by a decompressing thread.

    The tar reader calls :meth:`read` as on a plain file. The thread reads
    the raw archive in 1 MiB chunks, hashes those raw bytes (archive-sha256) and decompresses
    them; the queue is bounded so memory stays flat whatever the archive size.
    """

    def __init__(self, raw: BinaryIO, fmt: str, source: str, limit: int, digest: bool = True) -> None:
        self._digest = digest
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(_QUEUE_DEPTH)
        self._buf = b""
        self._off = 0
        self._eof = False
        self._stop = threading.Event()
        self.sha256 = hashlib.sha256()
        self.raw_bytes = 0
        self._source = source
        self._limit = limit
        self._thread = threading.Thread(
            target=self._run, args=(raw, fmt), name="treeseed-decompress", daemon=True
        )
        self._thread.start()

    def _run(self, raw: BinaryIO, fmt: str) -> None:
        try:
            produced = 0
            for chunk in _decompress(raw, fmt, self._source, self._count_raw):
                produced += len(chunk)
                if produced > self._limit:
                    raise UnpackError(self._source, "", f"decompresses past {self._limit} bytes; "
                                      "raise the limit with --max-size if that is expected")
                if not self._put(chunk):
                    return
            self._put(None)
        except BaseException as exc:  # handed to the reading thread, which raises it
            self._put(exc)

    def _count_raw(self, chunk: bytes) -> None:
        if self._digest:
            self.sha256.update(chunk)
        self.raw_bytes += len(chunk)

    def _put(self, item: bytes | BaseException | None) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _next(self) -> bool:
        if self._eof:
            return False
        item = self._queue.get()
        if item is None:
            self._eof = True
            return False
        if isinstance(item, BaseException):
            self._eof = True
            raise item
        self._buf, self._off = item, 0
        return True

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; fewer only at the end of the stream."""
        off = self._off
        end = off + n
        if end <= len(self._buf):  # the common case, a header or a small file: one slice
            self._off = end
            return self._buf if off == 0 and end == len(self._buf) else self._buf[off:end]
        parts = []
        want = n
        while want > 0:
            avail = len(self._buf) - self._off
            if avail == 0:
                if not self._next():
                    break
                continue
            take = min(avail, want)
            if self._off == 0 and take == len(self._buf):
                parts.append(self._buf)
            else:
                parts.append(self._buf[self._off:self._off + take])
            self._off += take
            want -= take
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def drain(self) -> None:
        """Read to the end so the raw digest covers the whole archive (trailing padding too)."""
        while self._next():
            self._buf, self._off = b"", 0

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class _Observed:
    """A raw file wrapper that shows every byte read to ``observe`` (the archive digest)."""

    def __init__(self, raw: BinaryIO, observe: Callable[[bytes], None]) -> None:
        self._raw = raw
        self._observe = observe

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self._observe(data)
        return data


    def readable(self) -> bool:
        return True



def _decompress(raw: BinaryIO, fmt: str, source: str, observe: Callable[[bytes], None]) -> Iterator[bytes]:
    """Yield the decompressed archive in chunks of at most 1 MiB, whatever the ratio.

    Concatenated gzip members, xz/bz2 streams and zstd frames are all read; zero bytes after
    the last one are padding some tools add; a stream that stops before its end marker is
    truncation. (The standard library's GzipFile/LZMAFile do the same but read 8 KiB at a time
    and ran 50% slower on a kernel tarball.)
    """
    observed = _Observed(raw, observe)
    try:
        if fmt == "tar":
            yield from iter(lambda: observed.read(CHUNK), b"")
        else:
            yield from _decompressed(observed, fmt)
    except EOFError:
        raise UnpackError(source, "", f"truncated {fmt} stream: the archive ends early "
                          "(an interrupted download? fetch it again)") from None
    except UnpackError:
        raise
    except Exception as exc:  # zlib.error, LZMAError, OSError (bz2), ZstdError
        raise UnpackError(source, "", f"corrupt {fmt} data: {exc}") from None


_RAW_CHUNK = 64 << 10
_ZSTD_PIECE = 2048  # zstd's decompressobj has no output bound: small inputs bound each call


def _new_decompressor(fmt: str):
    if fmt == "gz":
        return _gzip_decompressor()
    if fmt == "xz":
        return lzma.LZMADecompressor()
    if fmt == "bz2":
        return bz2.BZ2Decompressor()
    import zstandard

    return zstandard.ZstdDecompressor().decompressobj()


def _gzip_decompressor():  # type: ignore[no-untyped-def]
    """Intel ISA-L's inflate (python-isal) where its wheel exists, else zlib's: the same stream
    API (``decompress(data, max_length)``, ``eof``, ``unused_data``, ``unconsumed_tail``), and
    the same errors become the same "corrupt gz data" message. On the 100 sdists and npm
    tarballs of bench/many.py it inflates 2.7x faster than zlib (698 -> 256 ms), and gzip is
    what most packages come as: the decompressing thread then keeps up with the writer
    instead of keeping it waiting."""
    try:
        from isal import isal_zlib
    except ImportError:  # a platform without its wheel (pyproject.toml): zlib does the same
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    return isal_zlib.decompressobj(16 + zlib.MAX_WBITS)


def _decompressed(raw: _Observed, fmt: str) -> Iterator[bytes]:
    dec = _new_decompressor(fmt)
    ended = False
    while chunk := raw.read(_RAW_CHUNK):
        data = chunk
        while data:
            if ended:
                if not data.strip(b"\x00"):
                    break
                dec, ended = _new_decompressor(fmt), False
            data = yield from _inflate(dec, fmt, data)
            ended = dec.eof
    if not ended:
        raise EOFError(f"{fmt} stream incomplete")


def _inflate(dec, fmt: str, data: bytes) -> Iterator[bytes]:  # type: ignore[no-untyped-def]
    """Feed ``data`` to one stream's decompressor; return what lies past the stream's end."""
    if fmt == "zst":
        for start in range(0, len(data), _ZSTD_PIECE):
            out = dec.decompress(data[start : start + _ZSTD_PIECE])
            if out:
                yield out
            if dec.eof:
                return bytes(dec.unused_data) + data[start + _ZSTD_PIECE :]
        return b""
    while True:
        out = dec.decompress(data, CHUNK)
        if out:
            yield out
        if dec.eof:
            return bytes(dec.unused_data)
        if fmt == "gz":
            data = dec.unconsumed_tail
            if not data and len(out) < CHUNK:
                return b""
        else:
            data = b""
            if dec.needs_input:
                return b""


# --------------------------------------------------------------------------- tar and zip


def unpack_archive(
    archive: Path, dest: Path, source: str, limits: Limits | None = None,
    archive_sha256: str | None = None, read_only: bool = False,
) -> Unpacked:
    """Unpack ``archive`` (any supported format, sniffed) into the empty directory ``dest``.

    The archive's SHA-256 is taken on the way unless the caller already knows it. With
    ``read_only`` files are created with their cache modes (:class:`TreeWriter`).
    """
    limits = limits or Limits()
    with open(archive, "rb") as raw, _fast_gil_handoff():
        head = raw.read(512)
        fmt = detect_format(head, source)
        raw.seek(0)
        writer = TreeWriter(dest, source, limits, read_only)
        if fmt == "zip":
            _read_zip(raw, writer, source)
            digest, size = archive_sha256, os.fstat(raw.fileno()).st_size
            if digest is None:
                raw.seek(0)
                digest, size = _sha256_file(raw)
        else:
            digest, size = _read_tar(raw, fmt, writer, source, limits, archive_sha256 is None)
            digest = archive_sha256 or digest
        result = writer.finish()
    result.archive_sha256, result.archive_bytes = digest, size
    return result


_handoff_lock = threading.Lock()
_handoff_users = 0
_handoff_saved = 0.005


@contextlib.contextmanager
def _fast_gil_handoff() -> Iterator[None]:
    """Shorten the GIL switch interval while any unpack runs in this process.

    The decompressing thread needs the GIL back for a moment after every call that released
    it; with the default 5 ms interval it queues behind the parsing thread, and a kernel
    tarball took 30% longer. Counted, so concurrent unpacks restore the interval only when the
    last one ends.
    """
    global _handoff_users, _handoff_saved
    with _handoff_lock:
        if _handoff_users == 0:
            _handoff_saved = sys.getswitchinterval()
            sys.setswitchinterval(min(_handoff_saved, 0.0005))
        _handoff_users += 1
    try:
        yield
    finally:
        with _handoff_lock:
            _handoff_users -= 1
            if _handoff_users == 0:
                sys.setswitchinterval(_handoff_saved)


def _sha256_file(f: BinaryIO) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    while chunk := f.read(CHUNK):
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n


def _read_tar(
    raw: BinaryIO, fmt: str, writer: TreeWriter, source: str, limits: Limits, digest: bool
) -> tuple[str | None, int]:
    """Feed every tar member to ``writer``; return the raw archive's digest and size."""
    # The decompressed stream holds file data plus headers: allow for both before calling it a bomb.
    limit = limits.max_bytes + limits.max_entries * 1024 + (64 << 20)
    pipe = _Pipe(raw, fmt, source, limit, digest)
    try:
        reader = TarReader(pipe.read, source, limits.max_entries, limits.max_meta_bytes)
        _read_tar_members(reader, writer, source)
        pipe.drain()
    finally:
        pipe.close()
    return (pipe.sha256.hexdigest() if digest else None), pipe.raw_bytes


def _read_tar_members(reader: TarReader, writer: TreeWriter, source: str) -> None:
    for member in reader.members():
        name, kind = member.name, member.kind
        if kind == "file":
            writer.add_file(name, bool(member.mode & stat.S_IXUSR), member.size, reader.chunks(member))
        elif kind == "dir":
            writer.add_dir(name)
        elif kind == "symlink":
            writer.add_symlink(name, member.linkname)
        elif kind == "hardlink":
            writer.add_hardlink(name, member.linkname, bool(member.mode & stat.S_IXUSR))
        elif kind == "fifo":
            writer.add_special(name, "a fifo")
        else:
            writer.add_special(name, "a device file")


def _read_zip(raw: BinaryIO, writer: TreeWriter, source: str) -> None:
    """Feed every zip member to ``writer``; sizes come from the central directory and are
    enforced while reading (zipfile stops at the declared size and checks the CRC)."""
    try:
        zf = zipfile.ZipFile(raw)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UnpackError(source, "", f"corrupt zip archive: {exc}") from None
    with zf:
        for info in zf.infolist():
            name = _zip_name(info, source)
            mode = info.external_attr >> 16 if info.create_system == 3 else 0
            try:
                _read_zip_member(zf, info, name, mode, writer, source)
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError,
                    OSError) as exc:
                raise UnpackError(source, name, f"corrupt zip entry: {exc}") from None


def _read_zip_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, mode: int, writer: TreeWriter, source: str
) -> None:
    if info.is_dir() or stat.S_ISDIR(mode):
        writer.add_dir(name)
    elif stat.S_ISLNK(mode):
        if info.file_size > MAX_LINK_TARGET:
            raise UnpackError(source, name, f"symlink target longer than {MAX_LINK_TARGET} bytes")
        writer.add_symlink(name, zf.read(info).decode("utf-8", "surrogateescape"))
    elif stat.S_IFMT(mode) not in (0, stat.S_IFREG):
        writer.add_special(name, "a special file")
    else:
        with zf.open(info) as member:
            writer.add_file(name, bool(mode & stat.S_IXUSR), info.file_size,
                            iter(lambda: member.read(CHUNK), b""))


def _zip_name(info: zipfile.ZipInfo, source: str) -> str:
    """Zip names are UTF-8 when flag bit 11 is set, else CP437 by the spec; accept UTF-8 only."""
    if info.flag_bits & 0x800:
        return info.filename
    raw = info.filename.encode("cp437")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UnpackError(source, raw.decode("utf-8", "backslashreplace"), "name is not valid UTF-8") from None
