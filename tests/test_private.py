"""Private dependencies are never looked up, announced or published, however they are private:
a consumer's dependency entry (``private = true``), the ``private`` setting by hash, or by a
name (the dependency's key, or the package's own ``[package] name``).

The witnesses are real: a recording HTTP tracker and a libtorrent DHT node on loopback that
every treeseed session bootstraps from. Each test first shows the witnesses do see an ordinary
package's lookup, so "no query seen" cannot pass by deafness.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from httpserver import Reply, Server, closed_port
from swarmkit import DhtRouter, RecordingTracker, cached, small_tree
from waiting import wait_for

from treeseed.cache import Cache
from treeseed.fetch import hash_path


def bt2_of(tree: Path, tmp: Path) -> str:
    cache = Cache(tmp / "hash-cache")
    try:
        return hash_path(tree, cache, []).hashes["bt2"]
    finally:
        cache.close()


def dependency(name: str, url: str, package_hash: str, private: bool = False) -> str:
    return (f'\n[dependencies.{name}]\nurl = "{url}"\nhash = "{package_hash}"\n'
            + ("private = true\n" if private else ""))


def app_with(root: Path, *deps: str) -> Path:
    root.mkdir(parents=True)
    (root / "treeseed.toml").write_text('[package]\nname = "app"\n' + "".join(deps))
    return root


def looked_up(tracker: RecordingTracker, router: DhtRouter, package_hash: str) -> bool:
    return bool(tracker.announces(package_hash)) and bool(router.saw("get_peers", package_hash))


def test_private_dependencies_are_never_looked_up(tmp_path: Path, nodes, tracker: RecordingTracker,
                                                  dht_router: DhtRouter) -> None:
    """Three private dependencies (entry, setting by hash, setting by key) and one public one,
    all with their origin down: the public one is asked of the tracker and the DHT, the private
    ones of neither, and their errors say why the swarm was not asked."""
    trees = {n: small_tree(tmp_path / f"src-{n}", f"pkg-{n}") for n in
             ("entry", "by-hash", "by-key", "public")}
    hashes = {n: bt2_of(t, tmp_path) for n, t in trees.items()}
    down = f"http://127.0.0.1:{closed_port()}"
    b = nodes("b", dht=True, dht_bootstrap=[dht_router.node], trackers=[tracker.announce_url],
              private=[hashes["by-hash"], "by-key"])
    app = app_with(tmp_path / "app",
                   dependency("entry", f"{down}/entry.tar.gz", hashes["entry"], private=True),
                   dependency("secret", f"{down}/by-hash.tar.gz", hashes["by-hash"]),
                   dependency("by-key", f"{down}/by-key.tar.gz", hashes["by-key"]))
    failed = b.run("fetch", "--torrent", cwd=app, check=False,
                   env={"TREESEED_SWARM_STALL": "600"})
    assert failed.returncode == 1, failed.stderr
    assert "entry is private (its dependency entry says private = true)" in failed.stderr
    assert "secret is private (the 'private' setting)" in failed.stderr
    assert "by-key is private (the 'private' setting names by-key)" in failed.stderr
    assert cached(b) == set()

    # The witnesses hear an ordinary dependency's lookup (the fetch is stopped once they do).
    public_app = app_with(tmp_path / "public-app",
                          dependency("public", f"{down}/public.tar.gz", hashes["public"]))
    proc = subprocess.Popen([sys.executable, "-m", "treeseed", "--cache-dir", str(b.cache),
                             "fetch", "--torrent"], cwd=public_app, env=b.env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for("the public dependency's lookup at the tracker and the DHT node",
                 lambda: looked_up(tracker, dht_router, hashes["public"]), timeout=120)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    for name in ("entry", "by-hash", "by-key"):
        assert tracker.announces(hashes[name]) == [], name
        assert dht_router.mentions(hashes[name]) == [], name


def test_private_dependencies_are_never_published(tmp_path: Path, nodes, server: Server,
                                                  tracker: RecordingTracker) -> None:
    """Fetched from their origin, packages private by the consumer's entry or by their own
    ``[package] name`` in the ``private`` setting are not seeded; a public one is announced."""
    urls, hashes = {}, {}
    for name in ("entry", "named", "public"):
        tree = small_tree(tmp_path / f"src-{name}", f"pkg-{name}")
        archive = tmp_path / f"{name}.tar"
        subprocess.run(["tar", "-cf", str(archive), "-C", str(tree), "."], check=True)
        server.routes[f"/{name}.tar"] = Reply(200, archive.read_bytes(),
                                              {"Content-Type": "application/x-tar"})
        urls[name], hashes[name] = server.url(f"/{name}.tar"), bt2_of(tree, tmp_path)
    b = nodes("b", trackers=[tracker.announce_url], private=["pkg-named"])
    app = app_with(tmp_path / "app",
                   dependency("entry", urls["entry"], hashes["entry"], private=True),
                   dependency("named", urls["named"], hashes["named"]),
                   dependency("public", urls["public"], hashes["public"]))
    b.run("fetch", "--no-torrent", cwd=app)
    assert cached(b) == set(hashes.values())
    status = b.start_seeder()
    wait_for("the public package's announce", lambda: tracker.announces(hashes["public"]))
    assert {p["hash"] for p in status["packages"]} == {hashes["public"]}
    assert status["skipped_private"] == 2
    assert tracker.announces(hashes["entry"]) == []
    assert tracker.announces(hashes["named"]) == []


def test_local_packages_are_published_only_when_shared(tmp_path: Path, nodes,
                                                      tracker: RecordingTracker) -> None:
    """A package fetched from a local path (it may be a home directory) is not seeded until
    the user shares it; then it is."""
    a = nodes("a", trackers=[tracker.announce_url])
    local = a.run("fetch", str(small_tree(tmp_path / "src", "mine"))).stdout.split()[0]
    status = a.start_seeder()
    assert status["packages"] == [] and status["skipped_private"] == 1
    assert "came only from this machine" in a.log.read_text()
    a.stop_seeder()
    a.run("seed", "--share", local)
    status = a.start_seeder()
    assert [p["hash"] for p in status["packages"]] == [local]
    wait_for("the shared package's announce", lambda: tracker.announces(local))


def test_fetch_url_with_hash_uses_mirrors_and_swarm_when_the_origin_is_down(
        tmp_path: Path, nodes) -> None:
    """``treeseed fetch URL --hash H --torrent`` is had like any pinned package: with its URL
    unreachable, a peer seeding H delivers it."""
    a = nodes("a")
    package_hash = a.install(small_tree(tmp_path / "src", "lib"))
    a.start_seeder()
    b = nodes("b", peers=[a.peer])
    down = f"http://127.0.0.1:{closed_port()}/lib.tar.gz"
    out = b.run("fetch", down, "--hash", package_hash, "--torrent", "--json").stdout
    assert package_hash in out and '"source": "swarm"' in out
    assert cached(b) == {package_hash}
