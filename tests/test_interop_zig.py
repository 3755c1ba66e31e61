"""``treeseed zig fetch`` against the real Zig (pip ``ziglang`` 0.15.2).

A small Zig project with two dependencies (``alpha``, which depends on ``gamma``, and ``beta``, a
zip without a manifest) whose archives a local HTTP server serves. ``treeseed zig fetch`` places
them; the test then stops the server and runs ``zig build``, which must find everything it
needs where Zig looks. Expected hashes come from ``zig fetch`` of the same archives (files, not
HTTP) in a scratch Zig cache. Every test has its own HOME, Zig caches, treeseed cache and config.

Zig 0.17 builds its package manager on first use (minutes): its test runs only when
``TREESEED_TEST_ZIG017`` names a zig 0.17 binary (``TREESEED_TEST_ZIG017_CACHE`` may name a global
cache where it has already done that, copied before use).
"""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import run_cli, tar_gz
from httpserver import Reply, Server
from zigkit import GAMMA_BUILD, dep_entry, manifest, zig, zig_fetch_hash

from treeseed.cache import Cache

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ziglang") is None,
                                reason="pip package ziglang (0.15.2) is not installed")


@pytest.fixture(autouse=True)
def zig_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Private HOME, Zig caches and treeseed config for every test (conftest isolates the rest)."""
    env = {
        "HOME": str(tmp_path / "home"),
        "ZIG_GLOBAL_CACHE_DIR": str(tmp_path / "zig-global"),
        "ZIG_LOCAL_CACHE_DIR": str(tmp_path / "zig-local"),
        "TREESEED_CONFIG": str(tmp_path / "treeseed-config.toml"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("ZIG_LOCAL_PKG_DIR", raising=False)
    return env


# --------------------------------------------------------------------------- the project


def zip_bytes(files: dict[str, bytes], top: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for rel, data in sorted(files.items()):
            info = zipfile.ZipInfo(f"{top}/{rel}")
            info.external_attr = 0o100644 << 16
            info.create_system = 3
            zf.writestr(info, data)
    return buf.getvalue()


ALPHA_BUILD = b"""const std = @import("std");
pub fn build(b: *std.Build) void {
    const gamma = b.dependency("gamma", .{});
    b.addNamedLazyPath("gamma-file", gamma.path("g.txt"));
}
"""
ROOT_BUILD = b"""const std = @import("std");
pub fn build(b: *std.Build) void {
    const alpha = b.dependency("alpha", .{});
    const beta = b.dependency("beta", .{});
    const install = b.getInstallStep();
    install.dependOn(&b.addInstallFile(alpha.path("a.txt"), "a.txt").step);
    install.dependOn(&b.addInstallFile(alpha.namedLazyPath("gamma-file"), "g.txt").step);
    install.dependOn(&b.addInstallFile(beta.path("b.txt"), "b.txt").step);
}
"""


@dataclass
class Project:
    root: Path
    server: Server
    hashes: dict[str, str]  # dependency name -> the hash zig fetch prints
    archives: dict[str, bytes]

    def url(self, name: str) -> str:
        return self.server.url(f"/{name}")


def make_project(tmp_path: Path, server: Server, extra: dict[str, str] | None = None,
                 alpha_name: str | None = None, root_name: str | None = None) -> Project:
    """gamma (its .paths leave notes.md out), alpha -> gamma, beta (a naked zip), the project.

    ``alpha_name`` / ``root_name`` spell the ``.name`` of alpha's / the project's manifest.
    """
    gamma = tar_gz({"build.zig": GAMMA_BUILD, "build.zig.zon": manifest(
        "gamma", '"build.zig", "build.zig.zon", "g.txt"'), "g.txt": b"from gamma\n",
        "notes.md": b"not part of the package\n"}, "gamma-0.1.0")
    gamma_hash = zig_fetch_hash(tmp_path, gamma, "gamma.tar.gz")
    server.routes["/gamma.tar.gz"] = Reply(body=gamma)
    alpha = tar_gz({"build.zig": ALPHA_BUILD, "a.txt": b"from alpha\n", "build.zig.zon": manifest(
        "alpha", deps=dep_entry("gamma", server.url("/gamma.tar.gz"), gamma_hash),
        name_literal=alpha_name)}, "alpha")
    beta = zip_bytes({"b.txt": b"from beta\n"}, "beta-main")
    archives = {"alpha.tar.gz": alpha, "beta.zip": beta, "gamma.tar.gz": gamma}
    for name, body in archives.items():
        server.routes[f"/{name}"] = Reply(body=body)
    hashes = {"alpha": zig_fetch_hash(tmp_path, alpha, "alpha.tar.gz"),
              "beta": zig_fetch_hash(tmp_path, beta, "beta.zip"), "gamma": gamma_hash}
    root = tmp_path / "proj"
    root.mkdir()
    (root / "build.zig").write_bytes(ROOT_BUILD)
    deps = dep_entry("alpha", server.url("/alpha.tar.gz"), hashes["alpha"]) + dep_entry(
        "beta", server.url("/beta.zip"), hashes["beta"])
    for _name, text in (extra or {}).items():
        deps += text
    (root / "build.zig.zon").write_bytes(manifest("proj", deps=deps, name_literal=root_name))
    return Project(root, server, hashes, archives)


def global_dir(env: dict[str, str], zig_hash: str) -> Path:
    return Path(env["ZIG_GLOBAL_CACHE_DIR"]) / "p" / zig_hash


def zig_build(project: Path) -> subprocess.CompletedProcess[str]:
    return zig("build", cwd=project)


def assert_built(project: Path) -> None:
    proc = zig_build(project)
    assert proc.returncode == 0, proc.stderr
    out = project / "zig-out"
    assert (out / "a.txt").read_text() == "from alpha\n"
    assert (out / "g.txt").read_text() == "from gamma\n"
    assert (out / "b.txt").read_text() == "from beta\n"


# --------------------------------------------------------------------------- Zig 0.14/0.15


def test_fetch_places_verified_packages_and_zig_builds_with_the_server_down(
        tmp_path: Path, servers, zig_env: dict[str, str]) -> None:  # noqa: F811
    server = servers()
    project = make_project(tmp_path, server)
    cache = tmp_path / "cache"

    proc = run_cli("-C", str(project.root), "zig", "fetch", cache=cache)  # --zig-version auto
    printed = dict(reversed(line.split("\t")) for line in proc.stdout.splitlines())
    for name in ("alpha", "beta", "gamma"):
        place = global_dir(zig_env, project.hashes[name])
        assert printed[str(place)] == project.hashes[name]
        assert place.is_dir()
    # Placed as Zig would leave them: files outside gamma's .paths are gone.
    gamma_dir = global_dir(zig_env, project.hashes["gamma"])
    assert sorted(os.listdir(gamma_dir)) == ["build.zig", "build.zig.zon", "g.txt"]
    assert not list(global_dir(zig_env, "").glob(".treeseed-tmp-*"))
    assert "3 packages for Zig 0.15" in proc.stderr

    server.close()  # from here on, nothing can come from the network
    assert_built(project.root)

    # The cache knows each package by its zig hash as well as its bt2 hash ...
    index = Cache(cache)
    for name in ("alpha", "beta", "gamma"):
        package = index.resolve("zig", project.hashes[name])
        assert package is not None and package.startswith("bt2-")
    index.close()
    # ... so a machine whose Zig cache is empty gets them again without any network.
    shutil.rmtree(zig_env["ZIG_GLOBAL_CACHE_DIR"])
    shutil.rmtree(project.root / "zig-out")
    run_cli("-C", str(project.root), "zig", "fetch", "--zig-version", "0.15", cache=cache)
    assert_built(project.root)


def test_second_run_asks_nothing(tmp_path: Path, servers, zig_env: dict[str, str]) -> None:  # noqa: F811
    server = servers()
    project = make_project(tmp_path, server)
    run_cli("-C", str(project.root), "zig", "fetch", "--zig-version", "0.15", cache=tmp_path / "c")
    asked = len(server.hits)
    proc = run_cli("-C", str(project.root), "zig", "fetch", "--zig-version", "0.15",
                   cache=tmp_path / "c")
    assert len(server.hits) == asked
    assert "0 placed, 3 already there" in proc.stderr


def test_hash_mismatch_names_the_dependency_and_line(tmp_path: Path, servers,  # noqa: F811
                                                     zig_env: dict[str, str]) -> None:
    server = servers()
    project = make_project(tmp_path, server)
    wrong = project.hashes["beta"][:-4] + ("AAAA" if not project.hashes["beta"].endswith("AAAA") else "BBBB")
    zon = project.root / "build.zig.zon"
    text = zon.read_text().replace(project.hashes["beta"], wrong)
    zon.write_text(text)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if wrong in t)

    proc = run_cli("-C", str(project.root), "zig", "fetch", "--zig-version", "0.15",
                   cache=tmp_path / "c", check=False)
    assert proc.returncode == 1
    assert f"build.zig.zon:{line}: dependency 'beta': hash mismatch" in proc.stderr
    assert f"declares {wrong} but {project.url('beta.zip')}" in proc.stderr
    assert project.hashes["beta"] in proc.stderr
    assert not global_dir(zig_env, wrong).exists()
    # The other dependencies were still placed.
    assert global_dir(zig_env, project.hashes["alpha"]).is_dir()


@pytest.mark.parametrize("known_by", ["zig-alias", "archive-digest"])
def test_a_corrupt_cache_entry_is_evicted_and_fetched_again(tmp_path: Path, servers,  # noqa: F811
                                                            zig_env: dict[str, str],
                                                            known_by: str) -> None:
    """A cached package changed after install (a build step running as root) is the cache
    entry's fault: zig fetch says so, removes it and fetches it again, and never blames the
    server nor offers the corrupt tree's hash to pin. The cache finds the package by the zig
    hash a first zig fetch recorded, or by the archive digest of a plain treeseed fetch."""
    server = servers()
    project = make_project(tmp_path, server)
    cache = tmp_path / "c"
    if known_by == "zig-alias":
        run_cli("-C", str(project.root), "zig", "fetch", "--zig-version", "0.15", cache=cache)
        shutil.rmtree(zig_env["ZIG_GLOBAL_CACHE_DIR"])
        index = Cache(cache)
        package = index.resolve("zig", project.hashes["beta"])
        index.close()
    else:
        package = run_cli("fetch", project.url("beta.zip"), cache=cache).stdout.split()[0]
    assert package is not None
    entry = cache / "p" / package
    assert (entry / "b.txt").stat().st_mode & 0o777 == 0o444  # installed read-only ...
    (entry / "b.txt").chmod(0o644)  # ... which does not stop root
    (entry / "b.txt").write_bytes(b"changed by a build step\n")
    asked = server.hits.count("/beta.zip")

    proc = run_cli("-C", str(project.root), "zig", "fetch", "--zig-version", "0.15", cache=cache,
                   check=False)
    assert proc.returncode == 0, proc.stderr
    assert f"cache entry {entry} is corrupt" in proc.stderr
    assert "changed it after it was installed" in proc.stderr
    assert "hash mismatch" not in proc.stderr and "put the new hash" not in proc.stderr
    # Fetched again from its .url (by archive digest, the first request found the cached tree).
    assert server.hits.count("/beta.zip") == asked + (1 if known_by == "zig-alias" else 2)
    placed = global_dir(zig_env, project.hashes["beta"]) / "b.txt"
    assert placed.read_text() == "from beta\n"
    assert placed.stat().st_mode & 0o777 == 0o644  # Zig gets a writable copy, never the cache's
    assert run_cli("cache", "verify", package, cache=cache).returncode == 0
    assert (entry / "b.txt").stat().st_mode & 0o777 == 0o444
    server.close()
    assert_built(project.root)


def test_missing_hash_is_refused_with_the_hash_to_write(tmp_path: Path, servers) -> None:  # noqa: F811
    server = servers()
    project = make_project(tmp_path, server)
    zon = project.root / "build.zig.zon"
    zon.write_text(zon.read_text().replace(f'            .hash = "{project.hashes["beta"]}",\n', ""))
    proc = run_cli("-C", str(project.root), "zig", "fetch", "--zig-version", "0.15",
                   cache=tmp_path / "c", check=False)
    assert proc.returncode == 1
    assert "dependency 'beta' has no .hash" in proc.stderr
    assert f'.hash = "{project.hashes["beta"]}"' in proc.stderr


def test_lazy_dependencies_follow_the_fetch_mode(tmp_path: Path, servers,  # noqa: F811
                                                 zig_env: dict[str, str]) -> None:
    server = servers()
    lazy = tar_gz({"l.txt": b"lazy\n"}, "lazy")
    server.routes["/lazy.tar.gz"] = Reply(body=lazy)
    lazy_hash = zig_fetch_hash(tmp_path, lazy, "lazy.tar.gz")
    project = make_project(tmp_path, server, extra={
        "lazy": dep_entry("lazy", server.url("/lazy.tar.gz"), lazy_hash, lazy=True)})

    run_cli("-C", str(project.root), "zig", "fetch", "--zig-version", "0.15", cache=tmp_path / "c")
    assert "/lazy.tar.gz" not in server.hits
    assert not global_dir(zig_env, lazy_hash).exists()
    run_cli("-C", str(project.root), "zig", "fetch", "--fetch=all", "--zig-version", "0.15",
            cache=tmp_path / "c")
    assert (global_dir(zig_env, lazy_hash) / "l.txt").read_text() == "lazy\n"


def test_legacy_hash_and_string_name(tmp_path: Path, servers, zig_env: dict[str, str]) -> None:  # noqa: F811
    """The pre-0.14 ``1220…`` hash, and a dependency whose ``.name`` is a string: Zig 0.15 takes
    both (it wants an enum literal only in the project's own manifest)."""
    from treeseed.interop.zig import zig_hash

    server = servers()
    project = make_project(tmp_path, server, alpha_name='"alpha"')
    unpacked = tmp_path / "beta-unpacked"
    with zipfile.ZipFile(io.BytesIO(project.archives["beta.zip"])) as zf:
        zf.extractall(unpacked)
    legacy = zig_hash(unpacked / "beta-main", "beta").legacy
    deps = dep_entry("alpha", project.url("alpha.tar.gz"), project.hashes["alpha"]) + dep_entry(
        "beta", project.url("beta.zip"), legacy)
    (project.root / "build.zig.zon").write_bytes(manifest("proj", deps=deps))

    run_cli("-C", str(project.root), "zig", "fetch", "--zig-version", "0.15", cache=tmp_path / "c")
    assert (global_dir(zig_env, legacy) / "b.txt").is_file()
    server.close()
    assert_built(project.root)


def test_offline_without_the_package_cached_fails_clearly(tmp_path: Path, servers) -> None:  # noqa: F811
    server = servers()
    project = make_project(tmp_path, server)
    proc = run_cli("-C", str(project.root), "--offline", "zig", "fetch", "--zig-version", "0.15",
                   cache=tmp_path / "c", check=False)
    assert proc.returncode == 1
    assert "--offline forbids the network" in proc.stderr and "alpha" in proc.stderr
    assert server.hits == []


def test_mirror_serves_a_package_whose_origin_is_gone(tmp_path: Path, servers,  # noqa: F811
                                                      zig_env: dict[str, str]) -> None:
    """A ``mirrors`` entry is asked for ``/alias/zig/<hash>`` before the ``.url``."""
    origin = servers()
    project = make_project(tmp_path, origin)
    mirror = servers()
    for name, archive in project.archives.items():
        dep = name.split(".")[0]
        mirror.routes[f"/blobs/{name}"] = Reply(body=archive)
        mirror.routes[f"/alias/zig/{project.hashes[dep]}"] = Reply(
            307, headers={"Location": mirror.url(f"/blobs/{name}")})
    Path(zig_env["TREESEED_CONFIG"]).write_text(f'mirrors = ["{mirror.url("")}"]\n')
    origin.close()

    run_cli("-C", str(project.root), "zig", "fetch", "--zig-version", "0.15", cache=tmp_path / "c")
    assert all(global_dir(zig_env, h).is_dir() for h in project.hashes.values())
    mirror.close()
    assert_built(project.root)


# --------------------------------------------------------------------------- Zig 0.16/0.17 layout


def test_zig_016_layout_is_the_projects_zig_pkg(tmp_path: Path, servers,  # noqa: F811
                                                zig_env: dict[str, str]) -> None:
    server = servers()
    project = make_project(tmp_path, server, root_name='"proj"')  # 0.14 spelled names as strings
    run_cli("-C", str(project.root), "zig", "fetch", "--zig-version", "0.16", cache=tmp_path / "c")
    pkg = project.root / "zig-pkg"
    assert sorted(os.listdir(pkg)) == sorted(project.hashes.values())
    assert sorted(os.listdir(pkg / project.hashes["gamma"])) == ["build.zig", "build.zig.zon", "g.txt"]
    assert not (Path(zig_env["ZIG_GLOBAL_CACHE_DIR"]) / "p").exists()


def test_zig_016_refuses_legacy_hashes_and_names_the_new_one(tmp_path: Path, servers) -> None:  # noqa: F811
    from treeseed.interop.zig import zig_hash

    server = servers()
    project = make_project(tmp_path, server)
    unpacked = tmp_path / "beta-unpacked"
    with zipfile.ZipFile(io.BytesIO(project.archives["beta.zip"])) as zf:
        zf.extractall(unpacked)
    legacy = zig_hash(unpacked / "beta-main", "beta").legacy
    zon = project.root / "build.zig.zon"
    zon.write_text(zon.read_text().replace(project.hashes["beta"], legacy))
    proc = run_cli("-C", str(project.root), "zig", "fetch", "--zig-version", "0.16",
                   cache=tmp_path / "c", check=False)
    assert proc.returncode == 1
    assert f"no longer accepts the legacy hash {legacy}; replace it with {project.hashes['beta']}" \
        in proc.stderr


ZIG017 = os.environ.get("TREESEED_TEST_ZIG017")


@pytest.mark.skipif(not ZIG017, reason="set TREESEED_TEST_ZIG017 to a zig 0.17 binary (slow: it "
                                       "builds its package manager on first use)")
def test_zig_017_builds_from_zig_pkg_with_the_server_down(tmp_path: Path, servers,  # noqa: F811
                                                          zig_env: dict[str, str]) -> None:
    assert ZIG017 is not None
    shared = os.environ.get("TREESEED_TEST_ZIG017_CACHE")
    if shared:
        shutil.copytree(shared, zig_env["ZIG_GLOBAL_CACHE_DIR"], symlinks=True)
    server = servers()
    project = make_project(tmp_path, server)
    proc = run_cli("-C", str(project.root), "zig", "fetch", "--zig-version", "auto",
                   cache=tmp_path / "c", env={"PATH": f"{Path(ZIG017).parent}:{os.environ['PATH']}"})
    assert "for Zig 0.17" in proc.stderr
    server.close()
    built = zig("build", cwd=project.root, exe=[ZIG017])
    assert built.returncode == 0, built.stderr
    assert (project.root / "zig-out" / "g.txt").read_text() == "from gamma\n"


# --------------------------------------------------------------------------- the swarm


def test_with_torrenting_a_package_a_mirror_can_name_comes_from_the_swarm(
        tmp_path: Path, servers, zig_env: dict[str, str]) -> None:  # noqa: F811
    """A zig hash is no swarm address, but a ``treeseed serve`` mirror that knows it names the
    package's bt2 hash (its /alias/zig/ redirect): with torrenting on, the package then comes
    from a seeding peer. The origin is down and the swarm has a head start longer than the
    test, so the package cannot come from the mirror's tar or the origin."""
    from mirrorkit import Mirror
    from swarmkit import Peer, wait_for

    origin = servers()
    project = make_project(tmp_path, origin)
    a = Peer(tmp_path / "a")
    for name in project.archives:
        a.cli("fetch", origin.url(f"/{name}"), "--format", "zig")
    origin.close()
    mirror = Mirror(a.cache, tmp_path / "serve.log")
    b = Peer(tmp_path / "b", peers=[a.address], mirrors=[mirror.url])
    try:
        with a.seeding():
            b.cli("-C", str(project.root), "zig", "fetch", "--zig-version", "0.15", "--torrent",
                  env={"TREESEED_SWARM_HEAD_START": "600"})
            wait_for("the seeder to count its uploads", lambda: sum(
                p["uploaded"] > 0 for p in a.status()["packages"]) == len(project.archives))
    finally:
        mirror.stop()
    # The mirror answered the alias lookups, and (a BEP 19 web seed of the swarm's torrents)
    # maybe some file ranges; never a package as a tar, the mirror's own way of serving one.
    requests = [line for line in mirror.logged().splitlines() if '"GET ' in line or '"HEAD ' in line]
    assert sum("/alias/zig/" in line for line in requests) == len(project.archives), requests
    assert not [line for line in requests if ".tar " in line], requests
    assert all(global_dir(zig_env, h).is_dir() for h in project.hashes.values())
    assert_built(project.root)
