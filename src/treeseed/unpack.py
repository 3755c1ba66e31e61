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
import hashlib
import lzma
import os
import queue
import stat
import tarfile
import threading
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from .errors import BadPackage, UnpackError
from .hashing.bt2 import FileDigest, MerkleHasher
from .package import Entry, check_path

CHUNK = 1 << 20
DEFAULT_MAX_BYTES = 16 << 30
DEFAULT_MAX_ENTRIES = 2_000_000
_QUEUE_DEPTH = 16


@dataclass(frozen=True)
class Limits:
    """How much an archive may expand to; beyond it the archive is rejected as a bomb."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_entries: int = DEFAULT_MAX_ENTRIES

    @classmethod
    def from_env(cls, max_bytes: int | None = None) -> "Limits":
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


@dataclass
class Unpacked:
    """What an unpack produced: the package root and every entry with its bt2 file digest."""

    root: Path
    entries: list[Entry]
    digests: dict[str, FileDigest]
    specials: dict[str, str] = field(default_factory=dict)  # path -> "a fifo", ... (not created)
    archive_sha256: str | None = None
    archive_bytes: int = 0


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
    lowered = head[:512].lstrip().lower()
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

    def __init__(self, dest: Path, source: str, limits: Limits) -> None:
        self.dest = dest
        self.source = source
        self.limits = limits
        self._dest_b = os.fsencode(dest)
        self.kinds: dict[str, str] = {}  # path -> "file" | "dir" | "symlink" | "hardlink" | "special"
        self.files: dict[str, tuple[bool, FileDigest]] = {}
        self.links: dict[str, str] = {}
        self.hardlinks: dict[str, tuple[str, bool]] = {}
        self.specials: dict[str, str] = {}
        self._made_dirs: set[str] = {""}
        self.total_bytes = 0

    # ---- recording entries

    def _claim(self, raw_path: str, kind: str) -> str:
        path = self._clean(raw_path)
        if not path:
            raise UnpackError(self.source, raw_path, f"a {kind} entry names the package root itself")
        if len(self.kinds) >= self.limits.max_entries:
            raise UnpackError(self.source, path, f"more than {self.limits.max_entries} entries")
        previous = self.kinds.get(path)
        if previous is not None and not (previous == "dir" and kind == "dir"):
            raise UnpackError(self.source, path, f"duplicate entry (already a {previous})")
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            parent_kind = self.kinds.get(parent)
            if parent_kind is None:
                self.kinds[parent] = "dir"
            elif parent_kind != "dir":
                raise UnpackError(self.source, path, f"lies below {parent!r}, which is a {parent_kind}")
        self.kinds[path] = kind
        return path

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
        path = self._clean(raw_path)
        if path:
            self._claim(path, "dir")

    def add_special(self, raw_path: str, what: str) -> None:
        """Record a device, fifo or socket: an error unless the package rules exclude it."""
        path = self._claim(raw_path, "special")
        self.specials[path] = what

    def add_symlink(self, raw_path: str, target: str) -> None:
        path = self._claim(raw_path, "symlink")
        if not target:
            raise UnpackError(self.source, path, "symlink with an empty target")
        self.links[path] = target

    def add_hardlink(self, raw_path: str, raw_target: str, executable: bool) -> None:
        path = self._claim(raw_path, "hardlink")
        target = self._clean(raw_target)
        if self.kinds.get(target) not in ("file", "symlink", "hardlink"):
            raise UnpackError(self.source, path, f"hard link to {raw_target!r}, which is not an "
                              "earlier file of the archive")
        self.hardlinks[path] = (target, executable)

    def add_file(self, raw_path: str, executable: bool, chunks: Iterator[bytes | memoryview]) -> None:
        """Write one regular file from ``chunks``, hashing it on the way."""
        path = self._claim(raw_path, "file")
        fs_path = self._prepare(path)
        hasher = MerkleHasher()
        mode = 0o755 if executable else 0o644
        fd = os.open(fs_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        try:
            for chunk in chunks:
                self.total_bytes += len(chunk)
                if self.total_bytes > self.limits.max_bytes:
                    raise UnpackError(self.source, path, f"archive expands past the size limit of "
                                      f"{self.limits.max_bytes} bytes (raise it with --max-size or "
                                      "TREESEED_MAX_UNPACK_SIZE if the package really is that large)")
                hasher.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
            os.fchmod(fd, mode)  # the umask must not decide the stored mode
        finally:
            os.close(fd)
        self.files[path] = (executable, hasher.finish())

    def _prepare(self, path: str) -> bytes:
        """Create the parent directories of ``path`` (no symlinks exist yet, so none is followed)."""
        parent, _, _ = path.rpartition("/")
        if parent not in self._made_dirs:
            os.makedirs(os.path.join(self._dest_b, os.fsencode(parent)), mode=0o755, exist_ok=True)
            part = parent
            while part and part not in self._made_dirs:
                self._made_dirs.add(part)
                part = part.rpartition("/")[0]
        return os.path.join(self._dest_b, os.fsencode(path))

    # ---- finishing

    def finish(self) -> Unpacked:
        """Strip a single top-level directory, create links, and list the resulting entries."""
        prefix = self._strip_prefix()
        for path, (target, executable) in self.hardlinks.items():
            self._materialise_hardlink(path, target, executable)
        for path, target in self.links.items():
            os.symlink(os.fsencode(target), self._prepare(path))
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
        return Unpacked(root, entries, digests, specials)

    def _strip_prefix(self) -> str:
        """The single top-level directory every entry lies in, or "" (Zig's and Nix's rule)."""
        tops = {p.split("/", 1)[0] for p in self.kinds}
        if len(tops) != 1:
            return ""
        (top,) = tops
        return top if self.kinds.get(top) == "dir" else ""

    def _materialise_hardlink(self, path: str, target: str, executable: bool) -> None:
        """A hard link becomes an independent copy: cache entries never share inodes."""
        while target in self.hardlinks:
            target = self.hardlinks[target][0]
        if target in self.links:
            self.links[path] = self.links[target]
            self.kinds[path] = "symlink"
            return
        src = os.path.join(self._dest_b, os.fsencode(target))
        dst = self._prepare(path)
        mode = 0o755 if executable else 0o644
        with open(src, "rb") as fin:
            fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
            with open(fd, "wb") as fout:
                while chunk := fin.read(CHUNK):
                    fout.write(chunk)
                os.fchmod(fout.fileno(), mode)
        size, digest = self.files[target][1].size, self.files[target][1]
        self.total_bytes += size
        self.files[path] = (executable, digest)
        self.kinds[path] = "file"


# --------------------------------------------------------------------------- decompression


class _Pipe:
    """A read-only, forward-only stream fed by a decompressing thread.

    ``tarfile`` reads it as a plain file (``read``, ``tell``, forward ``seek``). The thread reads
    the raw archive in 1 MiB chunks, hashes those raw bytes (archive-sha256) and decompresses
    them; the queue is bounded so memory stays flat whatever the archive size.
    """

    def __init__(self, raw: BinaryIO, fmt: str, source: str, limit: int) -> None:
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(_QUEUE_DEPTH)
        self._buf = b""
        self._off = 0
        self._pos = 0
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

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            parts = [self._buf[self._off:]]
            while self._next():
                parts.append(self._buf)
            self._buf, self._off = b"", 0
            data = b"".join(parts)
            self._pos += len(data)
            return data
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
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self._pos += len(data)
        return data

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 1:
            offset += self._pos
        if offset < self._pos:
            raise UnpackError(self._source, "", "archive needs a backward seek, which a stream "
                              "cannot do")
        while self._pos < offset:
            if not self.read(min(CHUNK, offset - self._pos)):
                break
        return self._pos

    def drain(self) -> None:
        """Read to the end so the raw digest covers the whole archive (trailing padding too)."""
        while self._next():
            self._pos += len(self._buf) - self._off
            self._buf, self._off = b"", 0

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return True


def _decompressor(fmt: str):
    if fmt == "gz":
        return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    if fmt == "xz":
        return lzma.LZMADecompressor(format=lzma.FORMAT_AUTO)
    if fmt == "bz2":
        return bz2.BZ2Decompressor()
    if fmt == "zst":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj()
    raise AssertionError(fmt)


def _decompress(raw: BinaryIO, fmt: str, source: str, observe: Callable[[bytes], None]) -> Iterator[bytes]:
    """Yield decompressed chunks of ``raw``; concatenated members, streams or frames all count.

    ``observe`` sees every raw chunk (the archive digest is taken there). Zero bytes after the
    last member are padding some tools add; anything else that ends early is truncation.
    """
    if fmt == "tar":
        while chunk := raw.read(CHUNK):
            observe(chunk)
            yield chunk
        return
    dec = _decompressor(fmt)
    ended = False
    while chunk := raw.read(CHUNK):
        observe(chunk)
        data = chunk
        while data:
            if ended:
                if not data.strip(b"\x00"):
                    break
                dec, ended = _decompressor(fmt), False
            try:
                out = dec.decompress(data)
            except Exception as exc:  # zlib.error, LZMAError, OSError, ZstdError, EOFError
                raise UnpackError(source, "", f"corrupt {fmt} data: {exc}") from None
            if out:
                yield out
            ended = dec.eof
            data = bytes(dec.unused_data) if ended else b""
    if not ended:
        raise UnpackError(source, "", f"truncated {fmt} stream: the archive ends early "
                          "(an interrupted download? fetch it again)")


# --------------------------------------------------------------------------- tar and zip


def unpack_archive(archive: Path, dest: Path, source: str, limits: Limits | None = None) -> Unpacked:
    """Unpack ``archive`` (any supported format, sniffed) into the empty directory ``dest``."""
    limits = limits or Limits()
    with open(archive, "rb") as raw:
        head = raw.read(512)
        fmt = detect_format(head, source)
        raw.seek(0)
        if fmt == "zip":
            result = _unpack_zip(raw, dest, source, limits)
            raw.seek(0)
            result.archive_sha256, result.archive_bytes = _sha256_file(raw)
            return result
        return _unpack_tar(raw, fmt, dest, source, limits)


def _sha256_file(f: BinaryIO) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    while chunk := f.read(CHUNK):
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n


def _unpack_tar(raw: BinaryIO, fmt: str, dest: Path, source: str, limits: Limits) -> Unpacked:
    # The decompressed stream holds file data plus headers: allow for both before calling it a bomb.
    pipe = _Pipe(raw, fmt, source, limits.max_bytes + limits.max_entries * 1024 + (64 << 20))
    writer = TreeWriter(dest, source, limits)
    try:
        try:
            tf = tarfile.open(fileobj=pipe, mode="r:", encoding="utf-8", errors="surrogateescape")
        except tarfile.ReadError as exc:
            raise UnpackError(source, "", f"not a readable tar archive inside the {fmt} stream: {exc}") from None
        try:
            _read_tar_members(tf, writer, source)
        except (tarfile.TarError, EOFError) as exc:
            raise UnpackError(source, "", f"corrupt or truncated tar archive: {exc}") from None
        pipe.drain()
    finally:
        pipe.close()
    result = writer.finish()
    result.archive_sha256 = pipe.sha256.hexdigest()
    result.archive_bytes = pipe.raw_bytes
    return result


def _read_tar_members(tf: tarfile.TarFile, writer: TreeWriter, source: str) -> None:
    while True:
        member = tf.next()
        if member is None:
            return
        name = member.name
        if member.isreg():
            if member.issparse():
                raise UnpackError(source, name, "sparse files are not supported in packages")
            writer.add_file(name, bool(member.mode & stat.S_IXUSR), _member_chunks(tf, member, source))
        elif member.isdir():
            writer.add_dir(name)
        elif member.issym():
            writer.add_symlink(name, member.linkname)
        elif member.islnk():
            writer.add_hardlink(name, member.linkname, bool(member.mode & stat.S_IXUSR))
        elif member.isfifo():
            writer.add_special(name, "a fifo")
        elif member.ischr() or member.isblk():
            writer.add_special(name, "a device file")
        else:
            raise UnpackError(source, name, f"unsupported tar entry type {member.type!r}")


def _member_chunks(tf: tarfile.TarFile, member: tarfile.TarInfo, source: str) -> Iterator[bytes]:
    """Stream a member's bytes; a short member means the archive was cut off."""
    fileobj = tf.fileobj
    remaining = member.size
    fileobj.seek(member.offset_data)
    while remaining:
        chunk = fileobj.read(min(CHUNK, remaining))
        if not chunk:
            raise UnpackError(source, member.name, "archive ends inside this file (truncated?)")
        remaining -= len(chunk)
        yield chunk


def _unpack_zip(raw: BinaryIO, dest: Path, source: str, limits: Limits) -> Unpacked:
    writer = TreeWriter(dest, source, limits)
    try:
        zf = zipfile.ZipFile(raw)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UnpackError(source, "", f"corrupt zip archive: {exc}") from None
    with zf:
        for info in zf.infolist():
            name = _zip_name(info, source)
            mode = info.external_attr >> 16 if info.create_system == 3 else 0
            try:
                if info.is_dir() or stat.S_ISDIR(mode):
                    writer.add_dir(name)
                elif stat.S_ISLNK(mode):
                    target = zf.read(info).decode("utf-8", "surrogateescape")
                    writer.add_symlink(name, target)
                elif mode and stat.S_IFMT(mode) not in (0, stat.S_IFREG):
                    writer.add_special(name, "a special file")
                else:
                    with zf.open(info) as member:
                        writer.add_file(name, bool(mode & stat.S_IXUSR), iter(lambda: member.read(CHUNK), b""))
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
                raise UnpackError(source, name, f"corrupt zip entry: {exc}") from None
    return writer.finish()


def _zip_name(info: zipfile.ZipInfo, source: str) -> str:
    """Zip names are UTF-8 when flag bit 11 is set, else CP437 by the spec; accept UTF-8 only."""
    if info.flag_bits & 0x800:
        return info.filename
    raw = info.filename.encode("cp437")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UnpackError(source, raw.decode("utf-8", "backslashreplace"), "name is not valid UTF-8") from None
