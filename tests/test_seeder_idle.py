"""An idle seeder does no per-package work: resume data is written only when libtorrent says
it changed, and every seeded package is outside libtorrent's auto-manager (whose active_*
limits silently stop announcing past a few hundred torrents). Loopback only."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from swarmkit import small_tree

from treeseed.cache import Cache

if TYPE_CHECKING:
    from swarmkit import Node

    from treeseed.swarm.seeder import Seeder


@contextmanager
def seeder_of(tmp_path: Path, nodes, monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
              count: int, name: str) -> Iterator[tuple[Node, list[str], Cache, Seeder]]:
    """A cache of ``count`` small shared packages and a started in-process Seeder for it:
    (the node, the packages, the cache, the seeder); stopped and closed afterwards."""
    from treeseed.config import settings
    from treeseed.swarm.seeder import Seeder

    a = nodes("a")
    hashes = [a.install(small_tree(tmp_path / f"src-{i}", f"{name}-{i}")) for i in range(count)]
    monkeypatch.setenv("TREESEED_CONFIG", str(a.config))
    cache = Cache(a.cache)
    seeder = Seeder(cache, settings())
    seeder.start()
    try:
        assert seeder.swarm is not None
        yield a, hashes, cache, seeder
    finally:
        seeder.stop()
        seeder.shutdown()
        cache.close()


def test_idle_seeder_rewrites_no_resume_data(tmp_path: Path, nodes,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    with seeder_of(tmp_path, nodes, monkeypatch, 3, "idle") as (a, hashes, _, seeder):
        handles = dict(seeder.swarm.seeding)
        assert set(handles) == set(hashes)
        assert not any(h.status().auto_managed for h in handles.values())

        resume = a.cache / "seed" / "resume"
        seeder.save_state(wait=True)  # whatever changed since the add is written now
        before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in resume.glob("bt2-*")}

        # Idle ticks, then two more saves. save_state(wait=True) returns once libtorrent has
        # answered for every package (saved, or "not modified"): the answers decide, not time.
        for _ in range(3):
            seeder.scan()
            seeder.record_stats()
        for _ in range(2):
            answered = seeder._resume_answers
            seeder.save_state(wait=True)
            assert seeder._resume_answers - answered == len(hashes)
        after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in resume.glob("bt2-*")}
        assert after == before

        status = seeder.status()
        assert sorted(p["hash"] for p in status["packages"]) == sorted(hashes)
        assert {p["state"] for p in status["packages"]} == {"seeding"}


def test_dht_upload_budget_follows_the_packages_seeded(tmp_path: Path, nodes,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """libtorrent stops answering other DHT nodes once its own messages use up
    dht_upload_rate_limit; the seeder's own traffic grows with its packages, so does the limit,
    and the status shows the one libtorrent has."""
    from treeseed.swarm.client import notify_added
    from treeseed.swarm.session import (
        DHT_BASE_BYTES_PER_SECOND,
        DHT_BYTES_PER_SECOND_PER_PACKAGE,
    )

    with seeder_of(tmp_path, nodes, monkeypatch, 2, "budget") as (a, first, cache, seeder):

        def limits() -> tuple[int, int]:
            shown = seeder.status()["dht"]["upload_rate_limit"]
            return shown, seeder.swarm.session.get_settings()["dht_upload_rate_limit"]

        assert limits() == (DHT_BASE_BYTES_PER_SECOND + 2 * DHT_BYTES_PER_SECOND_PER_PACKAGE,) * 2
        later = a.install(small_tree(tmp_path / "src-later", "budget-later"))
        notify_added(cache, later)  # what a fetch does: the seeder rereads sharing, adds it
        assert limits() == (DHT_BASE_BYTES_PER_SECOND + 3 * DHT_BYTES_PER_SECOND_PER_PACKAGE,) * 2
        assert set(seeder.swarm.seeding) == {*first, later}
