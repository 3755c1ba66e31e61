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

The stages themselves (:func:`finish_tree`, :func:`copy_tree`, :func:`adopt_tree`) live here too:
the fetcher program calls them, and so does :func:`hash_path`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .cache import Cache
from .errors import FetchError, HashMismatch, ManifestError, TreeseedError
from .fetcher import PACKAGE_DIR, RESULT_FILE
from .fetchers import DEFAULT_TIMEOUT, Fetcher, FetcherRun, fetcher_for
from .ids import is_bt2

# The stages (hashing, package, rules, unpack) are imported by the functions that use them:
# with treeseed's own fetcher they run in its process, and `treeseed update` of an unchanged
# dependency, which only starts a fetcher and looks up its first hash, never needs them.

if TYPE_CHECKING:
    import threading

    from .hashing.bt2 import FileDigest
    from .package import Entry
    from .rules import Rules
    from .sources import ProgressFn
    from .unpack import Limits, Unpacked


@dataclass
class FetchResult:
    """What ``treeseed fetch`` reports."""

    hash: str
    path: Path
    files: int
    bytes: int
    source: str
    cached: bool
    formats: dict[str, str] = field(default_factory=dict)
    transferred: int = 0
    revision: str | None = None  # what a git reference resolved to

    def as_json(self) -> dict:
        out = {
            "hash": self.hash, "path": str(self.path), "files": self.files, "bytes": self.bytes,
            "source": self.source, "cached": self.cached, "transferred": self.transferred,
            **{k.replace("-", "_"): v for k, v in self.formats.items()},
        }
        if self.revision:
            out["revision"] = self.revision
        return out


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
) -> FetchResult:
    """Fetch ``url`` into ``cache``; with ``expected``, install only if the hash matches.

    ``check_source`` makes the source deliver in full even when its package is cached: for
    proving that a mirror really serves that package (a cache hit, or a digest a server
    states, proves nothing about the bytes it sends). ``fetchers`` maps URL schemes to
    configured fetcher commands (see :mod:`treeseed.fetchers`). Setting ``cancel`` from
    another thread stops the fetch (:func:`treeseed.swarm.fetch.race`). ``keep_archive``
    also keeps an archive source's bytes as ``a/<sha256>`` (Nix hashes and serves flat files).
    """
    if expected is not None and not is_bt2(expected):
        raise TreeseedError(f"--hash {expected!r} is not a treeseed hash (bt2- and 64 hex digits)")
    if "://" not in url:  # a local path: the fetcher runs in its work directory, not here
        url = os.path.abspath(url)
    trust_cache = expected is not None and not check_source
    if trust_cache and cache.has(expected):
        return _cached(cache, expected, url, formats)
    with cache.lock(expected or url):
        if trust_cache and cache.has(expected):
            return _cached(cache, expected, url, formats)
        with cache.workdir() as work:
            return _fetch_into(url, cache, work, expected, formats, limits,
                               progress, stop_early=not check_source, fetchers=fetchers,
                               cancel=cancel, keep_archive=keep_archive)


def _fetch_into(
    url: str, cache: Cache, work: Path, expected: str | None, formats: Sequence[str],
    limits: Limits | None, progress: ProgressFn | None, stop_early: bool,
    fetchers: dict[str, str] | None,
    cancel: threading.Event | None = None, keep_archive: bool = False,
) -> FetchResult:
    """Run the URL's fetcher program in ``work``; stop it the moment it announces a hash of a
    package the cache already has; otherwise verify and install what it delivers."""
    # No limits given: the fetcher reads TREESEED_MAX_UNPACK_SIZE (our environment) itself, and
    # this process need not import unpack just to pass the default on.
    fetcher = fetcher_for(url, formats, limits.max_bytes if limits is not None else None, fetchers)
    run = FetcherRun(fetcher, work, url, fetch_timeout(), progress, cancel=cancel)
    try:
        if stop_early:
            _open_index(cache)
        for fmt, value in run.announcements():
            known = cache.resolve(fmt, value) if stop_early else None
            if known and (expected is None or known == expected):
                run.stop()
                # The value just looked up already names ``known``: only the others (earlier
                # announcements the index did not know) are news worth a write.
                news = {f: v for f, v in run.announced.items() if (f, v) != (fmt, value)}
                if fetcher.trusted and news:
                    cache.add_aliases(known, news)
                hit = _cached(cache, known, url, formats, transferred=run.transferred)
                hit.revision = run.announced.get("git-commit")
                return hit
        run.finish()
    finally:
        run.stop()
        run.close()
    result = _install_delivery(url, cache, work, expected, formats, fetcher, run.announced)
    if keep_archive and result.formats.get("archive-sha256"):
        _keep_archive(cache, work, url, result.formats["archive-sha256"])
    return result


def _keep_archive(cache: Cache, work: Path, url: str, sha256: str) -> None:
    """Keep the archive just unpacked: the fetcher's download, or the local file itself."""
    from urllib.parse import unquote, urlsplit

    archive = work / "download"
    if not archive.is_file():
        if url.startswith("file://"):
            archive = Path(unquote(urlsplit(url).path))
        elif "://" not in url:
            archive = Path(url)
    if archive.is_file() and not cache.archive_path(sha256).exists():
        cache.keep_archive(archive, sha256)


def _open_index(cache: Cache) -> None:
    """Open the cache's index while the fetcher starts, which takes it tens of milliseconds:
    its first announcement is then looked up at once (the import of sqlite3 and the opening
    are otherwise on the way from that announcement to the stop)."""
    if (cache.root / "index.sqlite").exists():
        cache.db  # noqa: B018  (the property opens the connection)


def _install_delivery(
    url: str, cache: Cache, work: Path, expected: str | None, formats: Sequence[str],
    fetcher: Fetcher, announced: dict[str, str],
) -> FetchResult:
    tree = work / PACKAGE_DIR
    if not tree.is_dir():
        raise FetchError(f"{url}: the fetcher finished but left no {PACKAGE_DIR}/ directory "
                         "(docs/fetcher-protocol.md)")
    if fetcher.trusted:  # treeseed's own fetcher hashed every byte as it wrote it
        result = json.loads((work / RESULT_FILE).read_text(encoding="utf-8"))
        package_hash, files, size = result["bt2"], result["files"], result["bytes"]
        name, version, private = result["name"], result["version"], result["private"]
        transferred, revision, canonical = result["transferred"], result["revision"], result["source"]
    else:  # anyone else's tree is trimmed and hashed here before it can enter the cache
        package = finish_tree(adopt_tree(tree, url), url)
        from .swarm.torrents import write as write_swarm_files

        write_swarm_files(work, package.hash, package.entries, package.digests, url)
        claimed = announced.get("bt2")
        if claimed and claimed != package.hash:
            raise FetchError(f"{url}: the fetcher announced {claimed} but delivered a tree that "
                             f"hashes to {package.hash}; nothing was cached")
        package_hash, files, size = package.hash, len(package.entries), package.size
        manifest = package.rules.manifest
        name, version = (manifest.name, manifest.version) if manifest else (None, None)
        private = bool(manifest and manifest.private)
        transferred, revision, canonical = 0, announced.get("git-commit"), url
        announced = {**announced, "bt2": package.hash}
    if expected is not None and package_hash != expected:
        raise HashMismatch(url, expected, package_hash)
    created = cache.install(tree, package_hash)
    from .swarm.torrents import adopt as adopt_swarm_files

    adopt_swarm_files(cache, work, package_hash)  # the .torrent and block hashes, if written
    cache.record(package_hash, size, files, canonical, name, version, private)
    cache.add_aliases(package_hash, announced)
    return FetchResult(package_hash, cache.path(package_hash), files, size, url, not created,
                       {"bt2": package_hash, **announced}, transferred, revision)


def fetch_timeout() -> float:
    """Seconds a fetcher may run: ``TREESEED_FETCH_TIMEOUT``, default one hour."""
    return env_seconds("TREESEED_FETCH_TIMEOUT", DEFAULT_TIMEOUT)


def env_seconds(name: str, default: float) -> float:
    """A number of seconds from the environment variable ``name``, else ``default``."""
    raw = os.environ.get(name)
    try:
        return float(raw) if raw else default
    except ValueError:
        raise TreeseedError(f"{name}={raw!r} is not a number of seconds") from None


@dataclass
class PackageTree:
    """A normalised tree in a work directory, ready to be verified and installed."""

    root: Path
    entries: list[Entry]
    digests: dict[str, FileDigest]
    rules: Rules
    hash: str

    @property
    def size(self) -> int:
        return sum(e.size for e in self.entries)


def finish_tree(unpacked: Unpacked, source: str) -> PackageTree:
    """Apply the package's own rules to a fresh tree and compute its bt2 hash."""
    from .hashing.bt2 import info_hash
    from .package import apply_rules
    from .rules import rules_for

    rules = rules_for(unpacked.root, source)
    entries = apply_rules(unpacked.root, unpacked.entries, rules, source, unpacked.specials)
    package_hash = info_hash(entries, unpacked.digests, source)
    return PackageTree(unpacked.root, entries, unpacked.digests, rules, package_hash)


def _extra_formats(package: PackageTree, formats: Sequence[str], source: str) -> dict[str, str]:
    from .hashing import hash_tree

    wanted = [f for f in formats if f not in ("bt2", "archive-sha256")]
    return hash_tree(package.root, package.entries, wanted, source) if wanted else {}


def _cached(
    cache: Cache, package_hash: str, url: str, formats: Sequence[str], transferred: int = 0
) -> FetchResult:
    cache.touch(package_hash)
    info = cache.info(package_hash)
    if info is None:
        cache.list()  # indexes a package the index missed
        info = cache.info(package_hash)
    assert info is not None
    known = {"bt2": package_hash, **cache.aliases(package_hash)}
    missing = [f for f in formats if f not in known and f != "archive-sha256"]
    if missing:
        from .hashing import hash_tree
        from .package import scan_tree

        root = cache.path(package_hash)
        computed = hash_tree(root, scan_tree(root, package_hash), missing, package_hash)
        cache.add_aliases(package_hash, computed)
        known.update(computed)
    return FetchResult(package_hash, cache.path(package_hash), info.files, info.size, url, True,
                       known, transferred)


def copy_tree(src: Path, dest: Path, source: str) -> Unpacked:
    """Copy the files a directory's own rules keep into ``dest``, hashing while writing.

    Excluded files are never read. Files are copied on a thread per core (reads, writes and
    hashing all release the GIL).
    """
    from concurrent.futures import ThreadPoolExecutor

    from .package import Entry, scan_tree
    from .rules import rules_for
    from .unpack import Unpacked

    rules = rules_for(src)
    entries = scan_tree(src, source, rules)
    dest.mkdir()
    src_b, dest_b = os.fsencode(src), os.fsencode(dest)
    for d in sorted({os.path.dirname(e.path) for e in entries} - {""}):
        os.makedirs(os.path.join(dest_b, os.fsencode(d)), exist_ok=True)

    def copy(entry: Entry) -> tuple[str, FileDigest] | None:
        target = os.path.join(dest_b, os.fsencode(entry.path))
        if entry.is_symlink:
            os.symlink(os.fsencode(entry.target or ""), target)
            return None
        return entry.path, _copy_file(os.path.join(src_b, os.fsencode(entry.path)), target,
                                      entry.executable)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="treeseed-copy") as pool:
        digests = dict(d for d in pool.map(copy, entries, chunksize=16) if d)
    # Sizes as copied, not as scanned: a file that changed in between is hashed as written.
    copied = [Entry(e.path, e.kind, digests[e.path].size, e.executable) if e.path in digests else e
              for e in entries]
    return Unpacked(dest, copied, digests)


def adopt_tree(root: Path, source: str) -> Unpacked:
    """Take over a directory a source built in the work directory (a git checkout): delete what
    the package rules exclude, then hash the rest in place, without copying."""
    from .hashing import Bt2Format, hash_files
    from .package import prune_tree, scan_tree
    from .rules import rules_for
    from .unpack import Unpacked

    entries = scan_tree(root, source, rules_for(root, source))
    prune_tree(root, {e.path for e in entries})
    digests = hash_files(root, entries, [Bt2Format(root, source)])["bt2"]
    return Unpacked(root, entries, digests)


def _copy_file(src: bytes, dst: bytes, executable: bool) -> FileDigest:
    from .hashing import feed_file
    from .hashing.bt2 import MerkleHasher

    mode = 0o755 if executable else 0o644
    hasher = MerkleHasher()
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    with open(fd, "wb") as out:
        feed_file(src, [hasher.update, out.write])
        os.fchmod(out.fileno(), mode)
    return hasher.finish()


_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2", ".tar.zst",
                     ".tzst", ".tar", ".zip", ".git")


def package_name(package_dir: Path, url: str) -> str:
    """A name for a dependency: the package's own (treeseed.toml, build.zig.zon), else the last
    part of its URL without archive suffixes (``zlib-1.3.1.tar.gz`` -> ``zlib-1.3.1``)."""
    from .manifest import MANIFEST_NAME
    from .manifest import load as load_manifest

    if (package_dir / MANIFEST_NAME).is_file():
        name = load_manifest(package_dir / MANIFEST_NAME).name
        if name:
            return name
    zon = package_dir / "build.zig.zon"
    if zon.is_file():
        from .zon import load as load_zon

        name = load_zon(zon).get("name")
        if isinstance(name, str) and name:
            return name
    last = url.split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1] or "dependency"
    for suffix in _ARCHIVE_SUFFIXES:
        if last.lower().endswith(suffix):
            last = last[: -len(suffix)]
            break
    cleaned = "".join(c if c.isalnum() or c in "_.+-" else "-" for c in last).lstrip(".-")
    return cleaned or "dependency"


def sha256_file(path: Path) -> str:
    import hashlib

    from .hashing import feed_file

    h = hashlib.sha256()
    feed_file(path, [h.update])
    return h.hexdigest()


@dataclass
class HashReport:
    """What ``treeseed hash`` reports for a directory or an archive.

    ``errors`` names formats that could not be computed (a ``build.zig.zon`` Zig rejects makes
    the zig hash undefined) when the caller asked to skip rather than fail.
    """

    hashes: dict[str, str]
    files: int
    bytes: int
    errors: dict[str, str] = field(default_factory=dict)

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
        cache.add_aliases(report.hashes["bt2"], report.hashes)
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
