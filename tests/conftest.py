"""Shared fixtures: an isolated cache and environment, plus the fixture modules every test
module may use by name (``pytest_plugins``): ``server`` and ``servers`` (httpserver.py),
``git_server`` (gitserver.py), ``nodes``, ``tracker`` and ``dht_router`` (swarmkit.py),
``serve`` (mirrorkit.py).

Plain helpers are not here: import them from ``helpers``, ``waiting``, ``swarmkit``,
``mirrorkit``, ``zigkit`` and ``depskit``. This is the rootdir conftest (pytest_plugins is only allowed there).
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["httpserver", "gitserver", "swarmkit", "mirrorkit"]


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may touch the user's real cache or configuration."""
    monkeypatch.setenv("TREESEED_CACHE_DIR", str(tmp_path / "default-cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
