"""Unpack a UnixFS DAG, block by verified block, into a package tree.

The blocks come from a CAR a gateway sent (:class:`treeseed.car.CarReader` has checked each
against its CID); :class:`DagUnpacker` places each where its parent said it belongs and
writes nothing else. A gateway is hostile until proved otherwise, so everything it controls
is bounded: names obey the package path rules (:func:`treeseed.package.check_path`, and no
``/`` or NUL inside one name), a directory holds at most :data:`MAX_LINKS` links, nesting stops
at :data:`treeseed.package.MAX_DEPTH`, a file's layout at :data:`MAX_FILE_DEPTH` levels, the
bytes the files claim at ``Limits.max_bytes``, the entries at ``Limits.max_entries``, and
blocks held back because they came before their parent (a CAR that is not in DFS order) at
:data:`MAX_PENDING` bytes. A leaf must be exactly the size its parent declared for it.

>>> unpacker = DagUnpacker(root_cid, work / "tree", "ipfs://bafy...", Limits())  # doctest: +SKIP
>>> for cid, block in reader.blocks(): unpacker.add(cid, block)                  # doctest: +SKIP
>>> unpacker.finish()                                                             # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import BadPackage
from .package import MAX_DEPTH, check_path
from .unixfs import (
    DAG_PB,
    RAW,
    T_DIRECTORY,
    T_FILE,
    T_HAMT,
    T_RAW,
    T_SYMLINK,
    BadBlock,
    Node,
    cid_codec,
    cid_text,
    decode_node,
)
from .unpack import Limits

MAX_LINKS = 1 << 16
MAX_FILE_DEPTH = 8  # 1,024 links per level: 8 levels is far past any file size
MAX_HAMT_DEPTH = 8  # a 64-bit hash, 8 bits a level
MAX_PENDING = 64 << 20


@dataclass(frozen=True, slots=True)
class Place:
    """Where a block belongs: a directory entry (``offset`` None) or a piece of a file at
    ``offset`` of exactly ``length`` bytes (None: a whole-file root, size from its node)."""

    path: str
    kind: str  # "entry", "piece" or "shard"
    depth: int
    offset: int = 0
    length: int | None = None


class DagUnpacker:
    def __init__(self, root: bytes, dest: Path, source: str, limits: Limits) -> None:
        self.dest = dest
        self.source = source
        self.limits = limits
        self.wanted: dict[bytes, list[Place]] = {root: [Place("", "entry", 0)]}
        self.pending: dict[bytes, bytes] = {}
        self.pending_bytes = 0
        self.claimed = 0
        self.entries = 0
        self.executable: set[str] = set()
        dest.mkdir()

    # ---- blocks in

    def add(self, cid: bytes, block: bytes) -> None:
        """Place a verified block; one nobody asked for yet is held back (bounded)."""
        places = self.wanted.pop(cid, None)
        if places is None:
            if cid not in self.pending:
                self.pending[cid] = block
                self.pending_bytes += len(block)
                if self.pending_bytes > MAX_PENDING:
                    raise BadBlock(f"sent over {MAX_PENDING >> 20} MiB of blocks that no node "
                                   "links to (yet); not a DAG of the CID asked for")
            return
        for place in places:
            self._place(cid, block, place)

    def finish(self) -> None:
        """Every block arrived; the tree is whole. Executable bits last (files are written
        through open descriptors until then)."""
        if self.wanted:
            missing = next(iter(self.wanted))
            raise BadBlock(f"the CAR ended without block {cid_text(missing)} (and "
                           f"{len(self.wanted) - 1} more): an incomplete DAG")
        for path in self.executable:
            os.chmod(self._fs(path), 0o755)

    def _want(self, cid: bytes, place: Place) -> None:
        held = self.pending.pop(cid, None)
        if held is not None:
            self.pending_bytes -= len(held)
            self._place(cid, held, place)
            self.pending[cid] = held  # others may want the same block (a repeated file)
            self.pending_bytes += len(held)
            return
        self.wanted.setdefault(cid, []).append(place)

    # ---- placing

    def _place(self, cid: bytes, block: bytes, place: Place) -> None:
        if place.kind == "piece":
            self._piece(cid, block, place)
            return
        if cid_codec(cid) == RAW:
            if place.kind == "shard":
                raise BadBlock(f"{cid_text(cid)}: a raw block where a directory shard belongs")
            self._new_file(place.path, len(block))
            self._write(place.path, 0, block)
            return
        node = self._decode(cid, block)
        if place.kind == "shard" and node.kind != T_HAMT:
            raise BadBlock(f"{cid_text(cid)}: a sub-shard that is not a HAMT node")
        if node.kind == T_DIRECTORY:
            self._directory(node, place)
        elif node.kind == T_HAMT:
            self._shard(cid, node, place)
        elif node.kind in (T_FILE, T_RAW):
            self._new_file(place.path, self._file_size(cid, node))
            if node.mode is not None and node.mode & 0o100:
                self.executable.add(place.path)
            self._file_node(cid, node, place.path, 0, place.depth)
        elif node.kind == T_SYMLINK:
            self._symlink(place.path, node.data)
        else:
            raise BadBlock(f"{cid_text(cid)}: UnixFS type {node.kind} is not a package entry")

    def _decode(self, cid: bytes, block: bytes) -> Node:
        if cid_codec(cid) != DAG_PB:
            raise BadBlock(f"{cid_text(cid)}: neither dag-pb nor raw")
        return decode_node(block, MAX_LINKS)

    def _directory(self, node: Node, place: Place) -> None:
        self._mkdir(place.path, place.depth)
        seen: set[bytes] = set()
        for link in node.links:
            if link.name in seen:
                raise BadBlock(f"directory {place.path or '/'!r} names {link.name!r} twice")
            seen.add(link.name)
            self._want(link.cid, Place(self._child(place.path, link.name), "entry", place.depth + 1))

    def _shard(self, cid: bytes, node: Node, place: Place) -> None:
        if node.fanout != 256 or node.hash_type != 0x22:
            raise BadBlock(f"{cid_text(cid)}: HAMT with fanout {node.fanout}, hash "
                           f"{node.hash_type}; UnixFS shards are fanout 256, murmur3-x64-64")
        level = place.depth if place.kind == "shard" else 0
        if level >= MAX_HAMT_DEPTH:
            raise BadBlock(f"{cid_text(cid)}: directory shards nested past {MAX_HAMT_DEPTH} levels")
        if place.kind == "entry":
            self._mkdir(place.path, place.path.count("/") + 1 if place.path else 0)
        for link in node.links:
            if len(link.name) < 2:
                raise BadBlock(f"{cid_text(cid)}: shard link name {link.name!r} has no slot")
            if len(link.name) == 2:
                self._want(link.cid, Place(place.path, "shard", level + 1))
            else:
                path = self._child(place.path, link.name[2:])
                self._want(link.cid, Place(path, "entry", path.count("/") + 1))

    def _file_node(self, cid: bytes, node: Node, path: str, offset: int, depth: int) -> None:
        if depth > MAX_FILE_DEPTH:
            raise BadBlock(f"{cid_text(cid)}: file layout deeper than {MAX_FILE_DEPTH} levels")
        if node.data:
            self._write(path, offset, node.data)
            offset += len(node.data)
        if len(node.blocksizes) != len(node.links):
            raise BadBlock(f"{cid_text(cid)}: {len(node.links)} links but "
                           f"{len(node.blocksizes)} block sizes")
        for link, size in zip(node.links, node.blocksizes, strict=True):
            self._want(link.cid, Place(path, "piece", depth + 1, offset, size))
            offset += size

    def _piece(self, cid: bytes, block: bytes, place: Place) -> None:
        if cid_codec(cid) == RAW:
            size = len(block)
            if size != place.length:
                raise BadBlock(f"{cid_text(cid)}: a {size}-byte leaf where the file {place.path!r} "
                               f"declared {place.length} bytes")
            self._write(place.path, place.offset, block)
            return
        node = self._decode(cid, block)
        if node.kind not in (T_FILE, T_RAW) or self._file_size(cid, node) != place.length:
            raise BadBlock(f"{cid_text(cid)}: not the {place.length}-byte piece of "
                           f"{place.path!r} its parent declared")
        self._file_node(cid, node, place.path, place.offset, place.depth)

    def _file_size(self, cid: bytes, node: Node) -> int:
        size = len(node.data) + sum(node.blocksizes)
        if node.filesize is not None and node.filesize != size:
            raise BadBlock(f"{cid_text(cid)}: file size {node.filesize} but its parts add up "
                           f"to {size}")
        return size

    # ---- the file system

    def _child(self, parent: str, raw_name: bytes) -> str:
        try:
            name = raw_name.decode("utf-8")
        except UnicodeDecodeError:
            raise BadPackage(self.source, repr(raw_name), "name is not valid UTF-8") from None
        if "/" in name or "\0" in name:
            raise BadPackage(self.source, f"{parent}/{name!r}", "a '/' or NUL inside one name")
        return check_path(f"{parent}/{name}" if parent else name, self.source)

    def _count(self, path: str) -> None:
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise BadPackage(self.source, path, f"more than {self.limits.max_entries} entries")

    def _mkdir(self, path: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise BadPackage(self.source, path, f"nested past {MAX_DEPTH} levels")
        if path:
            self._count(path)
            os.mkdir(self._fs(path))

    def _new_file(self, path: str, size: int) -> None:
        if not path:
            raise BadBlock("the CID names a single file, not a package directory; a package "
                           "is a directory (wrap the file in one)")
        self._count(path)
        self.claimed += size
        if self.claimed > self.limits.max_bytes:
            raise BadPackage(self.source, path, f"the files add up to more than "
                             f"{self.limits.max_bytes} bytes (raise --max-size or "
                             "TREESEED_MAX_UNPACK_SIZE if this is expected)")
        fd = os.open(self._fs(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)

    def _write(self, path: str, offset: int, data: bytes) -> None:
        fd = os.open(self._fs(path), os.O_WRONLY | os.O_NOFOLLOW)
        try:
            os.pwrite(fd, data, offset)
        finally:
            os.close(fd)

    def _symlink(self, path: str, target: bytes) -> None:
        if not path:
            raise BadBlock("the CID names a symlink, not a package directory")
        self._count(path)
        try:
            text = target.decode("utf-8")
        except UnicodeDecodeError:
            raise BadPackage(self.source, path, "symlink target is not valid UTF-8") from None
        from .package import resolve_link

        resolve_link(path, text, self.source)
        os.symlink(text, self._fs(path))

    def _fs(self, path: str) -> str:
        return os.path.join(self.dest, path) if path else str(self.dest)
