"""``treeseed serve`` as a trustless IPFS gateway for the packages it may share.

``GET /ipfs/<cid>?format=raw`` answers one block; ``?format=car`` a CARv1 of the DAG below
``<cid>`` (depth-first, each block once: ``order=dfs; dups=n``; ``dag-scope=block`` only the
block itself). ``Accept: application/vnd.ipld.raw`` or ``application/vnd.ipld.car`` asks the
same without ``format=`` (:func:`format_from_accept`); ``format=`` wins when both are given. ``<cid>`` may name a package's root, a sub-directory, a file or any block of
one. Blocks are made from the package tree on demand (:func:`treeseed.hashing.ipfs.package_dag`
reads the package once; dag-pb nodes are kept in memory, leaves are ranges of the package's
files, sent with ``sendfile``), so nothing is stored. Private packages are never read: only
packages :meth:`treeseed.serve.Mirror.public` allows are looked in, so their CIDs are absent.

Finding a CID: the blocks of every DAG built so far are indexed; a CID the index lacks is
looked up as an ``ipfs`` alias, then the public packages not yet built are built one by one
until one holds it (the first miss reads each public package once; later misses cost a
lookup). Runs in the mirror's worker threads, never in its reception loop.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .car import car_header, section_head
from .errors import TreeseedError
from .hashing.ipfs import Dag
from .tarstream import FileSlice
from .unixfs import BadBlock, cid_text, parse_cid

CAR_TYPE = "application/vnd.ipld.car; version=1; order=dfs; dups=n"
RAW_TYPE = "application/vnd.ipld.raw"


@dataclass
class Answer:
    """A response body for :mod:`treeseed.serve` (which wraps it in a ``Resource``)."""

    size: int
    etag: str
    content_type: str
    pieces: Callable[[int, int], Iterator[bytes | FileSlice]]
    headers: dict[str, str]


class Gateway:
    """What ``/ipfs/`` serves. ``public`` is the mirror's one privacy gate; ``packages`` lists
    the public packages and ``path_of`` gives a package's directory."""

    def __init__(self, public: Callable[[str], bool], packages: Callable[[], frozenset[str]],
                 path_of: Callable[[str], Path], owner: Callable[[str], str | None],
                 log: Callable[[str], None]) -> None:
        self.public = public
        self.packages = packages
        self.path_of = path_of
        self.owner = owner
        self.log = log
        self.dags: dict[str, Dag] = {}
        self.index: dict[bytes, str] = {}
        self._lock = threading.Lock()

    def answer(self, cid_text_: str, query: dict[str, str], accept: str = "") -> Answer | None:
        """The answer to ``/ipfs/<cid>?<query>``, or None (404: unknown, private or malformed).
        ``accept`` is the request's ``Accept`` header: real clients (Helia's trustless-gateway
        client, Kubo, boxo) ask with it, ``?format=`` wins when both are given."""
        fmt = query.get("format") or format_from_accept(accept)
        if fmt not in ("raw", "car"):
            return None
        try:
            cid = parse_cid(cid_text_)
        except BadBlock:
            return None
        found = self._find(cid)
        if found is None:
            return None
        package, dag = found
        text = cid_text(cid)
        headers = {"X-Content-Type-Options": "nosniff", "X-Ipfs-Path": f"/ipfs/{text}",
                   "X-Ipfs-Roots": text, "Vary": "Accept"}
        root = self.path_of(package)
        if fmt == "raw" or query.get("dag-scope") == "block":
            order = [cid]
        else:
            order = dfs(dag, cid)
        if fmt == "raw":
            headers["Content-Disposition"] = f'attachment; filename="{text}.bin"'
            size, pieces = _blocks(dag, root, order, with_heads=False)
            return Answer(size, f'"{text}.raw"', RAW_TYPE, pieces, headers)
        headers["Content-Disposition"] = f'attachment; filename="{text}.car"'
        size, pieces = _blocks(dag, root, order, with_heads=True, header=car_header(cid))
        scope = query.get("dag-scope", "all")
        return Answer(size, f'"{text}.car.{scope}"', CAR_TYPE, pieces, headers)

    def _find(self, cid: bytes) -> tuple[str, Dag] | None:
        with self._lock:
            package = self.index.get(cid)
        if package is not None and self.public(package):
            return package, self._dag(package)
        owner = self.owner(cid_text(cid))
        if owner is not None:
            dag = self._dag(owner)
            if cid in dag:
                return owner, dag
        for package in sorted(self.packages()):
            if package in self.dags:
                continue
            dag = self._dag(package)
            if cid in dag:
                return package, dag
        return None

    def _dag(self, package: str) -> Dag:
        with self._lock:
            dag = self.dags.get(package)
        if dag is not None:
            return dag
        from .hashing.ipfs import package_dag
        from .package import scan_tree

        root = self.path_of(package)
        try:
            dag = package_dag(root, scan_tree(root, package))
        except (OSError, TreeseedError) as exc:
            self.log(f"treeseed serve: cannot lay out {package} as UnixFS: {exc}")
            return Dag(b"")
        with self._lock:
            self.dags[package] = dag
            for block in list(dag.nodes) + list(dag.leaves):
                self.index.setdefault(block, package)
        return dag

    def forget(self, package: str) -> None:
        with self._lock:
            self.dags.pop(package, None)


_MEDIA = {"application/vnd.ipld.raw": "raw", "application/vnd.ipld.car": "car"}


def format_from_accept(accept: str) -> str | None:
    """``raw`` or ``car`` as the trustless gateway spec reads ``Accept``, else None.

    The entry with the highest ``q`` wins, the first one on a tie; ``q=0`` refuses a type; a
    CAR asked for with a ``version`` other than 1 is one this gateway cannot give. Its
    ``order`` and ``dups`` are wishes: the answer is always ``order=dfs; dups=n`` and says so
    in its ``Content-Type``, as the spec allows. Anything unparsable counts as absent.
    """
    best: tuple[float, str] | None = None
    for entry in accept.split(",")[:32]:
        media, *params = (part.strip() for part in entry.split(";"))
        fmt = _MEDIA.get(media.lower())
        if fmt is None:
            continue
        values: dict[str, str] = {}
        for param in params:
            key, _, value = param.partition("=")
            values[key.strip().lower()] = value.strip().strip('"')
        if fmt == "car" and values.get("version", "1") != "1":
            continue
        try:
            q = float(values.get("q", "1"))
        except ValueError:
            continue
        if not 0 < q <= 1:
            continue
        if best is None or q > best[0]:
            best = (q, fmt)
    return best[1] if best else None


def dfs(dag: Dag, root: bytes) -> list[bytes]:
    """Every block below ``root``, depth-first in link order, each once."""
    order: list[bytes] = []
    seen: set[bytes] = set()
    stack = [root]
    while stack:
        cid = stack.pop()
        if cid in seen:
            continue
        seen.add(cid)
        order.append(cid)
        node = dag.nodes.get(cid)
        if node is not None:
            stack.extend(reversed(node[1]))
    return order


def _blocks(dag: Dag, root: Path, order: list[bytes], with_heads: bool, header: bytes = b""
            ) -> tuple[int, Callable[[int, int], Iterator[bytes | FileSlice]]]:
    """The body: ``header``, then each block (after its section head in a CAR). Returns its
    size and a ``pieces(start, stop)`` for ranges."""
    parts: list[bytes | tuple[bytes, int, int, int]] = [header] if header else []
    for cid in order:
        node = dag.nodes.get(cid)
        if node is not None:
            parts.append((section_head(cid, len(node[0])) if with_heads else b"") + node[0])
            continue
        path, offset, length = dag.leaves[cid]
        if with_heads:
            parts.append(section_head(cid, length))
        raw = os.fsencode(root / path)
        parts.append((raw, os.stat(raw).st_size, offset, length))
    sizes = [len(p) if isinstance(p, bytes) else p[3] for p in parts]
    total = sum(sizes)

    def pieces(start: int, stop: int) -> Iterator[bytes | FileSlice]:
        pos = 0
        for part, size in zip(parts, sizes, strict=True):
            lo, hi = max(start, pos), min(stop, pos + size)
            if lo < hi:
                if isinstance(part, bytes):
                    yield part[lo - pos:hi - pos]
                else:
                    raw, file_size, offset, _ = part
                    yield FileSlice(raw, file_size, offset + lo - pos, hi - lo)
            pos += size

    return total, pieces
