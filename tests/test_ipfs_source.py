"""``ipfs://<cid>`` sources: fetched from trustless gateways (real HTTP servers on loopback)
serving a CAR that the real importer wrote (ipfs-unixfs-importer + @ipld/car, tests/node).
Every block is checked as it streams; a gateway that alters, drops or re-roots a block is
named and the next one asked; nothing unverified reaches the cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

from helpers import make_tree, run_cli
from httpserver import Reply, Server
from ipfskit import reference_cid, require_node

from treeseed.unixfs import read_varint

CAR = "application/vnd.ipld.car; version=1"


def sample(tmp_path: Path) -> tuple[Path, str, bytes]:
    """A package tree, its reference CID and the importer's CAR of it."""
    require_node()
    tree = make_tree(tmp_path / "pkg", {
        "README.md": b"# sample\n",
        "src/lib.c": b"int f(void) { return 42; }\n",
        "src/empty.h": b"",
        "data/blob.bin": os.urandom(3 * (1 << 20) + 11),
        "ünï/名前.txt": "名前".encode(),
        "docs/readme-link": ("link", "../README.md"),
    })
    car = tmp_path / "pkg.car"
    cid = reference_cid(tree, car)
    return tree, cid, car.read_bytes()


def serve_car(server: Server, cid: str, body: bytes) -> str:
    server.routes[f"/ipfs/{cid}?format=car&dag-scope=all"] = Reply(200, body, {"Content-Type": CAR})
    return server.url("")


def altered(car: bytes) -> bytes:
    """The CAR with one byte changed inside its largest block (its CID left as it was)."""
    n, pos = read_varint(car, 0)
    pos += n
    sections = []
    while pos < len(car):
        n, start = read_varint(car, pos)
        sections.append((n, start))
        pos = start + n
    n, start = max(sections)
    spot = start + n - 1
    return car[:spot] + bytes([car[spot] ^ 1]) + car[spot + 1:]


def fetch(cid: str, cache: Path, *gateways: str, check: bool = True):  # type: ignore[no-untyped-def]
    run_cli("config", "set", "ipfs_gateways", ",".join(gateways))
    return run_cli("fetch", f"ipfs://{cid}", "--json", cache=cache, check=check)


def test_fetch_by_cid_from_a_gateway(tmp_path: Path, server: Server) -> None:
    tree, cid, car = sample(tmp_path)
    result = json.loads(fetch(cid, tmp_path / "cache", serve_car(server, cid, car)).stdout)
    expected = run_cli("hash", str(tree)).stdout.strip()
    assert result["hash"] == expected
    got = Path(result["path"])
    assert (got / "data/blob.bin").read_bytes() == (tree / "data/blob.bin").read_bytes()
    assert os.readlink(got / "docs/readme-link") == "../README.md"
    assert (got / "ünï/名前.txt").read_text() == "名前"
    # asked as the trustless gateway protocol says
    request = server.requests[0]
    assert request.headers["accept"].startswith("application/vnd.ipld.car")


def test_the_cid_is_recorded_and_a_second_fetch_transfers_nothing(tmp_path: Path,
                                                                   server: Server) -> None:
    _, cid, car = sample(tmp_path)
    url = serve_car(server, cid, car)
    assert json.loads(fetch(cid, tmp_path / "cache", url).stdout).get("ipfs") == cid
    again = json.loads(fetch(cid, tmp_path / "cache", url).stdout)
    assert again["cached"] is True
    assert len(server.hits) == 1


def test_an_altered_block_is_refused_and_the_next_gateway_asked(tmp_path: Path,
                                                                servers) -> None:  # type: ignore[no-untyped-def]
    tree, cid, car = sample(tmp_path)
    bad, good = servers(), servers()
    bad_url = serve_car(bad, cid, altered(car))
    alone = fetch(cid, tmp_path / "cache", bad_url, check=False)
    assert alone.returncode != 0
    assert bad_url in alone.stderr and "does not hash to its CID" in alone.stderr
    assert run_cli("cache", "list", cache=tmp_path / "cache").stdout.count("bt2-") == 0
    result = json.loads(fetch(cid, tmp_path / "cache", bad_url, serve_car(good, cid, car)).stdout)
    assert result["hash"] == run_cli("hash", str(tree)).stdout.strip()


def test_missing_block_and_wrong_root_are_errors_naming_the_gateway(tmp_path: Path,
                                                                    servers) -> None:  # type: ignore[no-untyped-def]
    _, cid, car = sample(tmp_path)
    # cut the CAR before its last section: a block is missing
    n, pos = read_varint(car, 0)
    pos += n
    last = pos
    while pos < len(car):
        last = pos
        n, start = read_varint(car, pos)
        pos = start + n
    short, other = servers(), servers()
    short_url = serve_car(short, cid, car[:last])
    proc = fetch(cid, tmp_path / "cache", short_url, check=False)
    assert proc.returncode != 0 and short_url in proc.stderr and "ended without block" in proc.stderr
    # a CAR of another DAG served under this CID
    other_tree = make_tree(tmp_path / "other", {"x": b"something else"})
    other_car = tmp_path / "other.car"
    reference_cid(other_tree, other_car)
    other_url = serve_car(other, cid, other_car.read_bytes())
    proc = fetch(cid, tmp_path / "cache", other_url, check=False)
    assert proc.returncode != 0 and other_url in proc.stderr and "not the CID asked for" in proc.stderr


def test_hostile_names_are_refused(tmp_path: Path, server: Server) -> None:
    """A directory node naming '..' (a real, correctly hashed block) never leaves the work dir."""
    from treeseed.car import car_header, section
    from treeseed.unixfs import T_DIRECTORY, Link, cid_text, encode_node, pb_cid, raw_cid, unixfs_data

    leaf = b"escape"
    for name in (b"..", b"a/b", b"nul\0"):
        block = encode_node([Link(raw_cid(leaf), name, len(leaf))], unixfs_data(T_DIRECTORY))
        root = pb_cid(block)
        body = car_header(root) + section(root, block) + section(raw_cid(leaf), leaf)
        url = serve_car(server, cid_text(root), body)
        proc = fetch(cid_text(root), tmp_path / "cache", url, check=False)
        assert proc.returncode != 0, name
        assert "is not allowed" in proc.stderr or "inside one name" in proc.stderr, proc.stderr
        assert not (tmp_path / "escape").exists()
