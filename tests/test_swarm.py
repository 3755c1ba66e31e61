"""The swarm, for real: ``treeseed seed`` and ``treeseed fetch`` processes, each cache with a
settings file of its own, talking BitTorrent v2 over 127.0.0.1 through libtorrent.

Nothing leaves the machine. Every settings file written here listens on 127.0.0.1 with a port
picked by binding port 0, turns LSD, UPnP and NAT-PMP off, and either turns the DHT off or
bootstraps it from a DHT node this test runs on loopback (never libtorrent's public default).
The libtorrent sessions the tests open themselves (a DHT router, a probing peer) follow the
same rules. Peers are found three ways: a static peer, a local DHT of three nodes, and a real
opentracker (Debian's, whitelist mode). Witnesses are real too: the DHT router's own alerts for
incoming announces and lookups, opentracker's scrape counts, an HTTP tracker that records every
announce, and an origin server that records whether its one download ran to the end.

Waits are polls bounded by a generous timeout; no assertion is about elapsed time. Where a test
asserts that something does not happen (a private package's metadata, a download), its window
is at least as long again as the same thing took for a public package in that test, so a
loaded machine widens the window instead of failing the test.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from helpers import make_tree, tar_gz
from httpserver import LoopbackServer, closed_port
from swarmkit import (
    LOCAL_DHT,
    DhtRouter,
    Node,
    RecordingTracker,
    alive,
    cached,
    free_port,
    lt_session,
    small_tree,
    snapshot,
)
from waiting import wait_for

from treeseed.cache import Cache
from treeseed.hashing.bencode import bdecode, bencode
from treeseed.ids import hex_of

PIECE = 256 * 1024


# --------------------------------------------------------------------------- packages


def rich_tree(root: Path) -> Path:
    """Exec bits, symlinks (one dangling, one to a directory, one upwards), an empty file, and
    files of several pieces: 3 pieces + a tail, exactly 2 pieces, one block."""
    return make_tree(root, {
        "big.bin": os.urandom(3 * PIECE + 12345),
        "sub/mid.bin": os.urandom(2 * PIECE),
        "run.sh": ("x", b"#!/bin/sh\necho hello\n"),
        "empty": b"",
        "sub/deep/a.txt": b"a\n",
        "sub/deep/up": ("link", "../mid.bin"),
        "link": ("link", "sub/deep/a.txt"),
        "dangling": ("link", "nowhere"),
        "dirlink": ("link", "sub/deep"),
    })


def one_file_tree(root: Path) -> Path:
    """A package whose only entry is one top-level file (libtorrent stores it outside the
    torrent's directory), of more than one piece."""
    return make_tree(root, {"only.bin": os.urandom(PIECE + 1000)})


def assert_same_package(a: Node, b: Node, package_hash: str) -> None:
    assert snapshot(b.package(package_hash)) == snapshot(a.package(package_hash))
    cache = Cache(b.cache)
    try:
        assert list(cache.verify([package_hash])) == [(package_hash, None)]
    finally:
        cache.close()


def corrupt_in_place(path: Path) -> None:
    """Change bytes in every piece of a file, keeping its size."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        for offset in range(0, size, PIECE):
            f.seek(offset)
            original = f.read(64)
            f.seek(offset)
            f.write(bytes(b ^ 0xFF for b in original))
    assert path.stat().st_size == size


def leftovers(node: Node) -> list[str]:
    tmp = node.cache / "tmp"
    return os.listdir(tmp) if tmp.exists() else []


# --------------------------------------------------------------------------- witnesses


class _SlowHandler(BaseHTTPRequestHandler):
    """Serves one archive slowly, one 64 KiB piece per ``pause``, and records for each request
    whether it ran to the end or the client went away first."""

    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        srv = self.server
        if self.path != srv.path:  # type: ignore[attr-defined]
            self.send_error(404)
            return
        srv.events.append("start")  # type: ignore[attr-defined]
        body = srv.body  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            chunk = srv.chunk  # type: ignore[attr-defined]
            for start in range(0, len(body), chunk):
                self.wfile.write(body[start:start + chunk])
                self.wfile.flush()
                time.sleep(srv.pause)  # type: ignore[attr-defined]
        except (BrokenPipeError, ConnectionResetError):
            srv.events.append("aborted")  # type: ignore[attr-defined]
            return
        srv.events.append("done")  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: object) -> None:
        pass


class Origin(LoopbackServer):
    """The origin of one archive, at full speed or slowed down (``pause`` per ``chunk`` bytes)."""

    def __init__(self, body: bytes, pause: float = 0.0, path: str = "/pkg-1.0.tar.gz",
                 chunk: int = 1 << 16) -> None:
        super().__init__(_SlowHandler)
        self.httpd.body, self.httpd.pause, self.httpd.path = body, pause, path  # type: ignore[attr-defined]
        self.httpd.chunk = chunk  # type: ignore[attr-defined]
        self.httpd.events = []  # type: ignore[attr-defined]
        self.start()

    @property
    def events(self) -> list[str]:
        return list(self.httpd.events)  # type: ignore[attr-defined]

    @property
    def package_url(self) -> str:
        return self.url(self.httpd.path)  # type: ignore[attr-defined]


def archive_package(tmp: Path, size: int = 3 * PIECE) -> tuple[bytes, Path, str]:
    """A .tar.gz of a package (random data, so it stays near ``size`` compressed), the archive
    on disk, and its bt2 hash."""
    from treeseed.fetch import hash_path

    body = tar_gz({"blob.bin": os.urandom(size), "README": b"race\n"}, "pkg-1.0")
    archive = tmp / "pkg-1.0.tar.gz"
    archive.write_bytes(body)
    cache = Cache(tmp / "hash-cache")
    try:
        return body, archive, hash_path(archive, cache, []).hashes["bt2"]
    finally:
        cache.close()


def project(root: Path, url: str, package_hash: str, name: str = "pkg") -> Path:
    """A package depending on one pinned dependency."""
    root.mkdir(parents=True)
    (root / "treeseed.toml").write_text(
        f'[package]\nname = "app"\n\n[dependencies.{name}]\nurl = "{url}"\nhash = "{package_hash}"\n')
    return root


@pytest.fixture
def opentracker(tmp_path: Path) -> Iterator[Callable[[list[str]], str]]:
    """Start Debian's opentracker on loopback with a whitelist of packages (the first 40 hex of
    each hash: what v1-era trackers know a v2 torrent by); returns its announce URL."""
    exe = shutil.which("opentracker")
    if exe is None:
        pytest.skip("opentracker is not installed (Debian package opentracker)")
    procs: list[subprocess.Popen[bytes]] = []

    def start(hashes: list[str]) -> str:
        directory = tmp_path / f"opentracker-{len(procs)}"
        directory.mkdir()
        directory.chmod(0o755)  # it chroots here and drops to nobody, who must read the list
        whitelist = directory / "whitelist"
        whitelist.write_text("".join(hex_of(h)[:40] + "\n" for h in hashes))
        whitelist.chmod(0o644)
        port = free_port()
        cmd = [exe, "-i", "127.0.0.1", "-p", str(port), "-P", str(port), "-d", str(directory),
               "-w", "whitelist", "-A", "127.0.0.1"]
        if os.geteuid() == 0:
            cmd += ["-u", "nobody"]  # it refuses to run as root otherwise
        with open(tmp_path / f"opentracker-{len(procs)}.log", "wb") as log:
            procs.append(subprocess.Popen(cmd, cwd=directory, stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=log))

        def listening() -> bool:
            assert procs[-1].poll() is None, "opentracker exited"
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_for("opentracker to listen", listening, timeout=120)
        return f"http://127.0.0.1:{port}/announce"

    try:
        yield start
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def scrape(announce_url: str, package_hash: str) -> dict[str, int]:
    """The tracker's counts for a package: complete (seeds), incomplete, downloaded."""
    info_hash = bytes.fromhex(hex_of(package_hash)[:40])
    url = announce_url.replace("/announce", "/scrape") + "?info_hash=" + urllib.parse.quote(info_hash)
    with urllib.request.urlopen(url, timeout=10) as reply:
        files = bdecode(reply.read())[b"files"]
    counts = files.get(info_hash, {})
    return {k.decode(): v for k, v in counts.items()}


def has_torrent_files(node: Node, package_hash: str) -> bool:
    data = (node.cache / "t" / f"{package_hash}.torrent").read_bytes()
    info = bdecode(data)[b"info"]
    return (hashlib.sha256(bencode(info)).hexdigest() == hex_of(package_hash)
            and (node.cache / "t" / f"{package_hash}.leaves").is_file())


# =========================================================================== 1. a static peer


def test_static_peer_delivers_identical_trees_knowing_only_the_hash(tmp_path: Path, nodes) -> None:
    a = nodes("a")
    rich = a.install(rich_tree(tmp_path / "src-rich"))
    single = a.install(one_file_tree(tmp_path / "src-single"))
    status = a.detach_seeder()
    assert {p["hash"] for p in status["packages"]} == {rich, single}

    # The mirror (the only HTTP source B knows) is down, and is tried at once (no head start):
    # its failure must not end the fetch; the bytes can only come from A.
    b = nodes("b", peers=[a.peer], mirrors=[f"http://127.0.0.1:{closed_port()}"])
    for package_hash in (rich, single):
        fetched = b.fetch(package_hash, "--json", env={"TREESEED_SWARM_HEAD_START": "0"})
        result = json.loads(fetched.stdout)
        assert (result["hash"], result["source"], result["cached"]) == (package_hash, "swarm", False)
        assert_same_package(a, b, package_hash)
        assert has_torrent_files(b, package_hash)  # B can seed it at once, without hashing

    tree = snapshot(b.package(rich))
    assert tree["run.sh"][:2] == ("file", True) and tree["big.bin"][:2] == ("file", False)
    assert tree["empty"][2] == 0
    assert tree["dangling"] == ("link", "nowhere") and tree["dirlink"] == ("link", "sub/deep")
    assert tree["sub/deep/up"] == ("link", "../mid.bin")
    assert list(snapshot(b.package(single))) == ["only.bin"]
    assert leftovers(b) == []

    # Fetched again: already cached, no swarm needed.
    again = json.loads(b.fetch(rich, "--json").stdout)
    assert again["cached"] is True


# =========================================================================== 2. a local DHT


def test_local_dht_of_three_nodes(tmp_path: Path, nodes, dht_router: DhtRouter) -> None:
    dht = {"dht": True, "dht_bootstrap": [dht_router.node]}
    a = nodes("a", **dht)
    public = a.install(rich_tree(tmp_path / "src"))
    private = a.install(small_tree(tmp_path / "src-private", "locked", private=True))
    a.start_seeder()
    # A announces once its routing table holds the router: the router's own record of it.
    announce = wait_for("A's DHT announce at the router", lambda: dht_router.saw("announce", public))
    assert announce[0][2] == int(a.peer.rsplit(":", 1)[1])

    b = nodes("b", **dht)  # no peers, no trackers: the DHT is the only way to find A
    b.fetch(public)
    assert_same_package(a, b, public)
    assert dht_router.saw("get_peers", public)

    # B refuses to look up a hash its settings call private: the DHT never hears of it.
    b.configure(private=[private])
    refused = b.fetch(private, check=False, env={"TREESEED_SWARM_STALL": "60"})
    assert refused.returncode == 1
    assert f"{private} is private" in refused.stderr and "never looked up" in refused.stderr
    assert dht_router.mentions(private) == []  # A never announced it, B never asked


def test_session_settings_relax_dht_protections_only_for_local_bootstrap_nodes() -> None:
    from treeseed.config import PUBLIC_DHT_BOOTSTRAP, Settings
    from treeseed.swarm.session import session_settings

    def pack(**values: object) -> dict:
        return session_settings(Settings({**Settings.defaults().values, **values}, frozenset()))

    for local in (["127.0.0.1:6881"], ["localhost:6881", "[::1]:6881"], ["192.168.1.20:6881"],
                  ["10.0.0.1:1", "172.16.0.1:2"]):
        got = pack(dht_bootstrap=local)
        assert {k: got[k] for k in LOCAL_DHT} == LOCAL_DHT, local
        assert got["dht_bootstrap_nodes"] == ",".join(local)
    for public in (PUBLIC_DHT_BOOTSTRAP, ["127.0.0.1:6881", "router.bittorrent.com:6881"],
                   ["8.8.8.8:6881"], []):
        got = pack(dht_bootstrap=public)
        assert not set(LOCAL_DHT) & set(got), public
    # The rest of the pack follows the settings.
    got = pack(listen="127.0.0.1:7001", dht=False, lsd=False, upnp=False, upload_limit=5000)
    assert (got["listen_interfaces"], got["enable_dht"], got["enable_lsd"], got["enable_upnp"],
            got["enable_natpmp"], got["upload_rate_limit"]) == ("127.0.0.1:7001", False, False,
                                                                  False, False, 5000)
    assert got["enable_outgoing_utp"] is False  # loopback: TCP only
    assert pack(listen="0.0.0.0:6881")["enable_outgoing_utp"] is True
    # All on one IP, a loopback DHT would trip libtorrent's per-IP flood guard; a LAN would not.
    loopback = pack(dht_bootstrap=["127.0.0.1:6881", "[::1]:6882"])
    assert loopback["dht_block_ratelimit"] >= 1000
    for other in (["192.168.1.20:6881"], ["127.0.0.1:6881", "10.0.0.1:1"], PUBLIC_DHT_BOOTSTRAP):
        assert "dht_block_ratelimit" not in pack(dht_bootstrap=other), other
    assert got["dht_upload_rate_limit"] == 8000  # a seeder raises it with its packages


# =========================================================================== 3. opentracker


def test_opentracker_whitelist(tmp_path: Path, nodes, opentracker) -> None:
    src = rich_tree(tmp_path / "src")
    secret = small_tree(tmp_path / "src-secret", "secret-lib")
    by_hash = small_tree(tmp_path / "src-by-hash")
    locked = small_tree(tmp_path / "src-locked", "locked", private=True)
    a = nodes("a")
    public, named, hashed, manifest = (a.install(s) for s in (src, secret, by_hash, locked))
    url = opentracker([public, named, hashed, manifest])  # all whitelisted: only A decides
    stranger = "bt2-" + hashlib.sha256(b"not on the list").hexdigest()
    query = "?info_hash=" + urllib.parse.quote(bytes.fromhex(hex_of(stranger)[:40]))
    with urllib.request.urlopen(url + query + "&port=1&left=0&peer_id=-XX0000-000000000000",
                                timeout=10) as reply:
        assert b"failure reason" in reply.read()  # whitelist mode: other torrents are refused
    a.configure(trackers=[url], private=["secret-lib", hashed])
    status = a.start_seeder()
    assert [p["hash"] for p in status["packages"]] == [public]
    wait_for("A's announce at opentracker", lambda: scrape(url, public).get("complete") == 1)

    b = nodes("b", trackers=[url])  # no peers, no DHT: only the tracker knows A
    b.fetch(public)
    assert_same_package(a, b, public)

    # Every private package stays unknown to the tracker, though A announced at the same time.
    for package_hash in (named, hashed, manifest):
        assert scrape(url, package_hash) == {}, package_hash
    # And B, whose settings call one private, never announces interest in it.
    b.configure(trackers=[url], private=[hashed])
    refused = b.fetch(hashed, check=False)
    assert refused.returncode == 1 and "is private" in refused.stderr
    assert scrape(url, hashed) == {}


# =========================================================================== 4. private packages


def test_private_packages_are_never_seeded_nor_looked_up(tmp_path: Path, nodes,
                                                        tracker: RecordingTracker) -> None:
    a = nodes("a")
    public = a.install(small_tree(tmp_path / "src-public", "open-lib"))
    manifest = a.install(small_tree(tmp_path / "src-locked", "locked", private=True))
    named = a.install(small_tree(tmp_path / "src-named", "secret-lib"))
    hashed = a.install(small_tree(tmp_path / "src-hashed"))
    a.configure(private=["secret-lib", hashed], trackers=[tracker.announce_url])
    status = a.start_seeder()
    assert [p["hash"] for p in status["packages"]] == [public]
    assert status["skipped_private"] == 3

    # A peer connected straight to A gets the public package's metadata, and never a private
    # one's: A does not have those torrents at all.
    import libtorrent as lt

    port = int(a.peer.rsplit(":", 1)[1])
    with lt_session() as probe:
        handles = {}
        asked = time.monotonic()
        for package_hash in (public, manifest, named, hashed):
            atp = lt.parse_magnet_uri(f"magnet:?xt=urn:btmh:1220{hex_of(package_hash)}")
            atp.save_path = str(tmp_path / "probe")
            atp.flags &= ~lt.torrent_flags.auto_managed & ~lt.torrent_flags.paused
            handles[package_hash] = probe.add_torrent(atp)
            handles[package_hash].connect_peer(("127.0.0.1", port))
        wait_for("the public package's metadata", lambda: handles[public].status().has_metadata)
        # The same connection attempts, given as long again as the public one needed (at least
        # 2 s more), so a loaded machine lengthens the window too: nothing for the private ones.
        deadline = time.monotonic() + max(2.0, time.monotonic() - asked)
        while time.monotonic() < deadline:
            assert not any(handles[h].status().has_metadata for h in (manifest, named, hashed))
            time.sleep(0.1)
    assert tracker.announces(public)  # A announced what it seeds...
    for package_hash in (manifest, named, hashed):
        assert tracker.announces(package_hash) == []  # ...and nothing else

    # B cannot obtain the package that is private by its manifest: nobody seeds it.
    # The control: the public package arrives the same way; the private one then gets a stall
    # window twice as long as that whole fetch took (at least 2 s).
    b = nodes("b", peers=[a.peer], trackers=[tracker.announce_url])
    asked = time.monotonic()
    b.fetch(public)
    window = max(2.0, 2 * (time.monotonic() - asked))
    missing = b.fetch(manifest, check=False, env={"TREESEED_SWARM_STALL": f"{window:.1f}"})
    assert missing.returncode == 1 and "gave up" in missing.stderr
    assert cached(b) == {public}

    # B's own private setting, by hash: refused before any session exists (no announce of
    # interest reaches the tracker), however long a stall it would otherwise wait.
    b.configure(private=[hashed])
    refused = b.fetch(hashed, check=False, env={"TREESEED_SWARM_STALL": "60"})
    assert refused.returncode == 1
    assert f"{hashed} is private (the 'private' setting)" in refused.stderr
    assert tracker.announces(hashed) == []

    # By name, for a dependency: only its URL is tried, never the swarm.
    origin = closed_port()
    b.configure(private=["secret-dep"])
    app = project(tmp_path / "app", f"http://127.0.0.1:{origin}/secret.tar.gz", named, "secret-dep")
    failed = b.run("fetch", "--torrent", cwd=app, check=False, env={"TREESEED_SWARM_STALL": "60"})
    assert failed.returncode == 1 and f"127.0.0.1:{origin}/secret.tar.gz" in failed.stderr
    assert "swarm: not asked, secret-dep is private" in failed.stderr
    assert tracker.announces(named) == []
    # The HTTP side (`treeseed serve` answers 404 for private packages on every endpoint) is
    # tests/test_serve.py::test_private_packages_are_absent_on_every_endpoint.


# =========================================================================== 5. restart


def test_restart_resumes_without_rehashing(tmp_path: Path, nodes) -> None:
    a = nodes("a")
    package_hash = a.install(rich_tree(tmp_path / "src"))
    size = a.start_seeder()["packages"][0]["size"]
    b = nodes("b", peers=[a.peer])
    b.fetch(package_hash)

    def uploaded() -> int:
        status = a.status()
        return status["packages"][0]["uploaded"] if status else 0

    wait_for("the upload to be counted", lambda: uploaded() >= size)
    before = uploaded()
    assert a.run("seed", "stop").stdout.startswith("stopped the seeder (pid ")
    assert a.proc is not None and a.proc.wait(timeout=120) == 0
    assert (a.cache / "seed" / "resume" / package_hash).is_file()
    stats = json.loads(a.run("stats", "--json").stdout)
    assert [(s["hash"], s["uploaded"]) for s in stats] == [(package_hash, before)]

    # Damage the package behind the seeder's back (same sizes). A seeder that re-hashed on
    # start would notice and stop offering those pieces; this one must not even look.
    corrupt_in_place(a.package(package_hash) / "big.bin")
    status = a.start_seeder()
    [package] = status["packages"]
    assert package["hash"] == package_hash
    assert (package["state"], package["pieces"]) == ("seeding", 8)  # 4 + 2 + 1 + 1: all
    assert package["uploaded"] == before  # the statistics survived the restart

    import libtorrent as lt

    with lt_session() as probe:  # what A tells a peer it has: every piece
        atp = lt.parse_magnet_uri(f"magnet:?xt=urn:btmh:1220{hex_of(package_hash)}")
        atp.save_path = str(tmp_path / "probe")
        # 16 KiB/s: a 256 KiB piece takes 16 s, so no bad piece arrives (and A is not banned
        # for it) while A's bitfield is read. (An upload-only probe would be dropped by A, an
        # upload-only seeder; one that wants nothing disconnects as soon as it has the metadata.)
        atp.download_limit = 16 * 1024
        atp.flags &= ~lt.torrent_flags.auto_managed & ~lt.torrent_flags.paused
        handle = probe.add_torrent(atp)
        handle.connect_peer(("127.0.0.1", int(a.peer.rsplit(":", 1)[1])))
        seeds = wait_for("A's bitfield", lambda: [p for p in handle.get_peer_info()
                                                   if p.flags & lt.peer_info.seed])
        assert len(seeds) == 1
    assert "not seeding" not in a.log.read_text()


# =========================================================================== 6. one seeder per cache


def test_one_seeder_per_cache_shared_by_other_processes(tmp_path: Path, nodes) -> None:
    c = nodes("c")  # the swarm: a seeder in another cache with two packages
    x = c.install(small_tree(tmp_path / "src-x", "x-lib"))
    y = c.install(small_tree(tmp_path / "src-y", "y-lib"))
    z = c.install(rich_tree(tmp_path / "src-z"))
    c.start_seeder()

    a = nodes("a", peers=[c.peer])
    first = a.detach_seeder()
    pid = first["pid"]
    assert a.seeder_info()["pid"] == pid

    again = a.run("seed", check=False)
    assert again.returncode == 1
    assert f"a seeder already runs for the cache {a.cache.absolute()} (pid {pid})" in again.stderr
    detached = a.run("seed", "--detach", check=False)
    assert detached.returncode == 1 and "a seeder already runs" in detached.stderr
    shown = a.run("seed", "status")
    assert shown.stdout.startswith(f"seeder pid {pid} for {a.cache.absolute()}: 0 packages")
    assert "status page: http://127.0.0.1:" in shown.stdout
    assert json.loads(a.run("seed", "status", "--json").stdout)["pid"] == pid

    # Fetches in A's cache go through A's seeder. The proof: their own settings no longer name
    # C (the seeder read its settings when it started), and without a static peer, a DHT or a
    # tracker, a session of their own could never find it.
    a.configure(peers=[])
    for package_hash in (x, y):
        assert json.loads(a.fetch(package_hash, "--json").stdout)["source"] == "swarm"
        assert_same_package(c, a, package_hash)
    assert {p["hash"] for p in a.status()["packages"]} == {x, y}  # and it seeds them at once
    # Three processes asking for the same package at once: one download, three successes.
    together = [subprocess.Popen([sys.executable, "-m", "treeseed", "--cache-dir", str(a.cache),
                                  "fetch", z, "--torrent"], env=a.env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
    for proc in together:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert out.startswith(z)
    assert_same_package(c, a, z)

    # Without a seeder, a fetch opens a short-lived session of its own, with its own settings.
    d = nodes("d")
    lonely = d.fetch(x, check=False, env={"TREESEED_SWARM_STALL": "1"})
    assert lonely.returncode == 1 and "gave up" in lonely.stderr
    d.configure(peers=[c.peer])
    d.fetch(x)
    assert_same_package(c, d, x)
    assert d.status() is None and d.seeder_info() is None  # and it left nothing running

    out = a.run("seed", "stop").stdout
    assert out == f"stopped the seeder (pid {pid})\n"
    assert not alive(pid)
    assert a.seeder_info() is None
    gone = a.run("seed", "status", check=False)
    assert gone.returncode == 3 and gone.stdout.startswith("no seeder runs for")
    assert a.run("seed", "stop").stdout == "no seeder was running\n"

    # A seeder killed outright leaves its socket and lock file behind: neither stops the next.
    pid = a.detach_seeder()["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for("the killed seeder to die", lambda: not alive(pid))
    assert (a.cache / "seed" / "seeder.json").exists()
    assert a.run("seed", "status", check=False).returncode == 3
    assert a.detach_seeder()["pid"] != pid


# =========================================================================== 7. the seed delay


def test_seed_delay_holds_announces_back(tmp_path: Path, nodes, tracker: RecordingTracker) -> None:
    a = nodes("a", seed_delay=6, trackers=[tracker.announce_url])
    package_hash = a.install(small_tree(tmp_path / "src"))
    first = a.start_seeder()
    assert first["announcing"] is False and first["seeding"] == 1
    assert "not announcing yet" in a.run("seed", "status").stdout

    def announced() -> bool:
        # Read the tracker first: an announce it holds must come from a seeder that says it
        # announces. (The seeder sets the flag before it adds the tracker.)
        seen = tracker.announces(package_hash)
        status = a.status()
        assert status is not None
        if seen:
            assert status["announcing"] is True
        return bool(seen)

    assert tracker.announces() == []
    wait_for("the announce after the delay", announced)
    assert "treeseed: announcing to the swarm" in a.log.read_text()


def test_a_fetch_request_ends_the_seed_delay(tmp_path: Path, nodes,
                                            tracker: RecordingTracker) -> None:
    a = nodes("a", seed_delay=3600, trackers=[tracker.announce_url])
    package_hash = a.install(small_tree(tmp_path / "src"))
    # The asking process's TREESEED_SWARM_STALL goes with the request: the seeder's own (600 s
    # here) would far outlast the generous bound on the fetch below.
    assert a.start_seeder(env={"TREESEED_SWARM_STALL": "600"})["announcing"] is False
    unknown = "bt2-" + hashlib.sha256(b"nobody has this").hexdigest()
    missing = a.fetch(unknown, check=False, env={"TREESEED_SWARM_STALL": "1"}, timeout=300)
    assert missing.returncode == 1 and "gave up" in missing.stderr
    assert a.status()["announcing"] is True
    wait_for("the seeded package's announce", lambda: tracker.announces(package_hash))
    assert tracker.announces(unknown)  # the seeder's session looked for it


# =========================================================================== 8. statistics


def test_stats_count_uploads_and_distinct_peers(tmp_path: Path, nodes) -> None:
    a = nodes("a")
    big = a.install(rich_tree(tmp_path / "src-big"))
    small = a.install(small_tree(tmp_path / "src-small", "small-lib"))
    a.start_seeder()
    b = nodes("b", peers=[a.peer])
    c = nodes("c", peers=[a.peer])
    b.fetch(big)
    c.fetch(big)
    b.fetch(small)
    sizes = {p["hash"]: p["size"] for p in a.status()["packages"]}

    def counted() -> list[dict] | None:
        rows = json.loads(a.run("stats", "--json").stdout)
        by_hash = {r["hash"]: r for r in rows}
        if (by_hash.get(big, {}).get("peers") == 2 and by_hash.get(small, {}).get("peers") == 1
                and by_hash[big]["uploaded"] >= 2 * sizes[big]
                and by_hash[small]["uploaded"] >= sizes[small]):
            return rows
        return None

    rows = wait_for("both downloads in the statistics", counted)
    assert [r["hash"] for r in rows] == [big, small]  # most uploaded first
    for row in rows:
        assert row["size"] == sizes[row["hash"]]
        assert row["copies"] == row["uploaded"] / row["size"]
        assert isinstance(row["last_served"], float) and row["last_served"] <= time.time()
    assert rows[0]["copies"] >= 2 and rows[1]["name"] == "small-lib"
    table = a.run("stats").stdout.splitlines()
    assert table[0].split() == ["package", "name", "uploaded", "peers", "copies", "last", "served"]
    assert [line.split()[0] for line in table[1:]] == [big, small]
    assert [p["hash"] for p in a.status()["packages"]] == [big, small]  # the status page's order


# =========================================================================== 9. the race


def test_origin_wins_when_the_swarm_has_nobody(tmp_path: Path, nodes) -> None:
    body, _, package_hash = archive_package(tmp_path)
    b = nodes("b")
    down = project(tmp_path / "down", f"http://127.0.0.1:{closed_port()}/pkg-1.0.tar.gz", package_hash)
    both = b.run("fetch", "--torrent", cwd=down, check=False,
                 env={"TREESEED_SWARM_STALL": "1", "TREESEED_SWARM_HEAD_START": "0.2"})
    assert both.returncode == 1
    assert f"swarm: swarm download of {package_hash} gave up" in both.stderr
    assert "pkg-1.0.tar.gz" in both.stderr  # every source is named with its reason

    origin = Origin(body)
    try:
        app = project(tmp_path / "app", origin.package_url, package_hash)
        # The head start is longer than the test would wait: the origin can only have started
        # because the swarm gave up first.
        result = b.run("fetch", "--torrent", "--json", cwd=app, timeout=300,
                       env={"TREESEED_SWARM_STALL": "1", "TREESEED_SWARM_HEAD_START": "600"})
    finally:
        origin.close()
    [resolved] = json.loads(result.stdout)
    assert (resolved["hash"], resolved["url"]) == (package_hash, origin.package_url)
    assert origin.events == ["start", "done"]
    assert cached(b) == {package_hash} and leftovers(b) == []


def test_swarm_wins_over_a_slow_origin_which_is_cancelled(tmp_path: Path, nodes) -> None:
    body, archive, package_hash = archive_package(tmp_path)
    a = nodes("a")
    assert a.install(archive) == package_hash
    a.start_seeder()
    # 16 KiB a second, 48 s for the whole archive: the swarm is far faster, even when loaded.
    origin = Origin(body, pause=1.0, chunk=16 << 10)
    b = nodes("b", peers=[a.peer])
    app = project(tmp_path / "app", origin.package_url, package_hash)
    # Hold A (SIGSTOP) until the origin download has begun, so the race really is a race:
    # B's connection waits in A's listen queue, then A answers and wins.
    assert a.proc is not None
    os.kill(a.proc.pid, signal.SIGSTOP)
    fetch = None
    try:
        fetch = subprocess.Popen([sys.executable, "-m", "treeseed", "--cache-dir", str(b.cache),
                                  "fetch", "--torrent", "--json"], cwd=app, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 env={**b.env, "TREESEED_SWARM_HEAD_START": "0"})
        wait_for("the origin download to begin", lambda: origin.events or fetch.poll() is not None)
        os.kill(a.proc.pid, signal.SIGCONT)
        out, err = fetch.communicate(timeout=300)
        assert fetch.returncode == 0, err
        [resolved] = json.loads(out)
        assert (resolved["hash"], resolved["url"]) == (package_hash, "swarm")
        # The origin's one download was cut off when the swarm won, not left to finish.
        wait_for("the origin to see the client leave", lambda: "aborted" in origin.events, timeout=120)
        assert origin.events == ["start", "aborted"]
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)
        if fetch is not None and fetch.poll() is None:
            fetch.kill()
            fetch.communicate(timeout=30)
        origin.close()
    assert_same_package(a, b, package_hash)
    assert leftovers(b) == []


def test_poisoned_swarm_falls_back_to_the_origin(tmp_path: Path, nodes) -> None:
    body, archive, package_hash = archive_package(tmp_path, size=4 * PIECE)
    a = nodes("a")
    assert a.install(archive) == package_hash
    a.start_seeder()
    # Changed after the seeder started: it serves these bytes as the package's (bad blocks).
    corrupt_in_place(a.package(package_hash) / "blob.bin")
    b = nodes("b", peers=[a.peer])
    origin = Origin(body)
    try:
        app = project(tmp_path / "app", origin.package_url, package_hash)
        result = b.run("fetch", "--torrent", "--json", cwd=app, timeout=300,
                       env={"TREESEED_SWARM_STALL": "2", "TREESEED_SWARM_HEAD_START": "600"})
    finally:
        origin.close()
    [resolved] = json.loads(result.stdout)
    assert resolved["url"] == origin.package_url
    assert origin.events == ["start", "done"]
    wait_for("A's upload to B to be counted",  # the bad blocks did reach B
             lambda: a.status()["packages"][0]["uploaded"] > 0)
    # Only the true package is in B's cache, and it is intact.
    assert cached(b) == {package_hash} and leftovers(b) == []
    from treeseed.fetch import hash_path

    assert hash_path(b.package(package_hash), Cache(tmp_path / "scratch"), []).hashes["bt2"] == package_hash
    blob = (b.package(package_hash) / "blob.bin").read_bytes()
    assert blob != (a.package(package_hash) / "blob.bin").read_bytes()


# =========================================================================== 10. a watching build


def test_watching_build_runs_the_seeder_others_use(tmp_path: Path, nodes) -> None:
    c = nodes("c")
    x = c.install(small_tree(tmp_path / "src-x", "x-lib"))
    c.start_seeder()
    w = nodes("w", peers=[c.peer])
    root = make_tree(tmp_path / "pkg", {
        "treeseed.toml": b'[package]\nname = "app"\n',
        "build.py": b'def build(b):\n    b.step("hello", ["true"], default=True)\n',
    })
    err_path = tmp_path / "watch.err"
    build = _watching_build(root, w, err_path)
    try:
        status = json.loads(w.run("seed", "status", "--json").stdout)
        assert status["pid"] == build.pid
        busy = w.run("seed", check=False)
        assert busy.returncode == 1 and f"(pid {build.pid})" in busy.stderr

        w.fetch(x)  # through the build's seeder, which then seeds it
        assert_same_package(c, w, x)
        wait_for("the build's seeder to seed x", lambda: [p for p in w.status()["packages"]
                                                        if p["hash"] == x])

        build.send_signal(signal.SIGINT)
        assert build.wait(timeout=120) == 130
    finally:
        if build.poll() is None:
            build.kill()
            build.wait(timeout=120)
    assert "treeseed: watch stopped" in err_path.read_text()
    assert "Traceback" not in err_path.read_text()
    assert w.run("seed", "status", check=False).returncode == 3
    assert w.seeder_info() is None


def _watching_build(root: Path, node: Node, err_path: Path) -> subprocess.Popen[bytes]:
    """``treeseed build --watch --torrent`` in ``root``, its stderr in ``err_path``, running."""
    with open(err_path, "wb") as err:
        build = subprocess.Popen(
            [sys.executable, "-m", "treeseed", "--cache-dir", str(node.cache), "-C", str(root),
             "build", "--watch", "--torrent"], stdout=subprocess.DEVNULL, stderr=err,
            stdin=subprocess.DEVNULL, env=node.env,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_for("the watch", lambda: "watching for changes" in err_path.read_text()
                 or build.poll() is not None)
        assert build.poll() is None, err_path.read_text()
    except BaseException:
        build.kill()
        build.wait(timeout=120)
        raise
    return build


def test_the_last_watching_build_keeps_the_cache_seeded(tmp_path: Path, nodes) -> None:
    """Two watching builds share one seeder; when the one running it stops, the other takes
    over, and when that one stops too, no seeder is left behind."""
    w = nodes("w")
    builds = []
    try:
        for name in ("first", "second"):
            root = make_tree(tmp_path / name, {
                "treeseed.toml": f'[package]\nname = "{name}"\n'.encode(),
                "build.py": b'def build(b):\n    b.step("hello", ["true"], default=True)\n',
            })
            builds.append(_watching_build(root, w, tmp_path / f"{name}.err"))
        first, second = builds
        assert json.loads(w.run("seed", "status", "--json").stdout)["pid"] == first.pid

        first.send_signal(signal.SIGINT)
        assert first.wait(timeout=120) == 130
        wait_for("the second build to take the seeder over", lambda: (
            (p := w.run("seed", "status", "--json", check=False)).returncode == 0
            and json.loads(p.stdout)["pid"] == second.pid))

        second.send_signal(signal.SIGINT)
        assert second.wait(timeout=120) == 130
    finally:
        for build in builds:
            if build.poll() is None:
                build.kill()
                build.wait(timeout=120)
    for name in ("first", "second"):
        assert "Traceback" not in (tmp_path / f"{name}.err").read_text()
    assert w.run("seed", "status", check=False).returncode == 3


def test_stats_add_what_a_download_uploaded_before_the_package_was_seeded(tmp_path: Path) -> None:
    """libtorrent's total for the seeding torrent starts at zero: bytes the package's download
    gave other peers are kept beside it, and both count as uploaded, across reopenings."""
    from treeseed.swarm.stats import Stats

    store = Stats(tmp_path / "seed")
    store.record("bt2-a", 100, {"peer-1"})
    store.record_while_downloading("bt2-a", 50)
    store.record("bt2-a", 120, {"peer-2"})
    store.record("bt2-a", 90, set())  # a smaller total (a reset torrent) never lowers the count
    store.record("bt2-b", 400, {"peer-1"})
    store.close()
    store = Stats(tmp_path / "seed")
    assert store.uploaded("bt2-a") == 170
    assert [(s.hash, s.uploaded, s.peers) for s in store.all()] == [
        ("bt2-b", 400, 1), ("bt2-a", 170, 2)]
    store.close()


def test_a_downloader_asks_the_dht_again_while_it_has_no_peer() -> None:
    """libtorrent skips a torrent's first DHT announce when the session's DHT is not running
    yet (a loaded machine: test_private saw a lookup never sent), then waits 15 minutes. A
    downloader with no peer asks again 1 s in, then after pauses doubling to a minute; a peer
    stops it."""
    from treeseed.swarm.session import DhtLookups

    lookups = DhtLookups(now=100.0)
    asked = [t for t in (x / 10 for x in range(1000, 1000 + 10 * 200)) if lookups.due(t, peers=0)]
    assert [round(t - 100.0, 1) for t in asked] == [1.0, 3.0, 7.0, 15.0, 31.0, 63.0, 123.0, 183.0]
    busy = DhtLookups(now=0.0)
    assert not any(busy.due(t / 10, peers=1) for t in range(0, 2000))
