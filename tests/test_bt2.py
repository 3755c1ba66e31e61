"""The package hash is the BitTorrent v2 info-hash libtorrent computes for the same tree."""

from __future__ import annotations

import hashlib
import os
import random
import tarfile
import unicodedata
from pathlib import Path

import pytest
from helpers import make_tree, run_cli

from treeseed.hashing import hash_tree
from treeseed.hashing.bencode import bdecode, bencode
from treeseed.hashing.bt2 import BLOCK_SIZE, PIECE_LENGTH, hash_bytes, magnet, merkle_root
from treeseed.package import scan_tree

lt = pytest.importorskip("libtorrent", reason="pip install libtorrent (the reference BEP 52 implementation)")


def libtorrent_hash(package_dir: Path) -> str:
    """The v2 info-hash libtorrent computes for ``package_dir`` (which must be named 'package')."""
    assert package_dir.name == "package"
    flags = lt.create_torrent.v2_only | lt.create_torrent.symlinks
    files = lt.list_files(str(package_dir), lambda p: True, flags)
    ct = lt.create_torrent(files, PIECE_LENGTH, flags)
    lt.set_piece_hashes(ct, str(package_dir.parent))
    info = ct.generate()[b"info"]
    return "bt2-" + hashlib.sha256(lt.bencode(info)).hexdigest()


def our_hash(root: Path) -> str:
    return hash_tree(root, scan_tree(root, str(root)), ["bt2"])["bt2"]


def rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


SIZES = [0, 1, BLOCK_SIZE - 1, BLOCK_SIZE, BLOCK_SIZE + 1, 2 * BLOCK_SIZE, PIECE_LENGTH - 1,
         PIECE_LENGTH, PIECE_LENGTH + 1, 3 * PIECE_LENGTH + 5, 17 * BLOCK_SIZE]

TREES = {
    "nested-exec-empty": {
        "a/b/c/deep.txt": b"deep",
        "a/run.sh": ("x", b"#!/bin/sh\necho hi\n"),
        "empty": b"",
        "a/empty-exec": ("x", b""),
        "top.txt": b"top",
        "z/emptydir": None,
    },
    "boundaries": {f"sizes/f{n:07d}": rand(n, n) for n in SIZES},
    "unicode": {
        "café/naïve.txt": b"nfc",
        unicodedata.normalize("NFD", "café") + "/nfd.txt": b"nfd",
        "日本語/ファイル": b"cjk",
        "emoji-🙂.md": b"smile",
        "spaces in name/and 'quotes'": b"q",
    },
    "symlinks": {
        "lib/real.c": b"int x;\n",
        "lib/alias.c": ("link", "real.c"),
        "include": ("link", "lib"),
        "via/through.c": ("link", "../include/real.c"),
        "up/down/back": ("link", "../../lib/real.c"),
        "dangling": ("link", "not-there"),
    },
    "one-file-in-a-dir": {"only/file.txt": b"x" * 100},
    "one-top-level-file": {"single.bin": rand(70000, 7)},
}


@pytest.mark.parametrize("name", sorted(TREES))
def test_matches_libtorrent(tmp_path: Path, name: str) -> None:
    root = make_tree(tmp_path / "package", TREES[name])
    assert our_hash(root) == libtorrent_hash(root)


@pytest.mark.slow
def test_large_file_matches_libtorrent(tmp_path: Path) -> None:
    """Over 50 MB: many pieces, a piece layer padded to a power of two, a short last piece."""
    root = tmp_path / "package"
    root.mkdir()
    with open(root / "big.bin", "wb") as f:
        for i in range(51):
            f.write(rand(1 << 20, i))
        f.write(rand(12345, 99))
    (root / "small.txt").write_bytes(b"small")
    assert our_hash(root) == libtorrent_hash(root)


def test_random_trees_match_libtorrent(tmp_path: Path) -> None:
    """Twenty seeded random trees: sizes, depths, exec bits and links all vary."""
    for seed in range(20):
        rng = random.Random(seed)
        spec: dict[str, object] = {}
        for i in range(rng.randint(1, 12)):
            depth = rng.randint(0, 3)
            path = "/".join(f"d{rng.randint(0, 2)}" for _ in range(depth)) + f"/f{i}"
            path = path.lstrip("/")
            if any(p == path or p.startswith(path + "/") or path.startswith(p + "/") for p in spec):
                continue
            size = rng.choice([0, 5, BLOCK_SIZE, PIECE_LENGTH + rng.randint(-3, 3), rng.randint(0, 600000)])
            data = rand(size, seed * 100 + i)
            spec[path] = ("x", data) if rng.random() < 0.3 else data
        files = list(spec)
        if rng.random() < 0.5:
            spec["link"] = ("link", rng.choice(files))
        root = make_tree(tmp_path / str(seed) / "package", spec)
        assert our_hash(root) == libtorrent_hash(root), f"seed {seed}"


def test_hash_while_unpacking_equals_hash_of_tree(tmp_path: Path, cache_dir: Path) -> None:
    """The streaming hasher in the unpacker and the directory hasher agree, and the CLI too."""
    root = make_tree(tmp_path / "package", {**TREES["nested-exec-empty"], **TREES["boundaries"]})
    archive = tmp_path / "pkg.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(root, arcname="pkg-1.0")
    expected = libtorrent_hash(root)
    assert run_cli("hash", str(archive), cache=cache_dir).stdout.strip() == expected
    assert run_cli("hash", str(root), cache=cache_dir).stdout.strip() == expected
    fetched = run_cli("fetch", str(archive), cache=cache_dir).stdout.split()
    assert fetched[0] == expected
    assert libtorrent_hash(_copy_as_package(Path(fetched[1]), tmp_path / "again")) == expected


def _copy_as_package(src: Path, dest_parent: Path) -> Path:
    import shutil

    dest = dest_parent / "package"
    shutil.copytree(src, dest, symlinks=True)
    return dest


def test_merkle_padding_rules() -> None:
    """Spot checks of BEP 52 padding, independent of libtorrent."""
    one = b"a" * 10
    assert hash_bytes(one).root == hashlib.sha256(one).digest()
    two = b"b" * (BLOCK_SIZE + 1)
    leaves = [hashlib.sha256(two[:BLOCK_SIZE]).digest(), hashlib.sha256(two[BLOCK_SIZE:]).digest()]
    assert hash_bytes(two).root == hashlib.sha256(leaves[0] + leaves[1]).digest()
    three = [bytes([i]) * 32 for i in range(3)]
    root, _ = merkle_root(three)
    zero = bytes(32)
    left = hashlib.sha256(three[0] + three[1]).digest()
    right = hashlib.sha256(three[2] + zero).digest()
    assert root == hashlib.sha256(left + right).digest()
    assert hash_bytes(b"").root is None


def test_piece_layer_is_one_hash_per_piece() -> None:
    data = rand(3 * PIECE_LENGTH + 5, 1)
    digest = hash_bytes(data)
    assert len(digest.piece_layer) == 4 * 32
    assert hash_bytes(data[:PIECE_LENGTH]).piece_layer == b""


def test_bencode_roundtrip_and_canonical_order() -> None:
    value = {"b": 1, "a": [b"x", "y", {"": 0}], "\xe9": -5}
    encoded = bencode(value)
    assert encoded == b"d1:al1:x1:yd0:i0eee1:bi1e2:\xc3\xa9i-5ee"
    assert bdecode(encoded) == {b"a": [b"x", b"y", {b"": 0}], b"b": 1, "é".encode(): -5}


def test_magnet_is_the_swarm_address() -> None:
    h = "bt2-" + "ab" * 32
    assert magnet(h) == "magnet:?xt=urn:btmh:1220" + "ab" * 32
    parsed = lt.parse_magnet_uri(magnet(h))
    assert parsed.info_hashes.v2.to_bytes().hex() == "ab" * 32


def test_hash_ignores_empty_dirs_but_sees_every_change(tmp_path: Path) -> None:
    """If the hash matches, the tree matches: each kind of change moves the hash."""
    spec = {"a/x.txt": b"one", "b/run": ("x", b"two"), "c": ("link", "a/x.txt")}
    base = our_hash(make_tree(tmp_path / "base", spec))
    assert our_hash(make_tree(tmp_path / "emptydir", {**spec, "d/e": None})) == base
    variants = {
        "content": {**spec, "a/x.txt": b"One"},
        "exec bit": {**spec, "b/run": b"two"},
        "rename": {"a/y.txt": b"one", "b/run": ("x", b"two"), "c": ("link", "a/y.txt")},
        "link target": {**spec, "c": ("link", "b/run")},
        "link vs copy": {**spec, "c": b"one"},
        "extra empty file": {**spec, "a/new": b""},
    }
    for what, variant in variants.items():
        assert our_hash(make_tree(tmp_path / what.replace(" ", "-"), variant)) != base, what


def test_group_and_other_exec_bits_do_not_count(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t", {"f": b"data"})
    before = our_hash(root)
    os.chmod(root / "f", 0o655)
    assert our_hash(root) == before
    os.chmod(root / "f", 0o744)
    assert our_hash(root) != before


@pytest.mark.parametrize("target", [".", "..", "../package/f", "/etc/passwd", "a/../../x"])
def test_links_libtorrent_would_drop_are_errors(tmp_path: Path, target: str) -> None:
    """libtorrent silently drops links to the root or outside it; treeseed refuses them."""
    from treeseed.errors import BadPackage

    root = make_tree(tmp_path / "package", {"f": b"x", "a/g": b"y", "l": ("link", target)})
    with pytest.raises(BadPackage, match="symlink"):
        our_hash(root)
