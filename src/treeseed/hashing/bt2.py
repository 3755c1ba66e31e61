"""The treeseed package hash: the BitTorrent v2 (BEP 52) info-hash of a canonical torrent.

Each regular file is cut into 16 KiB blocks; a block's leaf is SHA-256 of its bytes (the last
block is hashed short, not padded). A file's *pieces root* is the merkle root over its leaves,
padded with all-zero leaves to a power of two. The canonical info dict is::

    {"file tree": ..., "meta version": 2, "name": "package", "piece length": 262144}

with ``{"": {"length": N, "pieces root": R}}`` per file (no root when N is 0, ``"attr": "x"``
when executable) and ``{"": {"attr": "xl", "symlink path": [...]}}`` per symlink, the target
resolved relative to the package root. The info-hash is SHA-256 of the bencoded dict, which
libtorrent's ``create_torrent(..., flags=v2_only)`` reproduces exactly (tests/test_bt2.py).

:class:`MerkleHasher` is fed bytes as they stream past (while unpacking, while copying), so the
hash costs no second pass over the disk.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from ..ids import PREFIX, hex_of, is_bt2  # noqa: F401  (re-exported: callers use bt2.is_bt2)
from ..package import Entry, resolve_link
from ..record import FrozenRecord
from .bencode import Bencodable, bencode

BLOCK_SIZE = 16 * 1024
PIECE_LENGTH = 256 * 1024
BLOCKS_PER_PIECE = PIECE_LENGTH // BLOCK_SIZE
TORRENT_NAME = "package"

_sha256 = hashlib.sha256
_ZERO = bytes(32)


def _zero_hashes(levels: int) -> list[bytes]:
    """Root of an all-zero-leaf subtree for each height: padding for an odd layer."""
    out = [_ZERO]
    for _ in range(levels):
        out.append(_sha256(out[-1] + out[-1]).digest())
    return out


_ZERO_AT = _zero_hashes(64)
_PIECE_LEVEL = BLOCKS_PER_PIECE.bit_length() - 1  # 16 leaves per piece: level 4


class FileDigest(FrozenRecord):
    """A file's merkle summary: its pieces root, for multi-piece files its piece layer, and
    every 16 KiB block hash (``leaves``, kept for multi-block files: a seeder that holds them
    can answer BEP 52 hash requests, which is how a downloader tells which peer sent a bad
    block). The leaves cost 32 bytes per 16 KiB, 0.2% of the file."""

    __slots__ = ("size", "root", "piece_layer", "leaves")

    def __init__(self, size: int, root: bytes | None, piece_layer: bytes = b"",
                 leaves: bytes = b"") -> None:
        _set = object.__setattr__
        _set(self, "size", size)
        _set(self, "root", root)
        _set(self, "piece_layer", piece_layer)
        _set(self, "leaves", leaves)


class MerkleHasher:
    """Streaming BEP 52 hasher for one file: feed chunks with :meth:`update`, then :meth:`finish`.

    Whole 16 KiB blocks are hashed straight from the caller's buffer; only a trailing partial
    block is copied. hashlib drops the GIL for these buffers, so several hashers can run on
    several cores at once.
    """

    __slots__ = ("_leaves", "_partial", "size")

    def __init__(self) -> None:
        self._leaves: list[bytes] = []
        self._partial = bytearray()
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        n = len(view)
        if not n:
            return
        self.size += n
        start = 0
        if self._partial:
            need = BLOCK_SIZE - len(self._partial)
            self._partial += view[:need]
            if len(self._partial) < BLOCK_SIZE:
                return
            self._leaves.append(_sha256(self._partial).digest())
            self._partial.clear()
            start = need
        whole_end = start + (n - start) // BLOCK_SIZE * BLOCK_SIZE
        append = self._leaves.append
        for off in range(start, whole_end, BLOCK_SIZE):
            append(_sha256(view[off : off + BLOCK_SIZE]).digest())
        if whole_end < n:
            self._partial += view[whole_end:]

    def finish(self) -> FileDigest:
        if self._partial:
            self._leaves.append(_sha256(self._partial).digest())
            self._partial.clear()
        if not self._leaves:
            return FileDigest(0, None)
        root, layer = merkle_root(self._leaves)
        leaves = b"".join(self._leaves) if len(self._leaves) > 1 else b""
        return FileDigest(self.size, root, layer if self.size > PIECE_LENGTH else b"", leaves)


def digest_block(data: bytes | bytearray | memoryview) -> FileDigest:
    """The merkle summary of a file of at most one 16 KiB block: what :class:`MerkleHasher`
    gives (the root is the one leaf, there is no piece layer and no leaves list), without its
    buffers and tree. Most files of a source archive are this small."""
    n = len(data)
    if n > BLOCK_SIZE:
        raise ValueError(f"{n} bytes is more than one block")
    return FileDigest(n, _sha256(data).digest()) if n else FileDigest(0, None)


def merkle_root(leaves: Sequence[bytes]) -> tuple[bytes, bytes]:
    """Return (root, piece layer) of ``leaves`` padded with zero leaves to a power of two.

    Padding an odd layer with the zero-subtree hash of that height is the same as padding the
    leaves themselves, without materialising the padding. The piece layer is the layer where
    each node covers one 256 KiB piece, as BEP 52's ``piece layers`` stores it.
    """
    layer = list(leaves)
    height = (len(layer) - 1).bit_length()  # the padded leaf count is 1 << height
    piece_layer = b""
    for level in range(height):
        if level == _PIECE_LEVEL:
            piece_layer = b"".join(layer)
        if len(layer) % 2:
            layer.append(_ZERO_AT[level])
        layer = [_sha256(layer[i] + layer[i + 1]).digest() for i in range(0, len(layer), 2)]
    return layer[0], piece_layer


def merkle_layers(leaves: Sequence[bytes]) -> list[bytes]:
    """Every node of the tree over ``leaves`` (padded to a power of two), root first, layer by
    layer: the flat layout libtorrent's resume data stores a file's merkle tree in."""
    layer = list(leaves)
    width = 1 << (len(layer) - 1).bit_length()
    layer += [_ZERO] * (width - len(layer))
    layers = [b"".join(layer)]
    while len(layer) > 1:
        layer = [_sha256(layer[i] + layer[i + 1]).digest() for i in range(0, len(layer), 2)]
        layers.append(b"".join(layer))
    return layers[::-1]


def hash_bytes(data: bytes) -> FileDigest:
    """The merkle summary of an in-memory file (tests, small files)."""
    h = MerkleHasher()
    h.update(data)
    return h.finish()


def file_tree(entries: Iterable[Entry], digests: dict[str, FileDigest], source: str) -> dict:
    """Build the BEP 52 ``file tree`` dict for ``entries`` (digests keyed by path)."""
    tree: dict = {}
    for entry in entries:
        node = tree
        for part in entry.path.split("/"):
            node = node.setdefault(part, {})
        node[""] = _leaf(entry, digests, source)
    return tree


def _leaf(entry: Entry, digests: dict[str, FileDigest], source: str) -> dict[str, Bencodable]:
    if entry.is_symlink:
        assert entry.target is not None
        return {"attr": "xl", "symlink path": resolve_link(entry.path, entry.target, source)}
    digest = digests[entry.path]
    leaf: dict[str, Bencodable] = {"length": digest.size}
    if digest.root is not None:
        leaf["pieces root"] = digest.root
    if entry.executable:
        leaf["attr"] = "x"
    return leaf


def info_dict(entries: Iterable[Entry], digests: dict[str, FileDigest], source: str = "") -> dict:
    return {
        "file tree": file_tree(entries, digests, source),
        "meta version": 2,
        "name": TORRENT_NAME,
        "piece length": PIECE_LENGTH,
    }


def info_hash(entries: Iterable[Entry], digests: dict[str, FileDigest], source: str = "") -> str:
    """The package hash, ``bt2-<64 hex>``."""
    return hash_of_info(info_bytes(entries, digests, source))


def hash_of_info(info: bytes) -> str:
    """The package hash of a bencoded info dict (from :func:`info_bytes`)."""
    return PREFIX + _sha256(info).hexdigest()


def info_bytes(entries: Iterable[Entry], digests: dict[str, FileDigest], source: str = "") -> bytes:
    """The bencoded info dict, byte for byte ``bencode(info_dict(...))``, written in one pass.

    Why not the generic encoder: a nested dict per directory, a sort per dict and a recursive
    type dispatch per value cost ~90 ms on Django's 6,800 files, and the fetch needs these
    bytes twice (the hash, then the .torrent): callers compute them once and pass them on.
    Entries sorted by their UTF-8 path components come out in exactly the order of
    bencoding's sorted keys, so the tree is written as a walk over that sorted list: a
    directory is opened when a path enters it and closed when the next path leaves it.
    """
    keyed = sorted([(e.path.encode("utf-8").split(b"/"), e) for e in entries], key=_first)
    out: list[bytes] = [b"d9:file treed"]
    append = out.append
    open_dirs: list[bytes] = []
    for parts, entry in keyed:
        name = parts.pop()
        if parts != open_dirs:  # else: the same directory as the entry before, the usual case
            common = 0
            for a, b in zip(open_dirs, parts, strict=False):
                if a != b:
                    break
                common += 1
            if len(open_dirs) > common:
                append(b"e" * (len(open_dirs) - common))
            for part in parts[common:]:
                append(b"%d:%sd" % (len(part), part))
            open_dirs = parts
        append(b"%d:%sd0:" % (len(name), name))
        append(_leaf_bytes(entry, digests, source))
        append(b"e")
    append(b"e" * len(open_dirs))
    append(b"e12:meta versioni2e4:name%d:%s12:piece lengthi%dee"
           % (len(TORRENT_NAME), TORRENT_NAME.encode(), PIECE_LENGTH))
    return b"".join(out)


def _leaf_bytes(entry: Entry, digests: dict[str, FileDigest], source: str) -> bytes:
    """One file's or symlink's ``""`` dict, keys in bencoding's sorted order (as :func:`_leaf`)."""
    if entry.is_symlink:
        assert entry.target is not None
        return bencode({"attr": "xl", "symlink path": resolve_link(entry.path, entry.target, source)})
    digest = digests[entry.path]
    attr = b"4:attr1:x" if entry.executable else b""
    if digest.root is None:
        return b"d%s6:lengthi%dee" % (attr, digest.size)
    root = digest.root
    return b"d%s6:lengthi%de11:pieces root%d:%se" % (attr, digest.size, len(root), root)


def _first(pair: tuple) -> object:
    return pair[0]


def torrent_bytes(entries: Sequence[Entry], digests: dict[str, FileDigest], source: str = "",
                  info: bytes | None = None) -> bytes:
    """A complete v2-only .torrent (info dict plus piece layers) for seeding the package;
    ``info`` is the info dict already bencoded (:func:`info_bytes`), when the caller has it."""
    if info is None:
        info = info_bytes(entries, digests, source)
    layers = {d.root: d.piece_layer for d in digests.values() if d.piece_layer and d.root}
    return b"d4:info" + info + b"12:piece layers" + bencode(layers) + b"e"


def magnet(package_hash: str) -> str:
    """The swarm address of a package: a BEP 52 magnet link (multihash 0x12 0x20 = sha2-256)."""
    return f"magnet:?xt=urn:btmh:1220{hex_of(package_hash)}"


