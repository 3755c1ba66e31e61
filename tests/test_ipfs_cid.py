"""The ``ipfs`` format equals the CID the real importer (ipfs-unixfs-importer 17.1.1, profile
unixfs-v1-2025) gives the same tree: nested, empty and unicode names, files at and around the
1 MiB chunk size, a symlink, a directory past the sharding threshold, and one file over 50 MB."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import make_tree, run_cli
from ipfskit import reference_cid, require_node

from treeseed.hashing import hash_tree
from treeseed.hashing.ipfs import SHARD_THRESHOLD, link_size, package_dag
from treeseed.package import scan_tree
from treeseed.unixfs import T_DIRECTORY, T_HAMT, BadBlock, cid_text, decode_node, parse_cid

MIB = 1 << 20


def ipfs_hash(tree: Path) -> str:
    return hash_tree(tree, scan_tree(tree, str(tree)), ["ipfs"])["ipfs"]


def test_varied_tree_matches_the_importer(tmp_path: Path) -> None:
    require_node()
    rnd = os.urandom
    tree = make_tree(tmp_path / "t", {
        "README": b"hello\n",
        "empty": b"",
        "src/deep/er/still/empty.c": b"",
        "src/main.c": b"int main(void) { return 0; }\n",
        "run.sh": ("x", b"#!/bin/sh\necho hi\n"),
        "chunks/one-less": rnd(MIB - 1),
        "chunks/exact": rnd(MIB),
        "chunks/one-more": rnd(MIB + 1),
        "chunks/two": rnd(2 * MIB),
        "chunks/three-and-a-bit": rnd(3 * MIB + 7),
        "ünïcødé/日本語/файл.txt": "ü".encode() * 100,
        "link-to-readme": ("link", "README"),
        "src/up": ("link", "../chunks/exact"),
    })
    ours = ipfs_hash(tree)
    assert ours.startswith("bafybei")
    assert ours == reference_cid(tree)
    # the command line prints the same value
    assert run_cli("hash", "--format", "ipfs", str(tree)).stdout.strip() == ours


def test_sharded_directory_matches_the_importer(tmp_path: Path) -> None:
    """4,500 names push the directory's node past 262,144 bytes: a HAMT of two levels."""
    require_node()
    spec: dict[str, object] = {f"many/entry-with-a-longer-name-{i:05d}.txt": str(i).encode()
                               for i in range(4500)}
    spec["many/sub/inside-the-shard"] = b"a directory among the shard's entries"
    spec["many/sub/ü"] = b"unicode"
    tree = make_tree(tmp_path / "t", spec)
    dag = package_dag(tree, scan_tree(tree, "t"))
    assert decode_node(dag.nodes[dag.paths["many"]][0], 10_000).kind == T_HAMT
    assert cid_text(dag.root) == reference_cid(tree)


def test_directory_at_the_threshold_is_flat_and_one_link_more_shards(tmp_path: Path) -> None:
    """The block-bytes rule is 'more than 262,144 bytes': a directory exactly there stays
    flat, one more entry makes it a shard; both CIDs equal the importer's."""
    require_node()
    name_len = 60
    per_link = link_size(b"x" * name_len, 1)
    count = (SHARD_THRESHOLD - 4) // per_link
    spec: dict[str, object] = {f"d/{i:0{name_len}d}": b"x" for i in range(count)}
    below = make_tree(tmp_path / "below", spec)
    dag = package_dag(below, scan_tree(below, "below"))
    assert decode_node(dag.nodes[dag.paths["d"]][0], 10_000).kind == T_DIRECTORY
    assert cid_text(dag.root) == reference_cid(below)
    spec[f"d/{count:0{name_len}d}"] = b"x"
    above = make_tree(tmp_path / "above", spec)
    dag = package_dag(above, scan_tree(above, "above"))
    assert decode_node(dag.nodes[dag.paths["d"]][0], 10_000).kind == T_HAMT
    assert cid_text(dag.root) == reference_cid(above)


@pytest.mark.slow
def test_file_over_50_mb_matches_the_importer(tmp_path: Path) -> None:
    require_node()
    tree = tmp_path / "t"
    tree.mkdir()
    with open(tree / "big.bin", "wb") as f:
        for _ in range(51):
            f.write(os.urandom(MIB))
        f.write(b"tail")
    (tree / "small").write_bytes(b"beside it")
    assert ipfs_hash(tree) == reference_cid(tree)


def test_exec_bit_is_not_part_of_the_cid(tmp_path: Path) -> None:
    """UnixFS under this profile records no mode: two trees that differ only in +x agree."""
    plain = make_tree(tmp_path / "a", {"tool": b"#!/bin/sh\n"})
    execable = make_tree(tmp_path / "b", {"tool": ("x", b"#!/bin/sh\n")})
    assert ipfs_hash(plain) == ipfs_hash(execable)


def test_parse_cid_accepts_other_multibases_and_refuses_other_hashes() -> None:
    text = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"  # raw, no bytes
    assert cid_text(parse_cid(text)) == text
    from multiformats import CID, multihash

    assert cid_text(parse_cid(CID.decode(text).encode("base58btc"))) == text
    with pytest.raises(BadBlock, match="sha2-256"):
        parse_cid(str(CID("base32", 1, "raw", multihash.digest(b"", "sha2-512"))))
    with pytest.raises(BadBlock, match="not a CID"):
        parse_cid("bafy-not-a-cid")


def test_dht_alias_and_install_check_speak_ipfs(tmp_path: Path) -> None:
    """parse_hash reads ipfs:// and bare CIDv1s (a CIDv0 too, as its v1); the install's
    AlsoHash check recomputes the tree's CID and refuses another."""
    from treeseed.errors import AliasMismatch
    from treeseed.install import AlsoHash
    from treeseed.swarm.aliases import PUBLISHED, parse_hash

    tree = make_tree(tmp_path / "t", {"a": b"alias me\n"})
    cid = ipfs_hash(tree)
    assert "ipfs" in PUBLISHED
    assert parse_hash(f"ipfs://{cid}") == ("ipfs", cid) == parse_hash(cid)
    assert parse_hash("ipfs://not-a-cid") is None
    hint = AlsoHash.from_json({"format": "ipfs", "value": cid})
    assert hint is not None
    hint.check(tree, "bt2-" + "0" * 64)
    other = make_tree(tmp_path / "o", {"a": b"something else\n"})
    with pytest.raises(AliasMismatch):
        hint.check(other, "bt2-" + "0" * 64)
