"""The Zig package hash: the string ``zig fetch`` prints and ``build.zig.zon`` stores.

Zig (0.14 and later) hashes a package after applying its manifest's ``.paths``: files outside
them are deleted, never hashed and never counted. Each remaining entry gets a SHA-256 of its
path (relative, ``/``-separated, raw bytes) followed by

* for a regular file: two zero bytes, then the contents (the second byte was meant to be the
  executable flag; Zig hard-codes it to 0, so modes never matter);
* for a symbolic link: the link's target text.

The per-entry digests, sorted by path bytes and concatenated, are hashed once more. The printed
form is ``name-version-`` and the unpadded base64url of 33 bytes: the fingerprint's low 32 bits
(u32 little-endian), the total size of the hashed files' contents (u32 LE, saturating) and the
first 25 bytes of that digest. A tree without ``build.zig.zon`` prints as ``N-V-`` with the id
``0xffff``. The pre-0.14 form, still accepted by 0.14 and 0.15, is the sha2-256 multihash
``1220`` + hex of the whole digest (:func:`legacy_hash`).

``zig fetch`` refuses a fetched package whose manifest is malformed, lacks ``.name``,
``.version`` or ``.paths``, or has a fingerprint that does not match its name; so does
:class:`ZigFormat` (:class:`~treeseed.errors.ManifestError`), since there is no hash to agree
with. A manifest without ``.fingerprint`` is accepted and hashes with id 0, as in zig 0.15.
tests/test_zig.py checks all of this against the real ``zig fetch``.
"""

from __future__ import annotations

import base64
import hashlib
import posixpath
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ManifestError
from ..package import Entry
from ..zon import MANIFEST_NAME, ZigManifest, load, manifest_info

#: Name and version parts, and the id, of a package without a manifest ("naked" in Zig's terms).
NAKED_NAME = "N"
NAKED_VERSION = "V"
NAKED_ID = 0xFFFF
#: How much of the digest the printed hash keeps.
DIGEST_PREFIX = 25
U32_MAX = 0xFFFFFFFF
LEGACY_PREFIX = "1220"  # multihash: sha2-256 (0x12), 32 bytes (0x20)

_sha256 = hashlib.sha256


@dataclass(frozen=True, slots=True)
class ZigFileDigest:
    """One regular file's Zig digest and its size (the size is part of the hash string)."""

    digest: bytes
    size: int


class ZigFileHasher:
    """Streams one file: SHA-256 over ``path ‖ 0x00 0x00 ‖ contents``."""

    __slots__ = ("_h", "size")

    def __init__(self, path: str) -> None:
        self._h = _sha256(_path_bytes(path))
        self._h.update(b"\0\0")
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._h.update(data)
        self.size += len(data)

    def finish(self) -> ZigFileDigest:
        return ZigFileDigest(self._h.digest(), self.size)


def symlink_digest(path: str, target: str) -> bytes:
    """A symlink's Zig digest: SHA-256 over ``path ‖ target`` (the target as written)."""
    return _sha256(_path_bytes(path) + _path_bytes(target)).digest()


def _path_bytes(path: str) -> bytes:
    """Raw name bytes; names that came from disk may carry surrogate-escaped non-UTF-8 bytes."""
    return path.encode("utf-8", "surrogateescape")


class ZigFormat:
    """The Zig package hash as a :class:`~treeseed.hashing.TreeFormat`.

    Reads ``root/build.zig.zon`` once, at construction, so a malformed manifest fails before any
    file is read. After :meth:`finish`, ``digest`` and ``total_size`` hold the raw results and
    ``legacy`` the ``1220…`` form.
    """

    name = "zig"

    def __init__(self, root: Path, source: str = "") -> None:
        self.source = source or str(root)
        self.manifest = read_manifest(root, source)
        self.keep = paths_filter(self.manifest.paths if self.manifest else None)
        self.digest: bytes | None = None
        self.total_size = 0
        self.legacy: str | None = None

    def file_hasher(self, entry: Entry) -> ZigFileHasher | None:
        return ZigFileHasher(entry.path) if self.keep(entry.path) else None

    def finish(self, root: Path, entries: Sequence[Entry], digests: dict[str, Any]) -> str:
        self.digest, self.total_size = tree_digest(entries, digests, self.keep)
        self.legacy = legacy_hash(self.digest)
        man = self.manifest
        if man is None:
            return package_hash(self.digest, self.total_size)
        return package_hash(self.digest, self.total_size, man.name, man.version, man.id)


def read_manifest(root: Path, source: str = "") -> ZigManifest | None:
    """The package's manifest as ``zig fetch`` checks it, or None when the tree has none.

    ``source`` (an archive or URL the tree was unpacked from) names the file in errors.
    """
    path = root / MANIFEST_NAME
    if not path.is_file():  # follows a symlink, as zig's open does
        return None
    display = f"{source}: {MANIFEST_NAME}" if source and source != str(root) else str(path)
    data = load(path, display)
    man = manifest_info(data, display)
    if man.paths is None:
        # `zig build` tolerates this in a project's own manifest; every fetched package needs it.
        line = getattr(data, "line", 0) or 1
        raise ManifestError(display, "missing top-level 'paths' field", line=line)
    return man


def tree_digest(
    entries: Iterable[Entry], digests: dict[str, ZigFileDigest], keep: Callable[[str], bool]
) -> tuple[bytes, int]:
    """Combine the kept entries into (digest, total file size); excluded entries count nothing."""
    parts: list[tuple[bytes, bytes]] = []
    total = 0
    for entry in entries:
        if not keep(entry.path):
            continue
        if entry.is_symlink:
            assert entry.target is not None
            parts.append((_path_bytes(entry.path), symlink_digest(entry.path, entry.target)))
        else:
            d = digests[entry.path]
            parts.append((_path_bytes(entry.path), d.digest))
            total += d.size
    parts.sort(key=lambda p: p[0])
    return _sha256(b"".join(d for _, d in parts)).digest(), total


def package_hash(
    digest: bytes,
    total_size: int,
    name: str = NAKED_NAME,
    version: str = NAKED_VERSION,
    fid: int = NAKED_ID,
) -> str:
    """The printed hash: ``name-version-`` + base64url(id ‖ size ‖ digest[:25]), no padding."""
    size = min(total_size, U32_MAX)
    raw = b"".join(
        ((fid & U32_MAX).to_bytes(4, "little"), size.to_bytes(4, "little"), digest[:DIGEST_PREFIX])
    )
    encoded = base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")
    return f"{name}-{version}-{encoded}"


def legacy_hash(digest: bytes) -> str:
    """The pre-0.14 hash of the same tree: ``1220`` + the 64 hex digits of the full digest."""
    return LEGACY_PREFIX + digest.hex()


def normalize_path(path: str) -> str:
    """Resolve ``path`` lexically as Zig's ``std.fs.path.resolve`` does on POSIX.

    ``.`` and empty components vanish, ``..`` removes the previous component; the empty result
    is ``"."``, leading ``..`` that cannot be removed are kept, and absolute paths stay absolute.
    A package path can only ever equal the relative, ``..``-free results.
    """
    is_abs = path.startswith("/")
    parts: list[str] = []
    up = 0
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            elif not is_abs:
                up += 1
            continue
        parts.append(part)
    if is_abs:
        return "/" + "/".join(parts)
    return "/".join([".."] * up + parts) or "."


def paths_filter(paths: list[str] | None) -> Callable[[str], bool]:
    """The include rule of a manifest's ``.paths``, as a predicate on package paths.

    A listed path includes itself and everything below it, after normalisation (so ``./src/``
    means ``src``); no globs. No list (None), an empty one, or one holding ``""`` or ``"."``
    (or anything that normalises to it, like ``src/..``) includes everything.
    """
    if not paths:
        return _everything
    listed = {normalize_path(p) for p in paths}
    if "." in listed:
        return _everything

    def keep(path: str) -> bool:
        if path in listed:
            return True
        parent = posixpath.dirname(path)
        while parent:
            if parent in listed:
                return True
            parent = posixpath.dirname(parent)
        return False

    return keep


def _everything(path: str) -> bool:
    return True
