"""The name a dependency gets when ``treeseed add`` (or ``treeseed zig add``) is not given one.

A person adding ``six-1.17.0.tar.gz`` means the dependency ``six``, not ``six-1.17.0``: the
version belongs in the hash and the URL, and a key that names it would be wrong after the
first ``treeseed update``. So the package's own name comes first, from the first of its
metadata files that has one:

=====================  ==========================================
``treeseed.toml``      ``[package] name``
``build.zig.zon``      ``.name``
``PKG-INFO``           ``Name:`` (a Python sdist)
``pyproject.toml``     ``[project] name``
``package.json``       ``"name"`` (``@scope/pkg`` becomes ``scope-pkg``)
``Cargo.toml``         ``[package] name``
=====================  ==========================================

and only then the URL, without archive suffixes and version (``.../zlib-1.3.1.tar.gz`` ->
``zlib``; ``.../repo/archive/refs/tags/v1.2.tar.gz`` -> ``repo``).

A package's metadata is a stranger's text: a name read from it is cut down to what a
dependency key may hold (:func:`safe_name`: ASCII letters, digits and ``_ . + -``, at most
:data:`MAX_LEN` characters, the manifest's own rule) and files are read only when they are
regular files (never through a symlink) and small. Whatever yields nothing usable falls
through to the next source, and at the very end to ``dependency``.

>>> name_from_url("https://files.pythonhosted.org/packages/ab/cd/six-1.17.0.tar.gz")
'six'
>>> safe_name("@types/node")
'types-node'
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

#: Longest name taken from metadata or a URL (a key, not a description).
MAX_LEN = 64
#: Metadata files larger than this are not read for a name.
MAX_METADATA_BYTES = 1 << 20
FALLBACK = "dependency"

_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")  # manifest.py's rule for dependency names
_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]+")
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2", ".tbz",
                     ".tar.zst", ".tzst", ".tar", ".zip", ".gz", ".xz", ".bz2", ".zst", ".git")
# name-1.2.3, name_1.2, name-v2.0-rc1: the name, then a separator, an optional v, a digit.
_VERSIONED = re.compile(r"(.+?)[-_]v?\d[0-9A-Za-z.+~_-]*")
# A segment that is only a version (v1.2.3, 1.2) or a commit id names nothing.
_VERSION_ONLY = re.compile(r"v?\d+(?:\.\d+[0-9A-Za-z.+~_-]*)?|(?=[0-9a-f]*\d)[0-9a-f]{7,64}")
# Path segments that say how a forge serves an archive, not what it is.
_GENERIC = frozenset({"archive", "archives", "refs", "tags", "heads", "download", "downloads",
                      "releases", "release", "files", "raw", "master", "main", "latest", "src",
                      "dist", "tarball", "zipball", "get", "tar.gz", "zip", "tgz", "tar",
                      "packages", "blob", "-"})


def dependency_name(tree: Path, url: str) -> str:
    """The name for a dependency whose package is at ``tree`` and was fetched from ``url``."""
    for read in _READERS:
        name = safe_name(read(tree) or "")
        if name:
            return name
    return name_from_url(url)


def safe_name(text: str) -> str | None:
    """``text`` as a dependency key, or None when nothing of it is usable.

    Runs of other characters become one ``-``; leading and trailing ``. + -`` go (a key may
    not start with them, and ``..`` or a trailing dot would only mislead); the result is cut
    to :data:`MAX_LEN`. A name of which less than half survives (``été`` -> ``t``) is more
    accident than name: None, and the next source is asked.
    """
    original = text.strip().lstrip("@")
    cleaned = _UNSAFE.sub("-", original)[:MAX_LEN].strip(".+-")
    if 2 * len(cleaned) < min(len(original), MAX_LEN):
        return None
    return cleaned if _KEY.fullmatch(cleaned) else None


def name_from_url(url: str) -> str:
    """The dependency name a URL (or a local path) suggests: its last segment that is not a
    version, a commit or a forge's own word, without archive suffixes and version."""
    for segment in reversed(_segments(url)):
        stem = _without_suffix(segment)
        if not stem or stem.lower() in _GENERIC or _VERSION_ONLY.fullmatch(stem):
            continue
        versioned = _VERSIONED.fullmatch(stem)
        name = safe_name(versioned[1] if versioned else stem)
        if name:
            return name
    return FALLBACK


def _segments(url: str) -> list[str]:
    """The path segments of ``url`` (git+ prefix, query and fragment dropped), or of a path."""
    bare = url.split("#", 1)[0]
    if "://" in bare:
        bare = urlsplit(bare.removeprefix("git+")).path
    return [unquote(s) for s in bare.replace("\\", "/").split("/") if s]


def _without_suffix(segment: str) -> str:
    lower = segment.lower()
    for suffix in _ARCHIVE_SUFFIXES:
        if lower.endswith(suffix) and len(segment) > len(suffix):
            return segment[: -len(suffix)]
    return segment


# ----------------------------------------------------------------------------- metadata


def _small_file(path: Path) -> str | None:
    """The text of ``path`` if it is a regular file (not a symlink) of a sane size, else None."""
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_METADATA_BYTES:
            return None
        return path.read_bytes().decode("utf-8", "replace")
    except OSError:
        return None


def _toml_table(tree: Path, filename: str, table: str) -> str | None:
    text = _small_file(tree / filename)
    if text is None:
        return None
    import tomllib  # only here: name_from_url, on every fetch's path, needs none of it

    try:
        section = tomllib.loads(text).get(table)
    except tomllib.TOMLDecodeError:
        return None
    name = section.get("name") if isinstance(section, dict) else None
    return name if isinstance(name, str) else None


def _treeseed_toml(tree: Path) -> str | None:
    return _toml_table(tree, "treeseed.toml", "package")


def _zig_zon(tree: Path) -> str | None:
    from . import zon
    from .errors import ManifestError

    if _small_file(tree / zon.MANIFEST_NAME) is None:
        return None
    try:
        name = zon.load(tree / zon.MANIFEST_NAME).get("name")
    except ManifestError:
        return None
    return str(name) if isinstance(name, str) else None


def _pkg_info(tree: Path) -> str | None:
    """``Name:`` of the header block of a Python sdist's ``PKG-INFO`` (RFC 822 style)."""
    text = _small_file(tree / "PKG-INFO")
    if text is None:
        return None
    for line in text.splitlines():
        if not line.strip():
            break  # the headers end at the first blank line; the description follows
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == "name":
            return value.strip()
    return None


def _pyproject(tree: Path) -> str | None:
    return _toml_table(tree, "pyproject.toml", "project")


def _package_json(tree: Path) -> str | None:
    text = _small_file(tree / "package.json")
    if text is None:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    name = data.get("name") if isinstance(data, dict) else None
    return name if isinstance(name, str) else None


def _cargo_toml(tree: Path) -> str | None:
    return _toml_table(tree, "Cargo.toml", "package")


_READERS: tuple[Callable[[Path], str | None], ...] = (
    _treeseed_toml, _zig_zon, _pkg_info, _pyproject, _package_json, _cargo_toml)
