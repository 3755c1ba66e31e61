"""Canonical bencoding (BEP 3), the byte form a BitTorrent info-hash is taken over.

Hand-written rather than imported: the encoder is a dozen lines, the fetch path must not import
libtorrent (a large native module) just to hash, and canonical form (dict keys sorted as raw
bytes, integers without leading zeros) is the one property we need and can test directly
against libtorrent.
"""

from __future__ import annotations

from typing import Union

# A runtime alias: "X | Y" cannot hold the string forward references a recursive type needs.
Bencodable = Union[int, bytes, str, list["Bencodable"], dict[bytes | str, "Bencodable"]]  # noqa: UP007


def bencode(value: Bencodable) -> bytes:
    """Encode ``value``; ``str`` is encoded as UTF-8 bytes, dict keys are sorted as bytes."""
    out: list[bytes] = []
    _encode(value, out)
    return b"".join(out)


def _encode(value: Bencodable, out: list[bytes]) -> None:
    if isinstance(value, bool):
        raise TypeError("bencode has no booleans")
    if isinstance(value, int):
        out.append(b"i%de" % value)
    elif isinstance(value, (bytes, str)):
        raw = value.encode("utf-8") if isinstance(value, str) else value
        out.append(b"%d:" % len(raw))
        out.append(raw)
    elif isinstance(value, list):
        out.append(b"l")
        for item in value:
            _encode(item, out)
        out.append(b"e")
    elif isinstance(value, dict):
        items = sorted(
            ((k.encode("utf-8") if isinstance(k, str) else k, v) for k, v in value.items()),
            key=lambda kv: kv[0],
        )
        out.append(b"d")
        for key, item in items:
            out.append(b"%d:" % len(key))
            out.append(key)
            _encode(item, out)
        out.append(b"e")
    else:
        raise TypeError(f"cannot bencode {type(value).__name__}")


def bdecode(data: bytes) -> Bencodable:
    """Decode one bencoded value (strings stay bytes); raise ValueError on malformed input."""
    value, end = _decode(data, 0)
    if end != len(data):
        raise ValueError(f"trailing data after bencoded value at offset {end}")
    return value


def _decode(data: bytes, i: int) -> tuple[Bencodable, int]:
    if i >= len(data):
        raise ValueError("truncated bencoded value")
    c = data[i : i + 1]
    if c == b"i":
        end = data.index(b"e", i)
        return int(data[i + 1 : end]), end + 1
    if c == b"l":
        items: list[Bencodable] = []
        i += 1
        while data[i : i + 1] != b"e":
            item, i = _decode(data, i)
            items.append(item)
        return items, i + 1
    if c == b"d":
        result: dict[bytes | str, Bencodable] = {}
        i += 1
        while data[i : i + 1] != b"e":
            key, i = _decode(data, i)
            if not isinstance(key, bytes):
                raise ValueError("bencoded dict key is not a string")
            result[key], i = _decode(data, i)
        return result, i + 1
    if c.isdigit():
        colon = data.index(b":", i)
        length = int(data[i:colon])
        start = colon + 1
        if start + length > len(data):
            raise ValueError("truncated bencoded string")
        return data[start : start + length], start + length
    raise ValueError(f"bad bencode byte {c!r} at offset {i}")
