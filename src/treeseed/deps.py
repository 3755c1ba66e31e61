"""Fetching a package's dependencies, and theirs, in parallel.

:class:`Resolver` walks the dependency graph breadth first. A dependency whose hash is already
in the cache costs one ``stat`` and one read of its manifest, with no lock, no index and no
network: that is the path a rebuild takes, so this module imports the fetch pipeline only
when something is actually missing. Otherwise each of the dependency's URLs (``url``, then
``mirrors``) is tried in order until one yields the expected hash; a failure or a mismatch
moves on to the next, and the final error lists every URL with what went wrong.

A relative URL in a manifest is read relative to where that manifest came from: the package
directory for the root, the dependency's own URL for a fetched package.

>>> resolver = Resolver(Cache())                               # doctest: +SKIP
>>> resolved = resolver.fetch_all(load(Path("treeseed.toml")), base_url_of(Path(".")))
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urljoin

from .cache import Cache
from .errors import ManifestError, TreeseedError
from .manifest import MANIFEST_NAME, Dependency, Manifest
from .manifest import load as load_manifest
from .schemes import SCHEMES, is_network, scheme_name

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

    from .config import Settings


class DependencyError(TreeseedError):
    """One or more dependencies could not be fetched; the message lists each, with every URL."""


@dataclass
class Resolved:
    """One dependency, fetched or found in the cache."""

    name: str
    hash: str
    path: Path
    url: str  # the URL it came from (or its first URL, when it was cached)
    cached: bool
    transferred: int = 0
    parent: str | None = None  # the package that asked for it (None: the root)
    lazy: bool = False
    #: What relative URLs in its own manifest are read against: its declared URL, even when
    #: the bytes came from a mirror or the swarm (None: ``url``).
    base: str | None = None

    def as_json(self) -> dict:
        return {"name": self.name, "hash": self.hash, "path": str(self.path), "url": self.url,
                "cached": self.cached, "transferred": self.transferred, "parent": self.parent}


@dataclass
class Events:
    """Callbacks a front end (progress display, log lines) can hook; all optional."""

    started: Callable[[Dependency, str], None] = lambda dep, url: None
    progress: Callable[[Dependency, int, int | None], None] = lambda dep, done, total: None
    finished: Callable[[Resolved], None] = lambda resolved: None
    failed_url: Callable[[Dependency, str, str], None] = lambda dep, url, why: None


@dataclass
class Request:
    """A dependency to resolve, with where it was declared (for relative URLs and errors)."""

    dep: Dependency
    base: str  # URL the dependency's relative URLs are read against
    parent: str | None  # the package that declares it (None: the root)
    manifest_path: str
    #: Why its URLs may not be used (the manifest trust rule), or None; a refused request
    #: fails with this reason and is never fetched, not even from the cache. Decided here, so
    #: every way a request is made (a manifest, a build script's lazy dependency) obeys it.
    refused: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.refused = _refusal(self.dep, self.base, self.manifest_path)


@dataclass
class Resolver:
    """Fetches dependency graphs into ``cache``.

    ``offline`` forbids every network URL (local paths and file:// still work); ``jobs`` bounds
    how many packages are fetched at once.
    """

    cache: Cache
    offline: bool = False
    jobs: int = 4
    events: Events = field(default_factory=Events)
    #: URL scheme -> fetcher command (the user's config plus the root package's [fetchers]).
    fetchers: dict[str, str] | None = None
    #: The user's settings: mirrors, torrenting, private packages (defaults when None).
    settings: Settings | None = None
    _follow_lazy: bool = field(default=False, init=False, repr=False)

    def fetch_all(self, manifest: Manifest, base: str, include_lazy: bool = False,
                  names: Iterable[str] | None = None, all_lazy: bool = False) -> list[Resolved]:
        """Fetch ``manifest``'s dependencies (non-lazy unless ``include_lazy``; only ``names``
        when given), then the non-lazy dependencies of each (all of them with ``all_lazy``),
        transitively."""
        self._follow_lazy = all_lazy
        include_lazy = include_lazy or all_lazy
        wanted = set(names) if names is not None else None
        roots = [Request(d, base, None, manifest.path) for d in manifest.dependencies.values()
                 if (include_lazy or not d.lazy) and (wanted is None or d.name in wanted)]
        if wanted:
            unknown = wanted - set(manifest.dependencies)
            if unknown:
                raise DependencyError(f"{manifest.path}: no dependency named "
                                      f"{', '.join(sorted(unknown))}; it declares "
                                      f"{', '.join(sorted(manifest.dependencies)) or 'none'}")
        return self._walk(roots)

    def resolve(self, requests: list[Request]) -> list[Resolved]:
        """Fetch exactly ``requests`` (lazy or not, e.g. what a build script asked for), plus
        the non-lazy dependencies of each."""
        self._follow_lazy = False
        return self._walk(requests)

    def _walk(self, roots: list[Request]) -> list[Resolved]:
        done: list[Resolved] = []
        failures: list[str] = []
        seen: set[str] = set()
        pending: list[Request] = []
        for task in roots:
            self._enqueue(task, seen, pending)
        pool: ThreadPoolExecutor | None = None
        running: dict[Future[Resolved], Request] = {}
        try:
            while pending or running:
                # The cache hits resolve inline: no thread, no lock, no import of the pipeline.
                while pending:
                    task = pending.pop(0)
                    hit = self._cached(task)
                    if hit is not None:
                        self._finish(hit, task, done, seen, pending)
                        continue
                    if self.offline and _is_network(task):
                        failures.append(self._describe(task, ["not in the cache, and --offline "
                                                              "forbids the network"]))
                        continue
                    if pool is None:  # imported here: a fully cached run never needs it
                        from concurrent.futures import ThreadPoolExecutor

                        if pending:  # more fetches may follow: their forks share one import
                            from .forking import preload_pipeline

                            preload_pipeline()
                        pool = ThreadPoolExecutor(self.jobs, thread_name_prefix="treeseed-dep")
                    running[pool.submit(self._fetch, task)] = task
                if not running:
                    break
                from concurrent.futures import FIRST_COMPLETED, wait

                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    task = running.pop(future)
                    try:
                        self._finish(future.result(), task, done, seen, pending)
                    except _AllUrlsFailed as exc:
                        failures.append(self._describe(task, exc.reasons))
        except (KeyboardInterrupt, SystemExit):
            # Ctrl-C, SIGTERM (see cli), or an exit: the fetches in flight must stop now, not
            # run to their end while the pool is shut down below.
            if pool is not None:
                from .fetchers import interrupt

                interrupt()
            raise
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        if failures:
            count = f"{len(failures)} dependenc{'y' if len(failures) == 1 else 'ies'}"
            raise DependencyError(f"{count} could not be fetched:\n" + "\n".join(failures))
        return done

    def _enqueue(self, task: Request, seen: set[str], pending: list[Request]) -> None:
        """Queue a dependency once: the same hash (or, unpinned, the same URL) is one package."""
        if task.refused:
            key = f"refused:{task.manifest_path}:{task.dep.name}"
        else:
            key = task.dep.hash or "url:" + absolute_url(task.dep.url, task.base)
        if key in seen:
            return
        seen.add(key)
        pending.append(task)

    def _finish(self, resolved: Resolved, task: Request, done: list[Resolved],
                seen: set[str], pending: list[Request]) -> None:
        done.append(resolved)
        self.events.finished(resolved)
        manifest_path = resolved.path / MANIFEST_NAME
        if not manifest_path.is_file():
            return
        child = load_manifest(manifest_path, f"{resolved.name} ({resolved.hash}): {MANIFEST_NAME}")
        base = resolved.base or resolved.url
        for dep in child.dependencies.values():
            if self._follow_lazy or not dep.lazy:
                self._enqueue(Request(dep, base, resolved.name, child.path), seen, pending)

    def _cached(self, task: Request) -> Resolved | None:
        dep = task.dep
        if task.refused:
            return None
        if dep.hash and self.cache.has(dep.hash):
            path = self.cache.path(dep.hash)
            _mark_used(path)
            if dep.private:  # never published, whoever fetched it first
                from .sharing import PRIVATE

                self.cache.mark(dep.hash, PRIVATE)
            return Resolved(dep.name, dep.hash, path, absolute_url(dep.url, task.base), True,
                            parent=task.parent, lazy=dep.lazy)
        return None

    def _fetch(self, task: Request) -> Resolved:
        """A pinned dependency comes from wherever its hash can be had (:mod:`treeseed.locate`:
        mirrors, origin URLs, the swarm); an unpinned one from its URLs, the first that works."""
        dep = task.dep
        if task.refused:
            raise _AllUrlsFailed([task.refused])
        cache = Cache(self.cache.root)  # one index connection per thread
        try:
            if dep.hash:
                return self._obtain(task, cache)
            return self._first_url(task, cache)
        finally:
            cache.close()

    def _obtain(self, task: Request, cache: Cache) -> Resolved:
        from .config import Settings
        from .locate import AllSourcesFailed, announce_new, obtain

        dep = task.dep
        assert dep.hash is not None
        settings = self.settings or Settings.defaults()
        try:
            result = obtain(
                cache, dep.hash, [absolute_url(u, task.base) for u in dep.urls], settings,
                name=dep.name, offline=self.offline, fetchers=self.fetchers, private=dep.private,
                progress=lambda done, total: self.events.progress(dep, done, total),
                on_url=lambda url: self.events.started(dep, url),
                on_failure=lambda url, why: self.events.failed_url(dep, url, why))
        except AllSourcesFailed as exc:
            raise _AllUrlsFailed(exc.reasons) from None
        announce_new(cache, result, settings)
        declared = absolute_url(dep.url, task.base)
        came_from = declared if result.source == "cache" else result.source
        return Resolved(dep.name, result.hash, result.path, came_from, result.cached,
                        result.transferred, task.parent, dep.lazy, base=declared)

    def _first_url(self, task: Request, cache: Cache) -> Resolved:
        from .locate import fetch_unpinned

        dep = task.dep
        reasons: list[str] = []
        for raw in dep.urls:
            url = absolute_url(raw, task.base)
            if self.offline and is_network(url):
                reasons.append(f"{url}: skipped, --offline")
                continue
            self.events.started(dep, url)
            try:
                result = fetch_unpinned(
                    url, cache, self.settings, [dep.name], fetchers=self.fetchers,
                    marks=_marks(dep),
                    progress=lambda done, total: self.events.progress(dep, done, total))
            except TreeseedError as exc:
                why = str(exc)
                reasons.append(why if why.startswith(url) else f"{url}: {why}")
                self.events.failed_url(dep, url, why)
                continue
            return Resolved(dep.name, result.hash, result.path, url, result.cached,
                            result.transferred, task.parent, dep.lazy)
        raise _AllUrlsFailed(reasons)

    def _describe(self, task: Request, reasons: list[str]) -> str:
        dep = task.dep
        where = f"{task.manifest_path}:{dep.line}" if dep.line else task.manifest_path
        via = f" (needed by {task.parent})" if task.parent else ""
        lines = [f"  {dep.name}{via}, declared at {where}:"]
        lines += [f"    - {reason}" for reason in reasons]
        return "\n".join(lines)


class _AllUrlsFailed(Exception):
    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


def _mark_used(path: Path) -> None:
    """Record a use without opening the index: the package directory's mtime (gc reads the
    later of it and the index's last_used), so a project rebuilt daily keeps its packages."""
    try:
        os.utime(path)
    except OSError:
        pass  # a read-only shared cache: gc there is the owner's business


def absolute_url(url: str, base: str, where: str | None = None) -> str:
    """Read ``url`` relative to ``base`` (a URL or a directory URL ending in '/').

    The manifest trust rule (docs/security.md): a manifest that came from the network (``base``
    is a network URL) may name only network URLs, or paths relative to it that stay on the
    same host. Anything on this machine (``~``, an absolute path, ``file://``, ``git+file://``)
    would let a stranger's package copy local directories into the cache. ``where`` names the
    manifest line for the error.
    """
    if is_network(base):
        _check_from_network(url, base, where or base)
    if "://" in url:
        return url
    if url.startswith("/"):
        return Path(url).as_uri()
    if url.startswith("~"):
        return Path(url).expanduser().as_uri()
    if base.startswith("git+"):
        raise TreeseedError(f"relative URL {url!r} in a package fetched from git ({base}): "
                            "write an absolute URL")
    return urljoin(base, url)


def _check_from_network(url: str, base: str, where: str) -> None:
    """Refuse a URL a network manifest may not name (see :func:`absolute_url`)."""
    from urllib.parse import urlsplit

    rule = ("a manifest fetched from the network may name only http(s):// and git+http(s):// "
            "URLs, or relative paths that stay on its own host, never anything on this machine")
    if "://" in url:
        if scheme_name(url) in SCHEMES and is_network(url):
            return
        problem = f"{url!r} is not a network URL"
    elif url.startswith(("/", "~", "\\")):
        problem = f"{url!r} names a path on this machine"
    else:
        joined, origin = urlsplit(urljoin(base, url)), urlsplit(base)
        if (joined.scheme, joined.netloc) == (origin.scheme, origin.netloc) and is_network(base):
            return
        problem = f"{url!r} leaves {origin.scheme}://{origin.netloc}"
    raise ManifestError(where, f"{problem}; this manifest came from {base}, and {rule}")


def _marks(dep: Dependency) -> list[str]:
    """Index marks a dependency entry gives its package (:mod:`treeseed.sharing`)."""
    from .sharing import PRIVATE

    return [PRIVATE] if dep.private else []


def _refusal(dep: Dependency, base: str, manifest_path: str) -> str | None:
    """Why a fetched manifest may not name ``dep``'s URLs (the trust rule), or None."""
    where = f"{manifest_path}:{dep.line}" if dep.line else manifest_path
    try:
        for url in dep.urls:
            absolute_url(url, base, where)
    except ManifestError as exc:
        return str(exc)
    return None


def _is_network(task: Request) -> bool:
    if task.refused:
        return False
    return all(is_network(absolute_url(u, task.base)) for u in task.dep.urls)


def base_url_of(package_dir: Path) -> str:
    """The URL a local package's relative dependency URLs are read against."""
    return package_dir.resolve().as_uri() + "/"


def find_package(start: Path) -> Path:
    """The directory holding the ``treeseed.toml`` at or above ``start`` (like git finds .git)."""
    here = start.resolve()
    for candidate in (here, *here.parents):
        if (candidate / MANIFEST_NAME).is_file():
            return candidate
    raise TreeseedError(f"no {MANIFEST_NAME} in {here} or any parent directory; run this in a "
                        "package directory, or pass -C DIR")
