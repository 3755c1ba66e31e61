"""IPFS's data model, as much of it as a package needs: CIDs, dag-pb nodes and UnixFS data.

Three small codecs, written here rather than taken from a library: a CID in binary is four
fixed bytes before a SHA-256 (CIDv1, one of two codecs, sha2-256), and a dag-pb node is a
protobuf of five fields. ``multiformats`` (a dependency) parses CIDs given as text in any
multibase and prints them, but building one of its CID objects costs 0.35 ms (measured:
3.5 s per 10,000), which would be 27 s over a 78,000-file tree, so the binary form is built
here. No protobuf library either: the encoders below write the exact field order the
reference importer writes (links first, then data), which a generated codec does not promise.

Decoding is for blocks from the network, so it is strict: unknown fields, wrong wire types,
lengths past the end, and oversized varints are all errors (:class:`BadBlock`).

>>> cid_text(raw_cid(b""))
'bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku'
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from .errors import TreeseedError

RAW = 0x55
DAG_PB = 0x70
SHA2_256 = 0x12

# UnixFS Data.Type values (UNIXFS.md).
T_RAW, T_DIRECTORY, T_FILE, T_METADATA, T_SYMLINK, T_HAMT = range(6)
#: The HAMT hash function UnixFS names: murmur3-x64-64 (multicodec 0x22).
HAMT_HASH = 0x22

_PREFIX = {RAW: bytes((1, RAW, SHA2_256, 32)), DAG_PB: bytes((1, DAG_PB, SHA2_256, 32))}


class BadBlock(TreeseedError):
    """A block or CID that is not what treeseed accepts (malformed, or an unsupported kind)."""


# --------------------------------------------------------------------------- CIDs


def raw_cid(block: bytes | memoryview) -> bytes:
    """The binary CIDv1 of a raw block (a file's leaf)."""
    return _PREFIX[RAW] + hashlib.sha256(block).digest()


def pb_cid(block: bytes) -> bytes:
    """The binary CIDv1 of a dag-pb block."""
    return _PREFIX[DAG_PB] + hashlib.sha256(block).digest()


def cid_of(codec: int, block: bytes | memoryview) -> bytes:
    return _PREFIX[codec] + hashlib.sha256(block).digest()


def cid_text(cid: bytes) -> str:
    """A binary CIDv1 as text: multibase base32, lower case (``bafy...``, ``bafk...``)."""
    return "b" + base64.b32encode(cid).decode("ascii").lower().rstrip("=")


def cid_codec(cid: bytes) -> int:
    """The codec of a binary CID this module made or accepted (:func:`parse_cid`)."""
    return cid[1]


def parse_cid(text: str) -> bytes:
    """A CID given as text (any multibase; a CIDv0 ``Qm...`` too) as a binary CIDv1 treeseed
    can verify: dag-pb or raw, sha2-256. Anything else is :class:`BadBlock` saying why."""
    from multiformats import CID

    try:
        cid = CID.decode(text.strip())
    except Exception as exc:  # the library raises several kinds for bad text
        raise BadBlock(f"{text!r} is not a CID ({exc})") from None
    if cid.hashfun.name != "sha2-256" or len(cid.raw_digest) != 32:
        raise BadBlock(f"{text}: hashed with {cid.hashfun.name}; treeseed verifies only sha2-256 CIDs")
    if cid.codec.code not in (RAW, DAG_PB):
        raise BadBlock(f"{text}: codec {cid.codec.name}; a UnixFS package is dag-pb (or raw for "
                       "a single-block file)")
    return _PREFIX[cid.codec.code] + bytes(cid.raw_digest)


def read_cid(data: bytes | memoryview, pos: int) -> tuple[bytes, int]:
    """A binary CID at ``pos`` (v1 with a sha2-256 multihash, or a v0 bare multihash, which is
    returned as the v1 dag-pb CID it means); returns it and the position after it."""
    if data[pos:pos + 2] == b"\x12\x20":  # CIDv0: a bare sha2-256 multihash, always dag-pb
        end = pos + 34
        if end > len(data):
            raise BadBlock("CID cut short")
        return _PREFIX[DAG_PB] + bytes(data[pos + 2:end]), end
    version, pos = read_varint(data, pos)
    codec, pos = read_varint(data, pos)
    fn, pos = read_varint(data, pos)
    length, pos = read_varint(data, pos)
    if version != 1 or codec not in (RAW, DAG_PB) or fn != SHA2_256 or length != 32:
        raise BadBlock(f"unsupported CID (version {version}, codec {codec:#x}, hash {fn:#x}); "
                       "treeseed verifies CIDv1 raw/dag-pb with sha2-256")
    end = pos + 32
    if end > len(data):
        raise BadBlock("CID cut short")
    return _PREFIX[codec] + bytes(data[pos:end]), end


# --------------------------------------------------------------------------- varints


def varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def read_varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    """An unsigned LEB128 varint of at most 9 bytes (63 bits: no size treeseed accepts is
    larger), minimally encoded."""
    n = shift = 0
    for i in range(9):
        if pos + i >= len(data):
            raise BadBlock("varint cut short")
        byte = data[pos + i]
        n |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and i:
                raise BadBlock("varint not minimally encoded")
            return n, pos + i + 1
        shift += 7
    raise BadBlock("varint longer than 9 bytes")


# --------------------------------------------------------------------------- dag-pb + UnixFS


@dataclass(frozen=True, slots=True)
class Link:
    cid: bytes
    name: bytes
    tsize: int


@dataclass(frozen=True, slots=True)
class Node:
    """A decoded dag-pb node with its UnixFS data."""

    links: tuple[Link, ...]
    kind: int  # T_FILE, T_DIRECTORY, T_SYMLINK, T_HAMT, T_RAW
    data: bytes = b""
    filesize: int | None = None
    blocksizes: tuple[int, ...] = ()
    fanout: int | None = None
    hash_type: int | None = None
    mode: int | None = None


def _field(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + varint(len(payload)) + payload


def encode_link(link: Link) -> bytes:
    body = _field(0x0A, link.cid) + _field(0x12, link.name) + b"\x18" + varint(link.tsize)
    return _field(0x12, body)


def encode_node(links: list[Link], data: bytes) -> bytes:
    """A dag-pb block: links (already in name order) first, then the data field."""
    return b"".join(encode_link(link) for link in links) + _field(0x0A, data)


def unixfs_data(kind: int, data: bytes = b"", filesize: int | None = None,
                blocksizes: list[int] | tuple[int, ...] = (), hash_type: int | None = None,
                fanout: int | None = None) -> bytes:
    """A UnixFS ``Data`` message, fields in number order as ipfs-unixfs writes them (an empty
    ``data`` is omitted; ``blocksizes`` unpacked, one tag each)."""
    out = bytearray(b"\x08" + varint(kind))
    if data:
        out += _field(0x12, data)
    if filesize is not None:
        out += b"\x18" + varint(filesize)
    for size in blocksizes:
        out += b"\x20" + varint(size)
    if hash_type is not None:
        out += b"\x28" + varint(hash_type)
    if fanout is not None:
        out += b"\x30" + varint(fanout)
    return bytes(out)


def _fields(data: bytes | memoryview) -> list[tuple[int, int, object]]:
    """(field number, wire type, value) for a protobuf message of varint and bytes fields."""
    out: list[tuple[int, int, object]] = []
    pos = 0
    while pos < len(data):
        key, pos = read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = read_varint(data, pos)
            out.append((number, wire, value))
        elif wire == 2:
            length, pos = read_varint(data, pos)
            if pos + length > len(data):
                raise BadBlock("field runs past the end of the block")
            out.append((number, wire, bytes(data[pos:pos + length])))
            pos += length
        else:
            raise BadBlock(f"protobuf wire type {wire} (field {number}) is not dag-pb/UnixFS")
    return out


def decode_node(block: bytes | memoryview, max_links: int) -> Node:
    """Decode a dag-pb block and its UnixFS data; more than ``max_links`` links is an error
    (a hostile node could otherwise list millions)."""
    links: list[Link] = []
    data: bytes | None = None
    for number, wire, value in _fields(block):
        if number == 2 and wire == 2:
            if len(links) >= max_links:
                raise BadBlock(f"node has more than {max_links} links")
            links.append(_decode_link(value))  # type: ignore[arg-type]
        elif number == 1 and wire == 2 and data is None:
            data = value  # type: ignore[assignment]
        else:
            raise BadBlock(f"unexpected dag-pb field {number}")
    if data is None:
        raise BadBlock("dag-pb node without UnixFS data")
    return _unixfs(tuple(links), data)


def _decode_link(body: bytes) -> Link:
    cid = name = tsize = None
    for number, wire, value in _fields(body):
        if number == 1 and wire == 2 and cid is None:
            got, end = read_cid(value, 0)  # type: ignore[arg-type]
            if end != len(value):  # type: ignore[arg-type]
                raise BadBlock("link hash has trailing bytes")
            cid = got
        elif number == 2 and wire == 2 and name is None:
            name = value
        elif number == 3 and wire == 0 and tsize is None:
            tsize = value
        else:
            raise BadBlock(f"unexpected dag-pb link field {number}")
    if cid is None:
        raise BadBlock("dag-pb link without a hash")
    return Link(cid, name or b"", tsize or 0)  # type: ignore[arg-type]


def _unixfs(links: tuple[Link, ...], raw: bytes) -> Node:
    kind = None
    data = b""
    filesize = fanout = hash_type = mode = None
    sizes: list[int] = []
    for number, wire, value in _fields(raw):
        if number == 1 and wire == 0:
            kind = value
        elif number == 2 and wire == 2:
            data = value  # type: ignore[assignment]
        elif number == 3 and wire == 0:
            filesize = value
        elif number == 4 and wire == 0:
            sizes.append(value)  # type: ignore[arg-type]
        elif number == 5 and wire == 0:
            hash_type = value
        elif number == 6 and wire == 0:
            fanout = value
        elif number == 7 and wire == 0:
            mode = value
        elif number == 8 and wire == 2:
            pass  # mtime: a package keeps no times
        else:
            raise BadBlock(f"unexpected UnixFS field {number}")
    if kind not in (T_RAW, T_DIRECTORY, T_FILE, T_SYMLINK, T_HAMT):
        raise BadBlock(f"UnixFS type {kind} is not a file, directory or symlink")
    return Node(links, kind, data, filesize, tuple(sizes), fanout, hash_type, mode)  # type: ignore[arg-type]
