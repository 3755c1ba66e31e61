"""The git tree id of a package, and its Software Heritage directory id (SWHID).

git stores a file as a *blob* object and a directory as a *tree* object; an object's id is
SHA-1 of ``<kind> <body length>\\0<body>``. A tree's body is one row per child::

    <mode> <name>\\0<20-byte id of the child>

with mode ``100644`` (file), ``100755`` (owner exec bit set), ``120000`` (symlink; its blob holds
the link text) or ``40000`` (directory). Rows are sorted by name bytes *as if directory names
ended in "/"*, which is why a directory ``a`` sorts after a file ``a.b`` but before ``a0``.
git never records empty directories, and a package has none, so the root id is what
``git add -A && git write-tree`` prints for the package checked out anywhere.

A SWHID ``swh:1:dir:<id>`` is built from the same objects. Software Heritage would also keep
empty directories and set 100755 for any exec bit, but a package has neither (only the owner
bit is kept), so a package's SWHID is ``swh:1:dir:`` plus its git tree id.

Blob ids are computed per file while :func:`~treeseed.hashing.hash_files` streams it (the
blob header needs only the size, known from the scan); :meth:`GitTreeFormat.finish` then builds
the trees from those ids without reading any file again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import TreeseedError
from ..package import Entry
from .nar import Dir, nest, raw_bytes

SWHID_PREFIX = "swh:1:dir:"

_MODE_FILE = b"100644"
_MODE_EXEC = b"100755"
_MODE_LINK = b"120000"
_MODE_DIR = b"40000"  # git writes no leading zero for trees


class GitTreeFormat:
    """git tree id (``name == "git"``) or SWHID (``"swhid"``) as a :class:`~treeseed.hashing.TreeFormat`."""

    def __init__(self, root: Path, source: str = "", swhid: bool = False) -> None:
        self.source = source or str(root)
        self.swhid = swhid
        self.name = "swhid" if swhid else "git"

    def file_hasher(self, entry: Entry) -> GitBlobHasher:
        return GitBlobHasher(entry, self.source)

    def finish(self, root: Path, entries: Sequence[Entry], digests: dict[str, Any]) -> str:
        tree = _tree_id(nest(entries, self.source), digests).hex()
        return SWHID_PREFIX + tree if self.swhid else tree


class GitBlobHasher:
    """Streaming git blob id of one regular file whose size the scan already knows.

    The size goes into the header before any content, so a file that changed since the scan
    would yield an id no git could produce; :meth:`finish` refuses it instead.
    """

    __slots__ = ("_entry", "_h", "_left", "_source")

    def __init__(self, entry: Entry, source: str = "") -> None:
        self._entry = entry
        self._source = source
        self._left = entry.size
        self._h = hashlib.sha1(b"blob %d\0" % entry.size)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._left -= len(data)
        self._h.update(data)

    def finish(self) -> bytes:
        if self._left:
            e = self._entry
            raise TreeseedError(
                f"{self._source}: entry {e.path!r} changed while being hashed (scanned at "
                f"{e.size} bytes, read {e.size - self._left}); hash the tree again once it is still"
            )
        return self._h.digest()


def object_id(kind: bytes, body: bytes) -> bytes:
    """The 20-byte SHA-1 id git gives an object of ``kind`` (b"blob", b"tree") with ``body``."""
    return hashlib.sha1(b"%s %d\0%s" % (kind, len(body), body)).digest()


def _tree_id(tree: Dir, blobs: dict[str, bytes]) -> bytes:
    """Id of the tree object for ``tree``, its subtrees hashed first (depth is at most 128)."""
    rows: list[tuple[bytes, bytes]] = []
    for name, child in tree.items():
        if isinstance(child, dict):
            rows.append((name + b"/", _row(_MODE_DIR, name, _tree_id(child, blobs))))
        elif child.is_symlink:
            assert child.target is not None
            rows.append((name, _row(_MODE_LINK, name, object_id(b"blob", raw_bytes(child.target)))))
        else:
            mode = _MODE_EXEC if child.executable else _MODE_FILE
            rows.append((name, _row(mode, name, blobs[child.path])))
    rows.sort()
    return object_id(b"tree", b"".join(row for _, row in rows))


def _row(mode: bytes, name: bytes, oid: bytes) -> bytes:
    return b"%s %s\0%s" % (mode, name, oid)
