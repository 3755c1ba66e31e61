"""``treeseed add``: fetch a package and record it as a dependency with its hash.

The package is fetched from its URL (and each mirror must yield the same package), named
(``--name``, else the package's own name: :mod:`treeseed.naming`) and written into
``treeseed.toml`` with tomlkit, keeping the file's comments (:func:`manifest.add_dependency`).
For an HTTP(S) archive the server's validators are learnt on the way, so that the first
``treeseed update`` is already a single conditional request (:mod:`treeseed.update`).

>>> added = add(Path("."), "https://zlib.net/zlib-1.3.1.tar.gz", Cache(), settings())  # doctest: +SKIP
>>> added.dependency.name                                                             # doctest: +SKIP
'zlib'
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .cache import Cache
from .config import Settings
from .errors import TreeseedError
from .install import FetchResult
from .manifest import MANIFEST_NAME, Dependency, add_dependency
from .sources import ProgressFn


@dataclass
class Added:
    """A dependency just written into ``manifest``, and the fetch that pinned it."""

    dependency: Dependency
    result: FetchResult
    manifest: Path


def add(root: Path, url: str, cache: Cache, settings: Settings, name: str | None = None,
        lazy: bool = False, mirrors: Sequence[str] = (), offline: bool = False,
        progress: ProgressFn | None = None) -> Added:
    """Fetch ``url`` into ``cache`` and add it to ``root``'s treeseed.toml.

    ``url`` and ``mirrors`` may be local paths, taken relative to the current directory and
    written relative to ``root``, as they will be read.
    """
    from .fetch import fetch
    from .locate import announce_new, fetch_unpinned
    from .naming import dependency_name, safe_name

    if name is not None and safe_name(name) != name:
        raise TreeseedError(f"--name {name!r}: a dependency name uses letters, digits and "
                            "_ . + - only, and starts with a letter, digit or _")
    urls = [url, *mirrors]
    if offline:
        _refuse_network(urls)
    absolute = [u if "://" in u else Path(u).resolve().as_uri() for u in urls]
    first = learn_before(absolute[0])
    result = fetch_unpinned(absolute[0], cache, settings, progress=progress)
    for mirror in absolute[1:]:  # every URL of a dependency must give the same package
        fetch(mirror, cache, result.hash, check_source=True)
    if first is not None:
        from .update import remember

        remember(cache, absolute[0], first, result.hash)
    announce_new(cache, result, settings)  # torrenting on: seeded at once
    dep = Dependency(name or dependency_name(result.path, url), manifest_url(url, root),
                     tuple(manifest_url(m, root) for m in mirrors), result.hash, lazy,
                     result.revision)
    add_dependency(root / MANIFEST_NAME, dep)
    return Added(dep, result, root / MANIFEST_NAME)


def learn_before(url: str):  # type: ignore[no-untyped-def]
    """For an HTTP(S) archive, one request for its validators before it is fetched (kept
    only if they describe what the fetch got: :func:`treeseed.update.remember`); None for
    other URLs, or when the server cannot be asked (the fetch then says why)."""
    from .update import revalidates

    if not revalidates(url, None):
        return None
    from .sources.http import probe

    try:
        return probe(url)
    except TreeseedError:
        return None


def manifest_url(url: str, root: Path) -> str:
    """URLs stay as given; a local path is written relative to the package, as it will be read."""
    if "://" in url:
        return url
    return os.path.relpath(Path(url).resolve(), root)


def _refuse_network(urls: Sequence[str]) -> None:
    from .schemes import is_network

    for url in urls:
        if is_network(url):
            raise TreeseedError(f"{url}: --offline forbids the network; use a local path, or a "
                                "package already in the cache")
