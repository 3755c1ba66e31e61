"""``treeseed serve`` as a trustless gateway: a real server on 127.0.0.1, CARs checked block
by block, CIDs from the real importer, and treeseed's own ipfs:// source fetching through it."""

from __future__ import annotations

import http.client
import io
import json
import os
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import make_tree, run_cli
from ipfskit import reference_cid, require_node

from treeseed.car import CarReader
from treeseed.hashing.ipfs import package_dag
from treeseed.package import scan_tree
from treeseed.unixfs import cid_text

TIMEOUT = 120


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A cache holding one shared package and one unshared (local, so not served) package,
    and a running ``treeseed serve`` of it: (cache, URL)."""
    cache = tmp_path / "cache"
    shared = make_tree(tmp_path / "shared", {
        "README": b"served\n", "src/a.c": b"int a;\n", "big.bin": os.urandom(2 * (1 << 20) + 5),
        "sub/dir/file.txt": b"inside\n", "link": ("link", "README")})
    hidden = make_tree(tmp_path / "hidden", {"secret.txt": b"never served\n"})
    package = run_cli("fetch", str(shared), cache=cache).stdout.split("\t", 1)[0]
    run_cli("seed", "--share", package, cache=cache)
    run_cli("fetch", str(hidden), cache=cache)
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "treeseed", "--cache-dir", str(cache), "serve",
                             "--bind", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=log)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT)
        assert ready, "treeseed serve printed nothing"
        yield cache, proc.stdout.readline().decode().strip().rsplit(" ", 1)[1]
    finally:
        proc.terminate()
        proc.wait(timeout=TIMEOUT)
        log.close()


def get(url: str, path: str) -> tuple[int, dict[str, str], bytes]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def read_car(body: bytes) -> tuple[list[bytes], dict[bytes, bytes]]:
    reader = CarReader(io.BytesIO(body), "treeseed serve")
    return reader.roots(), dict(reader.blocks())


def test_car_of_a_package_root_and_fetch_through_it(tmp_path: Path, mirror) -> None:  # type: ignore[no-untyped-def]
    require_node()
    cache, url = mirror
    cid = reference_cid(tmp_path / "shared")
    status, headers, body = get(url, f"/ipfs/{cid}?format=car")
    assert status == 200, body
    assert headers["content-type"].startswith("application/vnd.ipld.car; version=1")
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-ipfs-roots"] == cid
    assert "immutable" in headers["cache-control"]
    roots, blocks = read_car(body)  # every block checked against its CID
    assert [cid_text(r) for r in roots] == [cid]
    tree = tmp_path / "shared"
    dag = package_dag(tree, scan_tree(tree, "shared"))
    assert set(blocks) == set(dag.nodes) | set(dag.leaves)
    # treeseed's own ipfs:// source, with this mirror as its only gateway
    run_cli("config", "set", "ipfs_gateways", url)
    got = json.loads(run_cli("fetch", f"ipfs://{cid}", "--json", cache=tmp_path / "other").stdout)
    assert got["hash"] == run_cli("hash", str(tree)).stdout.strip()


def test_sub_directory_file_and_single_blocks(tmp_path: Path, mirror) -> None:  # type: ignore[no-untyped-def]
    _, url = mirror
    tree = tmp_path / "shared"
    dag = package_dag(tree, scan_tree(tree, "shared"))
    sub = cid_text(dag.paths["sub"])
    status, _, body = get(url, f"/ipfs/{sub}?format=car")
    assert status == 200
    roots, blocks = read_car(body)
    assert cid_text(roots[0]) == sub and len(blocks) == 3  # sub, sub/dir, the file's leaf
    status, headers, body = get(url, f"/ipfs/{cid_text(dag.paths['README'])}?format=raw")
    assert status == 200 and body == b"served\n"
    assert headers["content-type"] == "application/vnd.ipld.raw"
    big = dag.paths["big.bin"]
    status, _, body = get(url, f"/ipfs/{cid_text(big)}?format=car&dag-scope=block")
    roots, blocks = read_car(body)
    assert list(blocks) == [big]
    status, _, body = get(url, f"/ipfs/{cid_text(big)}?format=car")
    assert sum(len(b) for c, b in read_car(body)[1].items() if c != big) == 2 * (1 << 20) + 5


def test_unshared_packages_and_unknown_cids_are_absent(tmp_path: Path, mirror) -> None:  # type: ignore[no-untyped-def]
    _, url = mirror
    hidden = tmp_path / "hidden"
    dag = package_dag(hidden, scan_tree(hidden, "hidden"))
    for cid in (dag.root, dag.paths["secret.txt"]):
        for fmt in ("car", "raw"):
            status, _, _ = get(url, f"/ipfs/{cid_text(cid)}?format={fmt}")
            assert status == 404
    assert get(url, "/ipfs/not-a-cid?format=car")[0] == 404
