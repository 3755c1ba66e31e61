"""The fetch pipeline: source -> unpack -> package rules -> hash -> verify -> install.

Read top to bottom, :func:`fetch` is the life of a package:

1. Known hash already in the cache? Done, no network.
2. Take the lock for this hash (or URL), so concurrent processes unpack once.
3. The source brings its bytes into a private ``tmp/`` work directory.
4. An archive whose SHA-256 the index already knows is not unpacked again.
5. Unpack (or copy a directory), hashing every file as it is written.
6. Apply the package's own rules, drop empty directories, compute the bt2 hash.
7. Compare with the expected hash; on mismatch nothing is installed.
8. Rename into ``p/<hash>`` and record sizes and aliases in the index.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .cache import Cache
from .errors import HashMismatch, ManifestError, TreeseedError
from .hashing import ALL_FORMATS, Bt2Format, feed_file, hash_files, hash_tree, make_format
from .hashing.bt2 import FileDigest, MerkleHasher, info_hash, is_bt2
from .package import Entry, apply_rules, prune_tree, scan_tree
from .rules import Rules, rules_for
from .sources import Fetched, ProgressFn, open_source
from .unpack import Limits, Unpacked, unpack_archive


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
) -> FetchResult:
    """Fetch ``url`` into ``cache``; with ``expected``, install only if the hash matches.

    ``check_source`` asks the source even when ``expected`` is already cached: for proving that
    a mirror, or a changed URL, really serves that package (a cache hit proves nothing about
    the source).
    """
    if expected is not None and not is_bt2(expected):
        raise TreeseedError(f"--hash {expected!r} is not a treeseed hash (bt2- and 64 hex digits)")
    trust_cache = expected is not None and not check_source
    if trust_cache and cache.has(expected):
        return _cached(cache, expected, url, formats)
    with cache.lock(expected or url):
        if trust_cache and cache.has(expected):
            return _cached(cache, expected, url, formats)
        with cache.workdir() as work:
            return _fetch_into(url, cache, work, expected, formats, limits or Limits.from_env(), progress)


def _fetch_into(
    url: str, cache: Cache, work: Path, expected: str | None, formats: Sequence[str],
    limits: Limits, progress: ProgressFn | None,
) -> FetchResult:
    source = open_source(url)
    got = source.fetch(work, progress)
    if got.kind == "archive":
        digest = got.archive_sha256 or sha256_file(got.path)
        known = cache.resolve("archive-sha256", digest)
        if known and (expected is None or known == expected):
            hit = _cached(cache, known, url, formats, transferred=got.bytes_transferred)
            hit.revision = got.revision
            return hit
        unpacked = unpack_archive(got.path, work / "tree", url, limits, archive_sha256=digest)
    elif got.kind == "tree":
        unpacked = adopt_tree(got.path, url)
    else:
        unpacked = copy_tree(got.path, work / "tree", url)
    package = finish_tree(unpacked, url)
    if expected is not None and package.hash != expected:
        raise HashMismatch(url, expected, package.hash)
    extra = _extra_formats(package, formats, url)
    created = cache.install(package.root, package.hash)
    aliases = dict(extra)
    if unpacked.archive_sha256:
        aliases["archive-sha256"] = unpacked.archive_sha256
    manifest = package.rules.manifest
    cache.record(package.hash, package.size, len(package.entries), source.canonical,
                 manifest.name if manifest else None, manifest.version if manifest else None,
                 bool(manifest and manifest.private))
    cache.add_aliases(package.hash, aliases)
    return FetchResult(package.hash, cache.path(package.hash), len(package.entries), package.size,
                       url, not created, {"bt2": package.hash, **aliases}, got.bytes_transferred,
                       got.revision)


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
    rules = rules_for(unpacked.root, source)
    entries = apply_rules(unpacked.root, unpacked.entries, rules, source, unpacked.specials)
    package_hash = info_hash(entries, unpacked.digests, source)
    return PackageTree(unpacked.root, entries, unpacked.digests, rules, package_hash)


def _extra_formats(package: PackageTree, formats: Sequence[str], source: str) -> dict[str, str]:
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
    entries = scan_tree(root, source, rules_for(root, source))
    prune_tree(root, {e.path for e in entries})
    digests = hash_files(root, entries, [Bt2Format(root, source)])["bt2"]
    return Unpacked(root, entries, digests)


def _copy_file(src: bytes, dst: bytes, executable: bool) -> FileDigest:
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
