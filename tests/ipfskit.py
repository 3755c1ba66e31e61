"""The real IPFS tools of tests/node/ (pinned in its package.json, installed by ``npm ci`` in
.ci/run), run as the IPFS tests' oracles and clients.

Tests that need them call :func:`require_node` first: it skips, saying why, only where the
``node`` program is absent; with node present and the packages missing it fails and says to
run ``npm ci``. Nothing here reaches the internet: npm installed everything beforehand.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).parent / "node"


def require_node() -> Path:
    """tests/node, with its packages installed; skips when Node.js is not on this machine."""
    if shutil.which("node") is None:
        pytest.skip("Node.js ('node') is not installed: the IPFS oracle tests need it with the "
                    "npm packages of tests/node (.ci/run installs them)")
    if not (NODE_DIR / "node_modules" / "ipfs-unixfs-importer").is_dir():
        pytest.fail("tests/node has no node_modules: run 'npm ci' in tests/node (.ci/run does)")
    return NODE_DIR


def node_run(script: str, *args: str, timeout: float = 600) -> str:
    """Run ``node tests/node/<script> args``; its stdout, stripped. A failure shows stderr."""
    proc = subprocess.run(["node", str(NODE_DIR / script), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "NODE_NO_WARNINGS": "1"})
    if proc.returncode != 0:
        raise AssertionError(f"node {script} {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stderr}")
    return proc.stdout.strip()


def reference_cid(tree: Path, car: Path | None = None) -> str:
    """The CID ipfs-unixfs-importer gives ``tree`` under unixfs-v1-2025 (and its CAR)."""
    return node_run("unixfs-cid.mjs", str(tree), *(["--car", str(car)] if car else []))
