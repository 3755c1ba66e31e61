"""``treeseed serve`` as a trustless gateway: a real server on 127.0.0.1, CARs checked block
by block, CIDs from the real importer, treeseed's own ipfs:// source fetching through it, and
a real IPFS client (@helia/verified-fetch, tests/node/verified_fetch.mjs) fetching a file by
CID with the server as its only gateway, and refusing it when a proxy alters one byte."""

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


def get(url: str, path: str, headers: dict[str, str] | None = None
        ) -> tuple[int, dict[str, str], bytes]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
    try:
        conn.request("GET", path, headers=headers or {})
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


def test_the_accept_header_chooses_the_format(tmp_path: Path, mirror) -> None:  # type: ignore[no-untyped-def]
    """Real clients ask with ``Accept`` alone; ``?format=`` wins when both are given."""
    _, url = mirror
    tree = tmp_path / "shared"
    dag = package_dag(tree, scan_tree(tree, "shared"))
    readme = cid_text(dag.paths["README"])
    status, headers, body = get(url, f"/ipfs/{readme}", {"Accept": "application/vnd.ipld.raw"})
    assert (status, headers["content-type"], body) == (200, "application/vnd.ipld.raw", b"served\n")
    assert headers["vary"] == "Accept"
    root = cid_text(dag.root)
    car = "application/vnd.ipld.car; version=1; order=dfs; dups=y"
    status, headers, body = get(url, f"/ipfs/{root}", {"Accept": car})
    assert status == 200 and headers["content-type"].startswith("application/vnd.ipld.car")
    assert set(read_car(body)[1]) == set(dag.nodes) | set(dag.leaves)
    status, headers, _ = get(url, f"/ipfs/{readme}?format=car", {"Accept": "application/vnd.ipld.raw"})
    assert headers["content-type"].startswith("application/vnd.ipld.car")
    preferred = "application/vnd.ipld.raw;q=0.4, application/vnd.ipld.car;q=0.9"
    assert get(url, f"/ipfs/{readme}", {"Accept": preferred})[1]["content-type"].startswith(
        "application/vnd.ipld.car")
    for refused in ("text/html", "application/vnd.ipld.car; version=2", "application/vnd.ipld.raw;q=0"):
        assert get(url, f"/ipfs/{readme}", {"Accept": refused})[0] == 404, refused


class Tamperer:
    """A proxy in front of ``treeseed serve`` that flips the last byte of every raw-leaf block
    it relays (a ``bafk...`` CID), and relays everything else as it is: a hostile gateway
    whose directory nodes are right and whose file contents are not."""

    def __init__(self, upstream: str) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        host, port = upstream.removeprefix("http://").split(":")

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
                try:
                    conn.request("GET", self.path, headers={"Accept": self.headers.get("Accept", "")})
                    resp = conn.getresponse()
                    body = resp.read()
                finally:
                    conn.close()
                if self.path.startswith("/ipfs/bafk") and body:
                    body = body[:-1] + bytes([body[-1] ^ 1])
                self.send_response(resp.status)
                self.send_header("Content-Type", resp.getheader("Content-Type", ""))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def verified_fetch(gateway: str, path: str, out: Path) -> tuple[subprocess.CompletedProcess, dict]:
    """Run the real client (tests/node/verified_fetch.mjs) with ``gateway`` as its only
    gateway; (the process, the JSON it printed: connections made, status, bytes)."""
    proc = subprocess.run(["node", str(require_node() / "verified_fetch.mjs"), gateway, path, str(out)],
                          capture_output=True, text=True, timeout=TIMEOUT * 3,
                          env={**os.environ, "NODE_NO_WARNINGS": "1",
                               "DEBUG": "helia:trustless-gateway*:error"})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"verified_fetch.mjs printed no result ({proc.returncode}):\n{proc.stderr}"
    return proc, json.loads(lines[-1])


def test_a_real_ipfs_client_fetches_a_file_through_treeseed_serve(tmp_path: Path, mirror) -> None:  # type: ignore[no-untyped-def]
    """@helia/verified-fetch, with ``treeseed serve`` as its only gateway (and only router:
    no libp2p, no delegated routing), fetches a 3-block file of a shared package by the
    package's CID and a path, checking every block; it connects to nothing but that port."""
    require_node()
    _, url = mirror
    tree = tmp_path / "shared"
    cid = cid_text(package_dag(tree, scan_tree(tree, "shared")).root)
    for name in ("big.bin", "sub/dir/file.txt"):
        out = tmp_path / "got"
        proc, result = verified_fetch(url, f"{cid}/{name}", out)
        assert proc.returncode == 0, proc.stderr
        assert out.read_bytes() == (tree / name).read_bytes(), name
        port = url.rsplit(":", 1)[1]
        assert result["connections"] and result["refused"] == []
        assert set(result["connections"]) <= {f"127.0.0.1:{port}", f"localhost:{port}"}, result


def test_a_real_ipfs_client_refuses_a_tampered_block(tmp_path: Path, mirror) -> None:  # type: ignore[no-untyped-def]
    require_node()
    _, url = mirror
    tree = tmp_path / "shared"
    cid = cid_text(package_dag(tree, scan_tree(tree, "shared")).root)
    tamperer = Tamperer(url)
    try:
        out = tmp_path / "got"
        proc, result = verified_fetch(tamperer.url, f"{cid}/README", out)
    finally:
        tamperer.close()
    assert proc.returncode != 0 and result["status"] != 200, (proc.stdout, proc.stderr)
    assert "did not match" in proc.stderr  # the client's own CID check refused the block
    assert not out.exists()
