"""``treeseed nix import``: sources already in a Nix store, taken into treeseed's cache.

Every Nix user's store holds the sources nixpkgs fetched for them (``/nix/store/<hash>-source``
from ``fetchFromGitHub``, ``fetchzip``, ``fetchgit``; ``/nix/store/<hash>-<file>`` from
``fetchurl``). Importing one makes treeseed's cache hold it under its bt2 hash, so it is seeded
and offered to other Nix users as a substitute (:mod:`treeseed.interop.nixcache`).

Only a *fixed-output* path is taken, and only after checking that it is one: its hash part
must be what Nix's ``makeFixedOutputPath`` gives for its contents and its name (recursive
SHA-256 of its NAR for a directory, flat SHA-256 for a file). A build output, or a path whose
contents were changed, fails that check, and nothing is installed. Then:

- a directory is fetched into the cache like any local directory, and the package's NAR must
  be the store path's: a tree with empty directories, ``.git``/``.hg``/``.svn`` or a
  ``treeseed.toml`` of its own whose rules drop files makes a different package, which could
  not be served under this path (it is removed again if the import made it);
- a file must be an archive treeseed unpacks: it is fetched, and kept (``a/``) so that its
  flat path can be served byte for byte.

The package came from this machine, so like any local package it is published only when the
user says so (``share=True``, the ``--share`` option): a flake's own source is a store path
named "source" too, and may be private.

>>> import_path(Path("/nix/store/0c9k...-source"), cache, share=True)  # doctest: +SKIP
Imported(store_path='/nix/store/0c9k...-source', package='bt2-...', ...)
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from ..cache import Cache
from ..errors import TreeseedError
from ..hashing.nar import STORE_DIR, flat_store_path_hash, is_store_name, sri, store_path_hash
from .nixcache import record_flat_path, record_tree_path

_BASE = re.compile(r"([0-9abcdfghijklmnpqrsvwxyz]{32})-(.+)")


class NotFixedOutput(TreeseedError):
    """The path is not the fixed-output store path of its own contents."""


@dataclass(frozen=True)
class Imported:
    """One store path now in treeseed's cache."""

    store_path: str  # as Nix names it, under /nix/store
    package: str  # its bt2 hash
    created: bool  # False if the cache already held the package
    shared: bool


def store_base(path: Path) -> tuple[str, str]:
    """(hash part, name) of a store path's last component, or an error saying what a store
    path looks like. Only the base name counts: a private store (``store = DIR``) keeps its
    paths under ``DIR/nix/store``, and their hashes are still those of ``/nix/store``."""
    m = _BASE.fullmatch(path.name)
    if m is None or not is_store_name(m[2]):
        raise TreeseedError(f"{path}: not a Nix store path (expected .../<32 nix32 characters>-"
                            "<name>, such as /nix/store/0c9k...-source)")
    return m[1], m[2]


def import_path(path: Path, cache: Cache, share: bool = False) -> Imported:
    """Check that ``path`` is a fixed-output store path, then take it into ``cache``."""
    store_hash, name = store_base(path)
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise TreeseedError(f"{path}: cannot read it: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        package, created = _import_tree(path, cache, store_hash, name)
    elif stat.S_ISREG(st.st_mode):
        package, created = _import_file(path, cache, store_hash, name)
    else:
        raise TreeseedError(f"{path}: a symlink at the top of a store path is no source; "
                            "import the path it points to")
    if share:
        from ..config import add_shared
        from ..swarm.client import notify_added

        add_shared([package])
        notify_added(cache, package)
    return Imported(f"{STORE_DIR}/{path.name}", package, created, share)


def _import_tree(path: Path, cache: Cache, store_hash: str, name: str) -> tuple[str, bool]:
    from ..fetch import fetch
    from .nix import nar_stream

    h = hashlib.sha256()
    nar_stream(path, h.update)
    digest = h.digest()
    computed = store_path_hash(digest, name)
    if computed != store_hash:
        raise NotFixedOutput(
            f"{path}: not a fixed-output source: its contents (NAR hash {sri(digest)}) and name "
            f"give /nix/store/{computed}-{name}; only outputs fetched by hash (fetchFromGitHub, "
            "fetchzip, fetchgit, fetchurl) can be imported, and nothing was")
    result = fetch(str(path), cache, formats=("nar",))
    if result.formats.get("nar") != sri(digest):
        if not result.cached:
            cache.remove(result.hash)
        raise TreeseedError(
            f"{path}: treeseed's package of it differs from Nix's tree (its NAR hash is "
            f"{result.formats.get('nar')}, Nix's {sri(digest)}): empty directories, .git/.hg/.svn "
            "or a treeseed.toml whose rules leave files out are not part of a package; it "
            "cannot be served under this store path, and nothing was imported")
    record_tree_path(cache, result.hash, digest, name)
    return result.hash, not result.cached


def _import_file(path: Path, cache: Cache, store_hash: str, name: str) -> tuple[str, bool]:
    from ..assemble import sha256_file
    from ..fetch import fetch

    digest = bytes.fromhex(sha256_file(path))
    computed = flat_store_path_hash(digest, name)
    if computed != store_hash:
        raise NotFixedOutput(
            f"{path}: not a flat fixed-output file: its SHA-256 {digest.hex()} and name give "
            f"/nix/store/{computed}-{name}; only fetchurl outputs can be imported as files "
            "(an executable or recursively hashed file cannot), and nothing was")
    try:
        result = fetch(str(path), cache, formats=("archive-sha256",), keep_archive=True)
    except TreeseedError as exc:
        raise TreeseedError(f"{path}: a flat store path is served from its archive's package, "
                            f"and this file is no archive treeseed unpacks ({exc}); nothing "
                            "was imported") from None
    if not cache.archive_path(digest.hex()).is_file():  # a fetch that found its package cached
        cache.keep_archive(path, digest.hex())           # stops before keeping the archive
    record_flat_path(cache, result.hash, digest.hex(), name)
    return result.hash, not result.cached
