"""Upload counts per package: what the seeder served, to how many peers, and when.

Kept in ``seed/stats.sqlite`` under the cache root. Unlike the cache index this is not derived
data (it cannot be rebuilt from the packages), so it lives apart from ``index.sqlite`` and
survives index rebuilds. The popularity figure is bytes uploaded over package size: how many
copies of the package this cache has given away.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS uploads (
    hash        TEXT PRIMARY KEY,
    bytes       INTEGER NOT NULL DEFAULT 0,  -- the seeding torrent's all-time upload
    last_served REAL,
    while_downloading INTEGER NOT NULL DEFAULT 0  -- uploaded before it was seeded
);
CREATE TABLE IF NOT EXISTS peers (
    hash TEXT NOT NULL,
    peer TEXT NOT NULL,
    PRIMARY KEY (hash, peer)
);
"""


@dataclass
class PackageStats:
    hash: str
    uploaded: int
    peers: int
    last_served: float | None
    size: int | None = None
    name: str | None = None

    @property
    def copies(self) -> float | None:
        """Popularity: copies of the package served (bytes uploaded / package size)."""
        return self.uploaded / self.size if self.size else None

    def as_json(self) -> dict:
        return {"hash": self.hash, "name": self.name, "uploaded": self.uploaded,
                "peers": self.peers, "last_served": self.last_served, "size": self.size,
                "copies": self.copies}


class Stats:
    """The statistics store of one cache's seeder."""

    def __init__(self, seed_dir: Path) -> None:
        seed_dir.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(seed_dir / "stats.sqlite", timeout=30, isolation_level=None,
                                  check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(_SCHEMA)

    def record(self, package_hash: str, uploaded: int, peers: set[str]) -> None:
        """Store the all-time upload total libtorrent reports (it persists across restarts in
        the resume data) and any new peers that received bytes."""
        row = self.db.execute("SELECT bytes FROM uploads WHERE hash = ?", (package_hash,)).fetchone()
        before = row[0] if row else 0
        if uploaded > before:  # libtorrent's total only grows (it persists in the resume data)
            self.db.execute(
                "INSERT INTO uploads (hash, bytes, last_served) VALUES (?, ?, ?) "
                "ON CONFLICT(hash) DO UPDATE SET bytes = excluded.bytes, last_served = excluded.last_served",
                (package_hash, uploaded, time.time()))
        if peers:
            self.db.executemany("INSERT OR IGNORE INTO peers (hash, peer) VALUES (?, ?)",
                                [(package_hash, p) for p in peers])

    def record_while_downloading(self, package_hash: str, uploaded: int) -> None:
        """Add bytes uploaded by a download of the package, before it was seeded: they are
        not in the seeding torrent's own total."""
        self.db.execute(
            "INSERT INTO uploads (hash, bytes, last_served, while_downloading) VALUES (?, 0, ?, ?) "
            "ON CONFLICT(hash) DO UPDATE SET while_downloading = while_downloading + excluded."
            "while_downloading, last_served = excluded.last_served",
            (package_hash, time.time(), uploaded))

    def uploaded(self, package_hash: str) -> int:
        row = self.db.execute("SELECT bytes + while_downloading FROM uploads WHERE hash = ?",
                              (package_hash,)).fetchone()
        return row[0] if row else 0

    def all(self) -> list[PackageStats]:
        """Every package that has uploaded anything, most uploaded first."""
        rows = self.db.execute(
            "SELECT u.hash, u.bytes + u.while_downloading,"
            " (SELECT COUNT(*) FROM peers p WHERE p.hash = u.hash), u.last_served"
            " FROM uploads u ORDER BY u.bytes + u.while_downloading DESC, u.hash").fetchall()
        return [PackageStats(*row) for row in rows]

    def close(self) -> None:
        self.db.close()
