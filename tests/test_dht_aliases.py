"""Aliases in the DHT (src/treeseed/swarm/aliases.py): a seeder publishes each package's other
hashes (zig, NAR, git tree, Nix store path) as BEP 44 items under a published key, and a cache
with nothing but the DHT finds, fetches and verifies a package by any of them.

Everything runs on 127.0.0.1: explicit ports, UPnP/NAT-PMP/LSD off, a DHT bootstrapped only
from the loopback ``dht_router``. Waits poll the seeder's log or the DHT's alerts, bounded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from swarmkit import (
    cached,
    dht_settings,
    free_port,
    other_hashes,
    plant_a_wrong_hint,
    small_tree,
    wait_published,
)

from treeseed.hashing import hash_tree
from treeseed.package import scan_tree
from treeseed.swarm import aliases


def test_published_key_pair_matches_its_seed() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    public = Ed25519PrivateKey.from_private_bytes(aliases.SEED).public_key()
    assert public.public_bytes(Encoding.Raw, PublicFormat.Raw) == aliases.PUBLIC_KEY
    # libtorrent signs with the expanded secret key: SHA-512 of the seed, clamped.
    expanded = bytearray(hashlib.sha512(aliases.SEED).digest())
    expanded[0] &= 248
    expanded[31] = (expanded[31] & 63) | 64
    assert bytes(expanded) == aliases.SECRET_KEY


def test_salts_and_values_keep_bep44_limits() -> None:
    from treeseed.hashing.bencode import bencode

    package = "bt2-" + "ab" * 32
    assert len(bencode(aliases.item_value(package))) <= aliases.MAX_VALUE
    assert aliases.salt("nar", "sha256-x") == b"nar:sha256-x"
    long = aliases.salt("archive-sha256", "c" * 64)
    assert len(long) <= aliases.MAX_SALT and long.startswith(b"archive-sha256#")
    assert aliases.salt("zig", "1220" + "a" * 64) != aliases.salt("zig", "1220" + "b" * 64)
    assert aliases.parse_value(package.encode()) == package
    assert aliases.parse_value(b"anything else") is None


@pytest.mark.skipif(shutil.which("nix-store") is None, reason="nix-store (Debian nix-bin) missing")
def test_store_path_hash_matches_nix_store(tmp_path: Path) -> None:
    from treeseed.hashing.nar import parse_nix_hash, store_path_hash

    tree = small_tree(tmp_path / "source", "stored")
    (tree / "bin").mkdir()
    (tree / "bin" / "run").write_text("#!/bin/sh\n")
    os.chmod(tree / "bin" / "run", 0o755)
    os.symlink("bin/run", tree / "link")
    conf = tmp_path / "nix-conf"
    conf.mkdir()
    (conf / "nix.conf").write_text(f"store = {tmp_path / 'nix-store'}\n")
    proc = subprocess.run(["nix-store", "--add-fixed", "--recursive", "sha256", str(tree)],
                          capture_output=True, text=True, timeout=300, check=True,
                          env={**os.environ, "NIX_CONF_DIR": str(conf),
                               "HOME": str(tmp_path / "home")})
    printed = proc.stdout.strip()
    nar = hash_tree(tree, scan_tree(tree, "t"), ["nar"])["nar"]
    assert printed == f"/nix/store/{store_path_hash(parse_nix_hash(nar))}-source"
    assert aliases.parse_hash(printed) == ("nix-store", printed[11:43])


def test_fetch_by_nar_and_zig_hash_through_the_dht(tmp_path: Path, nodes, dht_router) -> None:
    a = nodes("a", **dht_settings(dht_router.node))
    package = a.install(small_tree(tmp_path / "src", "aliased", size=100_000))
    hashes = other_hashes(a.package(package), package)
    a.start_seeder()
    wait_published(a, "nar", hashes["nar"])
    wait_published(a, "zig", hashes["zig"])

    # B and C have no peers and no mirror: only the DHT names the package, and A seeds it.
    for name, fmt in (("b", "nar"), ("c", "zig")):
        node = nodes(name, **dht_settings(dht_router.node))
        out = node.fetch(hashes[fmt], "--json", timeout=180)
        assert f'"hash": "{package}"' in out.stdout, out.stdout
        assert cached(node) == {package}
        assert other_hashes(node.package(package), package)[fmt] == hashes[fmt]


def test_a_wrong_dht_hint_never_reaches_the_cache(tmp_path: Path, nodes, dht_router) -> None:
    """No seeder in B: the download runs in this process, and every rename into B's ``p/``
    is seen (the ``os.rename`` audit event). The hint is checked before the install, so the
    wrong package never appears in B's cache, not even for a moment."""
    import sys

    from treeseed.cache import Cache
    from treeseed.config import Settings
    from treeseed.errors import TreeseedError
    from treeseed.locate import obtain_by_alias

    seeded, wanted = plant_a_wrong_hint(tmp_path, nodes, dht_router)
    b = nodes("b", **dht_settings(dht_router.node))
    packages = str(b.cache / "p")
    renamed: list[str] = []
    watching = [True]

    def audit(event: str, args: tuple) -> None:
        if watching[0] and event == "os.rename" and str(args[1]).startswith(packages):
            renamed.append(str(args[1]))

    sys.addaudithook(audit)  # cannot be removed: ``watching`` turns it off after the test
    cache = Cache(b.cache)
    try:
        settings = Settings({**Settings.defaults().values, **b.settings}, frozenset())
        with pytest.raises(TreeseedError) as refused:
            obtain_by_alias(cache, "nar", wanted, settings)
    finally:
        watching[0] = False
        cache.close()
    assert "the DHT hint was wrong" in str(refused.value) and seeded in str(refused.value)
    assert "nothing was installed" in str(refused.value)
    assert renamed == [] and cached(b) == set()


def test_a_wrong_dht_hint_is_caught_by_the_seeder_before_it_installs(tmp_path: Path, nodes,
                                                                     dht_router) -> None:
    """B's seeder downloads for B's fetch: the check goes with the request, so the seeder
    refuses the tree before its install, and never starts seeding it."""
    seeded, wanted = plant_a_wrong_hint(tmp_path, nodes, dht_router)
    b = nodes("b", **dht_settings(dht_router.node))
    b.start_seeder()
    refused = b.fetch(wanted, check=False, timeout=180)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "the DHT hint was wrong" in refused.stderr and seeded in refused.stderr
    assert "nothing was installed" in refused.stderr
    assert cached(b) == set()
    status = b.status()
    assert status is not None and seeded not in {p["hash"] for p in status["packages"]}


@pytest.mark.skipif(importlib.util.find_spec("ziglang") is None,
                    reason="pip package ziglang (0.15.2) is not installed")
def test_zig_fetch_finds_a_dependency_by_its_zig_hash_in_the_dht(tmp_path: Path, nodes,
                                                                 dht_router) -> None:
    from zigkit import GAMMA_BUILD, dep_entry, manifest, zig

    a = nodes("a", **dht_settings(dht_router.node))
    src = tmp_path / "gamma"
    src.mkdir()
    (src / "build.zig").write_bytes(GAMMA_BUILD)
    (src / "build.zig.zon").write_bytes(manifest("gamma", '"build.zig", "build.zig.zon", "g.txt"'))
    (src / "g.txt").write_text("from gamma\n")
    package = a.install(src)
    zig_hash = other_hashes(a.package(package), package)["zig"]
    a.start_seeder()
    wait_published(a, "zig", zig_hash)

    project = tmp_path / "proj"
    project.mkdir()
    (project / "build.zig").write_bytes(
        b'const std = @import("std");\npub fn build(b: *std.Build) void {\n'
        b'    const gamma = b.dependency("gamma", .{});\n'
        b'    b.getInstallStep().dependOn(&b.addInstallFile(gamma.path("g.txt"), "g.txt").step);\n}\n')
    dead = f"http://127.0.0.1:{free_port()}/gamma.tar.gz"  # nothing listens there
    (project / "build.zig.zon").write_bytes(manifest("proj", deps=dep_entry("gamma", dead, zig_hash)))
    env = {"HOME": str(tmp_path / "home"), "ZIG_GLOBAL_CACHE_DIR": str(tmp_path / "zig-global"),
           "ZIG_LOCAL_CACHE_DIR": str(tmp_path / "zig-local")}
    c = nodes("c", **dht_settings(dht_router.node))
    c.run("zig", "fetch", "-C", str(project), "--torrent", "--zig-version", "0.15", env=env,
          timeout=300)
    assert cached(c) == {package}
    built = zig("build", cwd=project, env=env)
    assert built.returncode == 0, built.stderr
    assert (project / "zig-out" / "g.txt").read_text() == "from gamma\n"
