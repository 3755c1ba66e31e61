"""Nix's NAR hash of a package tree, and the three ways Nix spells a SHA-256.

A NAR (Nix ARchive) is Nix's canonical serialisation of a file system tree, and the "NAR hash"
that ``nix-hash --type sha256 DIR``, ``nix hash path DIR`` and every Nix fetcher's ``narHash``
report is SHA-256 over it. Every item is a *string*: a u64 little-endian length, the bytes, and
zero padding to a multiple of 8::

    nar       = "nix-archive-1" node
    node      = "(" "type" ( regular | symlink | directory ) ")"
    regular   = "regular" [ "executable" "" ] "contents" <file bytes>
    symlink   = "symlink" "target" <link text>
    directory = "directory" { "entry" "(" "name" <name> "node" node ")" }

Directory entries come in plain byte order of their names; a file is executable iff its owner
exec bit is set. Since a package has no directory entries of its own, its directories are exactly
those its paths run through (an empty directory would be part of a NAR, but it is never part of
a package).

A file's length precedes its bytes and names are ordered, so the NAR is one sequential stream
over the whole tree: :class:`NarFormat` hands out no per-file hasher and instead makes its own
pass in :meth:`NarFormat.finish`, never holding more than one read buffer in memory.
:func:`nar_bytes_stream` is that pass, reusable for writing a NAR out.

>>> nix32(bytes(32))
'0000000000000000000000000000000000000000000000000000'
>>> sri(bytes(32))
'sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA='
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import struct
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeAlias, Union

from ..errors import BadPackage, TreeseedError
from ..package import Entry
from . import READ_CHUNK

#: Nix's base-32 alphabet: digits and lower-case letters without e, o, u and t.
NIX32_ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"
_NIX32_VALUE = {c: i for i, c in enumerate(NIX32_ALPHABET)}
SHA256_SIZE = 32
SRI_PREFIX = "sha256-"
_HEX = frozenset("0123456789abcdefABCDEF")
_OTHER_ALGOS = ("md5", "sha1", "sha512")

#: A directory of a package: raw name bytes to a file or symlink entry, or to a subdirectory.
Dir: TypeAlias = dict[bytes, Union[Entry, "Dir"]]

#: Header bytes are gathered up to this size before being handed on, so a tree of many small
#: files costs few ``hashlib`` calls; files up to this size are read whole into the same buffer.
_GATHER = 64 * 1024


def _frame(data: bytes) -> bytes:
    """One NAR string: u64 LE length, the bytes, zero padding to a multiple of 8."""
    return struct.pack("<Q", len(data)) + data + _padding(len(data))


def _padding(size: int) -> bytes:
    return bytes(-size % 8)


_OPEN = _frame(b"(")
_CLOSE = _frame(b")")
_MAGIC = _frame(b"nix-archive-1")
_TYPE = _OPEN + _frame(b"type")
_DIR_HEAD = _TYPE + _frame(b"directory")
_ENTRY_HEAD = _frame(b"entry") + _OPEN + _frame(b"name")
_NODE = _frame(b"node")
_SYMLINK_HEAD = _TYPE + _frame(b"symlink") + _frame(b"target")
_FILE_HEAD = _TYPE + _frame(b"regular") + _frame(b"contents")
_EXEC_HEAD = _TYPE + _frame(b"regular") + _frame(b"executable") + _frame(b"") + _frame(b"contents")


class NarFormat:
    """The Nix NAR hash (``sha256-<base64>``, SRI form) as a :class:`~treeseed.hashing.TreeFormat`."""

    name = "nar"

    def __init__(self, root: Path, source: str = "") -> None:
        self.source = source or str(root)

    def file_hasher(self, entry: Entry) -> None:
        """None: the NAR is one ordered stream, hashed in :meth:`finish`, not file by file."""
        return None

    def finish(self, root: Path, entries: Sequence[Entry], digests: dict[str, Any]) -> str:
        h = hashlib.sha256()
        for chunk in nar_bytes_stream(root, entries, self.source):
            h.update(chunk)
        return sri(h.digest())


def nar_bytes_stream(
    root: Path, entries: Sequence[Entry], source: str = ""
) -> Iterator[bytes | memoryview]:
    """Yield the NAR serialisation of the package ``entries`` found below ``root``, in order.

    Large files are yielded as views into one reused 1 MiB buffer, so each chunk is valid only
    until the next one is requested: consume it (hash it, write it) before asking for more.
    A file whose size differs from its entry's raises :class:`TreeseedError` before a wrong
    length could be passed off as a finished archive.
    """
    out = bytearray(_MAGIC)
    buf = memoryview(bytearray(READ_CHUNK))
    yield from _directory(os.fsencode(root), nest(entries, source), out, buf, source)
    if out:
        yield bytes(out)


def _directory(
    base: bytes, tree: Dir, out: bytearray, buf: memoryview, source: str
) -> Iterator[bytes | memoryview]:
    out += _DIR_HEAD
    for name in sorted(tree):
        child = tree[name]
        out += _ENTRY_HEAD + _frame(name) + _NODE
        if isinstance(child, dict):
            yield from _directory(base, child, out, buf, source)
        elif child.is_symlink:
            assert child.target is not None
            out += _SYMLINK_HEAD + _frame(raw_bytes(child.target)) + _CLOSE
        else:
            yield from _regular(base, child, out, buf, source)
        out += _CLOSE
        if len(out) >= _GATHER:
            yield bytes(out)
            out.clear()
    out += _CLOSE


def _regular(
    base: bytes, entry: Entry, out: bytearray, buf: memoryview, source: str
) -> Iterator[bytes | memoryview]:
    """One regular file's node; small files join the header buffer, large ones stream."""
    out += (_EXEC_HEAD if entry.executable else _FILE_HEAD) + struct.pack("<Q", entry.size)
    path = os.path.join(base, os.fsencode(entry.path))
    if entry.size <= _GATHER:
        with open(path, "rb") as f:
            data = f.read(entry.size + 1)  # one byte more than promised reveals a grown file
        if len(data) != entry.size:
            raise _changed(source, entry, len(data))
        out += data
    else:
        yield bytes(out)
        out.clear()
        left = entry.size
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                if n > left:
                    raise _changed(source, entry, entry.size - left + n)
                left -= n
                yield buf[:n]
        if left:
            raise _changed(source, entry, entry.size - left)
    out += _padding(entry.size) + _CLOSE


def _changed(source: str, entry: Entry, seen: int) -> TreeseedError:
    more = "at least " if seen > entry.size else ""
    return TreeseedError(
        f"{source}: entry {entry.path!r} changed while being hashed "
        f"(scanned at {entry.size} bytes, read {more}{seen}); hash the tree again once it is still"
    )


def raw_bytes(text: str) -> bytes:
    """The bytes a name or link target had on disk (``surrogateescape`` undoes ``fsdecode``).

    Fixed to UTF-8 rather than the locale's encoding, so the hash never depends on the machine.
    """
    return text.encode("utf-8", "surrogateescape")


def nest(entries: Iterable[Entry], source: str = "") -> Dir:
    """Turn flat package entries into nested directories keyed by raw name bytes.

    Packages list no directories, so a directory exists exactly when a path runs through it.
    A path listed twice, or used both as a file and as a directory, has no tree form: it is an
    error rather than a silent choice between the two.
    """
    root: Dir = {}
    for entry in entries:
        *dirs, leaf = raw_bytes(entry.path).split(b"/")
        node = root
        for part in dirs:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise BadPackage(source, entry.path, "a parent of this path is also a file")
            node = child
        if leaf in node:
            raise BadPackage(source, entry.path, "path listed twice, or both a file and a directory")
        node[leaf] = entry
    return root


def nix32(digest: bytes) -> str:
    """Nix's base-32 form of ``digest``, as ``nix-hash --base32`` prints it.

    Not RFC 4648: the digest is read as one little-endian integer and written most significant
    digit first, ceil(bits / 5) digits (52 for SHA-256).
    """
    value = int.from_bytes(digest, "little")
    width = (len(digest) * 8 + 4) // 5
    return "".join(NIX32_ALPHABET[(value >> (5 * i)) & 31] for i in reversed(range(width)))


def from_nix32(text: str, size: int = SHA256_SIZE) -> bytes:
    """Decode Nix base-32 to ``size`` bytes; bits beyond the digest must be zero, as Nix insists."""
    if len(text) != (size * 8 + 4) // 5:
        raise ValueError(f"nix32 hash of {size} bytes must have {(size * 8 + 4) // 5} characters")
    value = 0
    for c in text:
        digit = _NIX32_VALUE.get(c)
        if digit is None:
            raise ValueError(f"{c!r} is not a nix32 digit")
        value = value << 5 | digit
    if value >> (size * 8):
        raise ValueError("nix32 hash has bits set beyond its length")
    return value.to_bytes(size, "little")


def sri(digest: bytes) -> str:
    """The SRI spelling of a SHA-256 digest, ``sha256-<base64>``, which Nix prints by default."""
    if len(digest) != SHA256_SIZE:
        raise ValueError(f"a SHA-256 digest has {SHA256_SIZE} bytes, not {len(digest)}")
    return SRI_PREFIX + base64.b64encode(digest).decode("ascii")


#: Nix's default store directory: part of every store path's hash.
STORE_DIR = "/nix/store"


def store_path_hash(nar_digest: bytes, name: str = "source", store_dir: str = STORE_DIR) -> str:
    """The 32-character hash part of the store path Nix gives a tree added by content
    (``nix-store --add-fixed --recursive sha256 DIR``, and every fetcher's ``outPath``): Nix's
    ``makeFixedOutputPath`` for a recursive SHA-256 NAR hash and no references, i.e.
    nix32 of SHA-256(``source:sha256:<hex NAR hash>:<store dir>:<name>``) folded to 20 bytes
    by XOR. The full path is ``<store dir>/<hash>-<name>``; fetchers name their trees "source".
    """
    if len(nar_digest) != SHA256_SIZE:
        raise ValueError(f"a NAR hash has {SHA256_SIZE} bytes, not {len(nar_digest)}")
    text = f"source:sha256:{nar_digest.hex()}:{store_dir}:{name}".encode()
    folded = bytearray(20)
    for i, byte in enumerate(hashlib.sha256(text).digest()):
        folded[i % 20] ^= byte
    return nix32(bytes(folded))


def parse_nix_hash(text: str) -> bytes:
    """The 32-byte SHA-256 digest behind any spelling Nix uses for one.

    Accepted: SRI ``sha256-<base64>``; bare nix32 (52 characters) or hex (64); and Nix's older
    ``sha256:<nix32|hex|base64>``. Other algorithms are refused by name, since treeseed compares
    NAR hashes only as SHA-256.
    """
    s = text.strip()
    try:
        if s.startswith(SRI_PREFIX):
            return _base64(s[len(SRI_PREFIX):])
        if s.startswith("sha256:"):
            s = s[len("sha256:"):]
            if len(s) == 44:
                return _base64(s)
        if len(s) == 52:
            return from_nix32(s)
        if len(s) == 64 and all(c in _HEX for c in s):
            return bytes.fromhex(s)
    except ValueError as exc:
        raise TreeseedError(f"bad Nix hash {text!r}: {exc}") from None
    for sep in ("-", ":"):
        algo, found, _ = s.partition(sep)
        if found and algo in _OTHER_ALGOS:
            raise TreeseedError(f"Nix hash {text!r} is {algo}; treeseed compares sha256 NAR hashes")
    raise TreeseedError(
        f"bad Nix hash {text!r}: expected sha256-<base64> (SRI), 52 nix32 or 64 hex characters"
    )


def _base64(text: str) -> bytes:
    """Strict standard base64 of exactly 32 bytes: one spelling per digest, so hashes compare."""
    try:
        digest = base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"invalid base64 ({exc})") from None
    if len(digest) != SHA256_SIZE or base64.b64encode(digest).decode("ascii") != text:
        raise ValueError("base64 is not the canonical spelling of 32 bytes")
    return digest


def flat_store_path_hash(file_digest: bytes, name: str, store_dir: str = STORE_DIR) -> str:
    """The hash part of the store path of a *flat* fixed-output file (``fetchurl``'s output,
    ``nix-store --add-fixed sha256 FILE``): Nix's ``makeFixedOutputPath`` for a non-recursive
    SHA-256, i.e. the "output:out" path type over SHA-256(``fixed:out:sha256:<hex>:``)."""
    if len(file_digest) != SHA256_SIZE:
        raise ValueError(f"a SHA-256 digest has {SHA256_SIZE} bytes, not {len(file_digest)}")
    inner = hashlib.sha256(f"fixed:out:sha256:{file_digest.hex()}:".encode()).hexdigest()
    text = f"output:out:sha256:{inner}:{store_dir}:{name}".encode()
    folded = bytearray(20)
    for i, byte in enumerate(hashlib.sha256(text).digest()):
        folded[i % 20] ^= byte
    return nix32(bytes(folded))


#: What Nix allows in a store path's name (``checkName`` in Nix's path.cc), at most 211 bytes.
_STORE_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-._?=")
STORE_NAME_MAX = 211
#: The hash part of a store path: 32 nix32 characters (160 bits).
STORE_HASH_LEN = 32


def is_store_name(name: str) -> bool:
    """Would Nix accept ``name`` as the name part of a store path? (Not empty, not starting
    with a dot, only ``[A-Za-z0-9+-._?=]``, at most 211 characters.)"""
    return (0 < len(name) <= STORE_NAME_MAX and not name.startswith(".")
            and all(c in _STORE_NAME_CHARS for c in name))


def is_store_hash(text: str) -> bool:
    """Is ``text`` a store path's hash part: exactly 32 nix32 characters?"""
    return len(text) == STORE_HASH_LEN and all(c in _NIX32_VALUE for c in text)


def nar_pieces(entries: Sequence[Entry], source: str = "") -> Iterator[bytes | Entry]:
    """The NAR of a package as it would be streamed, without reading any file: runs of
    framing bytes (gathered up to 64 KiB) and, where a regular file's contents go, its
    :class:`Entry`, whose ``size`` bytes the caller supplies. :func:`nar_bytes_stream` with the
    file contents spliced in; lets a server know the NAR's length and serve any byte range
    of it (:mod:`treeseed.narstream`) without building it."""
    out = bytearray(_MAGIC)
    yield from _directory_pieces(nest(entries, source), out)
    if out:
        yield bytes(out)


def _directory_pieces(tree: Dir, out: bytearray) -> Iterator[bytes | Entry]:
    out += _DIR_HEAD
    for name in sorted(tree):
        child = tree[name]
        out += _ENTRY_HEAD + _frame(name) + _NODE
        if isinstance(child, dict):
            yield from _directory_pieces(child, out)
        elif child.is_symlink:
            assert child.target is not None
            out += _SYMLINK_HEAD + _frame(raw_bytes(child.target)) + _CLOSE
        else:
            out += (_EXEC_HEAD if child.executable else _FILE_HEAD) + struct.pack("<Q", child.size)
            yield bytes(out)
            out.clear()
            yield child
            out += _padding(child.size) + _CLOSE
        out += _CLOSE
        if len(out) >= _GATHER:
            yield bytes(out)
            out.clear()
    out += _CLOSE


def flat_nar_pieces(entry: Entry) -> Iterator[bytes | Entry]:
    """The NAR of a single regular file (a flat fixed-output path): its framing and, in the
    middle, ``entry`` for its contents, as :func:`nar_pieces` yields them."""
    head = _MAGIC + (_EXEC_HEAD if entry.executable else _FILE_HEAD) + struct.pack("<Q", entry.size)
    yield head
    yield entry
    yield _padding(entry.size) + _CLOSE
