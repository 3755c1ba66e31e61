"""``treeseed fetch ipfs://<cid>`` when no gateway has the package: the ``ipfs`` alias every
seeder publishes in the DHT names its bt2 hash, the package comes from a treeseed peer, and
its tree is hashed as UnixFS before it is installed (src/treeseed/locate.py,
``obtain_by_cid``).

Everything runs on 127.0.0.1: a loopback DHT (``dht_router``), caches with explicit ports, and
as the only IPFS gateway a port nothing listens on. Waits poll the seeder's log, bounded.
"""

from __future__ import annotations

import json
from pathlib import Path

from swarmkit import cached, dht_settings, free_port, plant_a_wrong_hint, small_tree, wait_published

from treeseed.cache import Cache
from treeseed.hashing import hash_tree
from treeseed.package import scan_tree


def test_fetch_ipfs_url_finds_the_package_among_treeseed_peers(tmp_path: Path, nodes,  # type: ignore[no-untyped-def]
                                                               dht_router) -> None:
    a = nodes("a", **dht_settings(dht_router.node))
    package = a.install(small_tree(tmp_path / "src", "by-cid", size=100_000))
    cid = hash_tree(a.package(package), scan_tree(a.package(package), package), ["ipfs"])["ipfs"]
    a.start_seeder()
    wait_published(a, "ipfs", cid)

    # With the DHT off, the error names each gateway's failure and says the DHT was not asked.
    dead = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    c = nodes("c", ipfs_gateways=dead)
    refused = c.run("fetch", f"ipfs://{cid}", check=False, timeout=180)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert all(f"gateway {url}" in refused.stderr for url in dead), refused.stderr
    assert "the DHT: not asked (torrenting or the DHT is off)" in refused.stderr
    assert cached(c) == set()

    # B's only gateway is dead; the DHT names A's package, A seeds it, B checks its CID.
    b = nodes("b", ipfs_gateways=dead[:1], **dht_settings(dht_router.node))
    got = json.loads(b.fetch(f"ipfs://{cid}", "--json", timeout=180).stdout)
    assert got["hash"] == package and got["cached"] is False
    assert cached(b) == {package}
    # the CID was recorded once checked: the next fetch (a bare CID) is answered by the index
    index = Cache(b.cache)
    try:
        assert index.resolve("ipfs", cid) == package
    finally:
        index.close()
    again = json.loads(b.fetch(cid, "--json", timeout=180).stdout)
    assert again["hash"] == package and again["cached"] is True and again.get("ipfs") == cid

    # treeseed add takes the same way: D, whose gateway is dead too, adds the package by CID.
    d = nodes("d", ipfs_gateways=dead[:1], **dht_settings(dht_router.node))
    project = tmp_path / "project"
    project.mkdir()
    (project / "treeseed.toml").write_text('[package]\nname = "app"\n')
    d.run("-C", str(project), "add", f"ipfs://{cid}", "--torrent", timeout=180)
    manifest = (project / "treeseed.toml").read_text()
    assert f'url = "ipfs://{cid}"' in manifest and package in manifest, manifest
    assert cached(d) == {package}


def test_a_wrong_ipfs_hint_in_the_dht_installs_nothing(tmp_path: Path, nodes,  # type: ignore[no-untyped-def]
                                                       dht_router) -> None:
    """Anyone can write an alias item: one naming A's package for another tree's CID makes
    B fetch A's package by its bt2 hash, hash it as UnixFS, find another CID, and refuse it."""
    seeded, wanted = plant_a_wrong_hint(tmp_path, nodes, dht_router, "ipfs")
    b = nodes("b", ipfs_gateways=[f"http://127.0.0.1:{free_port()}"], **dht_settings(dht_router.node))
    refused = b.fetch(f"ipfs://{wanted}", check=False, timeout=180)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "the DHT hint was wrong" in refused.stderr and seeded in refused.stderr
    assert "nothing was installed" in refused.stderr and cached(b) == set()
