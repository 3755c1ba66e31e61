"""Where a package whose hash is known can be had, and in which order.

1. the cache;
2. the ``mirrors`` setting: content-addressed mirrors (``treeseed serve``), asked by hash
   (``<mirror>/<hash>.tar``), so a package whose upstream vanished is still found;
3. the origin URLs the manifest lists, in order;
4. with torrenting on, the swarm: started first, with a short head start over 2 and 3, and
   raced against them (:func:`treeseed.swarm.fetch.race`). Private packages never touch it.

Every candidate is fetched with the expected hash, so whichever answers, only the right tree
is installed. When all fail, the error lists each candidate with its reason.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .cache import Cache
from .errors import AliasMismatch, FetchError, TreeseedError
from .schemes import is_network

if TYPE_CHECKING:
    from .config import Settings
    from .fetch import FetchResult
    from .install import AlsoHash
    from .unpack import Limits



class AllSourcesFailed(FetchError):
    """No mirror, origin URL or swarm delivered the package; ``reasons`` says why for each."""

    def __init__(self, package: str, reasons: list[str],
                 errors: Sequence[TreeseedError] = ()) -> None:
        self.reasons = reasons
        #: The errors behind the reasons, where each was one (a caller with a single URL
        #: reports that URL's own error: a hash mismatch says it best).
        self.errors = list(errors)
        lines = "\n".join(f"  - {r}" for r in reasons) or "  - no mirror, URL or swarm to ask"
        super().__init__(f"{package} could not be fetched from any source:\n{lines}")


def mirror_urls(mirrors: Sequence[str], package_hash: str) -> list[str]:
    """Each mirror's URL for a package: ``<mirror>/<bt2 hash>.tar`` (see docs/serve.md)."""
    return [f"{m.rstrip('/')}/{package_hash}.tar" for m in mirrors]


def obtain(
    cache: Cache,
    package_hash: str,
    urls: Sequence[str],
    settings: Settings,
    name: str | None = None,
    offline: bool = False,
    progress: Callable[[int, int | None], None] | None = None,
    fetchers: dict[str, str] | None = None,
    on_url: Callable[[str], None] | None = None,
    on_failure: Callable[[str, str], None] | None = None,
    private: bool = False,
    names: Sequence[str] = (),
    limits: Limits | None = None,
    also: AlsoHash | None = None,
) -> FetchResult:
    """Fetch the package ``package_hash`` from wherever it can be had (module docstring).

    This is the one way in for a package whose hash is known: dependencies, ``fetch HASH``,
    ``fetch URL --hash``, ``zig fetch`` and the Nix cache all come here. ``name`` and
    ``names`` are what the caller calls the package, ``private`` its dependency entry's
    ``private = true``: :mod:`treeseed.sharing` decides from them whether the swarm may be
    asked, and a private package is marked so that it is never published either. ``also``
    is a hint's claim every new tree is checked against before it is installed
    (:class:`treeseed.install.AlsoHash`); a package already cached is returned unchecked.
    """
    from .install import cached_result
    from .sharing import PRIVATE, Sharing, lookup_refusal

    sharing = Sharing(cache, settings)
    refused = sharing.may_look_up(package_hash, [name, *names], private)
    marks = [PRIVATE] if private else []
    if cache.has(package_hash):
        if marks:
            cache.mark(package_hash, *marks)
        return cached_result(cache, package_hash, "cache", ())
    candidates = [u for u in [*mirror_urls(settings.mirrors, package_hash), *urls]
                  if not (offline and is_network(u))]
    skipped = [f"{u}: skipped, --offline" for u in [*mirror_urls(settings.mirrors, package_hash), *urls]
               if offline and is_network(u)]

    def from_urls(cancel: threading.Event | None, cache: Cache = cache) -> FetchResult:
        from .fetch import fetch

        reasons = list(skipped)
        errors: list[TreeseedError] = []
        for url in candidates:
            if cancel is not None and cancel.is_set():
                break
            if on_url is not None:
                on_url(url)
            try:
                return fetch(url, cache, package_hash, fetchers=fetchers, progress=progress,
                             cancel=cancel, marks=marks, limits=limits, also=also)
            except TreeseedError as exc:
                errors.append(exc)
                why = str(exc)
                reasons.append(why if why.startswith(url) else f"{url}: {why}")
                if on_failure is not None:
                    on_failure(url, why)
        raise AllSourcesFailed(package_hash, reasons, errors)

    if settings.torrent and not offline and refused is not None:
        # Say why the swarm was not asked: with no URL, this is the only reason given.
        skipped.append(lookup_refusal(package_hash, name or "", refused))
    if not settings.torrent or offline or refused is not None:
        return from_urls(None)
    from .swarm.fetch import BothFailed, from_swarm, head_start, race

    advice = [""]  # the swarm's latest word on the origin: "wait", "go" or none

    def from_the_swarm(cancel: threading.Event | None, cache: Cache = cache) -> FetchResult:
        if on_url is not None:
            on_url(f"swarm:{package_hash}")
        try:
            return from_swarm(cache, package_hash, settings, progress, cancel,
                              lambda a: advice.__setitem__(0, a), also)
        except TreeseedError as exc:
            raise AllSourcesFailed(package_hash, [f"swarm: {exc}"], [exc]) from None

    def on_own_thread(job: Callable[..., FetchResult]) -> Callable[[threading.Event], FetchResult]:
        """The race runs each side on a thread of its own, and an sqlite connection (the
        cache's index) cannot cross threads: each side opens its own."""
        def run(cancel: threading.Event) -> FetchResult:
            own = Cache(cache.root)
            try:
                return job(cancel, own)
            finally:
                own.close()
        return run

    try:
        return race(on_own_thread(from_the_swarm), on_own_thread(from_urls) if candidates else None,
                    head_start(), advice=lambda: advice[0])
    except BothFailed as both:
        failed = [e for e in (both.origin_error, both.swarm_error) if e is not None]
        reasons = [r for e in failed for r in getattr(e, "reasons", [str(e)])]
        errors = [x for e in failed for x in getattr(e, "errors", [e])
                  if isinstance(x, TreeseedError)]
        raise AllSourcesFailed(package_hash, reasons, errors) from None


def resolve_alias(mirror: str, fmt: str, value: str, timeout: float = 10.0) -> str | None:
    """The bt2 hash a ``treeseed serve`` mirror knows by another format's hash (its
    ``/alias/<fmt>/<value>`` redirect), or None. This is how a package known only by its zig
    hash gets a swarm address."""
    import re
    from urllib.parse import quote

    from .schemes import is_http

    if not is_http(mirror):
        return None
    import urllib3

    url = f"{mirror.rstrip('/')}/alias/{quote(fmt, safe='')}/{quote(value, safe='')}"
    try:
        reply = urllib3.request("HEAD", url, redirect=False, retries=False, timeout=timeout)
    except urllib3.exceptions.HTTPError:
        return None
    found = re.search(r"/(bt2-[0-9a-f]{64})\.tar$", reply.headers.get("Location", ""))
    return found[1] if reply.status in (301, 302, 303, 307, 308) and found else None


def announce_new(cache: Cache, result: FetchResult, settings: Settings) -> None:
    """With torrenting on, tell this cache's running seeder about a package just installed."""
    if settings.torrent and not result.cached:
        from .swarm.client import notify_added

        notify_added(cache, result.hash)


def obtain_by_alias(
    cache: Cache,
    fmt: str,
    value: str,
    settings: Settings,
    offline: bool = False,
    progress: Callable[[int, int | None], None] | None = None,
    names: Sequence[str] = (),
    urls: Sequence[str] = (),
) -> FetchResult:
    """Fetch the package another tool knows by ``value`` in format ``fmt`` (zig, nar, git,
    nix-store, archive-sha256: :func:`treeseed.swarm.aliases.parse_hash`).

    The bt2 hash is looked for in this order: the cache's own index (aliases treeseed derived
    itself), each mirror's ``/alias/<fmt>/<value>``, then, with torrenting and the DHT on, the
    DHT (:mod:`treeseed.swarm.aliases`). A mirror's or the DHT's answer is only a hint: the
    package it names is had by its bt2 hash (:func:`obtain`, so its bytes are that package's),
    and checked in ``fmt`` before it is installed, so a package that does not have ``value``
    never enters the cache (:class:`treeseed.install.AlsoHash`); the error says the hint was
    wrong. ``names`` are the names the
    caller knows the package by: a private one is never looked up in the DHT. ``urls`` are
    origin URLs for the package (a build.zig.zon's ``.url``), raced as for any pinned package.
    """
    from .install import AlsoHash, cached_result, hash_as
    from .sharing import Sharing

    known = cache.resolve(fmt, value)
    if known and cache.has(known):
        return cached_result(cache, known, "cache", ())
    wanted = f"{fmt} {value}"
    if fmt == "archive-sha256":
        raise FetchError(f"{wanted} is not in the cache; an archive digest cannot be checked "
                         "against a tree, so mirrors and the DHT are not asked for one")
    reasons: list[str] = []
    tried: set[str] = set()
    also = AlsoHash(fmt, value)

    def attempt(package_hash: str, where: str) -> FetchResult | None:
        if package_hash in tried:
            return None
        tried.add(package_hash)
        try:
            result = obtain(cache, package_hash, urls, settings, offline=offline,
                            progress=progress, names=names, also=also)
            got = hash_as(result.path, fmt, value, package_hash) if result.cached else value
        except TreeseedError as exc:
            wrong = _alias_mismatch(exc)
            if wrong is None:
                reasons.append(f"{where} named {package_hash}, which could not be fetched: {exc}")
                return None
            got = wrong.actual
        if got == value:
            from .install import record_aliases

            if fmt in ("nar", "git", "ipfs") or (fmt == "zig" and not value.startswith("1220")):
                record_aliases(cache, package_hash, {fmt: value})
            return result
        reasons.append(f"{where} hint was wrong: it named {package_hash}, whose {fmt} hash is "
                       f"{got}, not {value}; nothing was installed")
        return None

    if not offline:
        mirror_fmt = fmt if fmt != "nix-store" else None
        for mirror in settings.mirrors if mirror_fmt else ():
            package_hash = resolve_alias(mirror, mirror_fmt, value)
            if package_hash is None:
                reasons.append(f"{mirror}: does not know {wanted}")
                continue
            found = attempt(package_hash, f"the mirror {mirror}'s")
            if found is not None:
                return found
    refused = Sharing(cache, settings).may_look_up("", names)
    if offline:
        reasons.append("the DHT: not asked, --offline")
    elif not (settings.torrent and settings.dht):
        reasons.append("the DHT: not asked (torrenting or the DHT is off)")
    elif refused is not None:
        from .sharing import private_because

        reasons.append(f"the DHT: not asked, {private_because(names[0] if names else value, refused)}")
    else:
        package_hash = dht_lookup(cache, settings, fmt, value)
        if package_hash is None:
            reasons.append(f"the DHT: no item names {wanted}")
        else:
            found = attempt(package_hash, "the DHT")
            if found is not None:
                return found
    raise AllSourcesFailed(wanted, reasons)


def fetch_unpinned(url: str, cache: Cache, settings: Settings | None = None,
                   names: Sequence[str] = (), **options: Any) -> FetchResult:
    """Fetch a URL whose package hash nobody pinned yet (``add``, an unpinned dependency):
    an ``ipfs://`` URL names its content, so it may also come from treeseed peers
    (:func:`obtain_by_cid`), unless the dependency is private (a ``marks`` option, or one of
    ``names`` in the ``private`` setting: its CID is never looked up); any other URL is asked alone (:func:`treeseed.fetch.fetch`).
    ``options`` go to ``fetch`` (``progress``, ``fetchers``, ``marks``, ...)."""
    from .schemes import scheme_of

    if scheme_of(url).module == "ipfs" and not options.get("marks"):
        from .config import Settings

        return obtain_by_cid(cache, url, settings or Settings.defaults(),
                             progress=options.get("progress"), fetchers=options.get("fetchers"),
                             names=names)
    from .fetch import fetch

    return fetch(url, cache, None, **options)


def obtain_by_cid(
    cache: Cache,
    url: str,
    settings: Settings,
    offline: bool = False,
    progress: Callable[[int, int | None], None] | None = None,
    limits: Limits | None = None,
    fetchers: dict[str, str] | None = None,
    names: Sequence[str] = (),
) -> FetchResult:
    """Fetch ``ipfs://<cid>``: the ``ipfs_gateways`` first (:mod:`treeseed.sources.ipfs`),
    then, when every one failed or none is configured, the package's ``ipfs`` alias
    (:func:`obtain_by_alias`: this cache's index, each mirror's ``/alias/ipfs/<cid>``, and
    with torrenting and the DHT on, the DHT item every seeder publishes for its packages).

    Why here and not in the source: a gateway hands over a DAG checked block by block
    against the CID, but peers hand over a package named by a hint anyone can write; the
    alias path fetches that package by its bt2 hash and installs it only if its tree hashes
    to this CID (:class:`treeseed.install.AlsoHash`). When everything fails, the error
    lists each gateway's failure and what became of the alias lookup (the DHT included,
    or why it was not asked).
    """
    from .fetch import fetch
    from .install import cached_result
    from .sources.ipfs import IpfsSource

    source = IpfsSource(url)  # a malformed CID is refused here, before anything is asked
    known = cache.resolve("ipfs", source.cid_text)
    if known is not None:
        return cached_result(cache, known, "cache", ())
    reasons: list[str] = []
    errors: list[TreeseedError] = []
    if offline:
        reasons.append(f"{source.canonical}: the gateways were not asked, --offline")
    else:
        try:
            return fetch(source.canonical, cache, None, limits=limits, progress=progress,
                         fetchers=fetchers)
        except TreeseedError as exc:
            reasons.append(str(exc))
            errors.append(exc)
    try:
        return obtain_by_alias(cache, "ipfs", source.cid_text, settings, offline=offline,
                               progress=progress, names=names)
    except TreeseedError as exc:
        reasons.extend(getattr(exc, "reasons", None) or [str(exc)])
        errors.append(exc)
    raise AllSourcesFailed(source.canonical, reasons, errors)


def _alias_mismatch(exc: BaseException) -> AliasMismatch | None:
    """The :class:`treeseed.errors.AliasMismatch` behind a failure, however deep (a race's
    :class:`AllSourcesFailed` keeps each side's errors)."""
    if isinstance(exc, AliasMismatch):
        return exc
    for inner in getattr(exc, "errors", ()):
        found = _alias_mismatch(inner)
        if found is not None:
            return found
    return None


def dht_lookup(cache: Cache, settings: Settings, fmt: str, value: str) -> str | None:
    """The bt2 hash the DHT's alias item for ``value`` names (a hint), asked through this
    cache's running seeder (its DHT is warm) or a short-lived session of our own."""
    from .swarm.client import SeederClient

    client = SeederClient.connect(cache)
    if client is not None:
        with client:
            try:
                answer = client.call({"op": "alias", "format": fmt, "value": value}, timeout=90)
            except (OSError, ValueError):
                answer = {}
        found = answer.get("hash")
        if "error" not in answer:
            return found if isinstance(found, str) else None
    from .swarm.aliases import AliasDht
    from .swarm.session import Swarm

    swarm = Swarm(settings)
    dht = AliasDht(swarm)
    try:
        return dht.get(fmt, value)
    finally:
        dht.close()
        swarm.close()
        del dht, swarm
