"""Knobs read from the environment, parsed in one place so every one fails the same way."""

from __future__ import annotations

import os

from .errors import TreeseedError


def env_seconds(name: str, default: float) -> float:
    """A number of seconds from the environment variable ``name``, else ``default``."""
    raw = os.environ.get(name)
    try:
        return float(raw) if raw else default
    except ValueError:
        raise TreeseedError(f"{name}={raw!r} is not a number of seconds") from None
