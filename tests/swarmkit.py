"""Helpers and fixtures for tests that run real BitTorrent peers on 127.0.0.1: settings files,
ports, caches with their seeders (:class:`Node`, the ``nodes`` fixture; :class:`Peer`), packages,
tree snapshots, and witnesses (a recording HTTP tracker, the ``tracker`` fixture; a DHT router
on loopback, the ``dht_router`` fixture).

``tests/conftest.py`` registers this module in ``pytest_plugins``, so every test module gets its
fixtures by name; the helpers are imported (``from swarmkit import Node, small_tree``).

Every session these helpers configure listens on 127.0.0.1 on an explicit port with DHT, LSD,
UPnP and NAT-PMP off and no bootstrap node or tracker (or a DHT bootstrapped only from the
loopback router here): nothing leaves the machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from helpers import make_tree, run_cli
from httpserver import LoopbackServer
from waiting import WaitTimeout, wait_for

from treeseed.cache import Cache
from treeseed.hashing import hash_tree
from treeseed.hashing.bencode import bencode
from treeseed.ids import hex_of
from treeseed.package import scan_tree
from treeseed.swarm import aliases

#: Settings every test process gets: no discovery beyond the peers a test names.
LOOPBACK = {"torrent": True, "dht": False, "lsd": False, "upnp": False, "dht_bootstrap": [],
            "seed_delay": 0}


def free_port() -> int:
    """A port on 127.0.0.1 free for both TCP and UDP (libtorrent listens on both)."""
    for _ in range(100):
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port
    raise AssertionError("no free port on 127.0.0.1")


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    assert isinstance(value, list)
    return "[" + ", ".join(json.dumps(v) for v in value) + "]"


def write_settings(path: Path, **values: object) -> Path:
    """A settings file ($TREESEED_CONFIG): :data:`LOOPBACK` plus ``values``."""
    merged = {**LOOPBACK, **values}
    path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in merged.items()))
    return path


class Peer:
    """One treeseed cache with its own settings file and listen port."""

    def __init__(self, root: Path, **settings: object) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.cache = root / "cache"
        self.port = free_port()
        self.config = root / "settings.toml"
        self.configure(**settings)
        self.env = {"TREESEED_CONFIG": str(self.config)}

    def configure(self, **settings: object) -> None:
        """(Re)write the settings file: :data:`LOOPBACK`, this peer's port, ``settings``."""
        write_settings(self.config, listen=f"127.0.0.1:{self.port}", **settings)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cli(self, *args: str, check: bool = True, env: Mapping[str, str] | None = None):
        return run_cli(*args, cache=self.cache, env={**self.env, **(env or {})}, check=check)

    def status(self) -> dict:
        return json.loads(self.cli("seed", "status", "--json").stdout)

    def add_shared(self, path: Path) -> str:
        """Fetch a local tree or archive into this cache and share it (``seed --share``): a
        package from a local path is published only when the user says so."""
        package_hash = self.cli("fetch", str(path)).stdout.split()[0]
        self.cli("seed", "--share", package_hash)
        return package_hash

    @contextmanager
    def seeding(self) -> Iterator[dict]:
        """``treeseed seed --detach`` for this cache, stopped when the block ends."""
        self.cli("seed", "--detach")
        try:
            status = self.status()
            assert status["listen_port"] == self.port, (status, self.log())
            yield status
        finally:
            self.cli("seed", "stop", check=False)

    def packages(self) -> set[str]:
        p = self.cache / "p"
        return set(os.listdir(p)) if p.is_dir() else set()

    def log(self) -> str:
        path = self.cache / "seed" / "seeder.log"
        return path.read_text(errors="replace") if path.exists() else ""


def random_package(root: Path, name: str, sizes: Mapping[str, int], seed: int = 0,
                   private: bool = False) -> Path:
    """A package with a manifest, random files of the given sizes, an executable script, a
    symlink and an empty file."""
    rng = random.Random(seed)
    spec: dict[str, object] = {
        "treeseed.toml": (f'[package]\nname = "{name}"\nversion = "1.0"\n'
                          + ("private = true\n" if private else "")).encode(),
        "bin/run.sh": ("x", b"#!/bin/sh\necho " + name.encode() + b"\n"),
        "docs/empty": b"",
        "latest": ("link", "data/" + next(iter(sizes))),
    }
    for rel, size in sizes.items():
        spec[f"data/{rel}"] = rng.randbytes(size)
    return make_tree(root, spec)


def snapshot(root: Path) -> dict[str, tuple]:
    """Everything a package is: each path's kind, exec bit, content digest, link target."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                out[rel] = ("dir",)
            else:
                out[rel] = ("file", os.access(path, os.X_OK), path.stat().st_size,
                            hashlib.sha256(path.read_bytes()).hexdigest())
    return out


# --------------------------------------------------------------------------- caches and their seeders


class Node:
    """One cache, its settings file, and the treeseed processes run for it."""

    def __init__(self, root: Path, **settings: object) -> None:
        self.root = root
        root.mkdir(parents=True)
        self.cache = root / "cache"
        self.config = root / "config.toml"
        self.log = root / "seeder.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.settings: dict[str, object] = {
            "listen": f"127.0.0.1:{free_port()}", "dht": False, "dht_bootstrap": [],
            "lsd": False, "upnp": False, "seed_delay": 0}
        self.configure(**settings)

    def configure(self, **settings: object) -> None:
        self.settings.update(settings)
        self.config.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in self.settings.items()))

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "TREESEED_CONFIG": str(self.config)}

    def run(self, *args: str, env: dict[str, str] | None = None, check: bool = True,
            cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "treeseed", "--cache-dir", str(self.cache), *args],
                              capture_output=True, text=True, env={**self.env, **(env or {})},
                              cwd=cwd, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"treeseed {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    def fetch(self, package_hash: str, *args: str, env: dict[str, str] | None = None,
              check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return self.run("fetch", package_hash, "--torrent", *args, env=env, check=check,
                        timeout=timeout)

    def install(self, source: Path) -> str:
        """Put a package into this cache the ordinary way (the fetch pipeline, which also
        writes its .torrent and block hashes); returns its hash."""
        from treeseed.fetch import fetch

        cache = Cache(self.cache)
        try:
            package_hash = fetch(str(source), cache).hash
        finally:
            cache.close()
        self.share(package_hash)
        return package_hash

    def share(self, package_hash: str) -> None:
        """Say a package installed from a local path may be published (the ``share``
        setting): treeseed never publishes such a package on its own."""
        shared = list(self.settings.get("share", []))  # type: ignore[call-overload]
        self.configure(share=[*shared, package_hash])

    def package(self, package_hash: str) -> Path:
        return self.cache / "p" / package_hash

    # ------------------------------------------------------------------ the seeder

    def start_seeder(self, *args: str, env: dict[str, str] | None = None) -> dict:
        """``treeseed seed`` in the foreground, as a child process; returns its first status."""
        assert self.proc is None or self.proc.poll() is not None
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "treeseed", "--cache-dir", str(self.cache), "seed", *args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env={**self.env, **(env or {})})

        def up() -> dict | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"the seeder exited ({self.proc.returncode}):\n{self.log.read_text()}")
            return self.status()

        return wait_for("the seeder to answer", up)

    def detach_seeder(self) -> dict:
        out = self.run("seed", "--detach").stdout
        assert out.startswith("seeder running (pid "), out
        status = self.status()
        assert status is not None
        return status

    def status(self) -> dict | None:
        """The running seeder's status through its socket, or None if none answers."""
        from treeseed.swarm.client import SeederClient

        cache = Cache(self.cache)
        client = SeederClient.connect(cache, timeout=10)
        if client is None:
            return None
        with client:
            try:
                return client.call({"op": "status"}, timeout=10)
            except (OSError, ValueError):
                return None

    @property
    def peer(self) -> str:
        """This cache's seeder as a static peer for another cache's settings."""
        status = self.status()
        assert status is not None, "no seeder runs"
        return f"127.0.0.1:{status['listen_port']}"

    def stop_seeder(self) -> None:
        """Stop whatever seeder runs for this cache and wait until its process is gone."""
        info = self.seeder_info()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        elif info is not None:
            self.run("seed", "stop", check=False, timeout=60)
            pid = info["pid"]
            with suppress(WaitTimeout):
                wait_for("the detached seeder to exit", lambda: not alive(pid), timeout=20)
            if alive(pid):  # a detached seeder this test started: it must not outlive the test
                os.kill(pid, signal.SIGKILL)

    def seeder_info(self) -> dict | None:
        try:
            return json.loads((self.cache / "seed" / "seeder.json").read_text())
        except (FileNotFoundError, ValueError):
            return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with suppress(ChildProcessError, OSError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own child, now reaped
            return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    made: list[Node] = []

    def make(name: str, **settings: object) -> Node:
        made.append(Node(tmp_path / name, **settings))
        return made[-1]

    try:
        yield make
    finally:
        for node in made:
            node.stop_seeder()


# --------------------------------------------------------------------------- packages


def small_tree(root: Path, name: str | None = None, private: bool = False, size: int = 20_000) -> Path:
    spec: dict[str, object] = {"data.bin": os.urandom(size)}
    if name is not None:
        spec["treeseed.toml"] = (f'[package]\nname = "{name}"\nversion = "1.0.0"\n'
                                 + ("private = true\n" if private else "")).encode()
    return make_tree(root, spec)


def cached(node: Node) -> set[str]:
    p = node.cache / "p"
    return set(os.listdir(p)) if p.exists() else set()


# --------------------------------------------------------------------------- witnesses


class _TrackerHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        params = urllib.parse.parse_qs(url.query, encoding="latin-1")
        info_hash = params.get("info_hash", [""])[0].encode("latin-1").hex()
        with self.server.lock:  # type: ignore[attr-defined]
            self.server.announces.append((url.path, info_hash, params.get("event", [""])[0]))  # type: ignore[attr-defined]
        body = bencode({b"interval": 1800, b"peers": b""})
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class RecordingTracker(LoopbackServer):
    """An HTTP tracker that hands out no peers and records every announce it receives."""

    def __init__(self) -> None:
        super().__init__(_TrackerHandler)
        self.httpd.announces = []  # type: ignore[attr-defined]
        self.httpd.lock = threading.Lock()  # type: ignore[attr-defined]
        self.start()

    @property
    def announce_url(self) -> str:
        return self.url("/announce")

    def announces(self, package_hash: str | None = None) -> list[tuple[str, str, str]]:
        with self.httpd.lock:  # type: ignore[attr-defined]
            seen = list(self.httpd.announces)  # type: ignore[attr-defined]
        if package_hash is None:
            return seen
        return [a for a in seen if a[1] == hex_of(package_hash)[:40]]


@pytest.fixture
def tracker() -> Iterator[RecordingTracker]:
    srv = RecordingTracker()
    try:
        yield srv
    finally:
        srv.close()


@contextmanager
def lt_session(**extra: object) -> Iterator[Any]:
    """A libtorrent session of the test's own: loopback, explicit port, no LSD, UPnP, NAT-PMP;
    no DHT unless ``extra`` turns on a local one."""
    import libtorrent as lt

    pack = {"listen_interfaces": f"127.0.0.1:{free_port()}", "enable_dht": False,
            "dht_bootstrap_nodes": "", "enable_lsd": False, "enable_upnp": False,
            "enable_natpmp": False, "enable_incoming_utp": False, "enable_outgoing_utp": False,
            "alert_mask": 0, **extra}
    session = lt.session(pack)
    try:
        yield session
    finally:
        session.pause()
        for handle in session.get_torrents():
            session.remove_torrent(handle)
        del session


class DhtRouter:
    """A DHT-only libtorrent node on loopback that the other nodes bootstrap from, and that
    reports each announce and lookup it receives (its ``dht_notification`` alerts)."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.seen: list[tuple[str, str, int | None]] = []  # (kind, 40 hex, port)

    @property
    def node(self) -> str:
        return f"127.0.0.1:{self.session.listen_port()}"

    def poll(self) -> list[tuple[str, str, int | None]]:
        import libtorrent as lt

        for alert in self.session.pop_alerts():
            if isinstance(alert, lt.dht_announce_alert):
                self.seen.append(("announce", str(alert.info_hash), alert.port))
            elif isinstance(alert, lt.dht_get_peers_alert):
                self.seen.append(("get_peers", str(alert.info_hash), None))
        return self.seen

    def saw(self, kind: str, package_hash: str) -> list[tuple[str, str, int | None]]:
        return [s for s in self.poll() if s[0] == kind and s[1] == hex_of(package_hash)[:40]]

    def mentions(self, package_hash: str) -> list[tuple[str, str, int | None]]:
        return [s for s in self.poll() if s[1] == hex_of(package_hash)[:40]]


LOCAL_DHT = {"dht_restrict_routing_ips": False, "dht_restrict_search_ips": False,
             "dht_prefer_verified_node_ids": False}


@pytest.fixture
def dht_router() -> Iterator[DhtRouter]:
    import libtorrent as lt

    with lt_session(enable_dht=True, alert_mask=lt.alert.category_t.dht_notification,
                    **LOCAL_DHT) as session:
        yield DhtRouter(session)


# --------------------------------------------------------------------------- DHT aliases


def dht_settings(router: str) -> dict[str, object]:
    return {"dht": True, "dht_bootstrap": [router], "torrent": True}


def other_hashes(path: Path, package_hash: str) -> dict[str, str]:
    from treeseed.interop.zig import zig_hash

    found = hash_tree(path, scan_tree(path, package_hash), ["nar", "git"], package_hash)
    return {**found, "zig": zig_hash(path, package_hash, allow_missing_paths=True).hash}


def wait_published(node: Node, fmt: str, value: str) -> None:
    """Until the seeder's log says the item was stored by a node of the DHT."""
    line = f"alias {aliases.salt(fmt, value).decode()} put in the DHT, stored by "

    def stored() -> bool:
        text = node.log.read_text(errors="replace") if node.log.exists() else ""
        return any(line in row and not row.endswith(" 0 nodes") for row in text.splitlines())

    wait_for(f"{fmt} alias put by {node.root.name}", stored, timeout=120)


def plant_a_wrong_hint(tmp_path: Path, nodes, dht_router, fmt: str = "nar") -> tuple[str, str]:
    """A seeds a package; then anyone (here, a session of our own) writes a DHT item that
    names A's package for another tree's hash in ``fmt``. Returns (A's package, that hash)."""
    from treeseed.config import Settings
    from treeseed.swarm.session import Swarm

    a = nodes("a", **dht_settings(dht_router.node))
    seeded = a.install(small_tree(tmp_path / "src", "seeded"))
    a.start_seeder()
    own = hash_tree(a.package(seeded), scan_tree(a.package(seeded), seeded), [fmt])[fmt]
    wait_published(a, fmt, own)
    absent = small_tree(tmp_path / "absent", "absent")
    wanted = hash_tree(absent, scan_tree(absent, "absent"), [fmt])[fmt]
    swarm = Swarm(Settings({**Settings.defaults().values, "listen": f"127.0.0.1:{free_port()}",
                            "lsd": False, "upnp": False, **dht_settings(dht_router.node)},
                           frozenset()))
    dht = aliases.AliasDht(swarm)
    try:
        assert dht.put(fmt, wanted, seeded) > 0
    finally:
        dht.close()
        swarm.close()
    return seeded, wanted
