"""``treeseed nix prefetch``: the hash ``nix-prefetch-url [--unpack]`` prints, fetched by treeseed.

Nix 2.8's ``nix-prefetch-url`` prints the SHA-256 of one of two things, in nix32:

* without ``--unpack`` (``fetchurl``): the downloaded file's bytes. That is treeseed's
  ``archive-sha256`` of the URL, so it comes straight out of :func:`treeseed.fetch.fetch`,
  which also puts the unpacked package in the cache. A file treeseed cannot unpack (a patch,
  a binary) still has a flat hash: it is downloaded by treeseed's own sources and hashed,
  without entering the cache.
* with ``--unpack`` (``fetchzip``): the NAR of the unpacked archive. Nix unpacks everything
  (empty directories included, no package rules) and then takes the archive's single
  top-level entry if it has exactly one (a directory, or a lone file, whose NAR is that of a
  plain file), else the whole unpacked directory. treeseed's package is a different view of the
  same archive (no empty directories, the package's own include rules, a lone top-level file
  kept inside a directory), so the NAR is computed from the archive itself, unpacked by
  treeseed's strict unpacker into the cache's ``tmp/``, with Nix's rules. When the two views
  agree, the package's ``nar`` alias is this very hash.

The archive's bytes come from where treeseed's fetch left them: the local file of a
``file://`` URL or path, an archive the cache keeps (``Cache.archive_path``, where present),
or else one more download, checked against the ``archive-sha256`` the fetch recorded.

>>> prefetch("https://example.org/x-1.0.tar.gz", Cache(), unpack=True).nix32  # doctest: +SKIP
'0jjl5kxg5drwbnc8iqh5bv6zzc2ik7y1vfnd64kqaw8wl1rihpbv'
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..cache import Cache
from ..errors import TreeseedError, UnpackError
from ..hashing.nar import is_store_name, nix32, sri
from ..unpack import Limits
from .nixcache import url_name

#: What the NAR of a node starts with: the archive's magic string, framed.
_NAR_MAGIC = b"nix-archive-1"


@dataclass(frozen=True)
class Prefetched:
    """A Nix SHA-256 (of a file, or of a NAR) and what treeseed's cache holds for it."""

    digest: bytes
    package: str | None  # the bt2 hash of the package it is in the cache as; None if not cached
    note: str | None = None  # something the user should know (why the views differ, ...)

    @property
    def nix32(self) -> str:
        return nix32(self.digest)

    @property
    def sri(self) -> str:
        return sri(self.digest)


def prefetch(url: str, cache: Cache, unpack: bool = False, limits: Limits | None = None,
             fetchers: dict[str, str] | None = None, name: str | None = None) -> Prefetched:
    """What ``nix-prefetch-url [--unpack] url`` computes, fetched through treeseed.

    The store path Nix would give the result is recorded too, so that ``treeseed serve``
    offers it as a substitute (:mod:`treeseed.interop.nixcache`): under ``name``, by default
    the URL's last component as ``nix-prefetch-url`` and ``fetchurl`` name it, and, unpacked,
    also under "source", the name ``fetchzip`` gives it. An unpacked tree is recorded only
    when treeseed's package is Nix's tree (same NAR): otherwise the package is not that path.
    """
    limits = limits or Limits.from_env()
    if unpack:
        found = _prefetch_unpacked(url, cache, limits, fetchers)
    else:
        found = _prefetch_flat(url, cache, limits, fetchers)
    _record_store_paths(found, cache, unpack, name or url_name(url))
    return found


def _record_store_paths(found: Prefetched, cache: Cache, unpack: bool, name: str) -> None:
    from .nixcache import SOURCE, record_flat_path, record_tree_path

    if found.package is None:
        return
    if not unpack:
        record_flat_path(cache, found.package, found.digest.hex(), name)
    elif found.note is None:
        for each in dict.fromkeys((SOURCE, name)):
            if is_store_name(each):
                record_tree_path(cache, found.package, found.digest, each)


def _prefetch_flat(url: str, cache: Cache, limits: Limits, fetchers: dict[str, str] | None
                   ) -> Prefetched:
    from ..fetch import fetch

    try:
        result = fetch(url, cache, formats=("archive-sha256",), limits=limits, fetchers=fetchers,
                       keep_archive=True)
    except TreeseedError as exc:  # not an archive treeseed takes: the bytes still have a hash
        digest = _hash_download(url, cache, exc)
        return Prefetched(digest, None, f"not cached as a package ({exc})")
    digest = result.formats.get("archive-sha256")
    if digest is None:
        raise TreeseedError(f"{url}: a directory or a git checkout has no flat hash; "
                            "use 'treeseed nix prefetch --unpack' for its NAR hash")
    return Prefetched(bytes.fromhex(digest), result.hash)


def _hash_download(url: str, cache: Cache, fetch_error: TreeseedError) -> bytes:
    """SHA-256 of the URL's bytes as treeseed's source downloads them (no unpacking)."""
    from ..assemble import sha256_file
    from ..sources import open_source

    with cache.workdir() as work:
        try:
            got = open_source(url).fetch(work)
        except TreeseedError:
            raise fetch_error from None
        if got.kind != "archive":
            raise fetch_error
        return bytes.fromhex(got.archive_sha256 or sha256_file(got.path))


def _prefetch_unpacked(url: str, cache: Cache, limits: Limits, fetchers: dict[str, str] | None
                       ) -> Prefetched:
    from ..fetch import fetch

    result = fetch(url, cache, formats=("archive-sha256", "nar"), limits=limits, fetchers=fetchers,
                   keep_archive=True)
    archive_sha256 = result.formats.get("archive-sha256")
    if archive_sha256 is None:
        raise TreeseedError(f"{url}: nix-prefetch-url --unpack unpacks an archive, and this is a "
                            "directory or a git checkout; 'treeseed fetch --format nar' gives "
                            "the NAR hash of its package")
    with cache.workdir() as work:
        archive = _archive_bytes(url, cache, archive_sha256, work)
        digest = nix_unpacked_digest(archive, work / "nix-unpacked", url, limits)
    note = None
    if sri(digest) != result.formats.get("nar"):
        note = ("Nix's unpacked tree differs from treeseed's package (empty directories, a single "
                f"top-level file, or files the package's own rules leave out): {result.hash} has "
                f"NAR hash {result.formats.get('nar')}; the hash above is Nix's")
    return Prefetched(digest, result.hash, note)


def _archive_bytes(url: str, cache: Cache, archive_sha256: str, work: Path) -> Path:
    """The archive whose SHA-256 the fetch recorded, without downloading it again if possible."""
    from ..sources import open_source
    from ..sources.local import LocalSource

    source = open_source(url)
    if isinstance(source, LocalSource):
        return source.path
    if cache.archive_path(archive_sha256).is_file():  # kept by the fetch (keep_archive)
        return cache.archive_path(archive_sha256)
    got = source.fetch(work)
    if got.archive_sha256 is not None and got.archive_sha256 != archive_sha256:
        raise TreeseedError(f"{url}: the server sent different bytes on a second download "
                            f"(SHA-256 {got.archive_sha256}, first {archive_sha256}); a Nix hash "
                            "of it would not be reproducible")
    return got.path


# ----------------------------------------------------------------------------- Nix's view


def nix_unpacked_digest(archive: Path, dest: Path, source: str, limits: Limits) -> bytes:
    """SHA-256 of the NAR ``nix-prefetch-url --unpack`` hashes for ``archive``.

    The archive is unpacked by treeseed's own :class:`~treeseed.unpack.TreeWriter` (the same
    name checks and the same refusal of paths leaving the tree), its directories are created
    even when empty, and Nix's choice of root is applied: the single top-level entry, else the
    whole directory.
    """
    _unpack_all(archive, dest, source, limits)
    entries = os.listdir(dest)
    root = dest / entries[0] if len(entries) == 1 else dest
    h = hashlib.sha256()
    nar_stream(root, h.update)
    return h.digest()


def _unpack_all(archive: Path, dest: Path, source: str, limits: Limits) -> None:
    """Unpack every entry of ``archive`` into ``dest``, empty directories included.

    :func:`treeseed.unpack.unpack_archive` reports files and links only (a package has no
    directories of its own), so this drives its writer directly to learn the directories too.
    """
    from ..unpack import (
        TreeWriter,
        _fast_gil_handoff,
        _read_tar,
        _read_zip,
        detect_format,
    )

    with open(archive, "rb") as raw, _fast_gil_handoff():
        fmt = detect_format(raw.read(512), source)
        raw.seek(0)
        writer = TreeWriter(dest, source, limits)
        if fmt == "zip":
            _read_zip(raw, writer, source)
        else:
            _read_tar(raw, fmt, writer, source, limits, False)
        writer.finish()
    if writer.specials:
        path, what = next(iter(writer.specials.items()))
        raise UnpackError(source, path, f"{what}: a Nix store path cannot hold one either")
    for path, kind in writer.kinds.items():
        if kind == "dir":
            os.makedirs(os.path.join(os.fsencode(dest), os.fsencode(path)), exist_ok=True)


def nar_stream(path: Path, sink: Callable[[bytes], object]) -> None:
    """Feed the NAR serialisation of ``path`` (a file, a symlink or a directory) to ``sink``,
    as ``nix-hash --type sha256`` reads it from disk: empty directories are part of it."""
    sink(_frame(_NAR_MAGIC))
    _node(os.fsencode(path), sink)


def _node(path: bytes, sink: Callable[[bytes], object]) -> None:
    st = os.lstat(path)
    sink(_frames(b"(", b"type"))
    if stat.S_ISLNK(st.st_mode):
        sink(_frames(b"symlink", b"target", os.readlink(path)))
    elif stat.S_ISDIR(st.st_mode):
        sink(_frame(b"directory"))
        for name in sorted(os.listdir(path)):
            sink(_frames(b"entry", b"(", b"name", name, b"node"))
            _node(os.path.join(path, name), sink)
            sink(_frame(b")"))
    elif stat.S_ISREG(st.st_mode):
        _regular(path, bool(st.st_mode & stat.S_IXUSR), st.st_size, sink)
    else:
        raise TreeseedError(f"{os.fsdecode(path)}: not a file, directory or symlink; a NAR "
                            "cannot hold it")
    sink(_frame(b")"))


def _regular(path: bytes, executable: bool, size: int, sink: Callable[[bytes], object]) -> None:
    sink(_frames(b"regular", *((b"executable", b"") if executable else ()), b"contents"))
    sink(struct.pack("<Q", size))
    done = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(1 << 20):
            done += len(chunk)
            sink(chunk)
    if done != size:
        raise TreeseedError(f"{os.fsdecode(path)} changed while being hashed")
    sink(bytes(-size % 8))


def _frame(data: bytes) -> bytes:
    """One NAR string: u64 little-endian length, the bytes, zero padding to 8."""
    return struct.pack("<Q", len(data)) + data + bytes(-len(data) % 8)


def _frames(*items: bytes) -> bytes:
    return b"".join(_frame(i) for i in items)

