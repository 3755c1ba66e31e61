"""One libtorrent session, configured from the user's settings, that seeds and downloads packages.

A package's bt2 hash is its BitTorrent v2 info-hash, so the swarm address of any package is
``magnet:?xt=urn:btmh:1220<hex>``: nothing but the hash is needed to find it.

Seeding loads the resume data of :mod:`treeseed.swarm.torrents` (every piece present, full
merkle trees), so adding a package costs no hashing; the package is served straight from
``p/<hash>/`` in upload mode, so the session can never write into the cache.

Downloading goes to a work directory. libtorrent checks every 16 KiB block against the merkle
tree, and :func:`download` then rebuilds the tree the info dict describes (libtorrent puts a
one-file torrent beside its directory instead of in it, and makes dangling symlinks into
self-links) and hashes it once more as a package: only a tree that hashes to the magnet's
hash is ever handed to the cache.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import FetchError
from ..hashing.bt2 import magnet
from ..ids import hex_of

if TYPE_CHECKING:
    import libtorrent as lt

    from ..cache import Cache
    from ..config import Settings

#: Client prefix of our peer ids (Azureus style); each session appends 12 random characters
#: of its own, so it knows its full peer id (:func:`origin_rank`).
PEER_ID_PREFIX = "-TS0100-"
#: After this long without a byte of progress, a swarm download gives up (the origin is tried).
DEFAULT_STALL = 20.0
_POLL = 0.1
#: libtorrent's ``dht_announce_interval`` (left at its default): each seeded package is
#: announced to the DHT once per interval, libtorrent spacing them interval / N apart.
DHT_ANNOUNCE_INTERVAL = 900
#: First announces per :meth:`Swarm.announce_some` call (per second in the seeder), at least.
ANNOUNCE_PACE = 4
#: ``dht_upload_rate_limit`` of a seeder: libtorrent's default (8,000 bytes/s) is the budget for
#: answering other nodes; each seeded package adds its share of our own DHT traffic (its
#: announce every 15 minutes and its alias puts every 100: bench/seeder_scale.py measures
#: it). libtorrent never holds back our own messages; past the limit it stops answering
#: others, which makes them drop us from their routing tables.
DHT_BASE_BYTES_PER_SECOND = 8_000
DHT_BYTES_PER_SECOND_PER_PACKAGE = 12
#: ``dht_block_ratelimit`` (packets per second one IP may send before libtorrent drops it for
#: a while) when every DHT node is on loopback: they all share one IP there.
LOOPBACK_DHT_PACKETS_PER_IP = 10_000


def _lt():  # imported on first use: most treeseed commands never touch the swarm
    from .lt import libtorrent  # SwarmUnavailable, one line, where this platform has none

    return libtorrent()


def session_settings(settings: Settings) -> dict:
    """The libtorrent settings pack for ``settings``.

    Loopback and private-network bootstrap nodes mean a LAN or test DHT: libtorrent's
    protections against routing-table poisoning (one node per IP, verified node ids) would keep
    such a DHT from ever forming, so they are relaxed only then. On loopback uTP is off
    (its congestion control only slows a link that has none) and several peers per IP are
    allowed (every peer on 127.0.0.1 shares the address).
    """
    lt = _lt()
    alerts = lt.alert.category_t
    local_dht = bool(settings.dht_bootstrap) and all(_is_local(n) for n in settings.dht_bootstrap)
    loopback = _is_loopback(settings.listen)
    pack = {
        "listen_interfaces": settings.listen,
        "enable_dht": settings.dht,
        "dht_bootstrap_nodes": ",".join(settings.dht_bootstrap),
        "enable_lsd": settings.lsd,
        "enable_upnp": settings.upnp,
        "enable_natpmp": settings.upnp,
        "upload_rate_limit": settings.upload_limit,
        "download_rate_limit": settings.download_limit,
        "user_agent": "treeseed/" + _version(),
        "peer_fingerprint": PEER_ID_PREFIX,
        "alert_mask": alerts.status_notification | alerts.error_notification
        | alerts.storage_notification | alerts.peer_notification,
        "dht_announce_interval": DHT_ANNOUNCE_INTERVAL,
        "dht_upload_rate_limit": DHT_BASE_BYTES_PER_SECOND,  # a seeder raises it (fit_dht_budget)
        "hashing_threads": max(2, os.cpu_count() or 2),
        "send_buffer_watermark": 4 << 20,
        "max_queued_disk_bytes": 16 << 20,
        "allow_multiple_connections_per_ip": True,
        "enable_incoming_utp": not loopback,
        "enable_outgoing_utp": not loopback,
    }
    if local_dht:
        pack.update({"dht_restrict_routing_ips": False, "dht_restrict_search_ips": False,
                     "dht_prefer_verified_node_ids": False})
    if local_dht and all(_is_loopback(n) for n in settings.dht_bootstrap):
        # Every node of a loopback DHT shares 127.0.0.1, so libtorrent's per-IP flood guard
        # (5 packets/s) would drop the answers to our own queries and the DHT never forms.
        pack["dht_block_ratelimit"] = LOOPBACK_DHT_PACKETS_PER_IP
    return pack


def _host(addr: str) -> str:
    host = addr.rsplit(":", 1)[0]
    return host[1:-1] if host.startswith("[") else host


def _is_local(addr: str) -> bool:
    try:
        ip = ipaddress.ip_address(_host(addr))
    except ValueError:
        return _host(addr) == "localhost"
    return ip.is_loopback or ip.is_private or ip.is_link_local


def _is_loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(_host(addr)).is_loopback
    except ValueError:
        return _host(addr) == "localhost"


def _version() -> str:
    from .. import __version__

    return __version__


def parse_peer(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return (host[1:-1] if host.startswith("[") else host), int(port)


@dataclass
class Progress:
    """What a running swarm download has done so far."""

    done: int = 0
    total: int | None = None
    peers: int = 0
    state: str = "finding peers"
    #: Advice for the origin download (:meth:`Swarm.origin_advice`): "wait", "go" or "".
    origin: str = ""


class DhtLookups:
    """When a downloader asks the DHT for peers again.

    libtorrent announces a torrent to the DHT when it is added, but only if the session's DHT
    is running by then, and a session made for one download adds its torrent at once: on a
    loaded machine the DHT often starts a moment later, and that announce is skipped. The
    next would come after ``dht_announce_interval`` (15 minutes). So while it has no peer, a
    downloader asks again ``FIRST`` seconds in, then after pauses that double up to ``LAST``.
    A lookup is never wasted on an empty routing table: libtorrent starts it from the
    bootstrap nodes, which never enter the table (so its node count says nothing here).
    """

    FIRST = 1.0
    LAST = 60.0

    def __init__(self, now: float) -> None:
        self._pause = self.FIRST
        self._next = now + self.FIRST

    def due(self, now: float, peers: int) -> bool:
        """Whether to force a DHT announce now, given the peers connected."""
        if peers or now < self._next:
            return False
        self._pause = min(self._pause * 2, self.LAST)
        self._next = now + self._pause
        return True


class Swarm:
    """A libtorrent session plus the packages it seeds. Thread-safe for the calls below."""

    def __init__(self, settings: Settings, alert_queue: int | None = None) -> None:
        """``alert_queue``: a seeder counts the peers it serves from per-block upload alerts,
        so it needs a deep alert queue; a short-lived fetching session does not."""
        lt = _lt()
        self.settings = settings
        pack = session_settings(settings)
        self.peer_id = (PEER_ID_PREFIX + secrets.token_hex(6)).encode()
        pack["peer_fingerprint"] = self.peer_id.decode()  # 20 bytes: used whole, no random tail
        if alert_queue:
            pack["alert_queue_size"] = alert_queue
            pack["alert_mask"] |= lt.alert.category_t.upload_notification
        self.session = lt.session(pack)
        self.lock = threading.RLock()
        self.seeding: dict[str, lt.torrent_handle] = {}
        self._download_uploads: dict[str, int] = {}
        self._announced = False
        self._to_announce: deque[str] = deque()  # first announces still to make (announce_some)
        # Alerts are popped in two places: the seeder's loop and a download waiting for its
        # files to reach the disk (_flush). An alert is freed by the next pop_alerts, so every
        # pop happens under one lock and each alert is handled there and then (handle_alerts,
        # which passes it to on_alert, the seeder's handler) before another pop can free it.
        self._alert_lock = threading.Lock()
        self.on_alert: Callable[[object], None] | None = None
        self._flushed: set[str] = set()
        #: libtorrent's session counters as the last session_stats_alert gave them, and how
        #: many such alerts were handled (:meth:`counters`).
        self._counters: dict[str, int] = {}
        self._counters_seen = 0
        self._dht_budget = DHT_BASE_BYTES_PER_SECOND  # dht_upload_rate_limit (fit_dht_budget)

    # ------------------------------------------------------------------ seeding

    def seed(self, cache: Cache, package_hash: str, resume: bytes | None = None) -> lt.torrent_handle:
        """Seed a cached package without hashing it: ``resume`` is libtorrent's own saved state
        for it if the seeder kept one, else resume data built from the cache's swarm files."""
        from . import torrents

        lt = _lt()
        with self.lock:
            if package_hash in self.seeding:
                return self.seeding[package_hash]
        # Not under the lock: a download of this package that is ending (or being cancelled
        # because the origin won the race) needs the lock to remove itself from the session.
        self._wait_removed(package_hash)
        with self.lock:
            if package_hash in self.seeding:
                return self.seeding[package_hash]
            data = torrents.torrent_file(cache, package_hash)
            if not torrents.total_size(data):
                raise FetchError("it holds no bytes (only empty files and symlinks): "
                                 "BitTorrent has nothing to exchange for it; mirrors and origin "
                                 "URLs still serve it")
            ti = lt.torrent_info(data)
            if resume is None:
                fs = ti.layout()
                roots = [_root_or_none(fs.root(i)) for i in range(fs.num_files())]
                resume = torrents.resume_data(cache, package_hash, cache.packages_dir, roots)
            atp = lt.read_resume_data(resume)
            atp.ti = ti
            atp.save_path = str(cache.packages_dir)
            atp.renamed_files = _renamed_into(ti, package_hash)
            # Not auto_managed: libtorrent's active_seeds / active_limit / active_dht_limit /
            # active_tracker_limit (5 / 500 / 88 / 1600 by default) only ration auto-managed
            # torrents, which past them it pauses or stops announcing, silently. Every package
            # seeded here is announced, however many there are. update_subscribe: its status
            # changes come in the seeder's state_update_alerts (post_torrent_updates).
            atp.flags = (lt.torrent_flags.upload_mode | lt.torrent_flags.no_verify_files
                         | lt.torrent_flags.update_subscribe)
            if not self._announced:
                atp.flags |= lt.torrent_flags.disable_dht | lt.torrent_flags.disable_lsd
            atp.trackers = list(self.settings.trackers) if self._announced else []
            atp.url_seeds = web_seeds(self.settings.mirrors, package_hash)
            handle = self.session.add_torrent(atp)
            self.seeding[package_hash] = handle
            self._connect_static_peers(handle)
            return handle

    def _wait_removed(self, package_hash: str, timeout: float = 5.0) -> None:
        """Removing a torrent is asynchronous: a package just downloaded by this session is
        still being removed when it is added again for seeding."""
        lt = _lt()
        info_hash = lt.sha256_hash(bytes.fromhex(hex_of(package_hash)))
        deadline = time.monotonic() + timeout
        while self.session.find_torrent(info_hash).is_valid():
            if time.monotonic() > deadline:
                raise StillDownloading(f"{package_hash} is still being downloaded by this "
                                       f"session after {timeout:.0f} s; it is seeded later")
            time.sleep(0.02)

    def unseed(self, package_hash: str) -> None:
        with self.lock:
            handle = self.seeding.pop(package_hash, None)
            if handle is not None:
                self.session.remove_torrent(handle)

    def start_announcing(self) -> None:
        """Join the DHT, LSD and trackers for every seeded package (after the seed delay).

        Every package's DHT flag is turned on at once: libtorrent then announces one torrent
        every ``dht_announce_interval`` / N seconds, round robin, so N packages are announced
        evenly over the interval (15 min), never in a burst. The first announce of each package
        (and its trackers, whose first announce libtorrent makes as soon as one is added) is
        made sooner, but paced too: :meth:`announce_some` takes them from a queue, a few per
        call (the seeder calls it every second). A session seeding a few packages announces
        them all here at once."""
        lt = _lt()
        with self.lock:
            self._announced = True
            for handle in self.seeding.values():
                handle.unset_flags(lt.torrent_flags.disable_dht | lt.torrent_flags.disable_lsd)
            self._to_announce = deque(self.seeding)
        self.announce_some()

    def announce_some(self) -> int:
        """Make the first announce of the next few packages in the queue :meth:`start_announcing`
        filled: ``max(ANNOUNCE_PACE, N / dht_announce_interval)`` of them, N the packages
        seeded. Returns how many are still queued."""
        with self.lock:
            queue = self._to_announce
            budget = max(ANNOUNCE_PACE, -(-len(self.seeding) // DHT_ANNOUNCE_INTERVAL))
            while queue and budget > 0:
                handle = self.seeding.get(queue.popleft())
                if handle is None:
                    continue  # unseeded meanwhile
                budget -= 1
                with contextlib.suppress(RuntimeError):  # removed meanwhile
                    for url in self.settings.trackers:
                        handle.add_tracker({"url": url})
                    if self.settings.trackers:
                        handle.force_reannounce()
                    if self.settings.dht:
                        handle.force_dht_announce()
            return len(queue)

    @property
    def announcing(self) -> bool:
        return self._announced

    @property
    def first_announces_left(self) -> int:
        """Packages whose first announce :meth:`announce_some` has still to make."""
        return len(self._to_announce)

    @property
    def dht_budget(self) -> int:
        """The ``dht_upload_rate_limit`` in force (:meth:`fit_dht_budget` sets it)."""
        return self._dht_budget

    def fit_dht_budget(self) -> int:
        """Set ``dht_upload_rate_limit`` for the packages seeded now (see
        :data:`DHT_BYTES_PER_SECOND_PER_PACKAGE`); applied only when that number changed, so
        a seeder's tick costs nothing here. Returns the limit in force."""
        wanted = DHT_BASE_BYTES_PER_SECOND + DHT_BYTES_PER_SECOND_PER_PACKAGE * len(self.seeding)
        if wanted != self._dht_budget:
            self.session.apply_settings({"dht_upload_rate_limit": wanted})
            self._dht_budget = wanted
        return self._dht_budget

    def _connect_static_peers(self, handle: lt.torrent_handle) -> None:
        for peer in self.settings.peers:
            try:
                handle.connect_peer(parse_peer(peer))
            except RuntimeError:
                pass  # a bad address is reported by the config check; an offline peer is normal

    # ------------------------------------------------------------------ downloading

    def download(self, package_hash: str, work: Path, progress: Callable[[Progress], None] | None = None,
                 cancel: threading.Event | None = None, stall: float = DEFAULT_STALL,
                 extra_peers: Iterable[str] = ()) -> Path:
        """Download package ``package_hash`` from the swarm into ``work``; return the root of the
        rebuilt tree (not yet re-hashed: :func:`treeseed.swarm.fetch.from_swarm` does that).

        Gives up with :class:`FetchError` when nothing arrives for ``stall`` seconds or when
        ``cancel`` is set; the partial download is removed from the session either way.
        """
        lt = _lt()
        atp = lt.parse_magnet_uri(magnet(package_hash))
        atp.save_path = str(work)
        atp.flags &= ~lt.torrent_flags.auto_managed
        atp.flags &= ~lt.torrent_flags.paused
        atp.trackers = list(self.settings.trackers)
        atp.url_seeds = web_seeds(self.settings.mirrors, package_hash)
        with self.lock:
            handle = self.session.add_torrent(atp)
        flushed = False
        try:
            for peer in [*self.settings.peers, *extra_peers]:
                handle.connect_peer(parse_peer(peer))
            self._wait(handle, package_hash, progress, cancel, stall)
            ti = handle.torrent_file()
            flushed = self._flush(handle)
            if not flushed:
                raise FetchError(f"swarm download of {package_hash}: libtorrent did not finish "
                                 "writing its files")
        finally:
            if not flushed and handle.status().has_metadata:  # without metadata, no storage
                self._flush(handle, timeout=10)  # no late write may land in the removed work dir
            with self.lock:
                # What it gave other peers while downloading is lost with the torrent: keep it
                # for the seeder's statistics (:meth:`take_download_uploads`).
                uploaded = handle.status().all_time_upload
                if uploaded:
                    self._download_uploads[package_hash] = (
                        self._download_uploads.get(package_hash, 0) + uploaded)
                self.session.remove_torrent(handle)
        return rebuild_tree(ti, work)

    def take_download_uploads(self, package_hash: str) -> int:
        """Bytes of ``package_hash`` uploaded by its downloads since last asked."""
        with self.lock:
            return self._download_uploads.pop(package_hash, 0)

    def take_all_download_uploads(self) -> dict[str, int]:
        """Bytes uploaded by downloads since last asked, per package (usually none)."""
        with self.lock:
            taken, self._download_uploads = self._download_uploads, {}
            return taken

    def _flush(self, handle: lt.torrent_handle, timeout: float = 30.0) -> bool:
        """Wait until every block of ``handle`` is written and its files are closed.

        A piece counts as finished once it passes its hash check, which libtorrent may do from
        its store buffer before the disk write: without this wait the tree is read while files
        are still missing or short. ``flush_cache`` queues a job behind all outstanding writes
        and posts ``cache_flushed_alert`` when it has run."""
        key = str(handle.info_hashes().v2)
        self._flushed.discard(key)
        handle.flush_cache()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.handle_alerts()
            if key in self._flushed:
                self._flushed.discard(key)
                return True
            time.sleep(0.01)
        return False

    def counters(self, timeout: float = 5.0) -> dict[str, int]:
        """libtorrent's session counters (``dht.dht_nodes``, ``dht.dht_bytes_out``,
        ``net.sent_bytes``, ...: ``lt.session_stats_metrics()``), fresh: asked for with
        post_session_stats and answered by an alert that :meth:`handle_alerts` keeps, whichever
        thread pops it. This replaces the deprecated ``session.status()``. If the answer takes
        longer than ``timeout`` (a session closing), the last counters known."""
        seen = self._counters_seen
        self.session.post_session_stats()
        deadline = time.monotonic() + timeout
        while self._counters_seen == seen and time.monotonic() < deadline:
            self.handle_alerts()
            if self._counters_seen == seen:
                self.session.wait_for_alert(20)
        return self._counters

    def handle_alerts(self) -> None:
        """Pop the session's alerts and handle each at once: note flushed caches and hand
        every alert to ``on_alert``. Never keep an alert: the next pop frees it (reading a kept
        one raises Boost.Python.ArgumentError, or worse)."""
        lt = _lt()
        with self._alert_lock:
            for alert in self.session.pop_alerts():
                if isinstance(alert, lt.session_stats_alert):
                    self._counters = dict(alert.values)
                    self._counters_seen += 1
                elif isinstance(alert, lt.cache_flushed_alert):
                    with contextlib.suppress(RuntimeError):  # its torrent is gone meanwhile
                        self._flushed.add(str(alert.handle.info_hashes().v2))
                if self.on_alert is not None:
                    with contextlib.suppress(RuntimeError):  # a handle gone meanwhile
                        self.on_alert(alert)

    def _wait(self, handle: lt.torrent_handle, package_hash: str,
              progress: Callable[[Progress], None] | None, cancel: threading.Event | None,
              stall: float) -> None:
        """Poll until the download is complete, asking the DHT for peers again while there
        are none (:class:`DhtLookups`)."""
        last_done, last_change = -1, time.monotonic()
        lookups = DhtLookups(last_change) if self.settings.dht else None
        state = Progress()
        while True:
            if cancel is not None and cancel.is_set():
                raise FetchError(f"swarm download of {package_hash} cancelled")
            st = handle.status()
            if st.errc.value():
                raise FetchError(f"swarm download of {package_hash} failed: {st.errc.message()}")
            if st.is_seeding or (st.has_metadata and st.is_finished and st.total_wanted_done == st.total_wanted):
                return
            done = st.total_wanted_done if st.has_metadata else 0
            now = time.monotonic()
            if lookups is not None and lookups.due(now, st.num_peers):
                handle.force_dht_announce()
            if done != last_done or st.num_peers != state.peers:
                last_done, last_change = done, now
            elif now - last_change > stall:
                what = "no peer has it" if not st.has_metadata else f"stalled at {done} bytes"
                raise FetchError(f"swarm download of {package_hash} gave up after {stall:.0f} s "
                                 f"without progress ({what}, {st.num_peers} peers)")
            state = Progress(done, st.total_wanted if st.has_metadata else None, st.num_peers,
                             "downloading" if st.has_metadata else "finding peers",
                             # Sticky: when the peer that went to the origin swaps its download
                             # for a seeding torrent it drops off for a moment; the stall timer,
                             # not that gap, decides when waiting for it has failed.
                             "wait" if state.origin == "wait" else self.origin_advice(handle, package_hash))
            if progress is not None:
                progress(state)
            time.sleep(_POLL)

    def origin_advice(self, handle: lt.torrent_handle, package_hash: str) -> str:
        """Should this downloader go to the origin? "now" when it has no way to find a peer;
        "wait" while a connected peer has any of
        the package (the swarm can deliver) or another downloader with no data ranks before
        us; "go" at once when peers are connected, none has data and we rank first; "" (no
        peers yet: the head start decides). When N caches want a package at once, only the
        first in rank fetches it from the origin and seeds the rest: one copy, not N."""
        mine = origin_rank(package_hash, self.peer_id)
        peers = handle.get_peer_info()
        for peer in peers:
            if peer.progress > 0 or peer.flags & _lt().peer_info.seed:
                return "wait"
            if origin_rank(package_hash, _pid_bytes(peer.pid)) < mine:
                return "wait"
        if not peers and not self._can_discover():
            return "now"  # no peers and no way to find one: the swarm cannot help
        return "go" if peers else ""

    def _can_discover(self) -> bool:
        st = self.settings
        return bool(st.peers or st.dht or st.lsd or st.trackers or st.mirrors)

    # ------------------------------------------------------------------ lifetime

    def listen_port(self) -> int:
        return self.session.listen_port()

    def close(self) -> None:
        with self.lock:
            for handle in list(self.seeding.values()):
                self.session.remove_torrent(handle)
            self.seeding.clear()
        self.session.pause()


class StillDownloading(FetchError):
    """A package on disk cannot be seeded yet: the session still downloads it (a fetch whose
    race the origin won is being cancelled, or another process's fetch is still running)."""


def origin_rank(package_hash: str, peer_id: bytes) -> bytes:
    """A downloader's place in the queue for the origin: SHA-256 of the info-hash and its peer
    id. Every peer computes the same order from what the handshake already told it, so no
    extra message is needed, and the order differs per package, so no peer is always first."""
    import hashlib

    return hashlib.sha256(bytes.fromhex(hex_of(package_hash)) + peer_id).digest()


def _pid_bytes(pid: object) -> bytes:
    return bytes.fromhex(str(pid))


def web_seeds(mirrors: Iterable[str], package_hash: str) -> list[str]:
    """BEP 19 web seeds for a package: each mirror serves its files at
    ``<mirror>/<hash>/package/<path>`` (``treeseed serve``); http(s) mirrors only."""
    from ..schemes import is_http

    return [f"{m.rstrip('/')}/{package_hash}/" for m in mirrors if is_http(m)]


def _root_or_none(root: object) -> bytes | None:
    raw = bytes.fromhex(str(root)) if not isinstance(root, bytes) else root
    return raw if any(raw) else None


def _renamed_into(ti: lt.torrent_info, package_hash: str) -> dict[int, str]:
    """Map each file from ``package/<path>`` (or, for a one-file torrent, ``<path>``) to
    ``<hash>/<path>``, so the package is seeded from ``p/<hash>/`` where the cache keeps it."""
    fs = ti.layout()
    out = {}
    for i in range(fs.num_files()):
        if fs.file_flags(i) & _lt().file_storage.flag_pad_file:
            continue
        out[i] = f"{package_hash}/{_package_relative(fs.file_path(i).replace(os.sep, '/'))}"
    return out


def rebuild_tree(ti: lt.torrent_info, work: Path) -> Path:
    """Move what libtorrent wrote under ``work`` into ``work/tree`` exactly as the info dict
    describes it: regular files moved into place with their executable bit, symlinks made from
    the info dict's own targets (libtorrent rewrites targets that point at nothing into
    self-links), every other path ignored."""
    from ..hashing.bencode import bdecode

    info = bdecode(bytes(ti.info_section()))
    root = work / "tree"
    root.mkdir()
    for path, leaf in _walk(info[b"file tree"]):
        dest = root / path
        dest.parent.mkdir(parents=True, exist_ok=True)
        if b"symlink path" in leaf:
            target = "/".join(p.decode("utf-8", "surrogateescape") for p in leaf[b"symlink path"])
            os.symlink(os.path.relpath(target, os.path.dirname(path) or "."), dest)
            continue
        on_disk = work / "package" / path
        if not on_disk.exists() and (work / path).exists():
            on_disk = work / path  # a one-file torrent: libtorrent drops the directory
        if leaf.get(b"length", 0) == 0 and not on_disk.exists():
            on_disk.parent.mkdir(parents=True, exist_ok=True)
            on_disk.touch()
        os.replace(on_disk, dest)
        os.chmod(dest, 0o755 if b"x" in leaf.get(b"attr", b"") else 0o644)
    return root


def _walk(tree: dict, prefix: str = "") -> Iterable[tuple[str, dict]]:
    for name, child in sorted(tree.items()):
        if name == b"":
            yield prefix.rstrip("/"), child
        else:
            yield from _walk(child, prefix + name.decode("utf-8", "surrogateescape") + "/")


def hex_id(package_hash: str) -> str:
    """The first 40 hex digits: what v1-era tools (trackers' whitelists, qBittorrent's API)
    use to name a v2 torrent."""
    return hex_of(package_hash)[:40]


def _package_relative(path: str) -> str:
    """A libtorrent file path relative to the package root: ``package/a/b`` -> ``a/b``; a
    one-file torrent's path is the file's own name already."""
    return path.split("/", 1)[1] if "/" in path else path
