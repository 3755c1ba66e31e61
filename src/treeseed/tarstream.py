"""A package as a deterministic tar that is never built: a layout of byte ranges, read on demand.

``treeseed serve`` hands out ``bt2-<hex>.tar`` for any cached package. Building that tar in
memory or on disk would cost the package's size per request; instead :class:`TarLayout` computes,
from the package's entries alone, where every header, file body and padding block lies, so the
exact length is known before a byte is sent and any byte range maps straight onto "this part of
that header" or "these bytes of that file". :meth:`TarLayout.pieces` yields a range as header
bytes (made when needed) and :class:`FileSlice` references that the caller copies from disk,
with ``sendfile`` when it can.

The tar is a function of the package alone, so its bytes never change (the server's ETag is
the package hash):

* a directory entry ``<top>/`` (mode 0755) and then every package entry below it as
  ``<top>/<path>``, in the package's own order (sorted by UTF-8 path bytes); unpacking strips
  that one top directory, so ``treeseed fetch`` of the tar gives back the same package;
* ustar headers; a PAX extended header (``path``, ``linkpath``, ``size``) only where ustar
  cannot hold the value: a path over 100 bytes that does not split into ustar's prefix and
  name, a non-ASCII path or link target, a file of 8 GiB or more;
* mtime 0, uid and gid 0, empty user and group names, mode 0644 or 0755 by the executable bit
  (0777 for symlinks, as tar writes them); symlinks stay symlinks with their target as written;
* two zero blocks at the end, no padding to a record size.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .package import Entry

BLOCK = 512
END = 2 * BLOCK  # the end-of-archive marker: two zero blocks
_USTAR_SIZE_LIMIT = 8**11  # an 11-digit octal size field holds less than 8 GiB
_PAX_NAME = b"././@PaxHeader"  # what Python's tarfile calls its PAX headers: not a real path


@dataclass(frozen=True, slots=True)
class FileSlice:
    """``count`` bytes of the file at ``path`` from ``offset``; ``size`` is the file's length
    when the layout was made, so the copier can refuse a file that changed since."""

    path: bytes
    size: int
    offset: int
    count: int


@dataclass(frozen=True, slots=True)
class _Member:
    """One tar member: its name below the top directory ("" for the top directory itself)."""

    name: str
    entry: Entry | None  # None for the top directory

    @property
    def data_size(self) -> int:
        return self.entry.size if self.entry is not None and self.entry.kind == "file" else 0


class TarLayout:
    """Where each byte of the deterministic tar of ``entries`` (found below ``root``) comes from.

    Costs two integers per entry; no file is opened until :meth:`pieces` reaches it.
    """

    def __init__(self, root: Path, top: str, entries: Sequence[Entry]) -> None:
        self.root = os.fsencode(root)
        self.top = top
        self._members = [_Member("", None)] + [_Member(e.path, e) for e in entries]
        #: The regular files by path: what a web seed may ask for, one by one.
        self.files = {e.path: e for e in entries if e.kind == "file"}
        self._starts: list[int] = []
        self._header_sizes: list[int] = []
        offset = 0
        for member in self._members:
            header = len(_header(self.top, member))
            self._starts.append(offset)
            self._header_sizes.append(header)
            offset += header + _padded(member.data_size)
        self.size = offset + END

    def pieces(self, start: int = 0, stop: int | None = None) -> Iterator[bytes | FileSlice]:
        """The bytes ``[start, stop)`` of the tar, in order, as bytes and file slices."""
        stop = self.size if stop is None else stop
        if not 0 <= start <= stop <= self.size:
            raise ValueError(f"range {start}-{stop} is outside the tar's {self.size} bytes")
        pos = start
        index = bisect.bisect_right(self._starts, start) - 1
        while pos < stop and index < len(self._members):
            pos = yield from self._member_pieces(index, pos, stop)
            index += 1
        if pos < stop:
            yield bytes(stop - pos)  # the end-of-archive blocks

    def _member_pieces(self, index: int, pos: int, stop: int) -> Iterator[bytes | FileSlice]:
        """Yield what of member ``index`` lies in ``[pos, stop)``; return where it ended."""
        member = self._members[index]
        begin = self._starts[index]
        data_begin = begin + self._header_sizes[index]
        data_end = data_begin + member.data_size
        member_end = begin + self._header_sizes[index] + _padded(member.data_size)
        if pos < data_begin:
            end = min(stop, data_begin)
            yield _header(self.top, member)[pos - begin:end - begin]
            pos = end
        if pos < stop and pos < data_end:
            assert member.entry is not None
            end = min(stop, data_end)
            yield FileSlice(os.path.join(self.root, os.fsencode(member.name)), member.data_size,
                            pos - data_begin, end - pos)
            pos = end
        if pos < stop and pos < member_end:
            end = min(stop, member_end)
            yield bytes(end - pos)
            pos = end
        return pos


def _padded(size: int) -> int:
    return size + (-size % BLOCK)


# --------------------------------------------------------------------------- headers


def _header(top: str, member: _Member) -> bytes:
    """The header block(s) of one member: a PAX header first when ustar cannot hold it."""
    entry = member.entry
    path = f"{top}/{member.name}" if member.name else f"{top}/"
    name = _utf8(path)
    link = _utf8(entry.target) if entry is not None and entry.target is not None else b""
    size = member.data_size
    pax: list[tuple[bytes, bytes]] = []
    split = _split_ustar(name)
    if split is None:
        pax.append((b"path", name))
        split = (b"", _ascii_stand_in(name))
    if len(link) > 100 or not link.isascii():
        pax.append((b"linkpath", link))
        link = _ascii_stand_in(link)
    if size >= _USTAR_SIZE_LIMIT:
        pax.append((b"size", str(size).encode()))
    typeflag, mode = _type_and_mode(entry)
    block = _ustar(split[1], split[0], mode, 0 if size >= _USTAR_SIZE_LIMIT else size, typeflag, link)
    if not pax:
        return block
    records = b"".join(_pax_record(k, v) for k, v in pax)
    pax_block = _ustar(_PAX_NAME, b"", 0o644, len(records), b"x", b"")
    return pax_block + records + bytes(-len(records) % BLOCK) + block


def _type_and_mode(entry: Entry | None) -> tuple[bytes, int]:
    if entry is None:
        return b"5", 0o755
    if entry.kind == "symlink":
        return b"2", 0o777
    return b"0", 0o755 if entry.executable else 0o644


def _utf8(text: str) -> bytes:
    """Names are kept byte for byte: ``surrogateescape`` restores any byte ``fsdecode`` escaped."""
    return text.encode("utf-8", "surrogateescape")


def _split_ustar(name: bytes) -> tuple[bytes, bytes] | None:
    """(prefix, name) for ustar's 155 + 100 byte fields, or None when a PAX path is needed.

    Non-ASCII names always get a PAX path (UTF-8 by definition), so no reader has to guess
    the encoding of a ustar field.
    """
    if not name.isascii():
        return None
    if len(name) <= 100:
        return b"", name
    cut = name.find(b"/", len(name) - 101)  # the shortest prefix that leaves <= 100 for the name
    if cut == -1 or cut > 155 or cut == len(name) - 1:
        return None
    return name[:cut], name[cut + 1:]


def _ascii_stand_in(value: bytes) -> bytes:
    """What goes in a ustar field whose real value is in the PAX header: readers that know
    PAX ignore it; it is ASCII and cut to fit so that the header itself stays valid."""
    return value.decode("utf-8", "replace").encode("ascii", "replace")[:100]


def _pax_record(key: bytes, value: bytes) -> bytes:
    """``"<length> <key>=<value>\\n"``, where the length counts its own digits."""
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while length != len(body) + len(str(length)):
        length = len(body) + len(str(length))
    return str(length).encode() + body


def _ustar(name: bytes, prefix: bytes, mode: int, size: int, typeflag: bytes, link: bytes) -> bytes:
    """One 512-byte POSIX ustar header with every variable field fixed (mtime, owner)."""
    block = bytearray(BLOCK)
    block[0:len(name)] = name
    block[100:108] = b"%07o\0" % mode
    block[108:116] = b"0000000\0"  # uid
    block[116:124] = b"0000000\0"  # gid
    block[124:136] = b"%011o\0" % size
    block[136:148] = b"00000000000\0"  # mtime: 0
    block[148:156] = b" " * 8  # the checksum counts its own field as spaces
    block[156:157] = typeflag
    block[157:157 + len(link)] = link
    block[257:265] = b"ustar\x0000"
    block[329:337] = b"0000000\0"  # devmajor
    block[337:345] = b"0000000\0"  # devminor
    block[345:345 + len(prefix)] = prefix
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)
