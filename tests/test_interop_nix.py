"""``treeseed nix prefetch`` against the real ``nix-prefetch-url`` (Debian's nix-bin, Nix 2.8).

Each archive is built here and served by a local HTTP server; ``nix-prefetch-url`` runs against a
private store (``store = <dir>`` in a private ``NIX_CONF_DIR``), so it works without a daemon and
without any network but loopback. The archives are chosen where Nix's unpacked tree and
treeseed's package differ: empty directories, a single top-level file, several top-level
entries, files a package's own rules leave out, a zip. The output must be exactly Nix's, over
HTTP and for ``file://`` URLs alike.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest
from helpers import run_cli
from httpserver import Reply

from treeseed.cache import Cache
from treeseed.hashing.nar import from_nix32

pytestmark = pytest.mark.skipif(shutil.which("nix-prefetch-url") is None,
                                reason="nix-prefetch-url (Debian's nix-bin) is not installed")

NIX_TIMEOUT = 300


@pytest.fixture(autouse=True)
def nix_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A private Nix store and configuration, and a private HOME, for every test."""
    conf = tmp_path / "nix-conf"
    conf.mkdir()
    (conf / "nix.conf").write_text(f"store = {tmp_path / 'nix-store'}\n")
    monkeypatch.setenv("NIX_CONF_DIR", str(conf))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TREESEED_CONFIG", str(tmp_path / "treeseed-config.toml"))


def nix_prefetch_url(url: str, unpack: bool) -> str:
    args = ["nix-prefetch-url", *(["--unpack"] if unpack else []), url]
    proc = subprocess.run(args, check=False, capture_output=True, text=True, timeout=NIX_TIMEOUT,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()[0]


def treeseed_prefetch(url: str, unpack: bool, cache: Path) -> list[str]:
    proc = run_cli("nix", "prefetch", *(["--unpack"] if unpack else []), url, cache=cache)
    return proc.stdout.splitlines()


# --------------------------------------------------------------------------- archives


def tar(entries: list[tuple[str, object]], compression: str = "gz") -> bytes:
    """``(name, bytes)`` a file, ``(name, ("x", bytes))`` an executable, ``(name, ("link", t))``
    a symlink, ``(name, None)`` a directory entry."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compression}") as tf:
        for name, what in entries:
            info = tarfile.TarInfo(name)
            data = b""
            if what is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif isinstance(what, tuple) and what[0] == "link":
                info.type, info.linkname = tarfile.SYMTYPE, what[1]
            elif isinstance(what, tuple):
                data, info.mode = what[1], 0o755
            else:
                assert isinstance(what, bytes)
                data, info.mode = what, 0o644
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def zip_archive(entries: list[tuple[str, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries:
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (0o40755 if data is None else 0o100644) << 16
            zf.writestr(info, data or b"")
    return buf.getvalue()


ARCHIVES: dict[str, tuple[str, bytes]] = {
    # name: (file name, archive bytes)
    "plain": ("plain-1.0.tar.gz", tar([
        ("plain-1.0/", None), ("plain-1.0/README", b"read me\n"),
        ("plain-1.0/src/main.c", b"int main(void) { return 0; }\n"),
        ("plain-1.0/bin/run", ("x", b"#!/bin/sh\necho run\n")),
        ("plain-1.0/link", ("link", "src/main.c")), ("plain-1.0/empty.txt", b"")])),
    "empty-dirs": ("empty-dirs.tar.xz", tar([
        ("e/", None), ("e/keep/", None), ("e/keep/a", b"a"), ("e/nothing/", None),
        ("e/deep/er/", None)], "xz")),
    "single-file": ("single.tar.gz", tar([("only.txt", b"one file at the top\n")])),
    "two-tops": ("two.tar.bz2", tar([("x/1", b"1"), ("y/2", b"2"), ("z", b"3")], "bz2")),
    "rules-exclude": ("ruled.tar.gz", tar([
        ("r/treeseed.toml", b'[package]\nexclude = ["*.log"]\n'), ("r/src/a.c", b"a"),
        ("r/build.log", b"noise\n")])),
    "zig-paths": ("zigpkg.tar.gz", tar([
        ("z/build.zig.zon", b'.{ .name = .z, .version = "1.0.0", .paths = .{ "src" } }\n'),
        ("z/src/z.zig", b"pub const z = 1;\n"), ("z/README.md", b"not in .paths\n")])),
    "zip": ("pkg.zip", zip_archive([
        ("pkg/", None), ("pkg/a.txt", b"a"), ("pkg/empty/", None), ("pkg/sub/b.txt", b"b")])),
}


@pytest.mark.parametrize("name", sorted(ARCHIVES))
def test_output_is_exactly_nix_prefetch_urls(name: str, tmp_path: Path, servers) -> None:  # noqa: F811
    filename, body = ARCHIVES[name]
    server = servers()
    server.routes[f"/{filename}"] = Reply(body=body)
    local = tmp_path / filename
    local.write_bytes(body)
    for url in (server.url(f"/{filename}"), local.as_uri()):
        for unpack in (False, True):
            expected = nix_prefetch_url(url, unpack)
            ours = treeseed_prefetch(url, unpack, tmp_path / "cache")
            assert ours[0] == expected, (url, unpack)
            assert ours[1] == "sha256-" + base64.b64encode(from_nix32(expected)).decode()
            assert len(ours) == 2


def test_the_package_lands_in_the_cache(tmp_path: Path, servers) -> None:  # noqa: F811
    filename, body = ARCHIVES["plain"]
    server = servers()
    server.routes[f"/{filename}"] = Reply(body=body)
    cache = tmp_path / "cache"
    flat = treeseed_prefetch(server.url(f"/{filename}"), False, cache)
    index = Cache(cache)
    package = index.resolve("archive-sha256", from_nix32(flat[0]).hex())
    assert package is not None and index.has(package)
    unpacked = treeseed_prefetch(server.url(f"/{filename}"), True, cache)
    # Where Nix's tree and treeseed's package agree, the package's NAR alias is Nix's hash.
    assert index.resolve("nar", unpacked[1]) == package
    index.close()


def test_views_that_differ_are_explained(tmp_path: Path) -> None:
    filename, body = ARCHIVES["empty-dirs"]
    local = tmp_path / filename
    local.write_bytes(body)
    proc = run_cli("nix", "prefetch", "--unpack", str(local), cache=tmp_path / "cache")
    assert proc.stdout.splitlines()[0] == nix_prefetch_url(local.as_uri(), True)
    assert "Nix's unpacked tree differs from treeseed's package" in proc.stderr


def test_a_file_that_is_not_an_archive_still_has_its_flat_hash(tmp_path: Path, servers) -> None:  # noqa: F811
    server = servers()
    server.routes["/fix.patch"] = Reply(body=b"--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n")
    url = server.url("/fix.patch")
    proc = run_cli("nix", "prefetch", url, cache=tmp_path / "cache")
    assert proc.stdout.splitlines()[0] == nix_prefetch_url(url, False)
    assert "not cached as a package" in proc.stderr
    failed = run_cli("nix", "prefetch", "--unpack", url, cache=tmp_path / "cache", check=False)
    assert failed.returncode == 1 and "fix.patch" in failed.stderr and "archive" in failed.stderr


def test_a_directory_has_no_flat_hash(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a").write_bytes(b"a")
    proc = run_cli("nix", "prefetch", str(tree), cache=tmp_path / "cache", check=False)
    assert proc.returncode == 1
    assert "has no flat hash" in proc.stderr and "--unpack" in proc.stderr


def test_offline_refuses_the_network(tmp_path: Path, servers) -> None:  # noqa: F811
    server = servers()
    proc = run_cli("--offline", "nix", "prefetch", server.url("/x.tar.gz"), cache=tmp_path / "c",
                   check=False)
    assert proc.returncode == 1 and "--offline forbids the network" in proc.stderr
    assert server.hits == []


def test_nar_stream_matches_nix_hash_on_disk(tmp_path: Path) -> None:
    """The NAR writer behind --unpack, against ``nix-hash`` on a tree with every kind of node."""
    from treeseed.interop.nix import nar_stream

    root = tmp_path / "t"
    (root / "empty").mkdir(parents=True)
    (root / "d").mkdir()
    (root / "d" / "f").write_bytes(b"x" * 3_000_000)
    (root / "exe").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "exe", 0o755)
    os.symlink("d/f", root / "l")
    for path in (root, root / "exe", root / "l"):
        h = hashlib.sha256()
        nar_stream(path, h.update)
        proc = subprocess.run(["nix-hash", "--type", "sha256", "--base32", str(path)],
                              capture_output=True, text=True, timeout=NIX_TIMEOUT, check=True)
        assert from_nix32(proc.stdout.strip()) == h.digest(), path
