"""What a package needs to be seeded: its .torrent and every block hash, kept in the cache.

For package ``bt2-X`` the cache holds, beside ``p/bt2-X/``::

    t/bt2-X.torrent   the v2-only .torrent: the canonical info dict plus piece layers
    t/bt2-X.leaves    bencoded {pieces root: all 16 KiB block hashes} for multi-block files

Both are derived data and both are checkable without reading the package: the .torrent's info
dict must hash to X, and each file's leaves must rebuild its pieces root. They are written when
a package is installed (the fetcher hashed every block as it wrote it, so this costs nothing),
or, for a package that predates them, generated once by hashing the package, which also proves
the package still matches its name before anything is uploaded.

From them :func:`resume_data` builds libtorrent resume data with all pieces present and each
file's full merkle tree, so a seeder starts without re-hashing and can answer block-hash
requests (BEP 52), which lets a downloader blame the right peer for a bad block.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from ..cache import Cache
from ..errors import CacheError
from ..ids import hex_of

# The hashing package is imported where used: every install imports this module for
# :func:`adopt` alone, after its fetcher has finished, and importing ``treeseed.hashing``
# (its thread pool, logging with it) cost ~11 ms there, on the way to the package's rename.
if TYPE_CHECKING:
    from ..hashing.bt2 import FileDigest
    from ..package import Entry

LEAF = 32


def torrent_path(cache: Cache, package_hash: str) -> Path:
    return cache.torrents_dir / f"{package_hash}.torrent"


def leaves_path(cache: Cache, package_hash: str) -> Path:
    return cache.torrents_dir / f"{package_hash}.leaves"


def write(directory: Path, package_hash: str, entries: list[Entry],
          digests: dict[str, FileDigest], source: str, info: bytes | None = None) -> None:
    """Write the .torrent and .leaves of a freshly hashed tree into ``directory`` (a work dir
    or the cache's ``t/``), each by an atomic rename, leaves first: a .torrent present means
    its leaves are too. ``info`` is the bencoded info dict the hash was taken over, when the
    caller has it (:attr:`treeseed.assemble.PackageTree.info`): encoding it again cost as much
    as the first time."""
    from ..hashing.bt2 import torrent_bytes

    data = torrent_bytes(entries, digests, source, info or None)
    leaves = _leaves_bytes(digests)
    directory.mkdir(parents=True, exist_ok=True)
    _write_atomically(directory / f"{package_hash}.leaves", leaves)
    _write_atomically(directory / f"{package_hash}.torrent", data)


def _leaves_bytes(digests: dict[str, FileDigest]) -> bytes:
    """``bencode({pieces root: leaves})`` for the multi-block files, written directly: the keys
    are all 32-byte roots, so one sort and one join do it."""
    pairs = sorted({d.root: d.leaves for d in digests.values() if d.root and d.leaves}.items())
    return b"d" + b"".join(b"%d:%s%d:%s" % (len(r), r, len(v), v) for r, v in pairs) + b"e"


def adopt(cache: Cache, work: Path, package_hash: str) -> None:
    """Move the files :func:`write` left in a work directory into the cache's ``t/``."""
    for suffix in (".leaves", ".torrent"):
        src = work / f"{package_hash}{suffix}"
        if src.is_file():
            cache.torrents_dir.mkdir(parents=True, exist_ok=True)
            os.replace(src, cache.torrents_dir / src.name)


def torrent_file(cache: Cache, package_hash: str) -> bytes:
    """The package's .torrent, generated once (by hashing the package) if the cache lacks it."""
    data = _read_checked(cache, package_hash)
    if data is None:
        generate(cache, package_hash)
        data = _read_checked(cache, package_hash)
        assert data is not None
    return data


def generate(cache: Cache, package_hash: str) -> None:
    """Hash the cached package block by block and write its .torrent and .leaves; refuse if
    the package no longer hashes to its name (it must not be seeded or served)."""
    from ..hashing import Bt2Format, hash_files
    from ..hashing.bt2 import info_hash
    from ..package import scan_tree

    root = cache.path(package_hash)
    if not cache.has(package_hash):
        raise CacheError(f"{package_hash} is not in the cache at {cache.root}")
    entries = scan_tree(root, package_hash)
    digests = hash_files(root, entries, [Bt2Format(root, package_hash)])["bt2"]
    actual = info_hash(entries, digests, package_hash)
    if actual != package_hash:
        said = cache.evict_corrupt(package_hash, f"its files now hash to {actual}")
        raise CacheError(f"{said}; fetch {package_hash} again to seed it")
    write(cache.torrents_dir, package_hash, entries, digests, package_hash)


def _read_checked(cache: Cache, package_hash: str) -> bytes | None:
    """The stored .torrent if it is there and its info dict hashes to the package's name."""
    from ..hashing.bencode import bdecode, bencode

    try:
        data = torrent_path(cache, package_hash).read_bytes()
    except FileNotFoundError:
        return None
    try:
        info = bdecode(data)[b"info"]
    except (ValueError, KeyError, TypeError):
        return None
    if hashlib.sha256(bencode(info)).hexdigest() != hex_of(package_hash):
        return None
    return data


def read_leaves(cache: Cache, package_hash: str) -> dict[bytes, bytes]:
    """The stored block hashes, keyed by pieces root; entries that do not rebuild their root
    are dropped (a file whose leaves are missing is then seeded from its piece layer only)."""
    from ..hashing.bencode import bdecode
    from ..hashing.bt2 import merkle_root

    try:
        raw = bdecode(leaves_path(cache, package_hash).read_bytes())
    except (FileNotFoundError, ValueError):
        return {}
    good = {}
    for root, leaves in raw.items() if isinstance(raw, dict) else ():
        if isinstance(leaves, bytes) and leaves and len(leaves) % LEAF == 0:
            if merkle_root(_split(leaves))[0] == root:
                good[root] = leaves
    return good


def resume_data(cache: Cache, package_hash: str, save_path: Path, file_roots: Iterable[bytes | None]) -> bytes:
    """libtorrent resume data for seeding the package from ``save_path``: every piece present
    and verified, and each file's full merkle tree (``file_roots`` lists each file's pieces
    root in libtorrent's file order; None or all-zero for empty files and symlinks)."""
    from ..hashing.bencode import bdecode, bencode
    from ..hashing.bt2 import PIECE_LENGTH, merkle_layers

    data = torrent_file(cache, package_hash)
    info = bdecode(data)[b"info"]
    leaves = read_leaves(cache, package_hash)
    trees = []
    pieces = 0
    for root in file_roots:
        tree: dict = {}
        if root and any(root):
            blocks = leaves.get(root)
            nodes = merkle_layers(_split(blocks)) if blocks else [root]
            tree = {b"hashes": b"".join(nodes)}
            if blocks:
                tree[b"verified"] = b"1" * (len(blocks) // LEAF)
        trees.append(tree)
    for size in _file_sizes(info):
        pieces += -(-size // PIECE_LENGTH)
    return bencode({
        b"file-format": b"libtorrent resume file",
        b"file-version": 1,
        b"info-hash2": bytes.fromhex(hex_of(package_hash)),
        b"info": info,
        b"save_path": os.fsencode(save_path),
        b"pieces": b"\x03" * pieces,  # have (1) and verified (2)
        b"trees": [tree or {b"hashes": b""} for tree in trees],
        b"paused": 0,
        b"auto_managed": 0,
        b"seed_mode": 0,
    })


def total_size(torrent: bytes) -> int:
    """Bytes of file content a .torrent describes (libtorrent refuses a torrent of none)."""
    from ..hashing.bencode import bdecode

    return sum(_file_sizes(bdecode(torrent)[b"info"]))


def _file_sizes(info: dict) -> Iterable[int]:
    """Each regular file's length in an info dict's file tree."""
    stack = [info[b"file tree"]]
    while stack:
        node = stack.pop()
        for name, child in node.items():
            if name == b"":
                if b"symlink path" not in child:
                    yield child.get(b"length", 0)
            else:
                stack.append(child)


def _split(blob: bytes) -> list[bytes]:
    return [blob[i:i + LEAF] for i in range(0, len(blob), LEAF)]


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
