"""Reading a package's own manifest, ``treeseed.toml``.

Only the ``[package]`` table matters to the package hash (its ``include``/``exclude`` rules); the
other tables (``[dependencies]``, ``[options]``) are read by the modules that use them. Parsing
uses the standard library's ``tomllib`` (fast, no import cost); writing, which must keep the
user's comments and layout, is tomlkit's job elsewhere.

Every problem raises :class:`~treeseed.errors.ManifestError` naming the file, line and key, so a
user can jump straight to it.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ManifestError

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


@dataclass
class Manifest:
    """The parsed ``treeseed.toml`` of one package."""

    path: str
    text: str
    data: dict[str, Any]
    name: str | None = None
    version: str | None = None
    private: bool = False
    include: list[str] | None = None
    exclude: list[str] = field(default_factory=list)
    build: str | None = None

    def line_of(self, key: str, table: str | None = None) -> int | None:
        """Best-effort line number of ``key`` (inside ``[table]`` when given), for errors."""
        return line_of(self.text, key, table)

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
    return manifest


def _read_package(manifest: Manifest, table: Any) -> None:
    if not isinstance(table, dict):
        raise manifest.error("[package] must be a table", "package")
    for key, value in table.items():
        expected = _PACKAGE_KEYS.get(key)
        if expected is None:
            raise manifest.error(
                f"unknown key in [package]; expected one of {', '.join(sorted(_PACKAGE_KEYS))}",
                key, "package",
            )
        if not isinstance(value, expected):
            raise manifest.error(
                f"must be a {_type_name(expected)}, not {_type_name(type(value))}", key, "package"
            )
        if expected is list and not all(isinstance(item, str) for item in value):
            raise manifest.error("must be a list of strings (glob patterns)", key, "package")
    manifest.name = table.get("name")
    manifest.version = table.get("version")
    manifest.private = table.get("private", False)
    manifest.include = table.get("include")
    manifest.exclude = table.get("exclude", [])
    manifest.build = table.get("build")


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
            continue
        if (table is None or current == table) and key_re.match(line):
            return number
    return None
