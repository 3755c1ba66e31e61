"""``treeseed zig fetch``: a Zig project's dependencies, fetched by treeseed, put where Zig looks.

Zig (0.14 to 0.17) finds a dependency declared with ``.url`` and ``.hash`` by its hash alone:

* 0.14 and 0.15: the unpacked package at ``$ZIG_GLOBAL_CACHE_DIR/p/<hash>/``;
* 0.16 and 0.17: the unpacked package in the project's ``zig-pkg/<hash>/`` (0.17's
  ``--pkg-dir`` and ``ZIG_LOCAL_PKG_DIR`` move it), else the tarball
  ``$ZIG_GLOBAL_CACHE_DIR/p/<hash>.tar.gz``, which Zig unpacks and checks against the hash.

A directory found there is used as it is: Zig checks that it exists, never what it holds
(``Fetch.zig``, step 1 of its job). So nothing is placed here that has not been verified: each
dependency's tree is hashed with Zig's own rules (:mod:`treeseed.hashing.zig`: the package's
``.paths``, its name, version and fingerprint) and compared with the ``.hash`` of its
``build.zig.zon`` line, and only then copied, as Zig would have left it (files outside
``.paths`` dropped), into a directory beside the destination that is renamed into place whole.

Trees come from treeseed's normal fetch path: first the cache, by the zig hash it recorded the
first time (an alias of the package's bt2 hash, so the package is seeded and served like any
other). Then, with torrenting on, the swarm: it is addressed by bt2 hash, which a zig hash
does not give, but a ``treeseed serve`` mirror that knows the zig hash names it
(:func:`treeseed.locate.resolve_alias`), and the package is then had like any pinned
dependency (:func:`treeseed.locate.obtain`: mirrors, ``.url`` and swarm, raced). Then each
``mirrors`` entry by zig hash (``/alias/zig/<hash>``), then the ``.url``. The walk
follows each package's own ``build.zig.zon``, breadth first, several packages at a time.

>>> placed = ZigFetch(Cache(), layout_for("0.15", Path("."))).run(Path("."))  # doctest: +SKIP
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .. import zon
from ..cache import Cache
from ..config import Settings
from ..errors import TreeseedError
from ..hashing import feed_file
from ..hashing import zig as zighash
from ..package import Entry, scan_tree

ZON = zon.MANIFEST_NAME
#: The Zig release series treeseed knows the package layout of.
VERSIONS = ("0.14", "0.15", "0.16", "0.17")
#: Series that keep unpacked packages in the global cache (``p/<hash>/``); later ones use the
#: project's ``zig-pkg/<hash>/``.
GLOBAL_LAYOUT = ("0.14", "0.15")
#: Seconds ``zig version`` may take (0.17 may build parts of itself on first use).
VERSION_TIMEOUT = 600

_LEGACY = re.compile(r"1220[0-9a-f]{64}")
# name-version-<44 base64url>: an identifier, a semantic version, the encoded id/size/digest.
# Checked strictly because the hash becomes a directory name.
_HASH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*-[0-9A-Za-z.+-]+-[A-Za-z0-9_-]{44}")

FetchMode = Literal["needed", "all"]
#: How the treeseed cache, the first source of every dependency, is named in messages.
CACHE_SOURCE = "the treeseed cache"


class ZigFetchError(TreeseedError):
    """One or more Zig dependencies could not be fetched, verified or placed; each is listed."""


# ----------------------------------------------------------------------------- Zig itself


def zig_command() -> list[str]:
    """How to run Zig: ``zig`` on PATH, else the pip package ``ziglang`` (``python -m ziglang``)."""
    exe = shutil.which("zig")
    if exe:
        return [exe]
    import importlib.util

    if importlib.util.find_spec("ziglang") is not None:
        return [sys.executable, "-m", "ziglang"]
    raise TreeseedError("--zig-version auto: no zig on PATH and no Python package ziglang; "
                        "install Zig, or name its version with --zig-version 0.15")


def detect_version(command: Sequence[str] | None = None) -> str:
    """The release series (``0.15``) of the Zig that ``zig version`` names."""
    cmd = list(command or zig_command())
    try:
        proc = subprocess.run([*cmd, "version"], check=False, capture_output=True, text=True,
                              timeout=VERSION_TIMEOUT, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TreeseedError(f"cannot run '{' '.join(cmd)} version' ({exc}); name the Zig version "
                            "with --zig-version") from None
    if proc.returncode != 0:
        raise TreeseedError(f"'{' '.join(cmd)} version' failed: {proc.stderr.strip()[-300:]}; "
                            "name the Zig version with --zig-version")
    return series(proc.stdout.strip())


def series(version: str) -> str:
    """``0.15.2`` or ``0.16.0-dev.1+abc`` -> ``0.15`` / ``0.16``; an unknown series is an error,
    since the package layout is what changes between them."""
    m = re.match(r"(\d+)\.(\d+)(?:\.|$)", version)
    found = f"{m[1]}.{m[2]}" if m else version
    if found not in VERSIONS:
        raise TreeseedError(f"zig {version}: treeseed knows where Zig {', '.join(VERSIONS)} look for "
                            "packages, not this version; name one with --zig-version")
    return found


def default_global_cache() -> Path:
    """Zig's global cache directory on this machine, found as Zig finds it (``zig env``)."""
    env = os.environ.get("ZIG_GLOBAL_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg) / "zig"
    return Path.home() / ".cache" / "zig"


@dataclass(frozen=True)
class Layout:
    """Where one Zig version looks for a package with a given hash."""

    version: str
    global_cache: Path
    pkg_dir: Path | None  # the project's zig-pkg (0.16+), None for 0.14/0.15

    def destination(self, zig_hash: str) -> Path:
        if self.pkg_dir is None:
            return self.global_cache / "p" / zig_hash
        return self.pkg_dir / zig_hash

    @property
    def allows_missing_paths(self) -> bool:
        """0.16+ hash a dependency whose build.zig.zon has no ``.paths`` over all its files;
        0.14/0.15 refuse it."""
        return self.version not in GLOBAL_LAYOUT


def layout_for(version: str, project: Path, global_cache: Path | None = None,
               pkg_dir: Path | None = None) -> Layout:
    """The layout of Zig ``version`` (a series, ``0.15``) for the project at ``project``."""
    global_cache = global_cache or default_global_cache()
    if version in GLOBAL_LAYOUT:
        return Layout(version, global_cache, None)
    env = os.environ.get("ZIG_LOCAL_PKG_DIR")
    local = pkg_dir or (Path(env) if env else project / "zig-pkg")
    return Layout(version, global_cache, local.absolute())


# ----------------------------------------------------------------------------- build.zig.zon


@dataclass(frozen=True)
class ZigDependency:
    """One entry of a ``build.zig.zon``'s ``.dependencies``, with where it was declared."""

    name: str
    url: str | None
    path: str | None
    hash: str | None
    lazy: bool
    manifest: str  # the build.zig.zon that declares it, as shown in messages
    line: int | None  # the line of its .hash there (else of its .url, else of the entry)
    base: Path  # the directory of that build.zig.zon: relative .path entries start there
    parent: str | None  # the package that declares it; None for the project
    #: Declared by a package that came from the network: the manifest trust rule applies
    #: (only network URLs; a .path stays inside its package), as for treeseed.toml.
    remote: bool = False

    @property
    def where(self) -> str:
        return f"{self.manifest}:{self.line}" if self.line else self.manifest


def read_dependencies(root: Path, parent: str | None = None, display: str | None = None,
                      remote: bool = False) -> list[ZigDependency]:
    """The dependencies the ``build.zig.zon`` in ``root`` declares (none without one)."""
    path = root / ZON
    if not path.is_file():
        return []
    shown = display or str(path)
    data = zon.load(path, shown)
    info = zon.manifest_info(data, shown)
    nodes = data.get("dependencies") or {}
    entry_lines = getattr(nodes, "key_lines", {})
    out = []
    for name, dep in info.dependencies.items():
        lines = getattr(nodes.get(name), "key_lines", {})
        line = lines.get("hash") or lines.get("url") or lines.get("path") or entry_lines.get(name)
        out.append(ZigDependency(name, dep["url"], dep["path"], dep["hash"], dep["lazy"], shown,
                                 line, root, parent, remote))
    return out


# ----------------------------------------------------------------------------- the Zig hash


@dataclass(frozen=True)
class ZigHash:
    """A tree's Zig hash in both spellings, and what Zig keeps of the tree."""

    hash: str  # name-version-<base64url>
    legacy: str  # 1220<hex>, the form 0.14/0.15 still accept
    keep: Callable[[str], bool]  # the package's .paths rule
    entries: list[Entry]  # every file and symlink of the tree

    def matches(self, declared: str) -> bool:
        return declared in (self.hash, self.legacy)


def zig_hash(root: Path, source: str, allow_missing_paths: bool = False) -> ZigHash:
    """Hash the tree at ``root`` as ``zig fetch`` would, with the package's own ``.paths``.

    ``allow_missing_paths``: a manifest without ``.paths`` keeps every file (Zig 0.16+)
    instead of being an error (0.14/0.15).
    """
    manifest = _manifest(root, source, allow_missing_paths)
    keep = zighash.paths_filter(manifest.paths if manifest else None)
    entries = scan_tree(root, source)
    digests = {e.path: _file_digest(root, e) for e in entries if not e.is_symlink and keep(e.path)}
    digest, size = zighash.tree_digest(entries, digests, keep)
    if manifest is None:
        printed = zighash.package_hash(digest, size)
    else:
        printed = zighash.package_hash(digest, size, manifest.name, manifest.version, manifest.id)
    return ZigHash(printed, zighash.legacy_hash(digest), keep, entries)


def _manifest(root: Path, source: str, allow_missing_paths: bool) -> zon.ZigManifest | None:
    if not allow_missing_paths:
        return zighash.read_manifest(root, source)
    path = root / ZON
    if not path.is_file():
        return None
    display = f"{source}: {ZON}"
    return zon.manifest_info(zon.load(path, display), display)


def _file_digest(root: Path, entry: Entry) -> zighash.ZigFileDigest:
    hasher = zighash.ZigFileHasher(entry.path)
    feed_file(os.path.join(os.fsencode(root), os.fsencode(entry.path)), [hasher.update], entry.size)
    return hasher.finish()


# ----------------------------------------------------------------------------- placing


def place(src: Path, entries: Sequence[Entry], keep: Callable[[str], bool], dest: Path) -> bool:
    """Copy the entries of ``src`` that ``keep`` keeps to ``dest``, whole or not at all.

    The copy is built in a fresh directory beside ``dest`` and renamed onto it, so Zig never
    sees half a package. Files are copied, never linked: Zig or the user may edit what is in
    ``zig-pkg/``, and that must not reach treeseed's cache. Returns False when ``dest`` was
    already there (placed by Zig, or by another process meanwhile): it is left untouched.
    """
    if dest.is_dir():
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".treeseed-tmp-{secrets.token_hex(8)}"
    tmp.mkdir()
    try:
        _copy_entries(src, tmp, [e for e in entries if keep(e.path)])
        os.rename(tmp, dest)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY) and dest.is_dir():
            return False
        raise TreeseedError(f"cannot place a package at {dest}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return True


def _copy_entries(src: Path, dest: Path, entries: Sequence[Entry]) -> None:
    src_b, dest_b = os.fsencode(src), os.fsencode(dest)
    for entry in entries:
        rel = os.fsencode(entry.path)
        target = os.path.join(dest_b, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if entry.is_symlink:
            os.symlink(os.fsencode(entry.target or ""), target)
            continue
        shutil.copyfile(os.path.join(src_b, rel), target, follow_symlinks=False)
        os.chmod(target, 0o755 if entry.executable else 0o644)


# ----------------------------------------------------------------------------- the walk


@dataclass
class Placed:
    """One Zig package, now where Zig looks for it."""

    name: str
    hash: str  # as build.zig.zon declares it
    path: Path  # where Zig will find it
    package: str | None  # its treeseed bt2 hash; None when it was already there
    status: Literal["placed", "present"]
    parent: str | None

    def as_json(self) -> dict:
        return {"name": self.name, "hash": self.hash, "path": str(self.path),
                "package": self.package, "status": self.status, "parent": self.parent}


@dataclass
class ZigFetch:
    """Fetches a Zig project's dependency graph through treeseed into ``layout``.

    ``mode``: ``needed`` skips lazy dependencies (Zig fetches those only when a build script
    asks for them), ``all`` takes them too, at every level. ``offline`` forbids network URLs
    for packages the treeseed cache does not hold. ``fetchers`` are configured fetcher
    commands by URL scheme, as for ``treeseed fetch``; ``mirrors`` are ``treeseed serve``
    mirrors, asked for a package by its zig hash.
    """

    cache: Cache
    layout: Layout
    mode: FetchMode = "needed"
    offline: bool = False
    jobs: int = 4
    fetchers: dict[str, str] | None = None
    #: Content-addressed mirrors (the ``mirrors`` setting), asked before the ``.url``.
    mirrors: Sequence[str] = ()
    #: The user's settings: with torrenting on, a package a mirror can name by bt2 hash is
    #: also looked for in the swarm (:func:`treeseed.locate.obtain`).
    settings: Settings | None = None
    #: Where notes that are not failures go (a corrupt cache entry evicted and fetched again).
    warn: Callable[[str], None] = field(default=lambda text: print(
        f"treeseed: warning: {text}", file=sys.stderr, flush=True))

    def run(self, project: Path) -> list[Placed]:
        """Fetch, verify and place every dependency of the project at ``project``."""
        if not (project / ZON).is_file():
            raise TreeseedError(f"no {ZON} in {project}; run this in a Zig project, or pass -C DIR")
        pending = self._wanted(read_dependencies(project))
        done: list[Placed] = []
        failures: list[str] = []
        seen: set[str] = set()
        with ThreadPoolExecutor(max(1, self.jobs), thread_name_prefix="treeseed-zig") as pool:
            while pending:
                batch = [d for d in pending if _first_time(d, seen)]
                pending = []
                for dep, outcome in zip(batch, pool.map(self._resolve, batch), strict=True):
                    if isinstance(outcome, str):
                        failures.append(f"  {dep.name}{_via(dep)}, declared at {dep.where}:\n"
                                        f"    {outcome}")
                        continue
                    placed, children = outcome
                    if placed is not None:
                        done.append(placed)
                    pending += self._wanted(children)
        if failures:
            count = f"{len(failures)} Zig dependenc{'y' if len(failures) == 1 else 'ies'}"
            raise ZigFetchError(f"{count} could not be fetched:\n" + "\n".join(failures))
        return done

    def _wanted(self, deps: list[ZigDependency]) -> list[ZigDependency]:
        return [d for d in deps if self.mode == "all" or not d.lazy]

    def _resolve(self, dep: ZigDependency) -> tuple[Placed | None, list[ZigDependency]] | str:
        """One dependency: its placement and its own dependencies, or what went wrong."""
        try:
            if dep.remote:
                _check_from_network(dep)
            if dep.path is not None:
                return None, self._path_dependency(dep)
            return self._url_dependency(dep)
        except TreeseedError as exc:
            return str(exc)

    def _path_dependency(self, dep: ZigDependency) -> list[ZigDependency]:
        """A ``.path`` dependency is used where it is; only its own dependencies need fetching."""
        assert dep.path is not None
        root = Path(os.path.normpath(dep.base / dep.path))
        return read_dependencies(root, dep.name, remote=dep.remote)

    def _url_dependency(self, dep: ZigDependency) -> tuple[Placed, list[ZigDependency]]:
        declared = self._checked_hash(dep)
        dest = self.layout.destination(declared)
        if dest.is_dir():  # Zig would use it as it is; so do we, and follow its manifest
            placed = Placed(dep.name, declared, dest, None, "present", dep.parent)
            return placed, read_dependencies(dest, dep.name, f"{dest / ZON}", _came_remote(dep))
        cache = Cache(self.cache.root)  # one index connection per thread
        try:
            tree, package, computed = self._verified_tree(dep, declared, cache)
            cache.add_aliases(package, {"zig": computed.hash})
        finally:
            cache.close()
        created = place(tree, computed.entries, computed.keep, dest)
        placed = Placed(dep.name, declared, dest, package, "placed" if created else "present",
                        dep.parent)
        return placed, read_dependencies(dest, dep.name, f"{dest / ZON}", _came_remote(dep))

    def _verified_tree(self, dep: ZigDependency, declared: str, cache: Cache
                       ) -> tuple[Path, str, ZigHash]:
        """The first tree, from the first source that has one, whose Zig hash is ``declared``.

        Sources in order: the treeseed cache (by the zig hash recorded the first time), each
        mirror (``<mirror>/alias/zig/<hash>``, which ``treeseed serve`` redirects to the
        package), the ``.url``. A source whose tree has another hash is passed over, and
        named in the error if none has the right one.
        """
        reasons: list[str] = []
        for where, get in self._sources(dep, declared, cache):
            found = self._try_source(dep, declared, cache, where, get, reasons)
            if found is not None:
                return found
        raise TreeseedError("\n    ".join(reasons))

    def _try_source(self, dep: ZigDependency, declared: str, cache: Cache, where: str,
                    get: Callable[[], tuple[Path, str]], reasons: list[str]
                    ) -> tuple[Path, str, ZigHash] | None:
        """One source's tree if its Zig hash is ``declared``; else None, with why in ``reasons``.

        Every tree comes out of the treeseed cache, maybe without being fetched at all (found by
        the zig alias, or by the archive's digest the source announced). So a tree that fails is
        re-hashed against its bt2 name before the source is blamed: a cache entry changed after
        install is evicted (:meth:`Cache.evict_corrupt`) and the source asked once more, which
        now really fetches; the cache itself has nothing left to offer.
        """
        for attempt in range(2):
            try:
                tree, package = get()
            except TreeseedError as exc:
                reasons.append(_from(where, exc))
                return None
            try:
                computed = zig_hash(tree, f"{where} ({package})", self.layout.allows_missing_paths)
            except TreeseedError as exc:
                failure = _from(where, exc)
            else:
                if computed.matches(declared):
                    return tree, package, computed
                failure = _mismatch(dep, declared, computed, where, tree)
            corrupt = cache.check(package) if cache.has(package) else None
            if corrupt is None:
                reasons.append(failure)
                return None
            said = cache.evict_corrupt(package, corrupt)
            again = attempt == 0 and where != CACHE_SOURCE
            self.warn(f"{dep.where}: dependency {dep.name!r}: {said}"
                      + ("; fetching it again" if again else "; trying its other sources"))
            if not again:
                reasons.append(f"{where}: {said}")
                return None
        reasons.append(f"{where}: the package was corrupt in the cache twice in a row")
        return None

    def _sources(self, dep: ZigDependency, declared: str, cache: Cache
                 ) -> Iterator[tuple[str, Callable[[], tuple[Path, str]]]]:
        known = cache.resolve("zig", declared)
        if known:
            yield CACHE_SOURCE, lambda: (cache.path(known), known)
        swarm = self._swarm_source(dep, declared, cache)
        if swarm is not None:
            yield swarm
        for mirror in self.mirrors:
            url = f"{mirror.rstrip('/')}/alias/zig/{declared}"
            yield url, lambda url=url: self._fetch(url, cache)
        url = _absolute_url(dep)
        yield url, lambda: self._fetch(url, cache)

    def _swarm_source(self, dep: ZigDependency, declared: str, cache: Cache
                      ) -> tuple[str, Callable[[], tuple[Path, str]]] | None:
        """With torrenting on: the first mirror that knows the zig hash names the package's
        bt2 hash, and the package is then had like any pinned dependency (its mirrors, its
        ``.url`` and the swarm, raced); the Zig hash is still checked afterwards. With no
        mirror that knows it and the DHT on, the DHT's alias item names it
        (:func:`treeseed.locate.obtain_by_alias`, which checks the Zig hash before keeping it)."""
        from ..locate import obtain, obtain_by_alias, resolve_alias

        settings = self.settings
        if settings is None or not settings.torrent or self.offline:
            return None
        for mirror in self.mirrors:
            package = resolve_alias(mirror, "zig", declared)
            if package is not None:
                def get(package: str = package) -> tuple[Path, str]:
                    result = obtain(cache, package, [_absolute_url(dep)], settings,
                                    name=dep.name, fetchers=self.fetchers)
                    return result.path, result.hash

                return f"the swarm and mirrors, as {package} (named by {mirror})", get
        if not settings.dht:
            return None

        def by_dht() -> tuple[Path, str]:
            result = obtain_by_alias(cache, "zig", declared, settings, names=[dep.name],
                                     urls=[_absolute_url(dep)])
            return result.path, result.hash

        return "the swarm, named by the DHT", by_dht

    def _fetch(self, url: str, cache: Cache) -> tuple[Path, str]:
        from ..fetch import fetch
        from ..schemes import is_network

        if self.offline and is_network(url):
            raise TreeseedError(f"{url}: skipped, --offline forbids the network")
        result = fetch(url, cache, fetchers=self.fetchers)
        return result.path, result.hash

    def _checked_hash(self, dep: ZigDependency) -> str:
        """The declared hash, if Zig of this version would accept it (it names a directory)."""
        if dep.hash is None:
            found = self._hash_for_missing(dep)
            raise TreeseedError(f"{dep.where}: dependency {dep.name!r} has no .hash; its package "
                                f"hashes to {found}: add  .hash = \"{found}\",  (Zig refuses a "
                                "URL dependency without one, and so does treeseed)")
        if _LEGACY.fullmatch(dep.hash):
            if self.layout.version not in GLOBAL_LAYOUT:
                raise TreeseedError(f"{dep.where}: dependency {dep.name!r}: Zig "
                                    f"{self.layout.version} no longer accepts the legacy hash "
                                    f"{dep.hash}; replace it with {self._hash_for_missing(dep)}")
            return dep.hash
        if not _HASH.fullmatch(dep.hash):
            raise TreeseedError(f"{dep.where}: dependency {dep.name!r}: {dep.hash!r} is not a Zig "
                                "package hash (name-version-<44 base64url characters>, or the "
                                "legacy 1220<64 hex>)")
        return dep.hash

    def _hash_for_missing(self, dep: ZigDependency) -> str:
        """Fetch a dependency from its ``.url`` only to tell the user the hash to write down."""
        cache = Cache(self.cache.root)
        try:
            url = _absolute_url(dep)
            tree, package = self._fetch(url, cache)
            corrupt = cache.check(package)  # the user is told to pin this: never a corrupt tree
            if corrupt is not None:
                self.warn(f"{dep.where}: dependency {dep.name!r}: "
                          f"{cache.evict_corrupt(package, corrupt)}; fetching it again")
                tree, package = self._fetch(url, cache)
            return zig_hash(tree, f"{url} ({package})", self.layout.allows_missing_paths).hash
        finally:
            cache.close()


def _came_remote(dep: ZigDependency) -> bool:
    """Is the package ``dep`` names a stranger's (fetched from the network, or declared by one)?"""
    from ..schemes import is_network

    return dep.remote or (dep.url is not None and is_network(dep.url))


def _check_from_network(dep: ZigDependency) -> None:
    """The manifest trust rule for build.zig.zon: a package fetched from the network may name
    only network URLs, and ``.path`` dependencies inside itself, never this machine's files."""
    from ..schemes import SCHEMES, is_network, scheme_name

    rule = ("a build.zig.zon fetched from the network may name only http(s):// and "
            "git+http(s):// URLs, and .path dependencies inside its own package")
    if dep.url is not None and not (scheme_name(dep.url) in SCHEMES and is_network(dep.url)):
        raise TreeseedError(f"{dep.where}: dependency {dep.name!r}: {dep.url!r} is not a network "
                            f"URL; {rule}")
    if dep.path is not None:
        inside = os.path.normpath(dep.base / dep.path)
        base = os.path.normpath(dep.base)
        if os.path.isabs(dep.path) or not (inside == base or inside.startswith(base + os.sep)):
            raise TreeseedError(f"{dep.where}: dependency {dep.name!r}: .path {dep.path!r} leaves "
                                f"its package; {rule}")


def _first_time(dep: ZigDependency, seen: set[str]) -> bool:
    """Each package once: by hash (Zig's own key), or by location when there is none."""
    key = dep.hash or (f"path:{os.path.normpath(dep.base / dep.path)}" if dep.path is not None
                       else f"url:{dep.url}")
    if key in seen:
        return False
    seen.add(key)
    return True


def _via(dep: ZigDependency) -> str:
    return f" (needed by {dep.parent})" if dep.parent else ""


def _absolute_url(dep: ZigDependency) -> str:
    """The URL to fetch: as written, except that Zig reads a ``file://`` path relative to the
    declaring package's directory, and treeseed needs it absolute."""
    assert dep.url is not None
    url = dep.url
    if url.lower().startswith("file://"):
        rest = url[len("file://"):]
        if rest and not rest.startswith("/"):
            return (dep.base / rest).absolute().as_uri()
    return url


def _from(where: str, exc: TreeseedError) -> str:
    """An error as one reason, prefixed with the source unless it names it already."""
    why = str(exc)
    return why if why.startswith(where) else f"{where}: {why}"


def _mismatch(dep: ZigDependency, declared: str, computed: ZigHash, url: str, tree: Path) -> str:
    got = computed.legacy if _LEGACY.fullmatch(declared) else computed.hash
    hint = ""
    if (tree / "treeseed.toml").is_file():
        hint = (" (the package has a treeseed.toml: if its rules drop files that Zig's .paths "
                "keeps, treeseed's copy cannot match Zig's hash)")
    return (f"{dep.where}: dependency {dep.name!r}: hash mismatch: build.zig.zon declares "
            f"{declared} but {url} holds a package that hashes to {got}{hint}; nothing was placed "
            "(if the source changed on purpose, put the new hash in build.zig.zon)")


# ----------------------------------------------------------------------------- zig add


@dataclass
class ZigAdded:
    """What ``treeseed zig add`` wrote into build.zig.zon and placed where Zig looks."""

    name: str
    url: str  # as written into .url
    hash: str  # the Zig hash written into .hash
    package: str  # its treeseed bt2 hash
    path: Path  # where Zig finds it
    status: Literal["added", "updated", "unchanged"]

    def as_json(self) -> dict:
        return {"name": self.name, "url": self.url, "hash": self.hash, "package": self.package,
                "path": str(self.path), "status": self.status}


def zig_add(project: Path, url: str, cache: Cache, layout: Layout, settings: Settings,
            name: str | None = None, lazy: bool = False, offline: bool = False,
            progress: Callable[[int, int | None], None] | None = None) -> ZigAdded:
    """``zig fetch --save`` through treeseed: fetch ``url`` (cache, then the URL), hash it as
    Zig does, place it where this Zig looks (so ``zig build`` needs no network) and set
    ``.url`` and ``.hash`` of dependency ``name`` in the project's build.zig.zon by a minimal
    edit (:func:`treeseed.zon.with_dependency`: comments and layout stay).

    The name is ``name``, else the package's ``.name`` (as Zig takes it), else treeseed's
    naming (:func:`treeseed.naming.dependency_name`). A git URL is written with the commit it
    resolved to (``#<commit>``), as ``zig fetch --save`` does, so the entry stays what was
    hashed.
    """
    from ..fetch import fetch
    from ..locate import announce_new
    from ..manifest import write_atomically
    from ..naming import dependency_name, safe_name
    from ..schemes import is_network

    zon_path = project / ZON
    if not zon_path.is_file():
        raise TreeseedError(f"no {ZON} in {project}; run this in a Zig project (zig init), or "
                            "pass -C DIR")
    if name is not None and safe_name(name) != name:
        raise TreeseedError(f"--name {name!r}: a dependency name uses letters, digits and "
                            "_ . + - only, and starts with a letter, digit or _")
    if offline and is_network(url):
        raise TreeseedError(f"{url}: --offline forbids the network; use a local path, or a "
                            "package already in the cache")
    text = zon_path.read_text(encoding="utf-8")
    before = zon.loads(text.removeprefix("\ufeff"), str(zon_path))  # said before fetching
    if not isinstance(before, dict):
        raise TreeseedError(f"{zon_path}: expected top level expression to be a struct")
    source = url if "://" in url else Path(url).resolve().as_uri()
    result = fetch(source, cache, progress=progress)
    announce_new(cache, result, settings)
    computed = zig_hash(result.path, f"{source} ({result.hash})", layout.allows_missing_paths)
    cache.add_aliases(result.hash, {"zig": computed.hash})
    saved = _saved_url(source, result.revision)
    chosen = name or safe_name(_zon_name(result.path) or "") or dependency_name(result.path, url)
    dest = layout.destination(computed.hash)
    place(result.path, computed.entries, computed.keep, dest)
    new = zon.with_dependency(text, chosen, saved, computed.hash, lazy, str(zon_path))
    status: Literal["added", "updated", "unchanged"] = "unchanged"
    if new != text:
        status = "updated" if _declares(before, chosen) else "added"
        write_atomically(zon_path, new)
    return ZigAdded(chosen, saved, computed.hash, result.hash, dest, status)


def _declares(data: dict, name: str | None) -> bool:
    deps = data.get("dependencies")
    return name is not None and isinstance(deps, dict) and name in deps


def _zon_name(tree: Path) -> str | None:
    """The package's own ``.name``, which ``zig fetch --save`` names a dependency by."""
    path = tree / ZON
    if not path.is_file() or path.is_symlink():
        return None
    try:
        value = zon.load(path).get("name")
    except TreeseedError:
        return None
    return str(value) if isinstance(value, str) else None


def _saved_url(url: str, revision: str | None) -> str:
    """The URL to write: a git URL pinned to the commit it resolved to, others as given."""
    if revision is None or not url.startswith("git+"):
        return url
    return f"{url.split('#', 1)[0]}#{revision}"
