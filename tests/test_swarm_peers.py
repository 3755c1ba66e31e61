"""treeseed among other BitTorrent peers on 127.0.0.1: a peer that lies, and a real client.

* A peer that uploads corrupt blocks (a libtorrent session in the test, seeding a copy of the
  package with one 16 KiB block per piece flipped, from resume data that claims every piece,
  added as treeseed's seeder adds packages) cannot corrupt anything. It is the downloader's
  only peer until it has sent a corrupt block (the test watches its upload alerts), so the
  test cannot pass without one; then ``treeseed seed`` starts on the honest cache and connects
  to the downloader. The fetch completes with the right files from the honest seeder (whose
  full merkle trees let libtorrent blame the right peer) or, should libtorrent lose trust in
  both peers and the swarm stall, from the origin URL the swarm races; nothing else enters
  the cache either way.
* qbittorrent-nox (Debian's; libtorrent 2.0 inside) downloads a treeseed package from nothing
  but its magnet, seeded by ``treeseed seed``, and ends with the same files, executable bits
  and symlinks.

Every session listens on 127.0.0.1 on an explicit port with DHT, LSD, UPnP and NAT-PMP off:
peers are only ever connected to by address.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from helpers import make_tree
from httpserver import (
    Reply,
    Server,
)
from swarmkit import Peer, free_port, random_package, snapshot
from waiting import wait_for

lt = pytest.importorskip("libtorrent", reason="pip install libtorrent (the swarm's BitTorrent engine)")

BLOCK = 16 * 1024
KiB = 1024


# --------------------------------------------------------------------------- a corrupt peer


class CorruptPeer:
    """A libtorrent session seeding ``package_hash`` from a copy of the package in which one
    16 KiB block of every piece (a different one in each) has its first 64 bytes inverted. It is added exactly as treeseed's own
    seeder adds a package (resume data claiming every piece, full merkle trees,
    ``no_verify_files``), so it never checks what it uploads, and counts every block it
    sends (``block_uploaded_alert``)."""

    def __init__(self, work: Path, cache: Path, package_hash: str) -> None:
        from treeseed.cache import Cache
        from treeseed.swarm import torrents
        from treeseed.swarm.session import _renamed_into, _root_or_none

        self.port = free_port()
        self.session = lt.session({
            "listen_interfaces": f"127.0.0.1:{self.port}",
            "enable_dht": False, "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
            "dht_bootstrap_nodes": "", "enable_incoming_utp": False, "enable_outgoing_utp": False,
            "allow_multiple_connections_per_ip": True, "alert_queue_size": 1 << 16,
            "alert_mask": lt.alert.category_t.upload_notification | lt.alert.category_t.peer_notification,
        })
        save = work / "corrupt"
        shutil.copytree(cache / "p" / package_hash, save / package_hash, symlinks=True)
        source = Cache(cache)
        ti = lt.torrent_info(torrents.torrent_file(source, package_hash))
        fs = ti.layout()
        self.bad: set[tuple[int, int]] = set()  # (piece, block) pairs that are corrupt
        renamed = _renamed_into(ti, package_hash)
        for i in range(fs.num_files()):
            size = fs.file_size(i)
            if not size or fs.file_flags(i) & (fs.flag_pad_file | fs.flag_symlink):
                continue
            with open(save / renamed[i], "r+b") as f:
                for offset in range(0, size, ti.piece_length()):
                    piece = ti.map_file(i, offset, 1).piece
                    blocks = -(-min(ti.piece_length(), size - offset) // BLOCK)
                    block = piece % blocks  # a different block in each piece
                    f.seek(offset + block * BLOCK)
                    data = f.read(64)
                    f.seek(offset + block * BLOCK)
                    f.write(bytes(b ^ 0xFF for b in data))
                    self.bad.add((piece, block))
        roots = [_root_or_none(fs.root(i)) for i in range(fs.num_files())]
        atp = lt.read_resume_data(torrents.resume_data(source, package_hash, save, roots))
        source.close()
        atp.ti = ti
        atp.save_path = str(save)
        atp.renamed_files = renamed
        atp.flags = lt.torrent_flags.upload_mode | lt.torrent_flags.no_verify_files
        self.handle = self.session.add_torrent(atp)
        self.sent: list[tuple[int, int]] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.session.listen_port()}"

    def collect(self) -> None:
        for alert in self.session.pop_alerts():
            if isinstance(alert, lt.block_uploaded_alert):
                self.sent.append((alert.piece_index, alert.block_index))

    @property
    def corrupt_blocks_sent(self) -> int:
        return sum(1 for sent in self.sent if sent in self.bad)

    def close(self) -> None:
        self.session.remove_torrent(self.handle)
        self.session.pause()


def tar_of(root: Path, top: str) -> bytes:
    """``root`` as an uncompressed .tar.gz with one top-level directory (the origin's archive)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=0) as tf:
        tf.add(root, arcname=top)
    return buf.getvalue()


def test_corrupt_peer_cannot_corrupt_the_fetch(tmp_path: Path, server: Server) -> None:
    """The liar is the only peer until it has sent a corrupt block (so the test cannot pass
    without one), then the honest seeder starts and connects to the downloader; the origin
    URL is there only for a swarm that stalls after banning both peers."""
    package = random_package(tmp_path / "victim", "victim",
                             {"big.bin": 1280 * KiB, "mid.bin": 600 * KiB, "small.bin": 40 * KiB},
                             seed=6)
    honest = Peer(tmp_path / "honest")
    package_hash = honest.add_shared(package)
    origin = server.url("/victim-1.0.tar.gz")
    server.routes["/victim-1.0.tar.gz"] = Reply(200, tar_of(package, "victim-1.0"))

    attacker = CorruptPeer(tmp_path, honest.cache, package_hash)
    downloader = Peer(tmp_path / "downloader", peers=[attacker.address, honest.address])
    honest.configure(peers=[downloader.address])  # it connects to the downloader when it starts
    app = make_tree(tmp_path / "app", {"treeseed.toml": (
        f'[package]\nname = "app"\n\n[dependencies.victim]\nurl = "{origin}"\n'
        f'hash = "{package_hash}"\n').encode()})
    # The swarm runs alone until it completes or gives up after 15 s without progress; only
    # then does the origin start (the head start is longer than any run).
    env = {**os.environ, **downloader.env, "TREESEED_SWARM_HEAD_START": "600",
           "TREESEED_SWARM_STALL": "15"}
    fetch = subprocess.Popen([sys.executable, "-m", "treeseed", "--cache-dir", str(downloader.cache),
                              "-C", str(app), "fetch", "--torrent"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for("the liar to send a corrupt block",
                 lambda: attacker.collect() or attacker.corrupt_blocks_sent or fetch.poll() is not None,
                 timeout=120)
        assert fetch.poll() is None, fetch.communicate()
        with honest.seeding():
            _, err = fetch.communicate(timeout=300)
            if fetch.returncode == 0 and not server.hits:  # the swarm delivered: the honest
                # seeder counts its upload (its statistics are recorded every second)
                wait_for("the honest seeder to count its upload",
                         lambda: honest.status()["packages"][0]["uploaded"], timeout=120)
        attacker.collect()
        attacker_uploaded = attacker.handle.status().total_payload_upload
    finally:
        if fetch.poll() is None:
            fetch.kill()
            fetch.communicate()
        attacker.close()

    assert fetch.returncode == 0, err
    got = downloader.cache / "p" / package_hash
    assert snapshot(got) == snapshot(package)
    assert downloader.packages() == {package_hash}  # nothing else entered the cache
    assert not os.listdir(downloader.cache / "tmp")  # and no partial download was left behind
    assert attacker_uploaded > 0 and attacker.corrupt_blocks_sent > 0
    # Where the good copy came from: the swarm (the honest seeder), or, if libtorrent lost
    # trust in both peers and the swarm stalled, the origin; either way the bytes are right.
    print(f"package came from the {'origin' if server.hits else 'swarm'}; the liar sent "
          f"{attacker.corrupt_blocks_sent} corrupt of {len(attacker.sent)} blocks "
          f"({attacker_uploaded} bytes)")


# --------------------------------------------------------------------------- qBittorrent

QBITTORRENT = shutil.which("qbittorrent-nox")
SEEDING_STATES = {"uploading", "stalledUP", "queuedUP", "pausedUP", "forcedUP", "checkingUP"}


def qbittorrent_conf(webui_port: int, bt_port: int) -> str:
    """A qBittorrent profile that stays on loopback, finds peers only when told, and lets
    127.0.0.1 use the WebUI API without logging in (shared/notes/swarm.md)."""
    return "\n".join([
        "[LegalNotice]", "Accepted=true", "",
        "[BitTorrent]",
        "Session\\DHTEnabled=false", "Session\\LSDEnabled=false", "Session\\PeXEnabled=false",
        "Session\\Interface=lo", "Session\\InterfaceName=lo", "Session\\InterfaceAddress=127.0.0.1",
        f"Session\\Port={bt_port}",
        # Without TCP only, qBittorrent sat in metadata download and never opened a TCP
        # connection to a seeder that refuses incoming uTP (treeseed does on loopback).
        "Session\\BTProtocol=TCP", "",
        "[Network]", "PortForwardingEnabled=false", "",
        "[Preferences]",
        "WebUI\\Address=127.0.0.1", f"WebUI\\Port={webui_port}", "WebUI\\LocalHostAuth=false",
        "WebUI\\UseUPnP=false", "Connection\\UPnP=false", "Connection\\ResolvePeerCountries=false",
        "",
    ])


class QBittorrent:
    """qbittorrent-nox with a throwaway profile and home, driven through its WebUI API."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.webui_port = free_port()
        profile = work / "profile"
        conf = profile / "qBittorrent" / "config" / "qBittorrent.conf"
        conf.parent.mkdir(parents=True)
        conf.write_text(qbittorrent_conf(self.webui_port, free_port()))
        home = work / "home"
        home.mkdir()
        env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
               "XDG_DATA_HOME": str(home / ".local/share"), "XDG_CACHE_HOME": str(home / ".cache")}
        self.log = open(work / "qbittorrent.log", "wb")
        self.proc = subprocess.Popen(
            [QBITTORRENT, f"--profile={profile}", f"--webui-port={self.webui_port}"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, env=env)
        wait_for("qBittorrent's WebUI", self._answers, timeout=120)

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"qbittorrent-nox exited ({self.proc.returncode}): "
                                 f"{(self.work / 'qbittorrent.log').read_text(errors='replace')}")
        try:
            self.api("app/version")
            return True
        except OSError:
            return False

    def api(self, path: str, **form: str) -> bytes:
        url = f"http://127.0.0.1:{self.webui_port}/api/v2/{path}"
        data = urllib.parse.urlencode(form).encode() if form else None
        with urllib.request.urlopen(url, data=data, timeout=10) as reply:
            return reply.read()

    def torrent(self, hex_id: str) -> dict | None:
        found = json.loads(self.api("torrents/info"))
        return next((t for t in found if hex_id in (t.get("hash"), t.get("infohash_v1"),
                                                    (t.get("infohash_v2") or "")[:40])), None)

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.api("app/shutdown", now="1")
            self.proc.wait(timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(timeout=10)
        finally:
            self.log.close()


@pytest.mark.skipif(QBITTORRENT is None, reason="qbittorrent-nox is not installed (Debian: "
                    "apt-get install qbittorrent-nox)")
def test_qbittorrent_downloads_a_package_from_treeseed_seed(tmp_path: Path) -> None:
    from treeseed.hashing.bt2 import magnet
    from treeseed.swarm.session import hex_id

    package = random_package(tmp_path / "src", "shared",
                             {"big.bin": 900 * KiB, "tiny.txt": 100, "nested/deep/file.bin": 70 * KiB},
                             seed=7)
    (package / "data" / "nested" / "up").symlink_to("../big.bin")
    seeder = Peer(tmp_path / "seeder")
    package_hash = seeder.add_shared(package)
    downloads = tmp_path / "qbittorrent-downloads"
    with seeder.seeding():
        qbt = QBittorrent(tmp_path / "qbittorrent")
        try:
            qbt.api("torrents/add", urls=magnet(package_hash), savepath=str(downloads))
            ident = hex_id(package_hash)
            wait_for("qBittorrent to list the magnet", lambda: qbt.torrent(ident), timeout=120)
            qbt.api("torrents/addPeers", hashes=ident, peers=seeder.address)
            done = wait_for("qBittorrent to finish and seed",
                            lambda: (t := qbt.torrent(ident)) and t["state"] in SEEDING_STATES and t,
                            timeout=300)
        finally:
            qbt.close()
        # It came from treeseed's seeder, the only peer qBittorrent knew of.
        size = sum(f.stat().st_size for f in package.rglob("*") if f.is_file() and not f.is_symlink())
        wait_for("the seeder to count its upload",
                 lambda: seeder.status()["packages"][0]["uploaded"] >= size, timeout=120)
    assert done["progress"] == 1
    assert snapshot(downloads / "package") == snapshot(package)
    assert (downloads / "package" / "bin" / "run.sh").stat().st_mode & 0o111
