"""Installing treeseed: what a platform without libtorrent still runs, and a fresh install.

libtorrent is a dependency (pyproject.toml), but a native one: on a platform with no wheel for
it, ``import libtorrent`` fails. That platform is made here for real: a directory on PYTHONPATH
whose ``libtorrent.py`` raises the ImportError such a platform raises, shadowing the installed
module for the treeseed processes the test runs (treeseed itself is untouched). Every command
that needs the swarm must then say so in one line and exit 1; the others must work as before.

The fresh install (marked slow: it installs from PyPI) builds a new venv, ``pip install``s this
repository into it with its dependencies, and runs that venv's own ``treeseed seed --detach``
on loopback only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import run_cli
from swarmkit import free_port, write_settings

from treeseed.swarm.lt import SwarmUnavailable

ROOT = Path(__file__).resolve().parent.parent  # the repository root: pyproject.toml
EXAMPLES = ROOT / "examples"
NO_WHEEL = "no wheel for this platform"
MISSING = f"treeseed: error: {SwarmUnavailable(NO_WHEEL)}"
UNKNOWN = "bt2-" + "ab" * 32


@pytest.fixture
def no_libtorrent(tmp_path: Path) -> dict[str, str]:
    """The environment of a platform where ``import libtorrent`` fails, with loopback-only
    settings that turn the swarm off (``torrent = false``) unless a command asks for it."""
    shadow = tmp_path / "no-libtorrent"
    shadow.mkdir()
    (shadow / "libtorrent.py").write_text(f"raise ImportError({NO_WHEEL!r})\n")
    config = write_settings(tmp_path / "settings.toml", torrent=False, listen=f"127.0.0.1:{free_port()}")
    path = os.pathsep.join(p for p in [str(shadow), os.environ.get("PYTHONPATH", "")] if p)
    env = {"PYTHONPATH": path, "TREESEED_CONFIG": str(config)}
    probe = subprocess.run([sys.executable, "-c", "import libtorrent"], capture_output=True, text=True,
                           env={**os.environ, **env})
    assert probe.returncode != 0 and NO_WHEEL in probe.stderr, probe.stderr  # the platform holds
    return env


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.parametrize("command", [
    ("seed",),
    ("seed", "--detach"),
    ("fetch", UNKNOWN, "--torrent"),
    ("zig", "fetch", "--torrent"),
], ids=" ".join)
def test_swarm_commands_say_libtorrent_is_missing(tmp_path: Path, cache_dir: Path,
                                                   no_libtorrent: dict[str, str],
                                                   command: tuple[str, ...]) -> None:
    """Each command that needs the swarm fails with the one line naming libtorrent, the import
    error and what to do; none leaves a seeder behind."""
    assert one_line_error(run_cli(*command, cache=cache_dir, env=no_libtorrent, check=False)) == MISSING
    status = run_cli("seed", "status", cache=cache_dir, env=no_libtorrent, check=False)
    assert status.returncode == 3 and "no seeder runs" in status.stdout, status


def test_swarm_on_in_the_settings_without_libtorrent(tmp_path: Path, cache_dir: Path,
                                                    no_libtorrent: dict[str, str]) -> None:
    """``torrent = on`` in the settings, no flag: a fetch only the swarm could answer says the
    same one line (also with --json, as its error object); a package whose origin is known is
    fetched from the origin."""
    write_settings(Path(no_libtorrent["TREESEED_CONFIG"]), torrent=True, listen=f"127.0.0.1:{free_port()}")
    line = one_line_error(run_cli("fetch", UNKNOWN, cache=cache_dir, env=no_libtorrent, check=False))
    assert line == MISSING
    as_json = run_cli("fetch", UNKNOWN, "--json", cache=cache_dir, env=no_libtorrent, check=False)
    assert json.loads(as_json.stdout) == {"error": MISSING.removeprefix("treeseed: error: "),
                                          "what": "SwarmUnavailable"}
    app = shutil.copytree(EXAMPLES, tmp_path / "examples") / "app"
    fetched = run_cli("-C", str(app), "fetch", cache=cache_dir, env=no_libtorrent)
    assert "2 fetched" in fetched.stderr + fetched.stdout, fetched


def test_everything_else_works_without_libtorrent(cache_dir: Path, no_libtorrent: dict[str, str]) -> None:
    """hash, fetch of a local archive, the seeder's socket commands and stats need no libtorrent."""
    archive = EXAMPLES / "hello-1.0.tar.gz"
    hashed = run_cli("hash", str(archive), "--json", cache=cache_dir, env=no_libtorrent)
    package_hash = json.loads(hashed.stdout)["bt2"]
    fetched = run_cli("fetch", str(archive), cache=cache_dir, env=no_libtorrent)
    assert fetched.stdout.split()[0] == package_hash, fetched.stdout
    assert (cache_dir / "p" / package_hash / "README").is_file()
    again = run_cli("fetch", package_hash, cache=cache_dir, env=no_libtorrent)  # by hash, cached
    assert again.stdout.split()[0] == package_hash, again.stdout
    status = run_cli("seed", "status", cache=cache_dir, env=no_libtorrent, check=False)
    assert status.returncode == 3 and "no seeder runs" in status.stdout, status
    assert run_cli("seed", "stop", cache=cache_dir, env=no_libtorrent).stdout == "no seeder was running\n"
    assert run_cli("stats", cache=cache_dir, env=no_libtorrent).stdout == "nothing uploaded yet\n"


# --------------------------------------------------------------------------- a fresh install


def _pypi_unreachable() -> str | None:
    """Why pip cannot reach its index, or None if it can."""
    try:
        with urllib.request.urlopen("https://pypi.org/simple/libtorrent/", timeout=15) as reply:
            reply.read(1)
    except OSError as exc:
        return str(exc)
    return None


def _source_copy(dest: Path) -> Path:
    """The repository root as pip would build it, minus what is not source (.git, build
    output, bench/.work): building in the checkout itself would write build/ and *.egg-info
    into a tree other processes use."""
    return shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".venv", ".work"))


@pytest.mark.slow
def test_fresh_install_seeds(tmp_path: Path) -> None:
    """``pip install`` of the repository into a new venv brings libtorrent with it: that
    venv's own ``treeseed seed --detach`` starts on loopback, ``seed status`` answers, and
    ``seed stop`` stops it."""
    started = time.monotonic()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    # The test's own pip installs into the venv (--python): a venv with pip of its own would
    # cost an ensurepip run and install nothing differently.
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
         str(_source_copy(tmp_path / "src"))],
        capture_output=True, text=True, env=env, timeout=900)
    if install.returncode != 0:
        unreachable = _pypi_unreachable()
        if unreachable is not None:
            pytest.skip(f"pip cannot reach PyPI ({unreachable}); pip said: "
                        + " / ".join(install.stderr.strip().splitlines()[-2:]))
        raise AssertionError(f"pip install failed ({install.returncode}):\n{install.stderr}")
    installed = time.monotonic()
    where = subprocess.run([str(python), "-c", "import treeseed, libtorrent; print(treeseed.__file__)"],
                           capture_output=True, text=True, env=env, check=True).stdout
    assert where.startswith(str(venv)), where  # the venv's own copy, not this checkout

    treeseed = str(venv / "bin" / "treeseed")
    cache = tmp_path / "cache"
    port = free_port()
    env["TREESEED_CONFIG"] = str(write_settings(tmp_path / "settings.toml", listen=f"127.0.0.1:{port}"))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([treeseed, "--cache-dir", str(cache), *args], capture_output=True,
                              text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    try:
        detached = run("seed", "--detach")
        assert detached.returncode == 0, (detached.stdout, detached.stderr)
        assert detached.stdout.startswith("seeder running (pid "), detached.stdout
        status = run("seed", "status", "--json")
        assert status.returncode == 0, (status.stdout, status.stderr)
        answer = json.loads(status.stdout)
        assert answer["listen_port"] == port and answer["cache"] == str(cache), answer
    finally:
        stopped = run("seed", "stop")
    assert stopped.returncode == 0 and stopped.stdout.startswith("stopped the seeder (pid "), stopped
    after = run("seed", "status")
    assert after.returncode == 3, (after.stdout, after.stderr)
    print(f"fresh install: venv + pip {installed - started:.1f} s, "
          f"seed/status/stop {time.monotonic() - installed:.1f} s")
