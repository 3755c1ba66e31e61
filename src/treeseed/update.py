"""``treeseed update``: re-resolve each dependency's source and record new hashes, in one fetch.

No fake-hash dance: each dependency's URL is fetched with *no* expected hash, so the cache
never answers for the source. The fetcher announces what it learns first (a git commit after
``ls-remote``, an archive's SHA-256); if the index maps that to the recorded package, the
dependency is unchanged and the fetcher is stopped before it downloads anything. Otherwise the
fetch completes, and ``hash`` (and, for git, ``rev``) are rewritten in treeseed.toml with
tomlkit, keeping the file's comments and layout.

An HTTP(S) archive is asked first with one conditional GET (:func:`revalidate`): the ETag and
Last-Modified its server gave the last time it served the pinned package are kept in the
cache's index (:meth:`Cache.validators`), and a 304 means "unchanged" without a body or a
fetcher. So does a 200 whose ``Repr-Digest`` is the SHA-256 of the archive the pinned package
was unpacked from (an alias the cache recorded itself), its body never read. Server headers
are untrusted: a 304 counts only as the answer to a request that was conditional, and either
way it can only keep the pin the manifest already has, never install anything. Anything else
falls back to the full fetch, after which the validators are recorded only if they provably
describe what was fetched (:func:`remember`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .cache import Cache
from .deps import absolute_url, base_url_of
from .errors import TreeseedError
from .manifest import MANIFEST_NAME, Dependency, Manifest
from .manifest import load as load_manifest
from .schemes import is_network

if TYPE_CHECKING:
    from .sources.http import Probe


@dataclass
class Update:
    """One row of the update table."""

    name: str
    old: str | None
    new: str | None
    revision: str | None
    transferred: int
    url: str
    error: str | None = None
    #: How an unchanged archive was recognised without its body: ``not-modified`` (a 304 to
    #: a conditional request) or ``repr-digest`` (the server's stated SHA-256); else None.
    revalidated: str | None = None

    @property
    def changed(self) -> bool:
        return self.error is None and self.new != self.old

    def as_json(self) -> dict:
        return {"name": self.name, "old": self.old, "new": self.new, "revision": self.revision,
                "transferred": self.transferred, "changed": self.changed, "url": self.url,
                "error": self.error, "revalidated": self.revalidated}


def update(package_dir: Path, cache: Cache, names: Sequence[str] = (), dry_run: bool = False,
           offline: bool = False, jobs: int = 4) -> list[Update]:
    """Re-resolve the named dependencies (all when none), rewrite the manifest unless dry_run."""
    manifest = load_manifest(package_dir / MANIFEST_NAME)
    fetchers = None  # None: the user's config alone, read by the fetch itself
    if manifest.fetchers:  # the root package's own [fetchers] apply, as for `treeseed fetch`
        from .config import fetchers as configured_fetchers

        fetchers = configured_fetchers(manifest.fetchers)
    deps = _selected(manifest, names)
    base = base_url_of(package_dir)
    if offline:
        network = [d.name for d in deps if is_network(absolute_url(d.url, base))]
        if network:
            raise TreeseedError(f"--offline: cannot re-resolve {', '.join(network)} without the "
                                "network")
    if len(deps) <= 1 or jobs <= 1:  # one at a time: no thread pool to import and start
        rows = [_resolve(dep, base, cache.root, fetchers) for dep in deps]
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(jobs, thread_name_prefix="treeseed-update") as pool:
            rows = list(pool.map(lambda dep: _resolve(dep, base, cache.root, fetchers), deps))
    if not dry_run:
        changes = {r.name: r for r in rows if r.changed or _rev_missing(manifest, r)}
        if changes:
            write_hashes(package_dir / MANIFEST_NAME, changes)
    return rows


def _selected(manifest: Manifest, names: Sequence[str]) -> list[Dependency]:
    unknown = [n for n in names if n not in manifest.dependencies]
    if unknown:
        raise TreeseedError(f"{manifest.path}: no dependency named {', '.join(unknown)}; it "
                            f"declares {', '.join(sorted(manifest.dependencies)) or 'none'}")
    return [manifest.dependencies[n] for n in names] if names else list(manifest.dependencies.values())


def _resolve(dep: Dependency, base: str, cache_root: Path,
             fetchers: dict[str, str] | None = None) -> Update:
    """One fetch of the dependency's first URL, with no expected hash; for an HTTP(S) archive
    pinned before, a conditional request first, which usually makes the fetch unnecessary."""
    url = absolute_url(dep.url, base)
    cache = Cache(cache_root)  # one index connection per thread
    try:
        if revalidates(url, fetchers):
            return _resolve_http(dep, url, cache, fetchers)
        from .fetch import fetch

        result = fetch(url, cache, fetchers=fetchers)
    except TreeseedError as exc:
        return Update(dep.name, dep.hash, None, None, 0, url, str(exc))
    finally:
        cache.close()
    return Update(dep.name, dep.hash, result.hash, result.revision, result.transferred, url)


def revalidates(url: str, fetchers: dict[str, str] | None) -> bool:
    """Whether treeseed's own HTTP source fetches ``url`` (a fetcher configured for the scheme
    is asked in full, its way: its requests are its own business)."""
    from .fetchers import fetcher_for
    from .schemes import is_http

    return is_http(url) and fetcher_for(url, configured=fetchers).trusted


def _resolve_http(dep: Dependency, url: str, cache: Cache,
                  fetchers: dict[str, str] | None) -> Update:
    """An HTTP(S) archive: a conditional GET first, the full fetch only if it says "changed"."""
    from .fetch import fetch
    from .sources.http import probe

    known = revalidation_for(cache, url, dep.hash)
    first = probe(url, *(known[:2] if known else (None, None)))
    how = unchanged(first, cache, dep.hash)
    if how is not None:
        assert dep.hash is not None
        if first.status == 200:  # Repr-Digest: the server's fresh validators name the pin too
            cache.remember_validators(url, first.etag, first.last_modified, dep.hash)
        return Update(dep.name, dep.hash, dep.hash, None, 0, url, revalidated=how)
    result = fetch(url, cache, fetchers=fetchers)
    remember(cache, url, first, result.hash)
    return Update(dep.name, dep.hash, result.hash, result.revision, result.transferred, url)


def revalidation_for(cache: Cache, url: str, pinned: str | None
                     ) -> tuple[str | None, str | None, str] | None:
    """The validators to ask ``url`` with: only those recorded for the package the manifest
    pins (validators of another package could only say "that one is unchanged")."""
    known = cache.validators(url)
    return known if known is not None and pinned is not None and known[2] == pinned else None


def unchanged(answer: Probe, cache: Cache, pinned: str | None) -> str | None:
    """How ``answer`` proves the pinned package is still what the URL serves, or None.

    A 304 to a conditional request (:attr:`Probe.not_modified`, which refuses a 304 nobody
    asked for), or a 200 stating a SHA-256 that the index knows as the archive of the pinned
    package. A digest the cache did not record itself, or one of another package, proves
    nothing here.
    """
    if pinned is None:
        return None
    if answer.not_modified:
        return "not-modified"
    if answer.status == 200 and answer.digest is not None \
            and cache.resolve("archive-sha256", answer.digest) == pinned:
        return "repr-digest"
    return None


def remember(cache: Cache, url: str, first: Probe, package_hash: str) -> None:
    """Record ``first``'s validators for ``package_hash`` if they describe what was fetched.

    The probe and the fetch are two requests, and the resource may change between them. So
    the validators are kept only when the probe's stated SHA-256 is the archive the fetch
    unpacked, or when a second conditional request with them gets a 304 (the resource did
    not change across the fetch). Otherwise none are kept, and the next update fetches.
    """
    from .sources.http import probe

    if first.status != 200 or (first.etag is None and first.last_modified is None):
        return
    if first.digest is not None and cache.resolve("archive-sha256", first.digest) == package_hash:
        cache.remember_validators(url, first.etag, first.last_modified, package_hash)
        return
    try:
        second = probe(url, first.etag, first.last_modified)
    except TreeseedError:
        return  # nothing proven, nothing kept: the update itself succeeded
    if second.not_modified:
        cache.remember_validators(url, first.etag, first.last_modified, package_hash)


def _rev_missing(manifest: Manifest, row: Update) -> bool:
    """A git dependency whose ``rev`` is absent or stale gets it written even if unchanged."""
    dep = manifest.dependencies[row.name]
    return row.error is None and row.revision is not None and dep.rev != row.revision


def write_hashes(path: Path, rows: dict[str, Update]) -> None:
    """Set ``hash`` (and ``rev``) of each dependency in place, keeping everything else."""
    import tomlkit

    from .manifest import loads, write_atomically

    doc = tomlkit.parse(path.read_text(encoding="utf-8"))
    table = doc["dependencies"]
    for name, row in rows.items():
        entry = table[name]  # type: ignore[index]
        entry["hash"] = row.new  # type: ignore[index]
        if row.revision is not None:
            entry["rev"] = row.revision  # type: ignore[index]
    out = tomlkit.dumps(doc)
    loads(out, str(path))  # never write what treeseed could not read back
    write_atomically(path, out)


def table(rows: list[Update]) -> str:
    """The update table as plain text: name, old hash, new hash, revision, bytes downloaded."""
    from .progress import human

    def short(h: str | None) -> str:
        return "-" if h is None else h[:16] + "…"

    lines = [("name", "old", "new", "revision", "downloaded", "")]
    for r in rows:
        status = f"error: {r.error}" if r.error else ("changed" if r.changed else "unchanged")
        lines.append((r.name, short(r.old), short(r.new) if not r.error else "-",
                      (r.revision or "-")[:12], human(r.transferred), status))
    widths = [max(len(line[i]) for line in lines) for i in range(5)]
    return "\n".join("  ".join(col.ljust(w) for col, w in zip(line[:5], widths, strict=False)) + "  " + line[5]
                     for line in lines).rstrip()
