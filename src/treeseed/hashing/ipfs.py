"""The ``ipfs`` hash of a package: the CIDv1 of its directory under the UnixFS profile
``unixfs-v1-2025`` (IPIP-499), the one current IPFS importers converge on.

The profile's parameters, which the CID depends on (docs/package-format.md):

* CIDv1, sha2-256; file data in **raw leaves** (codec raw), everything else dag-pb;
* files cut in fixed **1 MiB** (1,048,576-byte) chunks; a one-chunk file *is* its raw leaf
  (an empty file is the raw leaf of no bytes); longer files get a **balanced** tree of UnixFS
  ``File`` nodes of at most **1,024** links each, links first in the encoding;
* a directory is one ``Directory`` node, links sorted by name bytes, unless its node would
  exceed **262,144 bytes** ("block-bytes": the serialized size of its links to files and
  symlinks; sub-directories count nothing, as in the reference importer, which decides before
  they are built); then it is a **HAMT** (``HAMTShard``) of fanout **256**, keyed by the first
  64 bits of murmur3-x64-128 of the name (``mmh3``; level n takes byte n of h1 big-endian),
  bitfields big-endian without leading zero
  bytes, link names the slot as two upper-case hex digits (then the entry's name, for leaves);
* a symlink is a UnixFS ``Symlink`` node holding its target; no mode, no mtime anywhere, so
  the exec bit is not part of the hash.

:func:`build_dag` keeps every block (dag-pb ones in memory, leaves as file ranges): the
gateway (:mod:`treeseed.gateway`) serves a package from it without writing anything.
Checked against ``ipfs-unixfs-importer`` 17.1.1 by tests/test_ipfs_cid.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TreeseedError
from ..package import Entry
from ..unixfs import (
    HAMT_HASH,
    T_DIRECTORY,
    T_FILE,
    T_HAMT,
    T_SYMLINK,
    Link,
    cid_text,
    encode_node,
    pb_cid,
    raw_cid,
    unixfs_data,
    varint,
)

CHUNK_SIZE = 1 << 20
MAX_LINKS = 1024
SHARD_THRESHOLD = 262_144
FANOUT = 256
_CID_BYTES = 36
_EMPTY_DIR_DATA = unixfs_data(T_DIRECTORY)


@dataclass(slots=True)
class Made:
    """A node the builder made: its CID and the ``Tsize`` a parent's link records."""

    cid: bytes
    tsize: int


@dataclass
class FileDag:
    """One file's DAG: its root, the dag-pb nodes above the leaves, and the leaves as
    (CID, offset, length) ranges of the file."""

    root: Made
    nodes: list[tuple[bytes, bytes, list[bytes]]]  # (cid, block, child cids)
    leaves: list[tuple[bytes, int, int]]


@dataclass
class Dag:
    """Every block of a package's DAG.

    ``nodes``: dag-pb CID -> (block, child CIDs in link order). ``leaves``: raw CID -> (path,
    offset, length) of the first range with those bytes. ``paths``: the CID of each file,
    symlink and directory ('' is the package root), for a gateway that says what it serves.
    """

    root: bytes
    nodes: dict[bytes, tuple[bytes, list[bytes]]] = field(default_factory=dict)
    leaves: dict[bytes, tuple[str, int, int]] = field(default_factory=dict)
    paths: dict[str, bytes] = field(default_factory=dict)

    def __contains__(self, cid: bytes) -> bool:
        return cid in self.nodes or cid in self.leaves


class UnixfsFileHasher:
    """Cuts a file into 1 MiB raw leaves as its bytes stream past; ``finish`` lays them out."""

    __slots__ = ("_buf", "_leaves", "_offset")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._leaves: list[tuple[bytes, int, int]] = []
        self._offset = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            if not self._buf and len(view) >= CHUNK_SIZE:  # aligned: hash in place, no copy
                self._leaf(view[:CHUNK_SIZE])
                view = view[CHUNK_SIZE:]
                continue
            take = min(CHUNK_SIZE - len(self._buf), len(view))
            self._buf += view[:take]
            view = view[take:]
            if len(self._buf) == CHUNK_SIZE:
                self._leaf(self._buf)
                self._buf = bytearray()

    def _leaf(self, chunk: bytes | bytearray | memoryview) -> None:
        self._leaves.append((raw_cid(chunk), self._offset, len(chunk)))
        self._offset += len(chunk)

    def finish(self) -> FileDag:
        if self._buf or not self._leaves:  # the tail, or the one empty leaf of an empty file
            self._leaf(self._buf)
        return file_dag(self._leaves)


def file_dag(leaves: list[tuple[bytes, int, int]]) -> FileDag:
    """The balanced layout: leaves in groups of 1,024 under ``File`` nodes, those grouped
    again, until one root is left. A one-leaf file is that leaf."""
    if len(leaves) == 1:
        cid, _, size = leaves[0]
        return FileDag(Made(cid, size), [], leaves)
    nodes: list[tuple[bytes, bytes, list[bytes]]] = []
    level = [(Made(cid, size), size) for cid, _, size in leaves]  # (node, bytes of file below)
    while len(level) > 1:
        parents = []
        for i in range(0, len(level), MAX_LINKS):
            group = level[i:i + MAX_LINKS]
            links = [Link(made.cid, b"", made.tsize) for made, size in group if size > 0]
            sizes = [size for _, size in group if size > 0]
            block = encode_node(links, unixfs_data(T_FILE, filesize=sum(sizes), blocksizes=sizes))
            cid = pb_cid(block)
            nodes.append((cid, block, [link.cid for link in links]))
            parents.append((Made(cid, len(block) + sum(link.tsize for link in links)), sum(sizes)))
        level = parents
    return FileDag(level[0][0], nodes, leaves)


def symlink_node(target: str) -> tuple[bytes, bytes]:
    """(CID, block) of a UnixFS symlink to ``target``."""
    block = encode_node([], unixfs_data(T_SYMLINK, data=target.encode("utf-8")))
    return pb_cid(block), block


def link_size(name: bytes, tsize: int) -> int:
    """Bytes one link adds to a dag-pb block (what the importer's block-bytes rule counts)."""
    body = 2 + _CID_BYTES + 1 + len(varint(len(name))) + len(name) + 1 + len(varint(tsize))
    return 1 + len(varint(body)) + body


def build_dag(entries: Sequence[Entry], files: dict[str, FileDag]) -> Dag:
    """Lay out the package's directories over its files' DAGs (``files``: by path, from
    :class:`UnixfsFileHasher`); returns every block."""
    tree: dict[str, Any] = {}
    for entry in entries:
        *dirs, name = entry.path.split("/")
        node = tree
        for part in dirs:
            node = node.setdefault(part, {})
        node[name] = entry
    dag = Dag(b"")
    for path, fdag in files.items():
        dag.paths[path] = fdag.root.cid
        for cid, block, children in fdag.nodes:
            dag.nodes.setdefault(cid, (block, children))
        for cid, offset, length in fdag.leaves:
            dag.leaves.setdefault(cid, (path, offset, length))
    dag.root = _directory(tree, "", files, dag).cid
    return dag


def _directory(tree: dict[str, Any], prefix: str, files: dict[str, FileDag], dag: Dag) -> Made:
    children: dict[bytes, Made] = {}
    counted = len(_EMPTY_DIR_DATA) + 2  # the data field: tag, length, "type: directory"
    for name, child in tree.items():
        path = f"{prefix}/{name}" if prefix else name
        key = name.encode("utf-8")
        if isinstance(child, dict):
            made = _directory(child, path, files, dag)
        elif child.is_symlink:
            cid, block = symlink_node(child.target or "")
            dag.nodes.setdefault(cid, (block, []))
            made = Made(cid, len(block))
            counted += link_size(key, made.tsize)
        else:
            made = files[path].root
            counted += link_size(key, made.tsize)
        dag.paths[path] = made.cid
        children[key] = made
    if counted > SHARD_THRESHOLD:
        made = _shard(children, 0, dag)
    else:
        links = [Link(made.cid, name, made.tsize) for name, made in sorted(children.items())]
        made = _node(links, _EMPTY_DIR_DATA, dag)
    dag.paths[prefix] = made.cid
    return made


def _node(links: list[Link], data: bytes, dag: Dag) -> Made:
    block = encode_node(links, data)
    cid = pb_cid(block)
    dag.nodes.setdefault(cid, (block, [link.cid for link in links]))
    return Made(cid, len(block) + sum(link.tsize for link in links))


def _shard(children: dict[bytes, Made], depth: int, dag: Dag) -> Made:
    """One level of a HAMT directory: each slot holds an entry or, when names share the slot,
    a sub-shard one level down (the reference's ``hamt-sharding``, which is order-free)."""
    if depth >= 8:
        raise TreeseedError("a directory's names collide in all 64 bits of their murmur3 hash; "
                            "treeseed cannot lay it out as a UnixFS HAMT (rename one)")
    import mmh3

    slots: dict[int, dict[bytes, Made]] = {}
    for name, made in children.items():
        slots.setdefault(mmh3.hash_bytes(name)[7 - depth], {})[name] = made
    links = []
    for slot in sorted(slots):
        label = b"%02X" % slot
        group = slots[slot]
        if len(group) == 1:
            (name, made), = group.items()
            links.append(Link(made.cid, label + name, made.tsize))
        else:
            sub = _shard(group, depth + 1, dag)
            links.append(Link(sub.cid, label, sub.tsize))
    bitmap = sum(1 << slot for slot in slots)
    bits = bitmap.to_bytes(max(1, (bitmap.bit_length() + 7) // 8), "big")
    return _node(links, unixfs_data(T_HAMT, data=bits, hash_type=HAMT_HASH, fanout=FANOUT), dag)


class IpfsFormat:
    """The ``ipfs`` format for :func:`treeseed.hashing.hash_tree`."""

    name = "ipfs"

    def __init__(self, root: Path, source: str = "") -> None:
        self.source = source or str(root)

    def file_hasher(self, entry: Entry) -> UnixfsFileHasher:
        return UnixfsFileHasher()

    def finish(self, root: Path, entries: Sequence[Entry], digests: dict[str, Any]) -> str:
        return cid_text(build_dag(entries, digests).root)


def package_dag(root: Path, entries: Sequence[Entry]) -> Dag:
    """Read the package at ``root`` once and return its whole DAG (for serving)."""
    from . import hash_files

    fmt = IpfsFormat(root)
    return build_dag(entries, hash_files(root, entries, [fmt])["ipfs"])
