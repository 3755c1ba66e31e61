"""``ipfs://<cid>``: a package fetched by CID from trustless IPFS gateways.

Each gateway of the ``ipfs_gateways`` setting is asked in turn with the trustless gateway
protocol (``GET <gateway>/ipfs/<cid>?format=car``, ``Accept: application/vnd.ipld.car``).
The CAR streams through :class:`treeseed.car.CarReader`, which checks every block against its
CID, into :class:`treeseed.dagunpack.DagUnpacker`, which writes each verified block where
the DAG says, under the package path rules and the unpack limits. A gateway that sends a
wrong block, leaves one out, or roots its CAR elsewhere is named in the error and the next
one is asked; its partial tree is deleted first. The tree is then the pipeline's like a git
checkout (``Fetched("tree")``): rules, bt2 hash, one install.

The CID is announced (format ``ipfs``) before anything is downloaded, so a package the cache
already knows by it costs no transfer (once the cache accepts that format: :func:`_announceable`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import FetchError, TreeseedError
from . import AnnounceFn, Fetched, ProgressFn

CAR_TYPE = "application/vnd.ipld.car"


def cid_from_url(url: str) -> str:
    """The CID text of ``ipfs://<cid>`` (a trailing ``/`` allowed; no path below it)."""
    rest = url.split("://", 1)[1].strip("/")
    if not rest or "/" in rest or "?" in rest or "#" in rest:
        raise FetchError(f"{url}: write an IPFS source as ipfs://<CID> (a package is the whole "
                         "directory the CID names; no path after it)")
    return rest


class IpfsSource:
    def __init__(self, url: str) -> None:
        from ..unixfs import BadBlock, cid_text, parse_cid

        self.url = url
        try:
            self.cid = parse_cid(cid_from_url(url))
        except BadBlock as exc:
            raise FetchError(f"{url}: {exc}") from None
        self.cid_text = cid_text(self.cid)
        self.canonical = f"ipfs://{self.cid_text}"

    def fetch(self, work: Path, progress: ProgressFn | None = None,
              announce: AnnounceFn | None = None) -> Fetched:
        from ..config import settings

        if announce and _announceable():
            announce("ipfs", self.cid_text)
        gateways = settings().ipfs_gateways
        if not gateways:
            raise FetchError(f"{self.url}: no IPFS gateway configured; add one with 'treeseed "
                             "config set ipfs_gateways https://trustless-gateway.link'")
        import urllib3

        failures = []
        target = work / "ipfs-tree"
        for gateway in gateways:
            try:
                size = self._from(gateway, target, progress)
            except (TreeseedError, OSError, urllib3.exceptions.HTTPError) as exc:
                from .http import _describe

                why = _describe(exc) if isinstance(exc, urllib3.exceptions.HTTPError) else str(exc)
                failures.append(f"gateway {gateway}: {why}")
                shutil.rmtree(target, ignore_errors=True)
                continue
            return Fetched("tree", target, bytes_transferred=size)
        raise FetchError(f"{self.url}: no gateway delivered it (" + "; ".join(failures) + "); "
                         "check the ipfs_gateways setting, or try another gateway")

    def _from(self, gateway: str, target: Path, progress: ProgressFn | None) -> int:
        """Stream the CAR from one gateway into ``target``; its byte count."""
        from ..car import CarReader
        from ..dagunpack import DagUnpacker
        from ..unixfs import cid_text
        from ..unpack import Limits
        from .http import pool

        url = f"{gateway}/ipfs/{self.cid_text}?format=car&dag-scope=all"
        response = pool().request("GET", url, preload_content=False, redirect=False, headers={
            "Accept": f"{CAR_TYPE}; version=1; order=dfs; dups=y"})
        try:
            if response.status != 200:
                raise FetchError(f"HTTP {response.status} {response.reason or ''}".rstrip())
            ctype = response.headers.get("Content-Type", "")
            if not ctype.startswith(CAR_TYPE):
                raise FetchError(f"answered with {ctype or 'no Content-Type'}, not a CAR")
            reader = CarReader(_Counted(response, progress), url)
            roots = reader.roots()
            if roots[0] != self.cid:
                raise FetchError(f"sent a CAR rooted at {cid_text(roots[0])}, not the CID asked for")
            unpacker = DagUnpacker(self.cid, target, self.canonical, Limits.from_env())
            for cid, block in reader.blocks():
                unpacker.add(cid, block)
            unpacker.finish()
            return reader.bytes_read
        finally:
            response.release_conn()


def _announceable() -> bool:
    """Does the cache accept an ``ipfs`` announcement? Its list of formats
    (``treeseed.fetchers.FORMATS``) lacks one until that one-line entry lands; until then an
    announcement would be refused as a malformed line and fail the fetch."""
    from ..fetchers import FORMATS

    return "ipfs" in FORMATS


class _Counted:
    """The response body as a file, reporting bytes to ``progress`` as they arrive."""

    def __init__(self, response, progress: ProgressFn | None) -> None:  # type: ignore[no-untyped-def]
        self.response = response
        self.progress = progress
        self.done = 0

    def read(self, n: int) -> bytes:
        data = self.response.read(n)
        self.done += len(data)
        if self.progress is not None and data:
            self.progress(self.done, None)
        return data
