"""Git sources: ``git+file://`` and ``git+http://`` (real ``git http-backend``), ``#ref`` optional.

Repositories are real (``git init``/``commit`` in ``tmp_path``, fixed dates) and the client is the
real ``treeseed fetch`` in a subprocess. A git fetch must give the tree of the named commit and
nothing else: no ``.git`` (not even a submodule's), exec bits and symlinks as committed, the
same hash as the ``git archive`` tarball of that commit, and only the objects that commit needs.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from gitserver import GitServer, Submodule, file_url, git, make_repo
from helpers import make_tree, run_cli

V1 = {"README": b"version 1\n", "src/lib.c": b"int v = 1;\n"}
V2 = {"README": b"version 2\n", "src/lib.c": b"int v = 2;\n", "bin/run": ("x", b"#!/bin/sh\n")}
MID = {"README": b"between v2 and main\n"}
MAIN = {"README": b"main\n", "src/lib.c": b"int v = 3;\n", "docs/link": ("link", "../README")}
DEV = {"README": b"dev\n", "dev.txt": b"only on dev\n"}


def fetch(cache: Path, url: str) -> dict:
    return json.loads(run_cli("fetch", url, "--json", cache=cache).stdout)


def tree_hash(tmp_path: Path, spec: dict) -> str:
    """``treeseed hash`` of a plain directory holding ``spec``: what the package must hash to."""
    (tmp_path / "expected").mkdir(exist_ok=True)
    root = make_tree(Path(tempfile.mkdtemp(dir=tmp_path / "expected")) / "tree", spec)
    return run_cli("hash", str(root), cache=tmp_path / "hash-cache").stdout.strip()


def assert_no_git(cache: Path) -> None:
    found = [p for p in (cache / "p").rglob("*") if p.name == ".git"]
    assert not found, found


def assert_fails(cache: Path, url: str, *needles: str) -> str:
    proc = run_cli("fetch", url, cache=cache, check=False)
    assert proc.returncode == 1, proc
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("treeseed: error: "), proc.stderr
    for needle in (url, *needles):
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    for sub in ("p", "tmp"):
        d = cache / sub
        assert not d.exists() or not any(d.iterdir()), f"{d} holds {sorted(os.listdir(d))}"
    return lines[0]


@pytest.fixture
def history(git_server: GitServer) -> dict[str, str]:
    """``repo.git``: v1 (lightweight tag) -> v2 (annotated tag) -> mid (no ref) -> main; dev
    branches off main. HEAD is main. Returns the commit ids by name."""
    repo = git_server.repo("repo.git")
    ids = {"v1": make_repo(repo, V1, tag="v1"), "v2": make_repo(repo, V2, annotated_tag="v2"),
           "mid": make_repo(repo, MID), "main": make_repo(repo, MAIN),
           "dev": make_repo(repo, DEV, branch="dev")}
    git(repo, "checkout", "--quiet", "main")
    return ids


def url_for(transport: str, server: GitServer) -> Callable[..., str]:
    if transport == "http":
        return lambda ref=None: server.url("repo.git", ref)
    return lambda ref=None: file_url(server.repo("repo.git"), ref)


# --------------------------------------------------------------------------- refs


@pytest.mark.parametrize("transport", ["file", "http"])
def test_every_kind_of_ref(tmp_path: Path, cache_dir: Path, git_server: GitServer,
                           history: dict[str, str], transport: str) -> None:
    url = url_for(transport, git_server)
    cases = [  # (ref, commit it names, tree of that commit)
        ("main", history["main"], MAIN),  # branch
        ("dev", history["dev"], DEV),  # another branch
        ("v1", history["v1"], V1),  # lightweight tag
        ("v2", history["v2"], V2),  # annotated tag: its commit, not the tag object
        ("refs/tags/v2", history["v2"], V2),  # a full ref name
        (history["v1"], history["v1"], V1),  # a full commit id
        (history["mid"].upper(), history["mid"], MID),  # one no ref points at (any case)
        (None, history["main"], MAIN),  # no ref: the remote's HEAD
    ]
    for ref, commit, spec in cases:
        got = fetch(cache_dir, url(ref))
        assert got["hash"] == tree_hash(tmp_path, spec), ref
        assert got["revision"] == commit, ref
        assert got["files"] == len(spec), ref
        assert got["source"] == url(ref)
    assert_no_git(cache_dir)
    assert os.listdir(cache_dir / "tmp") == []
    if transport == "http":  # smart HTTP only: never a dumb-protocol object GET
        assert {(r.method, r.path) for r in git_server.requests} == {
            ("GET", "/repo.git/info/refs"), ("POST", "/repo.git/git-upload-pack")}
        assert all(r.status == 200 for r in git_server.requests)


def test_refs_are_resolved_before_any_object_is_fetched(cache_dir: Path, git_server: GitServer,
                                                        history: dict[str, str]) -> None:
    fetch(cache_dir, git_server.url("repo.git", "v2"))
    assert [r.command for r in git_server.calls("git-upload-pack", "POST")] == ["ls-refs", "fetch"]
    git_server.clear()
    fetch(cache_dir, git_server.url("repo.git", history["mid"]))  # a commit id needs no ls-refs
    assert [r.command for r in git_server.calls("git-upload-pack", "POST")] == ["fetch"]


def test_a_moved_branch_gives_a_new_hash(tmp_path: Path, cache_dir: Path, git_server: GitServer,
                                         history: dict[str, str]) -> None:
    url = git_server.url("repo.git", "main")
    first = fetch(cache_dir, url)
    moved = {**MAIN, "NEWS": b"more\n"}
    commit = make_repo(git_server.repo("repo.git"), moved)
    second = fetch(cache_dir, url)
    assert second["hash"] != first["hash"]
    assert second["hash"] == tree_hash(tmp_path, moved)
    assert second["revision"] == commit
    assert second["cached"] is False
    assert sorted(os.listdir(cache_dir / "p")) == sorted({first["hash"], second["hash"]})


def test_exec_bits_and_symlinks_survive(cache_dir: Path, tmp_path: Path) -> None:
    spec = {
        "bin/tool": ("x", b"#!/bin/sh\necho hi\n"),
        "lib/data.txt": b"data\n",
        "lib/current": ("link", "data.txt"),
        "top-link": ("link", "lib/current"),
        "dangling": ("link", "does/not/exist"),
    }
    repo = tmp_path / "modes"
    make_repo(repo, spec)
    got = fetch(cache_dir, file_url(repo))
    root = Path(got["path"])
    assert os.access(root / "bin/tool", os.X_OK)
    assert not os.access(root / "lib/data.txt", os.X_OK)
    assert os.readlink(root / "lib/current") == "data.txt"
    assert os.readlink(root / "top-link") == "lib/current"
    assert os.readlink(root / "dangling") == "does/not/exist"
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir()
                  or p.is_symlink()) == sorted(spec)
    assert got["hash"] == tree_hash(tmp_path, spec)


# --------------------------------------------------------------------------- same hash as a tarball


@pytest.mark.parametrize("transport", ["file", "http"])
def test_git_url_and_tarball_of_the_same_commit_hash_alike(tmp_path: Path, cache_dir: Path,
                                                           git_server: GitServer, transport: str) -> None:
    spec = {**MAIN, **V2, "a/b/c/deep.txt": b"deep\n", ".gitignore": b"*.o\n",
            "empty": b"", "tools/x.sh": ("x", b"#!/bin/sh\n"), "tools/alias": ("link", "x.sh")}
    repo = git_server.repo("repo.git")
    commit = make_repo(repo, spec, tag="v9")
    make_repo(repo, {"README": b"later\n"})  # the tag is no longer the tip
    tarball = tmp_path / "pkg.tar.gz"
    git(repo, "archive", "--format=tar.gz", "--prefix=pkg/", "-o", str(tarball), commit)
    from_tar = fetch(tmp_path / "tar-cache", str(tarball))
    from_git = fetch(cache_dir, url_for(transport, git_server)("v9"))
    assert from_git["hash"] == from_tar["hash"]
    assert from_git["files"] == from_tar["files"] == len(spec)
    assert from_git["bytes"] == from_tar["bytes"]


# --------------------------------------------------------------------------- submodules


def test_submodules_recursive_over_file(tmp_path: Path, cache_dir: Path) -> None:
    inner = tmp_path / "inner"
    inner_old = make_repo(inner, {"inner.txt": b"inner 1\n"})
    make_repo(inner, {"inner.txt": b"inner 2 (not pinned)\n"})
    sub = tmp_path / "sub"
    sub_old = make_repo(sub, {"sub.c": b"int sub;\n", "deps/inner": Submodule(inner.as_uri(), inner_old)})
    make_repo(sub, {"sub.c": b"int newer;\n"})  # the pinned commit is not the branch tip
    top = tmp_path / "top"
    make_repo(top, {"main.c": b"int main;\n", "vendor/sub": Submodule(sub.as_uri(), sub_old)})
    got = fetch(cache_dir, file_url(top))
    root = Path(got["path"])
    assert (root / "vendor/sub/sub.c").read_bytes() == b"int sub;\n"
    assert (root / "vendor/sub/deps/inner/inner.txt").read_bytes() == b"inner 1\n"
    assert got["files"] == 5  # main.c, .gitmodules, sub.c, sub's .gitmodules, inner.txt
    assert_no_git(cache_dir)
    assert got["hash"] == tree_hash(tmp_path, {
        "main.c": b"int main;\n", ".gitmodules": (top / ".gitmodules").read_bytes(),
        "vendor/sub/sub.c": b"int sub;\n",
        "vendor/sub/.gitmodules": git(sub, "show", f"{sub_old}:.gitmodules").encode() + b"\n",
        "vendor/sub/deps/inner/inner.txt": b"inner 1\n",
    })


@pytest.mark.parametrize("protocol_v2", [True, False], ids=["v2", "v0"])
def test_submodule_over_http(cache_dir: Path, git_server: GitServer, protocol_v2: bool) -> None:
    """Over protocol v0 a shallow submodule update cannot ask for the pinned (non-tip) commit; the
    fetch then updates submodules with their history."""
    sub = git_server.repo("sub.git")
    pinned = make_repo(sub, {"sub.txt": b"pinned\n"})
    make_repo(sub, {"sub.txt": b"tip\n"})
    make_repo(git_server.repo("top.git"), {"top.txt": b"top\n",
                                            "sub": Submodule(git_server.base + "/sub.git", pinned)})
    git_server.protocol_v2 = protocol_v2
    got = fetch(cache_dir, git_server.url("top.git"))
    assert (Path(got["path"]) / "sub/sub.txt").read_bytes() == b"pinned\n"
    assert_no_git(cache_dir)
    assert any(r.path.startswith("/sub.git/") for r in git_server.requests)


# --------------------------------------------------------------------------- shallow


@pytest.mark.parametrize("transport", ["file", "http"])
def test_only_what_the_commit_needs_is_downloaded(cache_dir: Path, git_server: GitServer,
                                                  transport: str) -> None:
    big = os.urandom(3 << 20)  # incompressible: a pack holding it is over 3 MiB
    repo = git_server.repo("repo.git")
    old = make_repo(repo, {"README": b"old\n", "big.bin": big})
    make_repo(repo, {"README": b"new\n"})  # big.bin deleted
    url = url_for(transport, git_server)
    got = fetch(cache_dir, url())
    assert got["files"] == 1
    assert got["transferred"] < 64 << 10, got
    if transport == "http":
        assert git_server.sent() < 64 << 10
    # The control: the old commit does need the big file, and then it does travel.
    git_server.clear()
    old_got = fetch(cache_dir, url(old))
    assert old_got["transferred"] > 3 << 20
    if transport == "http":
        assert git_server.sent() > 3 << 20


def test_server_without_commit_id_fetches(tmp_path: Path, cache_dir: Path, git_server: GitServer,
                                          history: dict[str, str]) -> None:
    """Protocol v0 refuses a bare commit id no ref advertises: a named ref is fetched by name (an
    annotated tag's commit is only advertised peeled, which the client does not count), and a
    commit no ref points at from the branches and tags, fetched whole."""
    git_server.protocol_v2 = False
    by_tag = fetch(cache_dir, git_server.url("repo.git", "v2"))
    assert by_tag["hash"] == tree_hash(tmp_path, V2)
    assert by_tag["transferred"] < by_tag["bytes"] + (4 << 10)  # shallow still
    by_id = fetch(cache_dir, git_server.url("repo.git", history["mid"]))
    assert by_id["hash"] == tree_hash(tmp_path, MID)
    assert by_id["revision"] == history["mid"]
    assert all(r.git_protocol for r in git_server.requests if r.method == "GET")  # the client asked for v2
    assert not any(r.command for r in git_server.requests)  # ... and the server answered v0
    unknown = "0123456789abcdef0123456789abcdef01234567"
    assert_fails(tmp_path / "c2", git_server.url("repo.git", unknown), unknown, "not found")


# --------------------------------------------------------------------------- failures


def test_missing_ref(cache_dir: Path, git_server: GitServer, history: dict[str, str]) -> None:
    url = git_server.url("repo.git", "v3")
    line = assert_fails(cache_dir, url, "'v3'", "main", "v1", "v2")
    assert "dev" in line
    # Nothing but ref listings: no object was asked for.
    assert {r.command for r in git_server.calls("git-upload-pack", "POST")} == {"ls-refs"}


def test_missing_ref_over_file(cache_dir: Path, tmp_path: Path) -> None:
    repo = tmp_path / "r"
    make_repo(repo, V1)
    assert_fails(cache_dir, file_url(repo, "nope"), "'nope'", "main")
    assert_fails(cache_dir, file_url(repo, "abc1234"), "40 hex digits")


def test_unknown_commit_id(cache_dir: Path, git_server: GitServer, history: dict[str, str]) -> None:
    unknown = "0123456789abcdef0123456789abcdef01234567"
    assert_fails(cache_dir, git_server.url("repo.git", unknown), unknown)


def test_missing_repository(cache_dir: Path, git_server: GitServer, tmp_path: Path) -> None:
    url = git_server.url("nothere.git", "main")
    assert_fails(cache_dir, url, "not found", "check the repository URL")
    assert [(r.path, r.status) for r in git_server.requests] == [("/nothere.git/info/refs", 404)]
    assert_fails(cache_dir, file_url(tmp_path / "nothere"), "does not appear to be a git repository")


def test_unreachable_server(cache_dir: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"git+http://127.0.0.1:{port}/repo.git#main"
    assert_fails(cache_dir, url, "ls-remote", "connect", "reachable")


@pytest.mark.parametrize("url, needle", [
    ("git+ssh://example.org/repo.git", "unsupported git transport"),
    ("git+file://relative/repo", "absolute path"),
    ("git+https://example.org/repo.git#bad..ref", "not a valid git ref"),
    ("git+https://example.org/repo.git#-upload-pack=evil", "not a valid git ref"),
])
def test_bad_git_urls(cache_dir: Path, url: str, needle: str) -> None:
    assert_fails(cache_dir, url, needle)


def test_empty_repository(cache_dir: Path, tmp_path: Path) -> None:
    repo = tmp_path / "empty"
    repo.mkdir()
    git(repo, "init", "--quiet")
    assert_fails(cache_dir, file_url(repo), "no HEAD", "empty")


# --------------------------------------------------------------------------- the library


def test_progress_is_reported(tmp_path: Path, git_server: GitServer) -> None:
    from treeseed.sources import open_source

    make_repo(git_server.repo("repo.git"), {"big.bin": os.urandom(2 << 20)})
    seen: list[tuple[int, int | None]] = []
    work = tmp_path / "work"
    work.mkdir()
    got = open_source(git_server.url("repo.git")).fetch(work, lambda done, total: seen.append((done, total)))
    assert got.kind == "tree" and (got.path / "big.bin").stat().st_size == 2 << 20
    assert not (got.path / ".git").exists()
    assert seen and seen[-1][0] >= 2 << 20
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_a_git_command_that_hangs_is_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that accepts the connection and never answers: git is killed at the time limit."""
    from treeseed.errors import FetchError
    from treeseed.sources import git as gitsrc

    monkeypatch.setattr(gitsrc, "TIMEOUT", 2)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # connections queue in the backlog; nobody ever reads them
        url = f"git+http://127.0.0.1:{listener.getsockname()[1]}/repo.git#main"
        work = tmp_path / "work"
        work.mkdir()
        with pytest.raises(FetchError) as info:
            gitsrc.GitSource(url).fetch(work)
    assert str(info.value).startswith(f"{url}: git ls-remote did not finish within 2 s")
