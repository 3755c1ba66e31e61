"""The user's settings file: where it is, what it says, and its ``[fetchers]``.

Kept apart from :mod:`treeseed.config` (the settings, their types and defaults): a fetch of
one URL reads only ``[fetchers]``, and should not import the whole settings table for that.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ManifestError


def config_path() -> Path:
    env = os.environ.get("TREESEED_CONFIG")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_config_dir("treeseed", appauthor=False)) / "config.toml"


def load() -> dict:
    return _parse(*_read())


def _read() -> tuple[Path, str]:
    """The settings file and its text ("" when there is none)."""
    path = config_path()
    try:
        return path, path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return path, ""
    except OSError as exc:
        raise ManifestError(str(path), f"cannot read: {exc.strerror}") from None


def _parse(path: Path, text: str) -> dict:
    if not text:
        return {}
    import tomllib  # only when there is a file to read

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(str(path), f"invalid TOML: {exc}") from None


def fetchers(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Scheme -> command: the config file's ``[fetchers]``, overridden by ``extra`` (the root
    package's own ``[fetchers]``). Only these two places: a dependency's manifest must never
    choose what runs on the user's machine."""
    path, text = _read()
    # A file that never spells "fetchers" (nor any escape, which a quoted key could hide it
    # behind) has no [fetchers]: a plain fetch then skips importing tomllib and parsing.
    table = _parse(path, text).get("fetchers", {}) if "fetchers" in text or "\\" in text else {}
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise ManifestError(str(path), "[fetchers] maps a URL scheme to a command string",
                            key="fetchers")
    return {**table, **(extra or {})}
