"""One package from the swarm into the cache: download, hash again as a package, install.

Shared by the seeder daemon (which downloads for other processes with its own session) and by
a short-lived session (:func:`treeseed.swarm.fetch.from_swarm` when no seeder runs). The tree
libtorrent wrote was checked piece by piece against the info dict; it is then rebuilt as a
package and hashed again, and only a tree with the requested hash goes through the one
install (:mod:`treeseed.install`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..env import env_seconds
from ..errors import FetchError
from ..install import AlsoHash, Delivery, FetchResult, install
from ..sharing import SWARM_SOURCE

if TYPE_CHECKING:
    from ..cache import Cache
    from .session import Swarm


def stall_timeout() -> float:
    """Seconds without progress before a swarm download gives up (``TREESEED_SWARM_STALL``)."""
    from .session import DEFAULT_STALL

    return env_seconds("TREESEED_SWARM_STALL", DEFAULT_STALL)


def download_and_install(swarm: Swarm, cache: Cache, package_hash: str,
                         progress: Callable[[int, int | None], None] | None = None,
                         cancel: threading.Event | None = None,
                         stall: float | None = None,
                         on_advice: Callable[[str], None] | None = None,
                         also: AlsoHash | None = None) -> FetchResult:
    """Download into a work directory, re-verify the whole tree, install by rename, and keep
    the .torrent and block hashes so the package can be seeded at once. ``also`` is a hint's
    claim checked before the install (:class:`treeseed.install.AlsoHash`)."""
    from ..assemble import adopt_tree, finish_tree
    from . import torrents
    from .session import Progress

    def report(p: Progress) -> None:
        if on_advice is not None:
            on_advice(p.origin)
        if progress is not None:
            progress(p.done, p.total)

    with cache.workdir() as work:
        root = swarm.download(package_hash, work, report, cancel,
                              stall_timeout() if stall is None else stall)
        source = f"swarm:{package_hash}"
        package = finish_tree(adopt_tree(root, source), source)
        if package.hash != package_hash:
            raise FetchError(f"the swarm delivered a tree that hashes to {package.hash}, not "
                             f"{package_hash}; nothing was cached")
        torrents.write(work, package_hash, package.entries, package.digests, source)
        manifest = package.rules.manifest
        delivery = Delivery(package.root, work, package_hash, len(package.entries), package.size,
                            SWARM_SOURCE, manifest.name if manifest else None,
                            manifest.version if manifest else None,
                            bool(manifest and manifest.private), transferred=package.size)
        return install(cache, delivery, package_hash, also=also)
