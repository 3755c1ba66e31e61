"""Which files belong to a package, as the package itself declares (docs/package-format.md).

Precedence: ``treeseed.toml`` ``[package] include``/``exclude`` (gitignore-style patterns, via
the ``pathspec`` library's ``GitIgnoreSpec``, which implements git's own matching rules); else
a Zig ``build.zig.zon`` ``.paths`` list (Zig's rule: a listed path keeps itself and everything
below it); else every file. The manifests themselves (``treeseed.toml``, ``build.zig.zon``) are
always kept: the cache and later fetches read a package's name, dependencies and privacy from
them. (The Zig hash still leaves ``build.zig.zon`` out when ``.paths`` does, as Zig does.)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from . import manifest as manifest_mod
from .manifest import MANIFEST_NAME, ZIG_MANIFEST_NAME, Manifest
from .record import Record


class Rules(Record):
    """A compiled keep-predicate plus where it came from (for messages and docs): ``origin`` is
    "treeseed.toml", "build.zig.zon" or "all"."""

    __slots__ = ("origin", "keep", "manifest")

    def __init__(self, origin: str, keep: Callable[[str], bool], manifest: Manifest | None = None) -> None:
        self.origin = origin
        self.keep = keep
        self.manifest = manifest

    def __call__(self, path: str) -> bool:
        return self.keep(path)


def keep_all(path: str) -> bool:
    return True


def rules_for(root: Path, source: str | None = None) -> Rules:
    """Read the package manifest at ``root`` (if any) and compile its rules.

    ``source`` is where the tree came from: errors then name ``<source>: treeseed.toml`` rather
    than a work directory that is about to disappear.
    """
    toml_path = root / MANIFEST_NAME
    if toml_path.is_file() and not toml_path.is_symlink():
        manifest = manifest_mod.load(toml_path, f"{source}: {MANIFEST_NAME}" if source else None)
        return Rules(MANIFEST_NAME, compile_patterns(manifest.include, manifest.exclude), manifest)
    zon_path = root / ZIG_MANIFEST_NAME
    if zon_path.is_file() and not zon_path.is_symlink():
        from . import zon
        from .hashing.zig import paths_filter

        display = f"{source}: {ZIG_MANIFEST_NAME}" if source else str(zon_path)
        info = zon.manifest_info(zon.load(zon_path, display), display)
        zig_keep = paths_filter(info.paths)
        return Rules(ZIG_MANIFEST_NAME, lambda path: path == ZIG_MANIFEST_NAME or zig_keep(path))
    return Rules("all", keep_all)


def compile_patterns(include: list[str] | None, exclude: list[str]) -> Callable[[str], bool]:
    """A predicate keeping paths matched by ``include`` (all when None) and not by ``exclude``.

    Both lists use gitignore syntax: ``*`` stays within one path component, ``**`` spans
    several, a pattern with a slash other than at its end is anchored at the package root, a
    pattern that matches a directory matches everything below it, and ``!pattern`` re-includes
    within its own list.
    """
    import pathspec

    inc = pathspec.GitIgnoreSpec.from_lines(include) if include is not None else None
    exc = pathspec.GitIgnoreSpec.from_lines(exclude) if exclude else None

    def keep(path: str) -> bool:
        if path in (MANIFEST_NAME, ZIG_MANIFEST_NAME):
            return True
        if inc is not None and not inc.match_file(path):
            return False
        return not (exc is not None and exc.match_file(path))

    return keep
