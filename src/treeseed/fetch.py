"""The fetch pipeline: source -> unpack -> package rules -> hash -> verify -> install.

Read top to bottom, :func:`fetch` is the life of a package:

1. Known hash already in the cache? Done, no network.
2. Take the lock for this hash (or URL), so concurrent processes unpack once.
3. Run the URL's fetcher program (:mod:`treeseed.fetchers`) in a private ``tmp/`` work
   directory. It announces hashes as it learns them (a git commit before any object is
   downloaded, an archive's SHA-256 before unpacking); the first one the index knows stops it.
4. Otherwise the fetcher (:mod:`treeseed.fetcher`, in its own process) unpacks or checks out,
   hashing every file as it is written, applies the package's own rules and computes the bt2
   hash. A configured third-party fetcher's tree is hashed here instead.
5. Compare with the expected hash; on mismatch nothing is installed.
6. Rename into ``p/<hash>`` and record sizes and every announced hash as an alias.

The stages themselves (unpack, copy, rules, hash) live in :mod:`treeseed.assemble`, below this
module: the fetcher program runs them without importing this orchestrator. Installing is
:mod:`treeseed.install`, shared with the swarm.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .cache import Cache
from .env import env_seconds
from .errors import FetchError, ManifestError, TreeseedError
from .fetcher import PACKAGE_DIR, RESULT_FILE
from .fetchers import DEFAULT_TIMEOUT, Fetcher, FetcherRun, fetcher_for
from .ids import is_bt2
from .install import AlsoHash, Delivery, FetchResult, cached_result, install, record_aliases
from .record import Record
from .schemes import absolute

__all__ = ["FetchResult", "env_seconds", "fetch", "hash_path"]

# The stages (hashing, package, rules, unpack) are imported by the functions that use them:
# with treeseed's own fetcher they run in its process, and `treeseed update` of an unchanged
# dependency, which only starts a fetcher and looks up its first hash, never needs them.

if TYPE_CHECKING:
    import threading

    from .assemble import PackageTree
    from .sources import ProgressFn
    from .unpack import Limits


def fetch(
    url: str,
    cache: Cache,
    expected: str | None = None,
    formats: Sequence[str] = (),
    limits: Limits | None = None,
    progress: ProgressFn | None = None,
    check_source: bool = False,
    fetchers: dict[str, str] | None = None,
    cancel: threading.Event | None = None,
    keep_archive: bool = False,
    marks: Sequence[str] = (),
    also: AlsoHash | None = None,
) -> FetchResult:
    """Fetch ``url`` into ``cache``; with ``expected``, install only if the hash matches.

    ``check_source`` makes the source deliver in full even when its package is cached: for
    proving that a mirror really serves that package (a cache hit, or a digest a server
    states, proves nothing about the bytes it sends). ``fetchers`` maps URL schemes to
    configured fetcher commands (see :mod:`treeseed.fetchers`). Setting ``cancel`` from
    another thread stops the fetch (:func:`treeseed.swarm.fetch.race`). ``keep_archive``
    also keeps an archive source's bytes as ``a/<sha256>`` (Nix hashes and serves flat files).
    ``marks`` are index marks for the package (:data:`treeseed.sharing.PRIVATE`), given even
    when it is already cached. ``also`` is another format's hash a new tree must have too
    (:class:`treeseed.install.AlsoHash`); a cached package is the caller's to check.

    This fetches from ``url`` alone. A package whose hash is known is had through
    :func:`treeseed.locate.obtain` (cache, mirrors, origin URLs, swarm), which calls this.
    """
    if expected is not None and not is_bt2(expected):
        raise TreeseedError(f"--hash {expected!r} is not a treeseed hash (bt2- and 64 hex digits)")
    url = absolute(url)  # a local path: the fetcher runs in its work directory, not here
    trust_cache = expected is not None and not check_source
    if trust_cache and cache.has(expected):
        return _marked(cache, cached_result(cache, expected, url, formats), marks)
    with cache.lock(expected or url):
        if trust_cache and cache.has(expected):
            return _marked(cache, cached_result(cache, expected, url, formats), marks)
        with cache.workdir() as work:
            result = _fetch_into(url, cache, work, expected, formats, limits,
                                 progress, stop_early=not check_source, fetchers=fetchers,
                                 cancel=cancel, keep_archive=keep_archive, marks=marks,
                                 also=also)
    return _marked(cache, result, marks) if result.cached else result


def _marked(cache: Cache, result: FetchResult, marks: Sequence[str]) -> FetchResult:
    """Add ``marks`` to a package found in the cache (a fresh install adds them itself)."""
    if marks:
        cache.mark(result.hash, *marks)
    return result


def _fetch_into(
    url: str, cache: Cache, work: Path, expected: str | None, formats: Sequence[str],
    limits: Limits | None, progress: ProgressFn | None, stop_early: bool,
    fetchers: dict[str, str] | None,
    cancel: threading.Event | None = None, keep_archive: bool = False,
    marks: Sequence[str] = (), also: AlsoHash | None = None,
) -> FetchResult:
    """Run the URL's fetcher program in ``work``; stop it the moment it announces a hash of a
    package the cache already has; otherwise verify and install what it delivers."""
    # No limits given: the fetcher reads TREESEED_MAX_UNPACK_SIZE (our environment) itself, and
    # this process need not import unpack just to pass the default on.
    fetcher = fetcher_for(url, formats, limits.max_bytes if limits is not None else None, fetchers)
    run = FetcherRun(fetcher, work, url, fetch_timeout(), progress, cancel=cancel)
    try:
        _open_index(cache)
        for fmt, value in run.announcements():
            known = cache.resolve(fmt, value) if stop_early else None
            if known and (expected is None or known == expected):
                run.stop()
                # The value just looked up already names ``known``: only the others (earlier
                # announcements the index did not know) are news worth a write.
                news = {f: v for f, v in run.announced.items() if (f, v) != (fmt, value)}
                if fetcher.trusted and news:
                    record_aliases(cache, known, news)
                hit = cached_result(cache, known, url, formats, transferred=run.transferred)
                hit.revision = run.announced.get("git-commit")
                return hit
        run.finish()
    finally:
        run.stop()
        run.close()
    result = _install_delivery(url, cache, work, expected, fetcher, run.announced, marks, also)
    if keep_archive and result.formats.get("archive-sha256"):
        _keep_archive(cache, work, url, result.formats["archive-sha256"])
    return result


def _keep_archive(cache: Cache, work: Path, url: str, sha256: str) -> None:
    """Keep the archive just unpacked: the fetcher's download, or the local file itself."""
    from .schemes import scheme_of

    archive = work / "download"
    if not archive.is_file() and scheme_of(url).module == "local":
        from .sources.local import local_path

        archive = local_path(url)
    if archive.is_file() and not cache.archive_path(sha256).exists():
        cache.keep_archive(archive, sha256)


def _open_index(cache: Cache) -> None:
    """Open the cache's index (creating it in a new cache) while the fetcher starts, which
    takes it tens of milliseconds: its first announcement is then looked up at once, and the
    install after its last one finds the index ready (the import of sqlite3, the opening and
    a new index's schema are otherwise on the way to the stop, or to the install)."""
    cache.db  # noqa: B018  (the property opens the connection)


def _install_delivery(
    url: str, cache: Cache, work: Path, expected: str | None, fetcher: Fetcher,
    announced: dict[str, str], marks: Sequence[str] = (), also: AlsoHash | None = None,
) -> FetchResult:
    """Install what the fetcher left in ``work`` through the one install (:mod:`treeseed.install`)."""
    tree = work / PACKAGE_DIR
    if not tree.is_dir():
        raise FetchError(f"{url}: the fetcher finished but left no {PACKAGE_DIR}/ directory "
                         "(docs/fetcher-protocol.md)")
    delivery = _own_delivery(work, tree) if fetcher.trusted else _foreign_delivery(url, work, tree, announced)
    return install(cache, delivery, expected, marks, shown_as=url, also=also)


def _own_delivery(work: Path, tree: Path) -> Delivery:
    """treeseed's own fetcher hashed every byte as it wrote it; its result file says so, and
    every hash it announced was derived by treeseed's code from the bytes it read."""
    result = json.loads((work / RESULT_FILE).read_text(encoding="utf-8"))
    return Delivery(tree, work, result["bt2"], result["files"], result["bytes"], result["source"],
                    result["name"], result["version"], result["private"],
                    {k: v for k, v in result["aliases"].items() if k != "bt2"},
                    result["transferred"], result["revision"], sealed=result.get("sealed") is True)


def _foreign_delivery(url: str, work: Path, tree: Path, announced: dict[str, str]) -> Delivery:
    """A configured fetcher's tree is trimmed and hashed here before it can enter the cache;
    its announcements are claims, never recorded as aliases (a lying fetcher could otherwise
    make a later fetch of an unrelated archive return its tree)."""
    from .assemble import adopt_tree, finish_tree
    from .swarm.torrents import write as write_swarm_files

    package = finish_tree(adopt_tree(tree, url), url)
    write_swarm_files(work, package.hash, package.entries, package.digests, url)
    claimed = announced.get("bt2")
    if claimed and claimed != package.hash:
        raise FetchError(f"{url}: the fetcher announced {claimed} but delivered a tree that "
                         f"hashes to {package.hash}; nothing was cached")
    manifest = package.rules.manifest
    return Delivery(tree, work, package.hash, len(package.entries), package.size, url,
                    manifest.name if manifest else None, manifest.version if manifest else None,
                    bool(manifest and manifest.private), revision=announced.get("git-commit"))


def fetch_timeout() -> float:
    """Seconds a fetcher may run: ``TREESEED_FETCH_TIMEOUT``, default one hour."""
    return env_seconds("TREESEED_FETCH_TIMEOUT", DEFAULT_TIMEOUT)


def _extra_formats(package: PackageTree, formats: Sequence[str], source: str) -> dict[str, str]:
    from .hashing import hash_tree

    wanted = [f for f in formats if f not in ("bt2", "archive-sha256")]
    return hash_tree(package.root, package.entries, wanted, source) if wanted else {}


class HashReport(Record):
    """What ``treeseed hash`` reports for a directory or an archive.

    ``errors`` names formats that could not be computed (a ``build.zig.zon`` Zig rejects makes
    the zig hash undefined) when the caller asked to skip rather than fail.
    """

    __slots__ = ("hashes", "files", "bytes", "errors")

    def __init__(self, hashes: dict[str, str], files: int, bytes: int,  # noqa: A002
                 errors: dict[str, str] | None = None) -> None:
        self.hashes = hashes
        self.files = files
        self.bytes = bytes
        self.errors = {} if errors is None else errors

    def as_json(self) -> dict:
        from .hashing import ALL_FORMATS

        known = {**{k: None for k in self.errors}, **self.hashes}
        out: dict = {k.replace("-", "_"): known[k] for k in ALL_FORMATS if k in known}
        out.update({"files": self.files, "bytes": self.bytes})
        if self.errors:
            out["errors"] = self.errors
        return out


def hash_path(
    path: Path, cache: Cache, formats: Sequence[str], limits: Limits | None = None,
    skip_unavailable: bool = False,
) -> HashReport:
    """Hash a local directory in place, or an archive unpacked in the cache's tmp/.

    An archive is never installed by hashing it; but if the package is already cached, the
    formats computed here are recorded as its aliases, so later lookups by them succeed.
    """
    from .assemble import finish_tree
    from .hashing import hash_tree
    from .package import scan_tree
    from .rules import rules_for
    from .unpack import Limits, unpack_archive

    source = str(path)
    if path.is_dir():
        if "archive-sha256" in formats:
            raise TreeseedError(f"{path}: archive-sha256 applies to archives, and this is a directory")
        entries = scan_tree(path, source, rules_for(path))
        wanted, errors = _available(path, ["bt2", *formats], source, skip_unavailable)
        report = HashReport(hash_tree(path, entries, wanted, source), len(entries),
                            sum(e.size for e in entries), errors)
    else:
        if not path.exists():
            raise TreeseedError(f"{path}: no such file or directory")
        with cache.workdir() as work:
            unpacked = unpack_archive(path, work / "tree", source, limits or Limits.from_env())
            package = finish_tree(unpacked, source)
            wanted, errors = _available(package.root, formats, source, skip_unavailable)
            hashes = {"bt2": package.hash, **_extra_formats(package, wanted, source)}
            if unpacked.archive_sha256:
                hashes["archive-sha256"] = unpacked.archive_sha256
            report = HashReport(hashes, len(package.entries), package.size, errors)
    if cache.has(report.hashes["bt2"]):
        record_aliases(cache, report.hashes["bt2"], report.hashes)
    return report


def _available(
    root: Path, formats: Sequence[str], source: str, skip: bool
) -> tuple[list[str], dict[str, str]]:
    """Split ``formats`` into those that can be computed for ``root`` and why the rest cannot."""
    from .hashing import make_format

    wanted: list[str] = []
    errors: dict[str, str] = {}
    for name in dict.fromkeys(formats):
        if name not in ("bt2", "archive-sha256"):
            try:
                make_format(name, root, source)
            except ManifestError as exc:
                if not skip:
                    raise
                errors[name] = str(exc)
                continue
        wanted.append(name)
    return wanted, errors
