"""``treeseed update``: re-resolve each dependency's source and record new hashes, in one fetch.

No fake-hash dance: each dependency's URL is fetched with *no* expected hash, so the cache
never answers for the source. The fetcher announces what it learns first (a git commit after
``ls-remote``, an archive's SHA-256); if the index maps that to the recorded package, the
dependency is unchanged and the fetcher is stopped before it downloads anything. Otherwise the
fetch completes, and ``hash`` (and, for git, ``rev``) are rewritten in treeseed.toml with
tomlkit, keeping the file's comments and layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .cache import Cache
from .deps import absolute_url, base_url_of
from .errors import TreeseedError
from .manifest import MANIFEST_NAME, Dependency, Manifest
from .manifest import load as load_manifest
from .schemes import is_network


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

    @property
    def changed(self) -> bool:
        return self.error is None and self.new != self.old

    def as_json(self) -> dict:
        return {"name": self.name, "old": self.old, "new": self.new, "revision": self.revision,
                "transferred": self.transferred, "changed": self.changed, "url": self.url,
                "error": self.error}


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
    """One fetch of the dependency's first URL, with no expected hash."""
    from .fetch import fetch

    url = absolute_url(dep.url, base)
    cache = Cache(cache_root)  # one index connection per thread
    try:
        result = fetch(url, cache, fetchers=fetchers)
    except TreeseedError as exc:
        return Update(dep.name, dep.hash, None, None, 0, url, str(exc))
    finally:
        cache.close()
    return Update(dep.name, dep.hash, result.hash, result.revision, result.transferred, url)


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
