"""CAR (Content Addressable aRchive) version 1: the body a trustless IPFS gateway sends.

A CAR is a header (a varint length, then DAG-CBOR ``{"roots": [CID], "version": 1}``) and
sections (a varint length, a CID, the block). :class:`CarReader` reads one from a stream and
checks every block against its CID before handing it on; it never trusts a length beyond
:attr:`CarReader.max_block` or a header beyond 4 KiB. :func:`car_header` writes the header of
a one-root CAR (the only kind a gateway sends) and :func:`section_head` the bytes before a
block, so a gateway can stream a block straight from a file after them.

The header is DAG-CBOR; ``dag-cbor`` (a dependency) decodes it, because a gateway may write
it in any valid form. Writing needs none: a one-root header is 58 fixed bytes, below.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from .unixfs import BadBlock, cid_of, cid_text, read_cid, read_varint, varint

MAX_HEADER = 4096
#: The largest block a gateway may send: the IPFS limit transports agree on (a 1 MiB chunk
#: plus node overhead fits well under it).
MAX_BLOCK = 2 << 20


class CarError(BadBlock):
    """A CAR that is malformed, or a block that does not hash to its CID."""


def car_header(root: bytes) -> bytes:
    """The length-prefixed header of a CARv1 with the one root ``root`` (a binary CID)."""
    # DAG-CBOR, keys in length-then-bytewise order: {"roots": [tag 42(h'00' + cid)], "version": 1}
    cid_field = b"\xd8\x2a\x58" + bytes((len(root) + 1,)) + b"\x00" + root
    body = b"\xa2\x65roots\x81" + cid_field + b"\x67version\x01"
    return varint(len(body)) + body


def section_head(cid: bytes, block_length: int) -> bytes:
    """The bytes of a section before its block: the section's length, then the CID."""
    return varint(len(cid) + block_length) + cid


def section(cid: bytes, block: bytes) -> bytes:
    return section_head(cid, len(block)) + block


class CarReader:
    """Reads a CARv1 from ``stream``: :meth:`roots` first, then :meth:`blocks` yields
    ``(cid, block)`` with every block already checked against its CID.

    ``name`` says whose CAR it is in errors (a gateway's URL).
    """

    def __init__(self, stream: BinaryIO, name: str, max_block: int = MAX_BLOCK) -> None:
        self.stream = stream
        self.name = name
        self.max_block = max_block
        self.bytes_read = 0

    def roots(self) -> list[bytes]:
        length = self._varint(allow_end=False)
        if length is None or not 0 < length <= MAX_HEADER:
            raise CarError(f"{self.name}: CAR header of {length} bytes (at most {MAX_HEADER})")
        header = self._exactly(length)
        import dag_cbor

        try:
            decoded = dag_cbor.decode(header)
        except Exception as exc:  # dag_cbor raises its own kinds for malformed CBOR
            raise CarError(f"{self.name}: CAR header is not valid DAG-CBOR ({exc})") from None
        if not isinstance(decoded, dict) or decoded.get("version") != 1:
            raise CarError(f"{self.name}: not a CAR version 1 (header {decoded!r:.100})")
        roots = decoded.get("roots")
        if not isinstance(roots, list) or not roots:
            raise CarError(f"{self.name}: CAR header names no roots")
        out = []
        for root in roots:
            raw = bytes(root)
            cid, end = read_cid(raw, 0)
            if end != len(raw):
                raise CarError(f"{self.name}: CAR root has trailing bytes")
            out.append(cid)
        return out

    def blocks(self) -> Iterator[tuple[bytes, bytes]]:
        while (length := self._varint(allow_end=True)) is not None:
            if not 0 < length <= self.max_block + 64:
                raise CarError(f"{self.name}: CAR section of {length} bytes (blocks are at most "
                               f"{self.max_block})")
            data = self._exactly(length)
            try:
                cid, start = read_cid(data, 0)
            except BadBlock as exc:
                raise CarError(f"{self.name}: {exc}") from None
            block = data[start:]
            if cid_of(cid[1], block) != cid:
                raise CarError(f"{self.name}: sent a block that does not hash to its CID "
                               f"{cid_text(cid)} (altered or corrupt)")
            yield cid, block

    def _varint(self, allow_end: bool) -> int | None:
        raw = bytearray()
        while True:
            byte = self.stream.read(1)
            if not byte:
                if raw or not allow_end:
                    raise CarError(f"{self.name}: CAR cut short")
                return None
            self.bytes_read += 1
            raw += byte
            if not byte[0] & 0x80:
                try:
                    return read_varint(raw, 0)[0]
                except BadBlock as exc:
                    raise CarError(f"{self.name}: {exc}") from None
            if len(raw) >= 9:
                raise CarError(f"{self.name}: CAR length varint too long")

    def _exactly(self, n: int) -> bytes:
        parts = []
        left = n
        while left:
            got = self.stream.read(left)
            if not got:
                raise CarError(f"{self.name}: CAR cut short ({n - left} of {n} bytes of a section)")
            parts.append(got)
            left -= len(got)
        self.bytes_read += n
        return b"".join(parts)
