"""Helpers for tests that run real BitTorrent peers on 127.0.0.1: settings files, ports,
detached seeders, packages, and tree snapshots.

Every session these helpers configure listens on 127.0.0.1 on an explicit port with DHT, LSD,
UPnP and NAT-PMP off and no bootstrap node or tracker: nothing leaves the machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from conftest import make_tree, run_cli

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


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0, poll: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)
