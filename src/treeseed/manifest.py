"""Reading a package's own manifest, ``treeseed.toml``.

Only the ``[package]`` table matters to the package hash (its ``include``/``exclude`` rules); the
other tables (``[dependencies]``, ``[options]``) are read by the modules that use them. Parsing
uses the standard library's ``tomllib``, imported only when a manifest is read; writing,
which must keep the user's comments and layout, is tomlkit's job elsewhere.

Every problem raises :class:`~treeseed.errors.ManifestError` naming the file, line and key, so a
user can jump straight to it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .errors import ManifestError
from .ids import is_bt2
from .record import FrozenRecord, Record

MANIFEST_NAME = "treeseed.toml"
ZIG_MANIFEST_NAME = "build.zig.zon"

_TOP_LEVEL = {"package", "dependencies", "options", "fetchers"}
_PACKAGE_KEYS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "version": str,
    "private": bool,
    "include": list,
    "exclude": list,
    "build": str,
    "description": str,
}


class Manifest(Record):
    """The parsed ``treeseed.toml`` of one package."""

    __slots__ = ("path", "text", "data", "name", "version", "private", "include", "exclude",
                 "build", "dependencies", "options", "fetchers")

    def __init__(self, path: str, text: str, data: dict[str, Any], name: str | None = None,
                 version: str | None = None, private: bool = False,
                 include: list[str] | None = None, exclude: list[str] | None = None,
                 build: str | None = None, dependencies: dict[str, Dependency] | None = None,
                 options: dict[str, OptionSpec] | None = None,
                 fetchers: dict[str, str] | None = None) -> None:
        self.path = path
        self.text = text
        self.data = data
        self.name = name
        self.version = version
        self.private = private
        self.include = include
        self.exclude = [] if exclude is None else exclude
        self.build = build
        self.dependencies = {} if dependencies is None else dependencies
        self.options = {} if options is None else options
        self.fetchers = {} if fetchers is None else fetchers

    def line_of(self, key: str, table: str | None = None) -> int | None:
        """Best-effort line number of ``key`` (inside ``[table]`` when given), for errors.

        Inline tables (``zlib = { url = ... }``) fall back to the line naming the table.
        """
        line = line_of(self.text, key, table)
        if line is None and table and "." in table:
            parent, _, name = table.rpartition(".")
            line = line_of(self.text, name, parent)
        return line

    def error(self, problem: str, key: str, table: str | None = None) -> ManifestError:
        return ManifestError(self.path, problem, self.line_of(key, table), key)


def load(path: Path, display: str | None = None) -> Manifest:
    """Parse and validate ``path``; raise :class:`ManifestError` on any problem.

    ``display`` names the file in errors when ``path`` is a temporary copy (an unpacked archive).
    """
    name = display or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(name, f"not valid UTF-8 ({exc.reason})") from None
    except OSError as exc:
        raise ManifestError(name, f"cannot read: {exc.strerror}") from None
    return loads(text, name)


def loads(text: str, path: str = MANIFEST_NAME) -> Manifest:
    import tomllib  # here: most archives have no manifest, and a fetcher's start-up is short

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        raise ManifestError(path, f"invalid TOML: {exc}", int(match[1]) if match else None) from None
    manifest = Manifest(path=path, text=text, data=data)
    for key in data:
        if key not in _TOP_LEVEL:
            raise manifest.error(
                f"unknown table; expected one of {', '.join(sorted(_TOP_LEVEL))}", key
            )
    _read_package(manifest, data.get("package", {}))
    manifest.dependencies = _read_dependencies(manifest, data.get("dependencies", {}))
    manifest.options = _read_options(manifest, data.get("options", {}))
    fetchers = data.get("fetchers", {})
    if not isinstance(fetchers, dict) or not all(isinstance(v, str) and v for v in fetchers.values()):
        raise manifest.error('[fetchers] maps a URL scheme to a command string, e.g. '
                             '"s3" = "my-fetcher --flag"', "fetchers")
    manifest.fetchers = dict(fetchers)
    return manifest


def _read_package(manifest: Manifest, table: Any) -> None:
    if not isinstance(table, dict):
        raise manifest.error("[package] must be a table", "package")
    _check_keys(manifest, table, _PACKAGE_KEYS, "package")
    for key in ("include", "exclude"):
        if not all(isinstance(item, str) for item in table.get(key, [])):
            raise manifest.error("must be a list of strings (glob patterns)", key, "package")
    manifest.name = table.get("name")
    manifest.version = table.get("version")
    manifest.private = table.get("private", False)
    manifest.include = table.get("include")
    manifest.exclude = table.get("exclude", [])
    manifest.build = table.get("build")


class Dependency(FrozenRecord):
    """One ``[dependencies.NAME]`` entry.

    ``url`` and ``mirrors`` are tried in order and must all yield the package ``hash``. A
    relative URL is read relative to the manifest that names it (its directory for a local
    package, its own URL for a fetched one), so example trees and monorepos need no absolute
    paths. ``rev`` records what a git reference resolved to when the hash was taken.
    ``private = true``: the consumer says this dependency must never be looked up in, or
    published to, the swarm (docs/swarm.md, "Private packages").
    """

    __slots__ = ("name", "url", "mirrors", "hash", "lazy", "rev", "line", "private")

    def __init__(self, name: str, url: str, mirrors: tuple[str, ...] = (),
                 hash: str | None = None, lazy: bool = False, rev: str | None = None,  # noqa: A002
                 line: int | None = None, private: bool = False) -> None:
        _set = object.__setattr__
        _set(self, "name", name)
        _set(self, "url", url)
        _set(self, "mirrors", mirrors)
        _set(self, "hash", hash)
        _set(self, "lazy", lazy)
        _set(self, "rev", rev)
        _set(self, "line", line)
        _set(self, "private", private)

    @property
    def urls(self) -> list[str]:
        return [self.url, *self.mirrors]


_DEPENDENCY_KEYS: dict[str, type] = {"url": str, "mirrors": list, "hash": str, "lazy": bool, "rev": str,
                                     "private": bool}
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")


def _read_dependencies(manifest: Manifest, table: Any) -> dict[str, Dependency]:
    if not isinstance(table, dict):
        raise manifest.error("[dependencies] must be a table of tables", "dependencies")
    deps: dict[str, Dependency] = {}
    for name, spec in table.items():
        where = f"dependencies.{name}"
        if not _NAME.match(name):
            raise manifest.error("dependency names use letters, digits and _ . + - only", name,
                                 "dependencies")
        if not isinstance(spec, dict):
            raise manifest.error("a dependency must be a table with at least a url", name,
                                 "dependencies")
        _check_keys(manifest, spec, _DEPENDENCY_KEYS, where)
        if "url" not in spec:
            raise manifest.error(f"dependency {name!r} has no url", name, "dependencies")
        mirrors = spec.get("mirrors", [])
        if not all(isinstance(m, str) and m for m in mirrors) or not spec["url"]:
            raise manifest.error("URLs must be non-empty strings", "mirrors" if mirrors else "url", where)
        package_hash = spec.get("hash")
        if package_hash is not None and not is_bt2(package_hash):
            raise manifest.error(f"{package_hash!r} is not a treeseed hash (bt2- and 64 lowercase "
                                 "hex digits); 'treeseed update' writes the right one", "hash", where)
        deps[name] = Dependency(name, spec["url"], tuple(mirrors), package_hash,
                                spec.get("lazy", False), spec.get("rev"),
                                manifest.line_of(name, "dependencies") or manifest.line_of("url", where),
                                spec.get("private", False))
    return deps


class OptionSpec(FrozenRecord):
    """An ``[options.NAME]`` table: a build option of a command build (``[package] build``):
    ``type`` is bool, int, str, enum or list; ``values`` are the choices of an enum."""

    __slots__ = ("name", "type", "default", "description", "values")

    def __init__(self, name: str, type: str, default: Any = None, description: str = "",  # noqa: A002
                 values: tuple[str, ...] = ()) -> None:
        _set = object.__setattr__
        _set(self, "name", name)
        _set(self, "type", type)
        _set(self, "default", default)
        _set(self, "description", description)
        _set(self, "values", values)


OPTION_TYPES = ("bool", "int", "str", "enum", "list")
_OPTION_KEYS: dict[str, type | tuple[type, ...]] = {
    "type": str, "default": (bool, int, str, list), "description": str, "values": list,
}


def _read_options(manifest: Manifest, table: Any) -> dict[str, OptionSpec]:
    if not isinstance(table, dict):
        raise manifest.error("[options] must be a table of tables", "options")
    options: dict[str, OptionSpec] = {}
    for name, spec in table.items():
        where = f"options.{name}"
        if not isinstance(spec, dict):
            raise manifest.error("an option must be a table with a type", name, "options")
        _check_keys(manifest, spec, _OPTION_KEYS, where)
        kind = spec.get("type")
        if kind not in OPTION_TYPES:
            raise manifest.error(f"type must be one of {', '.join(OPTION_TYPES)}", "type"
                                 if "type" in spec else name, where if "type" in spec else "options")
        values = tuple(spec.get("values", ()))
        if kind == "enum" and not values:
            raise manifest.error("an enum option needs values = [...]", "type", where)
        option = OptionSpec(name, kind, spec.get("default"), spec.get("description", ""), values)
        if option.default is not None and not _default_fits(option):
            raise manifest.error(f"default {option.default!r} is not a valid {kind}"
                                 + (f" (one of {', '.join(values)})" if values else ""),
                                 "default", where)
        options[name] = option
    return options


def _default_fits(option: OptionSpec) -> bool:
    value = option.default
    if option.type == "bool":
        return isinstance(value, bool)
    if option.type == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if option.type == "str":
        return isinstance(value, str)
    if option.type == "enum":
        return value in option.values
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _check_keys(manifest: Manifest, table: dict, allowed: dict[str, type | tuple[type, ...]],
                where: str) -> None:
    """Every key of ``[where]`` must be one of ``allowed``, with a value of its type."""
    for key, value in table.items():
        expected = allowed.get(key)
        if expected is None:
            raise manifest.error(f"unknown key in [{where}]; expected one of "
                                 f"{', '.join(sorted(allowed))}", key, where)
        if not isinstance(value, expected):
            raise manifest.error(f"must be a {_type_name(expected)}, not "
                                 f"{_type_name(type(value))}", key, where)


def _type_name(t: type | tuple[type, ...]) -> str:
    names = {str: "string", bool: "boolean", list: "list", int: "integer", dict: "table",
             float: "number"}
    if isinstance(t, tuple):
        return " or ".join(names.get(x, x.__name__) for x in t)
    return names.get(t, t.__name__)


_HEADER = re.compile(r"^\s*\[+\s*([^\]]+?)\s*\]+\s*(#.*)?$")


def line_of(text: str, key: str, table: str | None = None) -> int | None:
    """Find the line (1-based) where ``key`` is assigned, inside ``[table]`` when given.

    tomllib reports no positions for valid documents, so errors about values locate the key by
    scanning: table headers switch the current table; dotted headers such as
    ``[dependencies.zlib]`` count as inside ``dependencies.zlib``.
    """
    current = ""
    key_re = re.compile(rf"^\s*(\"{re.escape(key)}\"|'{re.escape(key)}'|{re.escape(key)})\s*[=.]")
    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line)
        if header:
            current = header[1].replace('"', "").replace(" ", "")
            if table is None and current.split(".")[-1] == key:
                return number
            if table is not None and current == f"{table}.{key}":
                return number  # [dependencies.zlib] is where dependency zlib is declared
            continue
        if (table is None or current == table) and key_re.match(line):
            return number
    return None


def add_dependency(path: Path, dep: Dependency) -> None:
    """Write ``dep`` into the manifest at ``path`` as ``[dependencies.NAME]``, keeping the file's
    comments and layout (tomlkit edits the document in place), and replace the file atomically.
    """
    import tomlkit

    text = path.read_text(encoding="utf-8") if path.exists() else ""
    doc = tomlkit.parse(text)
    current = loads(text, str(path)) if text else None
    if current is not None and dep.name in current.dependencies:
        raise ManifestError(str(path), f"dependency {dep.name!r} already exists; choose another "
                            "--name, or run 'treeseed update' to refresh it",
                            current.dependencies[dep.name].line, dep.name)
    if "dependencies" not in doc:
        doc.add(tomlkit.nl())
        doc["dependencies"] = tomlkit.table(is_super_table=True)
    entry = tomlkit.table()
    entry["url"] = dep.url
    if dep.mirrors:
        entry["mirrors"] = list(dep.mirrors)
    if dep.hash:
        entry["hash"] = dep.hash
    if dep.rev:
        entry["rev"] = dep.rev
    if dep.lazy:
        entry["lazy"] = True
    if dep.private:
        entry["private"] = True
    doc["dependencies"][dep.name] = entry  # type: ignore[index]
    out = tomlkit.dumps(doc)
    loads(out, str(path))  # never write a manifest treeseed itself could not read back
    write_atomically(path, out)


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one rename, keeping its mode: a crash or a full disk
    leaves the old manifest, never half a new one."""
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
