"""Fetching a package from the swarm knowing only its hash, and racing the swarm against URLs.

:func:`from_swarm` is the whole swarm path: ask this cache's running seeder to fetch (it
already has a session, peers and a warm DHT), or, with no seeder, open a short-lived session
of our own. Either way the tree is rebuilt from the verified info dict, hashed again as a
package, and only a tree that hashes to the requested hash is renamed into the cache.

:func:`race` is what a fetch with torrenting on does for a package it lacks: the swarm starts
first; after a short head start the mirrors and origin URLs start too; whichever completes
first wins and the other is cancelled. A stalled or poisoned swarm simply loses.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, TypeVar

from ..cache import Cache
from ..env import env_seconds
from ..errors import FetchError, TreeseedError
from ..ids import is_bt2
from ..install import AlsoHash, FetchResult
from .download import download_and_install

if TYPE_CHECKING:  # libtorrent is imported only when a session starts
    from ..config import Settings

#: Seconds the swarm runs alone before the origin starts (``TREESEED_SWARM_HEAD_START``).
HEAD_START = 2.0
T = TypeVar("T")


def head_start() -> float:
    return env_seconds("TREESEED_SWARM_HEAD_START", HEAD_START)


def from_swarm(cache: Cache, package_hash: str, settings: Settings,
               progress: Callable[[int, int | None], None] | None = None,
               cancel: threading.Event | None = None,
               on_advice: Callable[[str], None] | None = None,
               also: AlsoHash | None = None) -> FetchResult:
    """Fetch ``package_hash`` from the swarm into ``cache`` (through the running seeder if
    there is one); a new tree must also have ``also`` (:class:`treeseed.install.AlsoHash`). Private packages are never looked up: a lookup alone leaks interest.
    ``on_advice`` hears, as the download goes, whether the origin should wait or go
    (:meth:`treeseed.swarm.session.Swarm.origin_advice`)."""
    if not is_bt2(package_hash):
        raise TreeseedError(f"{package_hash!r} is not a treeseed hash (bt2- and 64 hex digits)")
    from ..sharing import Sharing, private_because

    refused = Sharing(cache, settings).may_look_up(package_hash)
    if refused is not None:
        raise FetchError(private_because(package_hash, refused))
    if cache.has(package_hash):
        from ..install import cached_result

        return cached_result(cache, package_hash, "swarm", ())
    from .client import SeederClient

    client = SeederClient.connect(cache)
    if client is not None:
        with client:
            return client.download(package_hash, progress, cancel, on_advice, also)
    from .session import Swarm

    swarm = Swarm(settings)
    try:
        swarm.start_announcing()  # a fetching session has something to look for: no delay
        return download_and_install(swarm, cache, package_hash, progress, cancel,
                                    on_advice=on_advice, also=also)
    finally:
        swarm.close()


def _stop_if_interrupted() -> None:
    from ..fetchers import FetchInterrupted, interrupted

    if interrupted():
        raise FetchInterrupted("the swarm download was interrupted")


def _wait_interruptibly(jobs: set[Future[T]]) -> tuple[set[Future[T]], set[Future[T]]]:
    """Wait for the first of ``jobs`` to finish, noticing an interrupt within a tick."""
    while True:
        finished, pending = wait(jobs, timeout=0.1, return_when=FIRST_COMPLETED)
        _stop_if_interrupted()
        if finished:
            return finished, pending


class BothFailed(TreeseedError):
    def __init__(self, swarm_error: BaseException | None, origin_error: BaseException | None) -> None:
        self.swarm_error = swarm_error
        self.origin_error = origin_error
        super().__init__(f"{origin_error} (the swarm failed too: {swarm_error})")


def race(swarm_fetch: Callable[[threading.Event], T],
         origin_fetch: Callable[[threading.Event], T] | None,
         delay: float, advice: Callable[[], str] = lambda: "") -> T:
    """Run ``swarm_fetch`` at once and ``origin_fetch`` after ``delay`` seconds unless the
    swarm has finished by then; return the first success, cancel the other. When both fail,
    :class:`BothFailed` carries both errors. ``advice()`` can move the origin's start: "now"
    starts it at once (no peer can ever be found), "go" halfway through the head start (we are the downloader elected to fetch from the
    origin), "wait" holds it past the head start (the swarm has the data, or another
    downloader fetches from the origin for all of us) until the swarm finishes or stalls.

    With no ``origin_fetch`` (nothing but the swarm to ask) the swarm alone runs. Either way an
    interrupt (:func:`treeseed.fetchers.interrupt`: Ctrl-C, SIGTERM) cancels both sides within
    one tick: the waits here are short so that it is noticed."""
    cancel_swarm, cancel_origin = threading.Event(), threading.Event()
    pool = ThreadPoolExecutor(2, thread_name_prefix="treeseed-race")
    try:
        swarm_job = pool.submit(swarm_fetch, cancel_swarm)
        if origin_fetch is None:
            _wait_interruptibly({swarm_job})
            return swarm_job.result()
        started = time.monotonic()
        while True:
            done, _ = wait([swarm_job], timeout=0.1)
            _stop_if_interrupted()
            say, elapsed = advice(), time.monotonic() - started
            # "go" counts after half the head start: peers keep connecting for a while, and
            # whoever ranks first among too few of them would go to the origin needlessly.
            if (done or say == "now" or (say == "go" and elapsed >= delay / 2)
                    or (say != "wait" and elapsed >= delay)):
                break
        if swarm_job in done and swarm_job.exception() is None:
            return swarm_job.result()
        origin_job = pool.submit(origin_fetch, cancel_origin)
        pending = {swarm_job, origin_job} - done
        while pending:
            finished, pending = _wait_interruptibly(pending)
            for job in finished:
                if job.exception() is None:
                    (cancel_origin if job is swarm_job else cancel_swarm).set()
                    return job.result()
        raise BothFailed(swarm_job.exception(), origin_job.exception())
    finally:
        cancel_swarm.set()
        cancel_origin.set()
        pool.shutdown(wait=True)
