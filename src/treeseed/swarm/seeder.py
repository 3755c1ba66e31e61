"""The long-running seeder: one per cache, shared by every treeseed process on the machine.

It seeds every public package in the cache (new ones are picked up as they arrive), keeps
libtorrent's resume data and the upload statistics on disk so a restart resumes instead of
resetting, and fetches from the swarm on behalf of other treeseed processes, so several
``treeseed build --watch`` share one session, one DHT node and one listen port.

Files under ``<cache>/seed/``::

    seeder.lock        flock held by the running seeder: at most one per cache
    seeder.sock        its local socket (JSON lines; see :class:`.client.SeederClient`)
    seeder.json        pid, socket, status page URL, listen port (for `treeseed seed status`)
    resume/<hash>      libtorrent's resume data per package (pieces, merkle trees, totals)
    stats.sqlite       uploads per package (:mod:`.stats`)
    seeder.log         output of a --detach'ed seeder

Started with nothing to fetch, the seeder waits ``seed_delay`` seconds before it announces
(DHT, LSD, trackers), so processes started and killed in quick succession never churn the DHT;
a fetch request ends the wait at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

from ..cache import Cache
from ..errors import AliasMismatch, FetchError, TreeseedError
from ..install import AlsoHash, FetchResult
from ..sharing import private_because
from .client import SeederBusy, SeederClient, read_info, seed_dir, socket_path

if TYPE_CHECKING:
    from ..config import Settings
    from .aliases import AliasPublisher
    from .session import Swarm

#: The seeder's tick: it handles libtorrent's alerts, asks for the statuses that changed,
#: records statistics and looks whether ``p/`` changed, each time.
SCAN_INTERVAL = 1.0
#: How often it lists ``p/`` even though its mtime says nothing arrived or left.
RESCAN_INTERVAL = 60.0
#: How often it asks libtorrent for the resume data that changed.
SAVE_INTERVAL = 60.0
#: save_resume_data's only_if_modified without if_config_changed: the seeder turns each
#: package's DHT and LSD flags on when it starts announcing, and re-adding sets them anyway.
_RESUME_IF_CHANGED = 0xF8 & ~0x20  # if_counters_changed | download_progress | state | metadata


class Seeder:
    """Seeds a cache until :meth:`stop`; answers other processes on a local socket."""

    def __init__(self, cache: Cache, settings: Settings, status_bind: str = "127.0.0.1:0",
                 log: Callable[[str], None] | None = None) -> None:
        self.cache = cache
        self.settings = settings
        self.status_bind = status_bind
        self.log = log or (lambda line: None)
        self.dir = seed_dir(cache)
        self.stopping = threading.Event()
        self.started = threading.Event()
        self.fetching = 0
        self.swarm: Swarm | None = None
        self.stats = None
        self.status_url: str | None = None
        self._lock_fd: int | None = None
        self._server: socketserver.UnixStreamServer | None = None
        self._peers_seen: dict[str, set[str]] = {}
        self._uploaded: dict[str, int] = {}
        self._skipped: set[str] = set()  # never seeded: private, or refused by libtorrent
        self._private: set[str] = set()  # of those, the ones not to publish (for status)
        from ..sharing import Sharing

        self.sharing = Sharing(cache, settings)
        self._served: dict[str, set[str]] = {}  # peers that received blocks since the last tally
        self._saved: set[str] = set()  # packages whose resume data was written since last asked
        self._fetch_locks: dict[str, threading.Lock] = {}  # one download per package at a time
        self._fetch_locks_lock = threading.Lock()
        self.start_time = time.time()
        self.aliases: AliasPublisher | None = None  # keeps each package's aliases in the DHT
        # What libtorrent last said of each torrent (state_update_alert: only the torrents
        # whose status changed), keyed by package; the status page reads this.
        self._status: dict[str, _TorrentStatus] = {}
        self._changed: set[str] = set()  # statuses changed since record_stats last looked
        self._updates = 0  # state_update_alerts handled
        self._resume_answers = 0  # save_resume_data answers (saved or not modified)
        self._p_mtime: int | None = None  # p/'s mtime at the last full scan
        self._rates = _Rates()
        self._last_scan = 0.0

    # ------------------------------------------------------------------ lifetime

    def run(self) -> None:
        """Seed until stopped (SIGINT/SIGTERM in the foreground, `treeseed seed stop`)."""
        self.start()
        try:
            self.loop()
        finally:
            self.shutdown()

    def start(self) -> None:
        from .session import Swarm
        from .stats import Stats

        self._take_lock()
        try:
            self.stats = Stats(self.dir)
            self.swarm = Swarm(self.settings, alert_queue=1 << 17)
            self.swarm.on_alert = self._on_alert
            self.scan()
            self._serve_status()
            self._write_info()  # before the socket: whoever it answers finds seeder.json
            self._serve_socket()
        except BaseException:
            self.shutdown()
            raise
        self.started.set()
        self.log(f"seeding {len(self.swarm.seeding)} packages from {self.cache.root}; listening on "
                 f"port {self.swarm.listen_port()}; status page {self.status_url}")
        if self.settings.dht:
            self._start_aliases()

    def _start_aliases(self) -> None:
        """Publish the seeded packages' aliases in the DHT, started only once the seeder answers:
        a package whose nar or git hash the index lacks is hashed for it, and for a large cache
        that work must not delay seeding (10,000 such packages took start-up from 8 s to 26 s)."""
        from .aliases import AliasPublisher

        assert self.swarm is not None
        self.aliases = AliasPublisher.start_for(self.swarm, self.cache.root, self.log)
        for package_hash in list(self.swarm.seeding):
            self.aliases.publish(package_hash)

    def loop(self) -> None:
        """Each tick costs the same whatever the number of packages: no handle is polled.
        libtorrent reports what changed (state updates, upload alerts) and ``p/`` is listed
        only when its mtime changed."""
        assert self.swarm is not None
        last_save = time.monotonic()
        while not self.stopping.wait(SCAN_INTERVAL):
            self._maybe_announce()
            self.swarm.announce_some()
            self.scan()
            self.record_stats()
            if time.monotonic() - last_save > SAVE_INTERVAL:
                self.save_state(wait=False)
                last_save = time.monotonic()

    def stop(self) -> None:
        self.stopping.set()

    def shutdown(self) -> None:
        """Save state, close the socket and the session, release the lock."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            socket_path(self.cache).unlink(missing_ok=True)
            self._server = None
        if getattr(self, "_status_server", None) is not None:
            self._status_server.shutdown()
            self._status_server.server_close()
            self._status_server = None
        if self.swarm is not None:
            with contextlib.suppress(Exception):
                self.record_stats()
                self.save_state(wait=True)
            if self.aliases is not None:
                self.aliases.stop()
                self.aliases = None
            self.swarm.close()
            self.swarm = None
        if self.stats is not None:
            self.stats.close()
            self.stats = None
        (self.dir / "seeder.json").unlink(missing_ok=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _take_lock(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / "seeder.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            info = read_info(self.cache)
            pid = f" (pid {info['pid']})" if info else ""
            raise SeederBusy(f"a seeder already runs for the cache {self.cache.root}{pid}; "
                             "'treeseed seed status' shows it, 'treeseed seed stop' stops it") from None
        self._lock_fd = fd

    def _write_info(self) -> None:
        assert self.swarm is not None
        info = {"pid": os.getpid(), "socket": str(socket_path(self.cache)),
                "status_url": self.status_url, "listen_port": self.swarm.listen_port(),
                "cache": str(self.cache.root), "started": self.start_time}
        tmp = self.dir / f".seeder.json.{os.getpid()}"
        tmp.write_text(json.dumps(info), encoding="utf-8")
        os.replace(tmp, self.dir / "seeder.json")

    # ------------------------------------------------------------------ seeding

    def scan(self, force: bool = False) -> None:
        """Seed packages that arrived, drop ones that left; private packages are skipped.

        ``p/`` is listed only when its mtime changed (a package installed or removed renames a
        directory in or out of it), or every :data:`RESCAN_INTERVAL` seconds anyway."""
        assert self.swarm is not None
        try:
            mtime: int | None = os.stat(self.cache.packages_dir).st_mtime_ns
        except FileNotFoundError:
            mtime = None
        now = time.monotonic()
        if (not force and mtime == self._p_mtime and self._p_mtime is not None
                and now - self._last_scan < RESCAN_INTERVAL):
            return
        self._p_mtime, self._last_scan = mtime, now  # read before listing: a change during it rescans
        on_disk = set(self.cache._package_dirs())
        for gone in set(self.swarm.seeding) - on_disk:
            self.swarm.unseed(gone)
            self._status.pop(gone, None)
        for package_hash in sorted(on_disk - set(self.swarm.seeding) - self._skipped):
            self.add(package_hash)
        self.swarm.fit_dht_budget()  # the packages seeded changed: so does our DHT traffic

    def add(self, package_hash: str) -> bool:
        assert self.swarm is not None
        refused = self.sharing.may_publish(package_hash)
        if refused is not None:
            self._skipped.add(package_hash)
            self._private.add(package_hash)
            self.log(f"not seeding {package_hash}: {refused}")
            return False
        from .session import StillDownloading

        try:
            self.swarm.seed(self.cache, package_hash, self._saved_resume(package_hash))
        except StillDownloading as exc:
            self.log(str(exc))  # not skipped: the next scan tries again
            return False
        except (TreeseedError, OSError, RuntimeError) as exc:
            self._skipped.add(package_hash)
            self.log(f"not seeding {package_hash}: {exc}")
            return False
        if self.aliases is not None:
            self.aliases.publish(package_hash)  # at once, then again before items expire
        return True

    def _reread_sharing(self, package_hash: str) -> None:
        """A package added or shared since we started: decide again with the settings as they
        are now (``treeseed seed --share`` writes the ``share`` setting, then tells us)."""
        from ..config import settings
        from ..sharing import Sharing

        try:
            self.sharing = Sharing(self.cache, settings())
        except TreeseedError as exc:
            self.log(f"keeping the sharing settings read before: {exc}")
        self._skipped.discard(package_hash)
        self._private.discard(package_hash)

    def _saved_resume(self, package_hash: str) -> bytes | None:
        try:
            return (self.dir / "resume" / package_hash).read_bytes()
        except FileNotFoundError:
            return None

    def _maybe_announce(self) -> None:
        assert self.swarm is not None
        if not self.swarm.announcing and (self.fetching or
                                          time.time() - self.start_time >= self.settings.seed_delay):
            self.swarm.start_announcing()
            self.log("announcing to the swarm")

    def save_state(self, wait: bool = True) -> None:
        """Ask libtorrent for the resume data of each package whose state changed since it was
        last saved (uploads, mostly) and write it under ``resume/`` as it arrives; libtorrent
        answers "not modified" for the others, and nothing is written for them. ``wait``: until
        every package has answered (at shutdown), at most 10 s."""
        assert self.swarm is not None
        with self.swarm.lock:
            handles = list(self.swarm.seeding.values())
        before = self._resume_answers
        for handle in handles:
            with contextlib.suppress(RuntimeError):  # removed meanwhile
                handle.save_resume_data(_RESUME_IF_CHANGED)
        deadline = time.monotonic() + 10
        while wait and self._resume_answers - before < len(handles) and time.monotonic() < deadline:
            self.swarm.session.wait_for_alert(50)
            self._handle_alerts()

    def _handle_alerts(self) -> set[str]:
        """Handle the session's pending alerts; return the packages whose resume data was
        written since the last call."""
        assert self.swarm is not None
        self.swarm.handle_alerts()
        saved, self._saved = self._saved, set()
        return saved

    def _on_alert(self, alert: Any) -> None:
        """Count the peers served, write saved resume data. Called as the swarm pops each
        alert, on whichever thread pops (a download's too): an alert must not be kept."""
        import libtorrent as lt

        if isinstance(alert, lt.block_uploaded_alert):
            key = "bt2-" + str(alert.handle.info_hashes().v2)
            self._served.setdefault(key, set()).add(_peer_key_of(alert.pid, alert.endpoint))
        elif isinstance(alert, lt.state_update_alert):
            seeding = self.swarm.seeding if self.swarm is not None else {}
            for st in alert.status:
                key = "bt2-" + str(st.info_hashes.v2)
                handle = seeding.get(key)
                if handle is not None and handle == st.handle:  # not a download's torrent
                    self._status[key] = _TorrentStatus.of(st)
                    self._changed.add(key)
            self._updates += 1
        elif isinstance(alert, lt.save_resume_data_alert):
            self._resume_answers += 1
            package_hash = "bt2-" + str(alert.handle.info_hashes().v2)
            data = lt.write_resume_data_buf(alert.params)
            resume_dir = self.dir / "resume"
            path = resume_dir / package_hash
            with contextlib.suppress(OSError):
                if path.read_bytes() == data:
                    return
            resume_dir.mkdir(parents=True, exist_ok=True)
            tmp = resume_dir / f".{package_hash}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, path)
            self._saved.add(package_hash)
        elif isinstance(alert, lt.save_resume_data_failed_alert):
            self._resume_answers += 1

    def refresh(self, timeout: float = 0.0) -> None:
        """Ask libtorrent for the statuses that changed since last asked (post_torrent_updates:
        one state_update_alert listing only those torrents) and handle pending alerts; with a
        ``timeout``, wait that long at most for the answer."""
        assert self.swarm is not None
        before = self._updates
        self.swarm.session.post_torrent_updates(0)  # 0: the basic fields, no piece lists
        deadline = time.monotonic() + timeout
        while True:
            self._handle_alerts()
            if self._updates > before or time.monotonic() >= deadline:
                return
            self.swarm.session.wait_for_alert(20)

    def record_stats(self) -> None:
        """Fold libtorrent's all-time upload totals and the peers served into the store, for
        the packages libtorrent reported a change for (its state updates) or that served
        blocks (its upload alerts): an idle package costs nothing here."""
        assert self.swarm is not None and self.stats is not None
        self.refresh()
        for package_hash, uploaded in self.swarm.take_all_download_uploads().items():
            self.stats.record_while_downloading(package_hash, uploaded)
        with self.swarm.lock:
            seeding = self.swarm.seeding
            changed, self._changed = self._changed, set()
            touched = {h: seeding[h] for h in changed | set(self._served) if h in seeding}
        for package_hash in set(self._served) - set(touched):
            self._served.pop(package_hash, None)  # a download's, not a seeded package's
        for package_hash, handle in touched.items():
            known = self._status.get(package_hash)
            uploaded = known.all_time_upload if known else self._uploaded.get(package_hash, 0)
            peers = self._served.pop(package_hash, set())
            if uploaded != self._uploaded.get(package_hash):
                # Upload alerts can be dropped when the queue overflows: the peers' own
                # totals back them up, read only for a package that uploaded meanwhile.
                with contextlib.suppress(RuntimeError):
                    for peer in handle.get_peer_info():
                        if peer.total_upload > 0:
                            peers.add(_peer_key_of(peer.pid, peer.ip))
            new_peers = peers - self._peers_seen.setdefault(package_hash, set())
            if uploaded != self._uploaded.get(package_hash) or new_peers:
                self.stats.record(package_hash, uploaded, new_peers)
                self._uploaded[package_hash] = uploaded
                self._peers_seen[package_hash] |= new_peers

    # ------------------------------------------------------------------ serving other processes

    def download_for(self, package_hash: str, progress: Callable[[int, int | None], None],
              cancel: threading.Event, stall: float | None = None,
              on_advice: Callable[[str], None] | None = None,
              also: AlsoHash | None = None) -> FetchResult:
        """Download a package for another process with our session, then seed it; ``stall``
        is the asking process's own TREESEED_SWARM_STALL; ``also`` the asking process's hint
        to check before the install."""
        from .download import download_and_install

        assert self.swarm is not None
        refused = self.sharing.may_look_up(package_hash)
        if refused is not None:
            raise FetchError(private_because(package_hash, refused))
        self.fetching += 1
        with self._fetch_locks_lock:
            one_at_a_time = self._fetch_locks.setdefault(package_hash, threading.Lock())
        try:
            self._maybe_announce()
            # Two processes asking for the same package would share one torrent in the session,
            # each downloading into its own work dir: the second waits, then finds it cached.
            while not one_at_a_time.acquire(timeout=0.1):
                if cancel.is_set():
                    raise FetchError(f"swarm download of {package_hash} cancelled")
            cache = Cache(self.cache.root)
            try:
                if cache.has(package_hash):
                    from ..install import cached_result

                    result = cached_result(cache, package_hash, "swarm", ())
                else:
                    result = download_and_install(self.swarm, cache, package_hash, progress,
                                                  cancel, stall, on_advice, also)
            finally:
                cache.close()
                one_at_a_time.release()
        finally:
            self.fetching -= 1
        self.add(package_hash)
        return result

    def status(self) -> dict[str, Any]:
        """Everything the status page and `treeseed seed status` show."""
        assert self.swarm is not None and self.stats is not None
        counters = self.swarm.counters()
        upload_rate, download_rate = self._rates.update(counters)
        self.refresh(timeout=0.5)  # the statuses that changed since the last tick
        with self.swarm.lock:
            handles = dict(self.swarm.seeding)
        stats = {s.hash: s for s in self.stats.all()}
        # status() runs on the socket's and the status page's threads: an sqlite connection
        # cannot cross threads, so each call reads the index through its own, in one query.
        index = Cache(self.cache.root)
        try:
            infos = _infos(index, handles)
        finally:
            index.close()
        packages = []
        size_total = 0
        for package_hash, handle in sorted(handles.items()):
            st = self._status.get(package_hash)
            if st is None or st.num_peers or st.upload_rate:
                # Not reported yet (just added), or busy: libtorrent posts no update for the
                # tick its rates fall to 0, so ask the few busy handles themselves.
                with contextlib.suppress(RuntimeError):
                    st = _TorrentStatus.of(handle.status())
            if st is None:
                continue  # removed meanwhile
            info = infos.get(package_hash)
            size = info[1] if info else st.total_wanted
            size_total += size
            s = stats.get(package_hash)
            packages.append({
                "hash": package_hash, "name": info[0] if info else None, "size": size,
                "state": st.state, "pieces": st.num_pieces,  # seeding, all: no re-check
                "peers": st.num_peers, "upload_rate": st.upload_rate,
                "uploaded": s.uploaded if s else 0, "peers_served": s.peers if s else 0,
                "last_served": s.last_served if s else None,
                "copies": (s.uploaded / size) if s and size else 0.0,
            })
        packages.sort(key=lambda p: (-p["uploaded"], p["hash"]))
        return {
            "pid": os.getpid(), "cache": str(self.cache.root), "started": self.start_time,
            "listen_port": self.swarm.listen_port(), "announcing": self.swarm.announcing,
            "dht_nodes": counters.get("dht.dht_nodes", 0),
            "peers": counters.get("peer.num_peers_connected", 0),
            "upload_rate": upload_rate, "download_rate": download_rate,
            "dht": self._dht_counters(counters),
            "packages": packages, "seeding": len(packages), "cache_bytes": size_total,
            "skipped_private": len(self._private),
        }

    def _dht_counters(self, counters: dict[str, int]) -> dict[str, int]:
        """The DHT's work since the seeder started, for the status page and
        bench/seeder_scale.py: messages each kind sent, bytes, requests of others dropped for
        want of ``dht_upload_rate_limit`` quota, and the alias items put."""
        names = ("dht_announce_peer_out", "dht_get_peers_out", "dht_put_out", "dht_get_out",
                 "dht_messages_out", "dht_bytes_out", "dht_messages_in", "dht_messages_in_dropped")
        out = {name[4:]: counters.get(f"dht.{name}", 0) for name in names}
        out["alias_puts"] = self.aliases.puts if self.aliases is not None else 0
        out["first_announces_left"] = self.swarm.first_announces_left if self.swarm else 0
        out["upload_rate_limit"] = self.swarm.dht_budget if self.swarm else 0
        return out

    def _serve_socket(self) -> None:
        path = socket_path(self.cache)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # we hold the lock: any socket file left is a dead one's
        seeder = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline(1 << 16)
                if not line:
                    return  # a probe: connected to see whether a seeder runs, then closed
                try:
                    request = json.loads(line)
                except ValueError:
                    request = None
                if isinstance(request, dict):
                    answer = seeder._answer(request, self._send, self.connection)
                else:
                    answer = {"error": "requests are one JSON object per line"}
                with contextlib.suppress(OSError):  # the asker may have gone away
                    self._send(answer)

            def _send(self, message: dict) -> None:
                self.wfile.write(json.dumps(message).encode() + b"\n")
                self.wfile.flush()

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        self._server = Server(str(path), Handler)
        os.chmod(path, 0o600)
        thread = threading.Thread(target=self._server.serve_forever, name="treeseed-seeder-socket",
                                  daemon=True)
        thread.start()

    def _answer(self, request: dict, send: Callable[[dict], None], conn: socket.socket) -> dict:
        op = request.get("op")
        if op == "status":
            return self.status()
        if op == "stop":
            self.stop()
            return {"ok": True}
        if op == "added":
            package_hash = str(request.get("hash"))
            self._reread_sharing(package_hash)
            added = self.cache.has(package_hash) and self.add(package_hash)
            if added and self.swarm is not None:
                self.swarm.fit_dht_budget()
            return {"ok": added}
        if op == "alias":  # the DHT's hint for another format's hash (swarm/aliases.py)
            if self.aliases is None:
                return {"error": "the DHT is off"}
            return {"hash": self.aliases.dht.get(str(request.get("format")),
                                                 str(request.get("value")))}
        if op == "fetch":
            also = AlsoHash.from_json(request["also"]) if "also" in request else None
            if "also" in request and also is None:
                return {"error": "a fetch request's 'also' must name a zig, nar, git or "
                                 "nix-store hash"}
            return self._answer_fetch(str(request.get("hash")), send, conn, request.get("stall"),
                                      also)
        return {"error": f"unknown request {op!r}"}

    def _answer_fetch(self, package_hash: str, send: Callable[[dict], None],
                      conn: socket.socket, stall: Any = None,
                      also: AlsoHash | None = None) -> dict:
        cancel = threading.Event()
        if isinstance(stall, bool) or not isinstance(stall, (int, float)) or not stall > 0:
            stall = None  # absent or nonsense: the seeder's own

        advice = [""]

        def progress(done: int, total: int | None) -> None:
            try:
                send({"progress": done, "total": total, "origin": advice[0]})
            except OSError:
                cancel.set()  # the asking process went away: stop downloading for it

        try:
            result = self.download_for(package_hash, progress, cancel, stall,
                                       lambda a: advice.__setitem__(0, a), also)
        except AliasMismatch as exc:
            return {"error": str(exc), "mismatch": exc.actual}
        except TreeseedError as exc:
            return {"error": str(exc)}
        return {"ok": True, "hash": result.hash, "transferred": result.transferred}

    def _serve_status(self) -> None:
        from .status import serve_status

        self._status_server, self.status_url = serve_status(self, self.status_bind)


class _Rates:
    """Bytes per second sent and received, from libtorrent's cumulative ``net.sent_bytes`` and
    ``net.recv_bytes`` counters: the change since the previous sample at least a second old
    (status() is asked for by the socket and the status page, often in quick succession)."""

    def __init__(self) -> None:
        self._last: tuple[float, int, int] | None = None
        self._rates = (0, 0)

    def update(self, counters: dict[str, int]) -> tuple[int, int]:
        now = time.monotonic()
        sent, received = counters.get("net.sent_bytes", 0), counters.get("net.recv_bytes", 0)
        if self._last is None:
            self._last = (now, sent, received)
        elif now - self._last[0] >= 1.0:
            t, s, r = self._last
            self._rates = (int((sent - s) / (now - t)), int((received - r) / (now - t)))
            self._last = (now, sent, received)
        return self._rates


class _TorrentStatus(NamedTuple):
    """The few fields of a libtorrent torrent_status the seeder keeps (never the object: it
    may come from an alert, which the next pop frees)."""

    state: str
    num_pieces: int
    num_peers: int
    upload_rate: int
    total_wanted: int
    all_time_upload: int

    @classmethod
    def of(cls, st: Any) -> _TorrentStatus:
        return cls(st.state.name, st.num_pieces, st.num_peers, st.upload_rate, st.total_wanted,
                   st.all_time_upload)


def _infos(index: Cache, hashes: Iterable[str]) -> dict[str, tuple[str | None, int]]:
    """(name, size) of each of ``hashes`` the index knows, read in one query."""
    wanted = set(hashes)
    if not (index.root / "index.sqlite").exists():
        return {}
    rows = index.db.execute("SELECT hash, name, size FROM packages")
    return {h: (name, size) for h, name, size in rows if h in wanted}


def _peer_key_of(pid: Any, endpoint: Any) -> str:
    """A peer's identity for the distinct-peers count: its peer id (stable for a client's
    session), else its address."""
    raw = str(pid)
    if raw and set(raw) != {"0"}:
        return raw
    host, port = endpoint
    return f"{host}:{port}"


class SeederKeeper:
    """Keeps a cache seeded while a watching build runs.

    It runs the seeder in a thread when none runs, and takes over when the seeder it relied on
    goes away (another watching build that ended). Several watching builds therefore share one
    seeder, and the last one still running keeps it. A seeder stopped on purpose
    (`treeseed seed stop`) stays stopped.
    """

    CHECK_INTERVAL = 2.0

    def __init__(self, cache: Cache, settings: Settings, log: Callable[[str], None] | None) -> None:
        self.cache = cache
        self.settings = settings
        self.log = log
        self.seeder: Seeder | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="treeseed-seeder", daemon=True)

    def start(self) -> None:
        self._try_start()  # at once, so the watch's first build already has a seeder
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()  # before reading self.seeder: see _run
        seeder = self.seeder
        if seeder is not None:
            seeder.stop()
        self._thread.join(timeout=30)

    def _try_start(self) -> bool:
        client = SeederClient.connect(self.cache)
        if client is not None:
            client.close()
            return False
        seeder = Seeder(self.cache, self.settings, log=self.log)
        try:
            seeder.start()
        except SeederBusy:
            return False
        self.seeder = seeder
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.seeder is None and not self._try_start():
                self._stop.wait(self.CHECK_INTERVAL)
                continue
            seeder = self.seeder
            assert seeder is not None
            # stop() sets _stop before it reads self.seeder, and self.seeder was set before
            # this check: one of the two always sees the other.
            if not self._stop.is_set():
                seeder.loop()
            seeder.shutdown()
            self.seeder = None
            if not self._stop.is_set():
                return  # stopped from outside ('treeseed seed stop'): leave it stopped


def install_signal_handlers(seeder: Seeder) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: seeder.stop())
