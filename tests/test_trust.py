"""The trust boundary: what a stranger's manifest may make treeseed read, what enters the cache
with which aliases, and what the cache lets out (docs/security.md).

Everything runs for real: packages are .tar.gz archives served by a loopback HTTP server
(tests/httpserver.py), git repositories are made by the real git, and the CLI runs as a
subprocess.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from depskit import Packages, cached, dep_toml, deps_fetch, error_lines, make_root, serve
from gitserver import GitServer, Submodule, make_repo
from helpers import make_tree, run_cli
from httpserver import Reply, Server

# --------------------------------------------------------------------------- defect 1:
# a manifest fetched from the network names local paths


def secret_dir(tmp: Path) -> Path:
    """A directory a stranger would like to read: stands in for ~/.ssh."""
    return make_tree(tmp / "home" / ".ssh", {"id_ed25519": b"-----BEGIN OPENSSH PRIVATE KEY-----\n"})


@pytest.mark.parametrize("spelling", ["absolute", "file", "git+file", "tilde", "relative-escape",
                                      "other-scheme"])
def test_network_manifest_may_not_name_local_paths(tmp_path: Path, cache_dir: Path,
                                                   server: Server, spelling: str) -> None:
    """A package served over HTTP whose manifest names a directory on this machine: the
    dependency is refused with the manifest, its line and the rule; nothing of the secret
    directory enters the cache."""
    secret = secret_dir(tmp_path)
    home = secret.parent
    url = {
        "absolute": str(secret),
        "file": secret.as_uri(),
        "git+file": "git+" + secret.as_uri(),
        "tilde": "~/.ssh",
        "relative-escape": "//127.0.0.2/x.tar.gz",  # relative, but it leaves the manifest's host
        "other-scheme": "ssh://example.invalid/x",
    }[spelling]
    pk = Packages(tmp_path)
    evil_body, evil = pk.build("evil", dep_toml("loot", url))
    evil_url = serve(server, "/pkgs/evil-1.0.tar.gz", evil_body)
    root = make_root(tmp_path, dep_toml("evil", evil_url, evil))

    proc = deps_fetch(cache_dir, root, env={"HOME": str(home)})
    err = error_lines(proc)
    assert "loot" in err
    assert "treeseed.toml:" in err  # the manifest and its line
    assert "a manifest fetched from the network may name only" in err
    assert cached(cache_dir) == {evil}  # the package itself, and nothing of the secret
    for package in cached(cache_dir):
        assert not any("id_ed25519" in f for _, _, fs in os.walk(cache_dir / "p" / package)
                       for f in fs)
    assert server.hits == ["/pkgs/evil-1.0.tar.gz"]


def test_network_manifest_may_name_network_urls_and_relative_paths(
        tmp_path: Path, cache_dir: Path, server: Server) -> None:
    """The rule refuses only what reaches this machine: an absolute http URL and a path
    relative to the manifest on its own host both work."""
    pk = Packages(tmp_path)
    b_body, b = pk.build("b")
    serve(server, "/other/b-1.0.tar.gz", b_body)
    c_body, c = pk.build("c")
    c_url = serve(server, "/c-1.0.tar.gz", c_body)
    a_body, a = pk.build("a", dep_toml("b", "../other/b-1.0.tar.gz", b), dep_toml("c", c_url, c))
    a_url = serve(server, "/pkgs/a-1.0.tar.gz", a_body)
    root = make_root(tmp_path, dep_toml("a", a_url, a))
    deps_fetch(cache_dir, root, check=True)
    assert cached(cache_dir) == {a, b, c}


def test_local_manifests_may_still_name_local_paths(tmp_path: Path, cache_dir: Path) -> None:
    """The user's own tree (and packages it names by path) keep relative and absolute paths:
    the example project works that way."""
    pk = Packages(tmp_path)
    _, inner = pk.build("inner")
    inner_archive = max((pk.dir).iterdir(), key=lambda p: p.stat().st_mtime_ns)
    _, outer = pk.build("outer", dep_toml("inner", str(inner_archive), inner))
    outer_archive = sorted(pk.dir.iterdir(), key=lambda p: p.stat().st_mtime_ns)[-1]
    root = make_root(tmp_path, dep_toml("outer", outer_archive.as_uri(), outer))
    deps_fetch(cache_dir, root, check=True)
    assert cached(cache_dir) == {outer, inner}


@pytest.mark.parametrize("spelling", ["file-url", "path"])
def test_remote_repository_submodules_may_not_use_the_file_protocol(
        tmp_path: Path, cache_dir: Path, git_server: GitServer, spelling: str) -> None:
    """A repository served over HTTP whose .gitmodules points at a repository on this machine:
    refused, naming .gitmodules, the submodule and the rule; nothing enters the cache."""
    secret = tmp_path / "secret"
    commit = make_repo(secret, {"key": b"private\n"})
    url = secret.as_uri() if spelling == "file-url" else str(secret)
    make_repo(tmp_path / "work", {"README": b"hi\n", "vendor": Submodule(url, commit)},
              bare_copy=git_server.repo("evil.git"))
    proc = run_cli("fetch", git_server.url("evil.git", "main"), cache=cache_dir, check=False)
    err = error_lines(proc)
    assert ".gitmodules" in err and "vendor" in err, err
    assert "only http" in err, err
    assert not (cache_dir / "p").exists() or not os.listdir(cache_dir / "p")


def test_remote_repository_submodules_over_http_still_work(tmp_path: Path, cache_dir: Path,
                                                          git_server: GitServer) -> None:
    """The same shape with the submodule on the same server, by a relative URL: fetched."""
    commit = make_repo(tmp_path / "lib", {"lib.c": b"int x;\n"},
                       bare_copy=git_server.repo("lib.git"))
    make_repo(tmp_path / "work", {"README": b"hi\n", "vendor": Submodule("../lib.git", commit)},
              bare_copy=git_server.repo("app.git"))
    out = run_cli("fetch", git_server.url("app.git", "main"), cache=cache_dir).stdout
    package = out.split()[0]
    assert (cache_dir / "p" / package / "vendor" / "lib.c").is_file()


def test_fetch_subprocess_sees_no_secret(tmp_path: Path, cache_dir: Path) -> None:
    """Sanity for the tests above: the secret directory itself is fetchable when the user names
    it on the command line (the rule is about manifests, not about the user)."""
    secret = secret_dir(tmp_path)
    out = run_cli("fetch", str(secret), cache=cache_dir).stdout
    assert out.startswith("bt2-")


# --------------------------------------------------------------------------- defect 9:
# a configured fetcher's announcements become aliases


def test_a_lying_fetcher_cannot_claim_another_archives_digest(tmp_path: Path, cache_dir: Path) -> None:
    """A configured fetcher announces the SHA-256 of a real archive (and a git commit) while it
    delivers a tree of its own. Those claims are not recorded: a later fetch of the real
    archive unpacks it and installs the real tree, not the fetcher's."""
    import hashlib

    from helpers import tar_gz
    from test_fetchers import WRITE_PACKAGE, Demo

    real = tmp_path / "real-1.0.tar.gz"
    real.write_bytes(tar_gz({"real.c": b"int real;\n"}, "real-1.0"))
    digest = hashlib.sha256(real.read_bytes()).hexdigest()
    lie = (f'announce(b"archive-sha256 {digest}\\n")\n'
           f'announce(b"git-commit {"c" * 40}\\n")\n')
    demo = Demo(tmp_path, lie + WRITE_PACKAGE)
    fetched = demo.fetch(cache_dir, "demo://pkg", "--json")
    assert fetched.returncode == 0, fetched.stderr
    evil = json.loads(fetched.stdout)["hash"]

    from treeseed.cache import Cache

    cache = Cache(cache_dir)
    try:
        assert cache.aliases(evil) == {}  # nothing the fetcher claimed
        assert cache.resolve("archive-sha256", digest) is None
    finally:
        cache.close()
    got = json.loads(run_cli("fetch", str(real), "--json", cache=cache_dir).stdout)
    assert got["hash"] != evil and got["cached"] is False
    assert (cache_dir / "p" / got["hash"] / "real.c").is_file()


def test_an_alias_is_never_repointed_to_another_package(tmp_path: Path) -> None:
    """The first package an alias names keeps it; a second claim is refused and reported."""
    from treeseed.cache import Cache

    cache = Cache(tmp_path / "cache")
    try:
        first = run_cli("fetch", str(make_tree(tmp_path / "a", {"a": b"a\n"})),
                        cache=tmp_path / "cache").stdout.split()[0]
        second = run_cli("fetch", str(make_tree(tmp_path / "b", {"b": b"b\n"})),
                         cache=tmp_path / "cache").stdout.split()[0]
        assert cache.add_aliases(first, {"zig": "x-1.0-AAAA"}) == []
        assert cache.add_aliases(second, {"zig": "x-1.0-AAAA"}) == [("zig", "x-1.0-AAAA", first)]
        assert cache.resolve("zig", "x-1.0-AAAA") == first
        run_cli("cache", "rm", first, cache=tmp_path / "cache")
        assert cache.add_aliases(second, {"zig": "x-1.0-AAAA"}) == []  # a dangling alias moves
        assert cache.resolve("zig", "x-1.0-AAAA") == second
    finally:
        cache.close()


# --------------------------------------------------------------------------- defect 1, Zig:
# a build.zig.zon fetched from the network names local paths


@pytest.mark.parametrize("spelling", ["file-url", "path-escape"])
def test_network_zon_may_not_name_local_paths(tmp_path: Path, server: Server, spelling: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """``treeseed zig fetch``: a dependency served over HTTP whose build.zig.zon names a
    directory on this machine (a file:// URL, or a .path that climbs out of the package) is
    refused, naming its build.zig.zon line and the rule; nothing of the secret is fetched."""
    from helpers import tar_gz
    from zigkit import dep_entry, manifest, zig_fetch_hash

    monkeypatch.setenv("ZIG_GLOBAL_CACHE_DIR", str(tmp_path / "zig-global"))
    secret = secret_dir(tmp_path)
    if spelling == "file-url":
        loot = dep_entry("loot", secret.as_uri(), "loot-0.0.0-" + "A" * 44)
    else:
        loot = '        .loot = .{ .path = "../../../../../../../../../../' + str(secret) + '" },\n'
    evil = tar_gz({"build.zig": b"", "build.zig.zon": manifest("evil", deps=loot)}, "evil")
    server.routes["/evil.tar.gz"] = Reply(body=evil)
    evil_hash = zig_fetch_hash(tmp_path, evil, "evil.tar.gz")
    root = tmp_path / "proj"
    root.mkdir()
    (root / "build.zig").write_bytes(b"")
    (root / "build.zig.zon").write_bytes(manifest(
        "proj", deps=dep_entry("evil", server.url("/evil.tar.gz"), evil_hash)))
    proc = run_cli("-C", str(root), "zig", "fetch", "--zig-version", "0.15",
                   cache=tmp_path / "cache", check=False)
    err = error_lines(proc)
    assert "loot" in err and "build.zig.zon:" in err
    assert "a build.zig.zon fetched from the network may name only" in err
    for dirpath, _, files in os.walk(tmp_path / "cache"):
        assert "id_ed25519" not in files, dirpath
