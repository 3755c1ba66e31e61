"""``treeseed serve``: a real server process and real clients on 127.0.0.1.

Each test starts ``python -m treeseed serve --bind 127.0.0.1:0`` on a cache filled by the real
``treeseed fetch``, reads the URL from its first line, and talks to it with ``http.client`` (or a
raw socket where the test must misbehave as a client), ``treeseed fetch`` into a second cache,
libtorrent (the .torrent, and a web-seed download of a whole package) and Nix
(``builtin:fetchurl`` through ``hashed-mirrors``). Every wait is bounded; no test measures time.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import itertools
import os
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from urllib.parse import quote

import pytest
from helpers import make_tree, run_cli
from httpserver import closed_port
from mirrorkit import Mirror, Reply, get
from waiting import WaitTimeout, wait_for

from treeseed.cache import Cache
from treeseed.errors import CacheError
from treeseed.hashing.nar import from_nix32, nix32
from treeseed.package import Entry
from treeseed.serve import (
    ServeError,
    Unsatisfiable,
    etag_matches,
    parse_bind,
    parse_range,
)
from treeseed.tar import TarReader
from treeseed.tarstream import TarLayout

TIMEOUT = 60  # seconds any single wait may take before the test fails instead of hanging
KiB = 1 << 10
MiB = 1 << 20
ABSENT = "bt2-" + "ab" * 32

# --------------------------------------------------------------------------- the server process


# --------------------------------------------------------------------------- packages


def add(cache: Path, root: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """``treeseed fetch`` a directory or archive into ``cache``; its hash. A package from a
    local path is served only once shared (``seed --share``, in the settings ``env`` names),
    as a user would."""
    package_hash = run_cli("fetch", str(root), *args, cache=cache, env=env).stdout.split("\t", 1)[0]
    run_cli("seed", "--share", package_hash, cache=cache, env=env)
    return package_hash


def fetch_from(cache: Path, url: str, expected: str) -> str:
    return run_cli("fetch", url, "--hash", expected, cache=cache).stdout.split("\t", 1)[0]


def make_tar_gz(tmp_path: Path, name: str, spec: dict[str, object]) -> Path:
    root = make_tree(tmp_path / f"{name}-src" / name, spec)
    archive = tmp_path / f"{name}.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(root, arcname=name)
    return archive


LONG_DIR = "ü" * 60  # 120 bytes of UTF-8: a path beyond ustar's 100 that needs PAX
TREES: dict[str, dict[str, object]] = {
    "mixed": {
        "README": b"hello\n",
        "bin/run": ("x", b"#!/bin/sh\necho hi\n"),
        "empty": b"",
        "a/b/c/d/e/deep.txt": b"deep\n",
        "link": ("link", "README"),
        "a/up": ("link", "../README"),
        "a/dangling": ("link", "b/not-there"),
    },
    "long-names": {
        f"{LONG_DIR}/{'é' * 70}.txt": bytes(range(256)) * 300,  # 76 KiB: goes out by sendfile
        f"{'d' * 40}/{'e' * 90}": b"splits into ustar prefix and name\n",
        f"{'f' * 150}.txt": b"one component too long for ustar's name field\n",
        "l/ink": ("link", f"../{LONG_DIR}/{'é' * 70}.txt"),
        "t": ("link", "sub/" + "t" * 120),  # an ASCII target over 100 bytes, dangling
        "日本語/ファイル.txt": "こんにちは\n".encode(),
    },
    "single-top-directory": {"only/inner/file.c": b"int main;\n", "only/x": ("x", b"")},
    "one-empty-file": {"empty": b""},
    "big-and-executable": {"big.bin": random.Random(1).randbytes(600 * KiB),
                           "tool": ("x", random.Random(2).randbytes(100 * KiB))},
}


def tar_members(body: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:") as tf:
        return tf.getmembers()


# --------------------------------------------------------------------------- /bt2-<hex>.tar


def test_tar_fetches_back_to_the_same_package(tmp_path: Path, serve: Callable[..., Mirror]) -> None:
    """The tar is a faithful, deterministic copy: `treeseed fetch` of it (and GNU tar's
    extraction of it) gives back the same hash for every kind of tree."""
    cache, other = tmp_path / "cache", tmp_path / "other"
    hashes = {name: add(cache, make_tree(tmp_path / "trees" / name, spec))
              for name, spec in TREES.items()}
    mirror = serve(cache)
    for name, package_hash in hashes.items():
        url = f"{mirror.url}/{package_hash}.tar"
        assert fetch_from(other, url, package_hash) == package_hash, name
        body = get(mirror, f"/{package_hash}.tar").body
        assert get(mirror, f"/{package_hash}.tar").body == body, f"{name}: not deterministic"
        members = tar_members(body)
        assert members[0].name == package_hash and members[0].isdir()
        names = [m.name.removeprefix(f"{package_hash}/") for m in members[1:]]
        assert names == sorted(names, key=lambda n: n.encode()), name
        for m in members:
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", ""), m.name
            assert m.mode in ((0o755,) if m.isdir() else (0o777,) if m.issym() else (0o644, 0o755))
        if shutil.which("tar"):
            out = tmp_path / "gnu" / name
            out.mkdir(parents=True)
            subprocess.run(["tar", "-xf", "-", "-C", str(out)], input=body, check=True, timeout=TIMEOUT)
            got = run_cli("hash", str(out / package_hash), cache=tmp_path / "scratch").stdout.strip()
            assert got == package_hash, f"{name}: GNU tar's extraction hashes differently"


def test_tar_layout_writes_pax_only_where_ustar_cannot(tmp_path: Path) -> None:
    """Headers straight from the layout: a file of 9 GiB needs a PAX size (no such file is
    written: only its header is read back), an ASCII path that splits needs nothing."""
    entries = [Entry("a" * 40 + "/" + "b" * 90, "file", 3), Entry("huge.bin", "file", 9 << 30)]
    layout = TarLayout(tmp_path, "top", entries)
    assert layout.size == 512 + (512 + 512) + (512 + 512 + 512 + (9 << 30)) + 1024
    headers = b"".join(layout.pieces(0, 1024))  # the top directory's, the first file's
    assert all(isinstance(p, bytes) for p in layout.pieces(1536, 3072))
    huge = b"".join(layout.pieces(1536, 3072))  # huge.bin's PAX header, then its ustar one
    head = headers + huge
    reader = TarReader(io.BytesIO(headers + bytes(512) + huge).read, "layout")
    members = list(itertools.islice(reader.members(), 3))
    assert [(m.name, m.size) for m in members] == [("top/", 0), ("top/" + entries[0].path, 3),
                                                   ("top/huge.bin", 9 << 30)]
    assert b"size=9663676416" in head and head.count(b"././@PaxHeader") == 1


def test_ranges_match_the_full_body(tmp_path: Path, serve: Callable[..., Mirror]) -> None:
    """Every range (headers, file bodies, padding, the end blocks; all three forms) returns
    exactly those bytes of the full tar, with the right Content-Range, on one keep-alive
    connection."""
    cache = tmp_path / "cache"
    spec = {**TREES["big-and-executable"], **TREES["mixed"], **TREES["long-names"]}
    package_hash = add(cache, make_tree(tmp_path / "tree", spec))
    mirror = serve(cache)
    path = f"/{package_hash}.tar"
    full = get(mirror, path)
    assert full.status == 200 and int(full.headers["content-length"]) == len(full.body)
    size = len(full.body)
    edges = {0, 511, 512, 513, size - 1025, size - 1024, size - 1}
    with tarfile.open(fileobj=io.BytesIO(full.body)) as tf:
        for m in tf.getmembers():
            edges |= {m.offset - 1, m.offset, m.offset_data - 1, m.offset_data,
                      m.offset_data + m.size - 1, m.offset_data + m.size}
    rng = random.Random(7)
    spans = [(a, b) for a in sorted(edges) for b in (a, a + 1, a + rng.randrange(1, 300 * KiB))
             if 0 <= a < size]
    conn = mirror.connect()
    try:
        for a, b in spans:
            reply = get(mirror, path, {"Range": f"bytes={a}-{b}"}, conn=conn)
            last = min(b, size - 1)
            assert reply.status == 206, (a, b)
            assert reply.headers["content-range"] == f"bytes {a}-{last}/{size}"
            assert reply.body == full.body[a:last + 1], (a, b)
        for suffix in (1, 100, 1024, 70_000, size, size + 10):
            reply = get(mirror, path, {"Range": f"bytes=-{suffix}"}, conn=conn)
            assert reply.status == 206 and reply.body == full.body[-suffix:]
        reply = get(mirror, path, {"Range": f"bytes={size - 700}-"}, conn=conn)
        assert reply.body == full.body[size - 700:]
        for bad in (f"bytes={size}-", f"bytes={size + 5}-{size + 9}", "bytes=-0", "bytes=9-3",
                    "bytes=a-b", "bytes=-"):
            reply = get(mirror, path, {"Range": bad}, conn=conn)
            assert reply.status == 416, bad
            assert reply.headers["content-range"] == f"bytes */{size}" and reply.body == b""
        for ignored in ("bytes=0-1,5-9", "items=0-4"):  # several ranges, another unit: all of it
            reply = get(mirror, path, {"Range": ignored}, conn=conn)
            assert reply.status == 200 and reply.body == full.body, ignored
    finally:
        conn.close()


HOSTILE_RANGES = [
    "bytes=" + "9" * 5000 + "-",  # Python's int() refuses more than 4300 digits
    "bytes=0-" + "9" * 5000,
    "bytes=-" + "9" * 5000,
    "bytes=" + "9" * 5000 + "-" + "9" * 5001,
    "bytes=" + "0" * 5000 + "5-6",  # leading zeros: still position 5
    "bytes=\u00b2-",  # SUPERSCRIPT TWO: str.isdigit() says yes, int() says no
    "bytes=1-2-3", "bytes=--5", "bytes=0x10-", "bytes=1e3-", "bytes= - ", "bytes=",
    "bytes=-1-", "bytes=\t5-\x0b",
]


def test_hostile_ranges_get_a_proper_answer(tmp_path: Path, serve: Callable[..., Mirror]) -> None:
    """Absurd, overlong or non-ASCII Range values each get a complete answer on the same
    keep-alive connection (416 with ``Content-Range: bytes */size``, or 206 for the ones that
    do name bytes): never a dropped connection, and nothing but request lines in the log."""
    cache = tmp_path / "cache"
    package_hash = add(cache, make_tree(tmp_path / "tree", TREES["mixed"]))
    mirror = serve(cache)
    path = f"/{package_hash}.tar"
    full = get(mirror, path).body
    size = len(full)
    conn = mirror.connect()
    try:
        for value in HOSTILE_RANGES:
            reply = get(mirror, path, {"Range": value}, conn=conn)
            if value.startswith(("bytes=0-9", "bytes=-9")):  # the whole body, as one range
                assert (reply.status, reply.body) == (206, full), value[:40]
                assert reply.headers["content-range"] == f"bytes 0-{size - 1}/{size}"
            elif value.startswith("bytes=00"):
                assert (reply.status, reply.body) == (206, full[5:7])
            else:
                assert reply.status == 416, value[:40]
                assert reply.headers["content-range"] == f"bytes */{size}"
                assert reply.body == b""
    finally:
        conn.close()
    # Bytes http.client would not send: Arabic-Indic digits in UTF-8, a NUL, a stray 0xff.
    for raw in ("bytes=\u0663-\u0664".encode(), b"bytes=1\x00-2", b"bytes=1-2\xff"):
        sock = socket.create_connection(("127.0.0.1", mirror.port), timeout=TIMEOUT)
        try:
            sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nRange: " + raw
                         + b"\r\nConnection: close\r\n\r\n")
            answer = read_to_end(sock)
            assert answer.startswith((b"HTTP/1.1 416 ", b"HTTP/1.1 400 ")), (raw, answer[:40])
        finally:
            sock.close()
    assert get(mirror, path, {"Range": "bytes=0-0"}).body == full[:1]
    problems = [line for line in mirror.logged().splitlines() if '"GET ' not in line]
    assert not problems, problems


def test_fetch_by_hash_uses_the_mirrors_setting(tmp_path: Path, serve: Callable[..., Mirror]) -> None:
    """How a LAN or CI client uses a mirror: `treeseed config set mirrors URL`, then a fetch by
    hash alone asks the mirror for `<hash>.tar`."""
    cache, other = tmp_path / "cache", tmp_path / "other"
    package_hash = add(cache, make_tree(tmp_path / "tree", TREES["mixed"]))
    mirror = serve(cache)
    env = {"TREESEED_CONFIG": str(tmp_path / "client.toml")}
    run_cli("config", "set", "mirrors", mirror.url, env=env)
    got = run_cli("fetch", package_hash, cache=other, env=env).stdout.split("\t", 1)[0]
    assert got == package_hash
    assert f'"GET /{package_hash}.tar HTTP/1.1" 200' in mirror.logged()


def test_etag_conditionals_and_head(tmp_path: Path, serve: Callable[..., Mirror]) -> None:
    cache = tmp_path / "cache"
    package_hash = add(cache, make_tree(tmp_path / "tree", TREES["mixed"]))
    mirror = serve(cache)
    path = f"/{package_hash}.tar"
    full = get(mirror, path)
    etag = f'"{package_hash}"'
    assert full.headers["etag"] == etag
    assert full.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert full.headers["accept-ranges"] == "bytes"
    assert full.headers["content-type"] == "application/x-tar"
    for match in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        reply = get(mirror, path, {"If-None-Match": match})
        assert (reply.status, reply.body, reply.headers["etag"]) == (304, b"", etag), match
    assert get(mirror, path, {"If-None-Match": '"bt2-other"'}).status == 200
    reply = get(mirror, path, {"Range": "bytes=10-19", "If-Range": etag})
    assert (reply.status, reply.body) == (206, full.body[10:20])
    for stale in ('"bt2-other"', f"W/{etag}", "Sat, 01 Jan 2000 00:00:00 GMT"):
        reply = get(mirror, path, {"Range": "bytes=10-19", "If-Range": stale})
        assert (reply.status, reply.body) == (200, full.body), stale
    head = get(mirror, path, method="HEAD")
    assert head.status == 200 and head.body == b""
    assert {k: v for k, v in head.headers.items() if k != "date"} == \
        {k: v for k, v in full.headers.items() if k != "date"}
    head = get(mirror, path, {"Range": "bytes=-5"}, method="HEAD")
    assert (head.status, head.headers["content-length"], head.body) == (206, "5", b"")


# --------------------------------------------------------------------------- .torrent, web seed


def test_torrent_is_the_package_torrent(tmp_path: Path, serve: Callable[..., Mirror]) -> None:
    lt = pytest.importorskip("libtorrent")
    cache = tmp_path / "cache"
    package_hash = add(cache, make_tree(tmp_path / "tree", TREES["big-and-executable"]))
    mirror = serve(cache)
    reply = get(mirror, f"/{package_hash}.torrent")
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/x-bittorrent"
    assert reply.headers["etag"] == f'"{package_hash}.torrent"'
    info = lt.torrent_info(lt.bdecode(reply.body))
    assert str(info.info_hashes().v2) == package_hash.removeprefix("bt2-")
    tail = get(mirror, f"/{package_hash}.torrent", {"Range": "bytes=-10"})
    assert (tail.status, tail.body) == (206, reply.body[-10:])
    assert get(mirror, f"/{ABSENT}.torrent").status == 404


def test_libtorrent_downloads_a_package_from_the_web_seed(tmp_path: Path,
                                                          serve: Callable[..., Mirror]) -> None:
    """BEP 19: libtorrent, given only the .torrent and the mirror as a web seed (the URL
    treeseed.swarm.session.web_seeds makes), fetches every file; the result hashes to the
    package (contents, exec bits, symlinks, empty files, unicode names). Dangling links are
    left out: libtorrent rewrites a link whose target the torrent lacks to point at itself
    (its sanitize_symlinks), whoever serves the files."""
    lt = pytest.importorskip("libtorrent")
    from treeseed.swarm.session import web_seeds

    cache = tmp_path / "cache"
    spec = {**TREES["mixed"], **TREES["big-and-executable"], **TREES["long-names"]}
    del spec["a/dangling"], spec["t"]
    package_hash = add(cache, make_tree(tmp_path / "tree", spec))
    mirror = serve(cache)
    ses = lt.session({"enable_dht": False, "enable_lsd": False, "enable_upnp": False,
                      "enable_natpmp": False, "listen_interfaces": "127.0.0.1:0"})
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(lt.bdecode(get(mirror, f"/{package_hash}.torrent").body))
    params.save_path = str(tmp_path / "download")
    params.url_seeds = web_seeds([mirror.url], package_hash)
    handle = ses.add_torrent(params)
    with suppress(WaitTimeout):
        wait_for("the web seed download", lambda: handle.status().is_seeding, timeout=TIMEOUT)
    status = handle.status()
    ses.pause()
    assert status.is_seeding, f"web seed download stuck at {status.progress:.0%}: {mirror.logged()}"
    got = run_cli("hash", str(tmp_path / "download" / "package"), cache=tmp_path / "x").stdout
    assert got.strip() == package_hash
    assert "/package/" in mirror.logged()


def test_web_seed_serves_only_the_package_files(tmp_path: Path, serve: Callable[..., Mirror]) -> None:
    cache = tmp_path / "cache"
    package_hash = add(cache, make_tree(tmp_path / "tree", TREES["mixed"]))
    mirror = serve(cache)
    base = f"/{package_hash}/package"
    reply = get(mirror, f"{base}/bin/run")
    assert (reply.status, reply.body) == (200, b"#!/bin/sh\necho hi\n")
    assert get(mirror, f"{base}/bin/run", {"Range": "bytes=3-5"}).body == b"bin"
    for path in (f"{base}/link", f"{base}/a", f"{base}/", f"{base}/bin//run", f"{base}/../README",
                 f"{base}/a/../README", f"{base}/%2e%2e/README", f"{base}/nope",
                 f"/{package_hash}/other/README", f"/{ABSENT}/package/README"):
        assert get(mirror, path).status == 404, path


# --------------------------------------------------------------------------- /alias/, /sha256/


def test_alias_redirects_to_the_tar(tmp_path: Path, serve: Callable[..., Mirror]) -> None:
    cache, other = tmp_path / "cache", tmp_path / "other"
    archive = make_tar_gz(tmp_path, "pkg-1.0", TREES["mixed"])
    package_hash = add(cache, archive, "--format", "nar", "--format", "git", "--format", "swhid")
    run_cli("hash", str(archive), "--format", "zig", cache=cache)  # recorded as an alias too
    aliases = Cache(cache).aliases(package_hash)
    assert set(aliases) >= {"archive-sha256", "nar", "git", "swhid", "zig"}
    mirror = serve(cache)
    nar_digest = base64.b64decode(aliases["nar"].removeprefix("sha256-"))
    spellings = [(fmt, value) for fmt, value in aliases.items()] + [
        ("nar", quote(aliases["nar"], safe="")),  # SRI has / and + in it: encoded or not
        ("nar", nix32(nar_digest)), ("nar", nar_digest.hex()),
        ("archive-sha256", aliases["archive-sha256"].upper()),
        ("archive-sha256", nix32(bytes.fromhex(aliases["archive-sha256"]))),
    ]
    for fmt, value in spellings:
        reply = get(mirror, f"/alias/{fmt}/{value}")
        assert (reply.status, reply.headers.get("location")) == (307, f"/{package_hash}.tar"), \
            (fmt, value)
    assert get(mirror, f"/alias/git/{aliases['git']}", method="HEAD").status == 307
    url = f"{mirror.url}/alias/nar/{quote(aliases['nar'], safe='')}"
    assert fetch_from(other, url, package_hash) == package_hash
    for path in ("/alias/git/" + "0" * 40, "/alias/bt2/" + package_hash, "/alias/zig/",
                 "/alias/nar/sha256-nonsense", f"/alias/unknown/{aliases['git']}"):
        assert get(mirror, path).status == 404, path


def nix_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian: nix-bin)")
    return path


def test_sha256_serves_kept_archives_by_hex_and_nix32(tmp_path: Path,
                                                      serve: Callable[..., Mirror]) -> None:
    cache = tmp_path / "cache"
    archive = make_tar_gz(tmp_path, "pkg-1.0", TREES["big-and-executable"])
    add(cache, archive)
    digest = Cache(cache).keep_archive(archive)
    assert digest == hashlib.sha256(archive.read_bytes()).hexdigest()
    mirror = serve(cache)
    data = archive.read_bytes()
    by_nix = subprocess.run([nix_tool("nix-hash"), "--type", "sha256", "--to-base32", digest],
                            capture_output=True, text=True, check=True, timeout=TIMEOUT).stdout.strip()
    assert by_nix == nix32(bytes.fromhex(digest))
    back = subprocess.run([nix_tool("nix-hash"), "--type", "sha256", "--to-base16", by_nix],
                          capture_output=True, text=True, check=True, timeout=TIMEOUT).stdout.strip()
    assert back == from_nix32(by_nix).hex() == digest
    for spelling in (digest, by_nix):
        reply = get(mirror, f"/sha256/{spelling}")
        assert (reply.status, reply.body) == (200, data), spelling
        assert reply.headers["etag"] == f'"sha256-{digest}"'
        stated = base64.b64decode(reply.headers["repr-digest"].split("=", 1)[1].strip(":"))
        assert stated.hex() == digest
    part = get(mirror, f"/sha256/{digest}", {"Range": "bytes=100-70000"})
    assert (part.status, part.body) == (206, data[100:70001])
    for path in (f"/sha256/{digest.upper()}", f"/sha256/{digest[:-1]}", f"/sha256/{'0' * 64}",
                 f"/sha256/{digest}/", "/sha256/" + "z" * 52):
        assert get(mirror, path).status == 404, path


def test_keep_archive_checks_the_digest(tmp_path: Path) -> None:
    archive = tmp_path / "a.bin"
    archive.write_bytes(b"some bytes")
    cache = Cache(tmp_path / "cache")
    with pytest.raises(CacheError, match="not the expected"):
        cache.keep_archive(archive, "0" * 64)
    assert not cache.archives_dir.exists() or not any(cache.archives_dir.iterdir())
    assert not any(cache.tmp_dir.iterdir())
    digest = cache.keep_archive(archive, hashlib.sha256(b"some bytes").hexdigest())
    assert cache.archive_path(digest).read_bytes() == b"some bytes"


def test_nix_fetches_through_the_hashed_mirror(tmp_path: Path, serve: Callable[..., Mirror]) -> None:
    """Nix's builtin:fetchurl (what `<nix/fetchurl.nix>` and nixpkgs' bootstrap fetchers use)
    tries `hashed-mirrors` before the URL: with the origin's port closed, the file can only
    come from the treeseed mirror. (nix-prefetch-url itself never consults hashed-mirrors.)"""
    nix_build = nix_tool("nix-build")
    cache = tmp_path / "cache"
    archive = make_tar_gz(tmp_path, "pkg-1.0", TREES["mixed"])
    add(cache, archive)
    digest = Cache(cache).keep_archive(archive)
    mirror = serve(cache)
    nix = tmp_path / "nix"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}
    for var, name in (("HOME", "home"), ("NIX_CONF_DIR", "conf"), ("NIX_STATE_DIR", "state"),
                      ("NIX_LOG_DIR", "log"), ("XDG_CACHE_HOME", "xdg-cache")):
        (nix / name).mkdir(parents=True)
        env[var] = str(nix / name)
    (nix / "conf" / "nix.conf").write_text(
        f"store = {nix / 'store'}\nsubstituters =\nsandbox = false\nbuild-users-group =\n"
        f"hashed-mirrors = {mirror.url}\n")
    origin = f"http://127.0.0.1:{closed_port()}/pkg-1.0.tar.gz"
    expr = f'import <nix/fetchurl.nix> {{ url = "{origin}"; sha256 = "{digest}"; }}'
    proc = subprocess.run([nix_build, "--no-out-link", "-E", expr], env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    out = Path(proc.stdout.strip())
    assert (nix / "store" / out.relative_to("/")).read_bytes() == archive.read_bytes()
    assert f'"GET /sha256/{digest} HTTP/1.1" 200' in mirror.logged()


# --------------------------------------------------------------------------- privacy


def write_config(path: Path, private: list[str]) -> None:
    """Set the ``private`` setting, keeping the rest of the file (the ``share`` setting)."""
    rest = path.read_text().splitlines(keepends=True) if path.exists() else []
    kept = "".join(line for line in rest if line.startswith("share"))
    path.write_text(kept + "private = [" + ", ".join(f'"{p}"' for p in private) + "]\n")


def test_private_packages_are_absent_on_every_endpoint(tmp_path: Path,
                                                       serve: Callable[..., Mirror]) -> None:
    """Private by manifest, by name and by hash in the setting: each answers exactly like a
    package that was never there, on every endpoint, and is missing from the index. A change
    to the setting takes effect while serving; a broken settings file hides everything."""
    cache = tmp_path / "cache"
    manifest = b'[package]\nname = "%s"\nprivate = %s\n'
    archives = {
        "by-manifest": make_tar_gz(tmp_path, "by-manifest",
                                   {"treeseed.toml": manifest % (b"m", b"true"), "f": b"1\n"}),
        "by-name": make_tar_gz(tmp_path, "by-name",
                               {"treeseed.toml": manifest % (b"secret", b"false"), "f": b"2\n"}),
        "by-hash": make_tar_gz(tmp_path, "by-hash", {"f": b"3\n"}),
        "public": make_tar_gz(tmp_path, "public",
                              {"treeseed.toml": manifest % (b"open", b"false"), "f": b"4\n"}),
    }
    config = tmp_path / "config.toml"
    env = {"TREESEED_CONFIG": str(config)}
    hashes = {k: add(cache, a, "--format", "nar", env=env) for k, a in archives.items()}
    kept = {k: Cache(cache).keep_archive(a) for k, a in archives.items()}
    run_cli("config", "set", "private", f"secret,{hashes['by-hash']}", env=env)
    mirror = serve(cache, env=env)
    nar = {k: quote(Cache(cache).aliases(h)["nar"], safe="") for k, h in hashes.items()}

    def endpoints(key: str) -> list[str]:
        h = hashes[key]
        return [f"/{h}.tar", f"/{h}.torrent", f"/{h}/package/f", f"/alias/nar/{nar[key]}",
                f"/sha256/{kept[key]}", f"/sha256/{nix32(bytes.fromhex(kept[key]))}"]

    def shape(reply: Reply) -> tuple[int, bytes, dict[str, str]]:
        return reply.status, reply.body, {k: v for k, v in reply.headers.items() if k != "date"}

    absent = shape(get(mirror, f"/{ABSENT}.tar"))
    assert absent[0] == 404
    for key in ("by-manifest", "by-name", "by-hash"):
        for path in endpoints(key):
            for method in ("GET", "HEAD"):
                reply = get(mirror, path, method=method)
                want = absent if method == "GET" else (404, b"", absent[2])
                assert shape(reply) == want, (key, path, method)
    for path in endpoints("public"):
        assert get(mirror, path).status in (200, 307), path
    index = get(mirror, "/").body.decode()
    assert hashes["public"] in index
    assert not any(hashes[k] in index for k in ("by-manifest", "by-name", "by-hash"))

    write_config(config, ["secret", hashes["by-hash"], "open"])  # made private while serving
    assert all(get(mirror, path).status == 404 for path in endpoints("public"))
    shared = [line for line in config.read_text().splitlines(keepends=True) if line.startswith("share")]
    config.write_text("".join(shared) + "private = [not toml\n")  # broken: nothing may go out
    assert get(mirror, f"/{hashes['public']}.tar").status == 404
    assert "serving no package until the settings are fixed" in mirror.logged()
    write_config(config, [])
    assert get(mirror, f"/{hashes['by-name']}.tar").status == 200
    assert get(mirror, f"/{hashes['by-manifest']}.tar").status == 404  # its manifest says so


def test_local_packages_are_served_only_once_shared(tmp_path: Path,
                                                   serve: Callable[..., Mirror]) -> None:
    """A package fetched from a local path (it may be anyone's home directory) is absent from
    the mirror until the user shares it; one fetched over HTTP needs no such word."""
    from httpserver import Reply as Route
    from httpserver import Server

    cache = tmp_path / "cache"
    local = run_cli("fetch", str(make_tree(tmp_path / "mine", {"f": b"mine\n"})),
                    cache=cache).stdout.split("\t", 1)[0]
    origin = Server()
    try:
        archive = make_tar_gz(tmp_path, "net", {"f": b"from the network\n"})
        origin.routes["/net.tar.gz"] = Route(200, archive.read_bytes())
        remote = run_cli("fetch", origin.url("/net.tar.gz"), cache=cache).stdout.split("\t", 1)[0]
    finally:
        origin.close()
    mirror = serve(cache)
    assert get(mirror, f"/{remote}.tar").status == 200
    assert get(mirror, f"/{local}.tar").status == 404
    assert local not in get(mirror, "/").body.decode()
    run_cli("seed", "--share", local, cache=cache)
    assert get(mirror, f"/{local}.tar").status == 200  # the settings changed: decided again


class FileTouches:
    """Every file the server's threads open, stat or list while recording: ``open`` and
    ``os.listdir``/``os.scandir`` audit events (which cover builtins.open, os.open and
    sqlite3), plus a pass-through wrapper around ``os.stat``/``os.lstat``, which raise none."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, quiet_threads: set[str]) -> None:
        self.events: list[tuple[str, str]] = []
        self.recording = False
        self._quiet = quiet_threads  # threads that answer no request
        sys.addaudithook(self._audit)  # cannot be removed: it does nothing while not recording
        for name in ("stat", "lstat"):
            monkeypatch.setattr(os, name, self._wrap(name, getattr(os, name)))

    def _note(self, kind: str, path: object) -> None:
        if self.recording and threading.current_thread().name not in self._quiet \
                and isinstance(path, (str, bytes, os.PathLike)):
            self.events.append((kind, os.fsdecode(path)))

    def _audit(self, event: str, args: tuple) -> None:
        if event in ("open", "os.listdir", "os.scandir", "sqlite3.connect") and args:
            self._note(event, args[0])

    def _wrap(self, kind: str, real: Callable[..., os.stat_result]) -> Callable[..., os.stat_result]:
        def recorded(path: object, *args: object, **kwargs: object) -> os.stat_result:
            self._note(kind, path)
            return real(path, *args, **kwargs)
        return recorded

    def during(self, action: Callable[[], object]) -> list[tuple[str, str]]:
        self.events = []
        self.recording = True
        try:
            action()
        finally:
            self.recording = False
        return self.events


def test_private_and_absent_take_the_same_path(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The timing oracle, shown structurally: answering a private package touches exactly the
    files answering an absent one does (the same stats, in the same order) and nothing below
    either package's directory; the manifest that makes it private is not read at request time.
    A public package is the control: its answer does read its directory."""
    from treeseed.serve import make_server

    cache = tmp_path / "cache"
    config = tmp_path / "config.toml"
    write_config(config, [])
    monkeypatch.setenv("TREESEED_CONFIG", str(config))
    private = add(cache, make_tree(tmp_path / "priv", {
        "treeseed.toml": b'[package]\nname = "hidden"\nprivate = true\n', "f": b"1\n"}),
        "--format", "nar")  # shared too: private wins
    public = add(cache, make_tree(tmp_path / "pub", {"f": b"2\n"}))
    nar = quote(Cache(cache).aliases(private)["nar"], safe="")
    absent_nar = quote("sha256-" + base64.b64encode(bytes(range(32))).decode(), safe="")
    server = make_server(cache, "127.0.0.1:0", quiet=True, err=io.StringIO())
    thread = threading.Thread(target=server.serve_forever, name="serve-under-test", daemon=True)
    thread.start()
    # Not recorded: the test's own client, and the two background threads that never answer a
    # request (the relist of p/, and the Nix store-path indexer hashing every package once).
    touches = FileTouches(monkeypatch, {threading.current_thread().name, "treeseed-serve-relist",
                                        "treeseed-serve-nix-index"})
    port = server.server_address[1]

    def ask(path: str) -> Callable[[], int]:
        def request() -> int:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                response.read()
                return response.status
            finally:
                conn.close()
        return request

    try:
        assert ask("/")() == 200  # warm: the server has listed p/ once
        for template in ("/{h}.tar", "/{h}.torrent", "/{h}/package/f"):
            for h in (private, ABSENT):
                assert ask(template.format(h=h))() == 404
            seen = {h: touches.during(ask(template.format(h=h))) for h in (private, ABSENT)}
            for h, events in seen.items():
                assert not [e for e in events if h in e[1]], (template, events)
            assert seen[private] == seen[ABSENT], template
        pairs = {"/alias/nar/{v}": (nar, absent_nar),
                 "/sha256/{v}": (Cache(cache).aliases(private).get("archive-sha256", "0" * 64),
                                 "f" * 64)}
        for template, (of_private, of_nothing) in pairs.items():
            seen = {v: touches.during(ask(template.format(v=v))) for v in (of_private, of_nothing)}
            assert not [e for e in seen[of_private] if private in e[1]], seen[of_private]
            assert seen[of_private] == seen[of_nothing], template
        control = touches.during(ask(f"/{public}.tar"))
        assert any(f"{public}" in path for _, path in control), control  # the recorder works
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=TIMEOUT)


def test_any_host_is_answered_but_nothing_private(tmp_path: Path,
                                                  serve: Callable[..., Mirror]) -> None:
    """serve is for a LAN, so it answers whatever Host a client names (unlike the seeder's
    status page). A DNS-rebinding page can therefore read what any LAN client can: public
    packages and the index, never a private package, a cache path or the server's pid."""
    cache = tmp_path / "cache"
    hidden = add(cache, make_tree(tmp_path / "priv", {
        "treeseed.toml": b'[package]\nname = "hidden"\nprivate = true\n', "f": b"1\n"}))
    shown = add(cache, make_tree(tmp_path / "pub", {"f": b"2\n"}))
    mirror = serve(cache)
    secrets = [hidden, "hidden", str(tmp_path), str(mirror.proc.pid)]
    for host in ("attacker.example", "127.0.0.1.attacker.example", "localhost"):
        replies = [get(mirror, p, {"Host": host}) for p in
                   ("/", f"/{hidden}.tar", f"/{hidden}.torrent", f"/{shown}.tar", "/nothing")]
        assert [r.status for r in replies] == [200, 404, 404, 200, 404], host
        assert shown in replies[0].body.decode()
        for reply in replies:
            text = reply.body.decode("latin-1") + str(reply.headers)
            assert not any(secret in text for secret in secrets), (host, text[:200])
    sock = socket.create_connection(("127.0.0.1", mirror.port), timeout=TIMEOUT)
    with sock:  # a malformed request: its error page names nothing either
        sock.sendall(b"GET /%s HTTP/9.9\r\nHost: attacker.example\r\n\r\n" % hidden.encode())
        answer = read_to_end(sock).decode("latin-1")
    assert "505" in answer and str(tmp_path) not in answer and hidden not in answer


# --------------------------------------------------------------------------- robustness


def test_junk_paths_are_404(tmp_path: Path, serve: Callable[..., Mirror]) -> None:
    cache = tmp_path / "cache"
    package_hash = add(cache, make_tree(tmp_path / "tree", TREES["mixed"]))
    mirror = serve(cache)
    hex_part = package_hash.removeprefix("bt2-")
    for path in (f"/{package_hash.upper()}.tar", f"/bt2-{hex_part.upper()}.tar", f"/{package_hash}.tar/",
                 f"/{package_hash}.tar.gz", f"/{package_hash}", f"/p/{package_hash}/README",
                 "/index.sqlite", "/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd",
                 f"/{package_hash}/package/../../../index.sqlite", f"/./{package_hash}.tar",
                 f"/bt2-{hex_part[:-1]}.tar", "/alias/", "/sha256/", "/favicon.ico"):
        reply = get(mirror, path)
        assert (reply.status, reply.body) == (404, b"not found\n"), path
    assert get(mirror, f"/{package_hash}.tar?download=1").status == 200  # a query changes nothing
    assert get(mirror, f"/{package_hash}.tar", method="POST").status == 501
    assert get(mirror, f"/{package_hash}.tar").status == 200  # still serving


def test_many_clients_at_once(tmp_path: Path, serve: Callable[..., Mirror]) -> None:
    cache = tmp_path / "cache"
    spec = {f"d{i}/f{j}": random.Random(i * 100 + j).randbytes(i * 7919 + j)
            for i in range(8) for j in range(10)}
    spec["big"] = random.Random(0).randbytes(3 * MiB)
    package_hash = add(cache, make_tree(tmp_path / "tree", spec))
    mirror = serve(cache, "-q")
    full = get(mirror, f"/{package_hash}.tar").body
    results: dict[int, bytes] = {}
    errors: list[Exception] = []

    def client(n: int) -> None:
        try:
            start = (n * 104729) % len(full)
            headers = {"Range": f"bytes={start}-"} if n % 2 else {}
            body = get(mirror, f"/{package_hash}.tar", headers).body
            results[n] = body if n % 2 == 0 else full[:start] + body
        except (OSError, http.client.HTTPException) as exc:  # reported below, with the others
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=TIMEOUT)
    assert not errors and len(results) == 16
    assert all(body == full for body in results.values())
    assert mirror.logged() == ""  # -q: no request lines


def raw_get(mirror: Mirror, path: str) -> socket.socket:
    """A GET on a raw socket; while the test does not read, the server soon blocks on it
    (the kernel grows a receive window only as the reader drains it)."""
    sock = socket.socket()
    sock.settimeout(TIMEOUT)
    sock.connect(("127.0.0.1", mirror.port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return sock


def read_to_end(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (bounded by the timeout)."""
    data = b""
    while chunk := sock.recv(1 << 16):
        data += chunk
    return data


def read_head(sock: socket.socket) -> tuple[int, bytes]:
    """The Content-Length of the response, and any body bytes read along with the head."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, "connection closed before the response head"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    return length, rest


def big_package(tmp_path: Path, cache: Path) -> str:
    """32 files of 1 MiB: far more than the socket buffers between server and client hold."""
    blob = random.Random(3).randbytes(MiB)
    spec = {f"f{i:02}": i.to_bytes(2, "big") + blob[2:] for i in range(32)}
    return add(cache, make_tree(tmp_path / "big", spec))


def test_client_leaving_mid_stream_does_not_hurt_the_server(tmp_path: Path,
                                                            serve: Callable[..., Mirror]) -> None:
    cache = tmp_path / "cache"
    package_hash = big_package(tmp_path, cache)
    mirror = serve(cache)
    for _ in range(3):
        sock = raw_get(mirror, f"/{package_hash}.tar")
        read_head(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # linger 0: a reset, mid-body
    reply = get(mirror, f"/{package_hash}.tar", {"Range": "bytes=0-99"})
    assert reply.status == 206 and len(reply.body) == 100
    with suppress(WaitTimeout):
        wait_for("the server to log the reset clients", lambda: "client gone" in mirror.logged(),
                 timeout=TIMEOUT)
    assert "client gone" in mirror.logged()
    assert "Traceback" not in mirror.logged()


def server_threads(mirror: Mirror) -> int:
    """How many threads the server process runs now (Linux: one entry per thread)."""
    return len(os.listdir(f"/proc/{mirror.proc.pid}/task"))


def open_slow_clients(port: int, count: int) -> tuple[list[socket.socket], list[socket.socket]]:
    """``count`` slowloris connections: a third send nothing, a third an unfinished request
    line, a third an unfinished header that :func:`wait_until_closed` keeps trickling bytes
    into. Returns (all, the trickling ones); the caller closes them all."""
    every: list[socket.socket] = []
    trickling: list[socket.socket] = []
    for i in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        every.append(sock)
        try:
            if i % 3 == 1:
                sock.sendall(b"GET /")
            elif i % 3 == 2:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                trickling.append(sock)
        except OSError:  # already closed by the server to make room: that is allowed
            pass
    return every, trickling


def closed_by_peer(sock: socket.socket) -> bool:
    """Has the server closed this connection? (It never sends on one without a request.)"""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1) == b""
    except OSError:  # reset
        return True


def wait_until_closed(socks: list[socket.socket], trickling: list[socket.socket]) -> list:
    """Wait (at most TIMEOUT) for the server to close every socket, sending one more header
    byte into each trickling one every 0.2 s meanwhile; returns those still open."""
    open_ = list(socks)

    def all_closed() -> bool:
        nonlocal open_
        select.select(open_[:500], [], [], 0.2)
        open_ = [s for s in open_ if not closed_by_peer(s)]
        for sock in trickling:
            if sock in open_:
                try:
                    sock.send(b"a")
                except OSError:
                    open_.remove(sock)
        return not open_

    if open_:
        with suppress(WaitTimeout):
            wait_for("the server to close every connection", all_closed, timeout=TIMEOUT, poll=0)
    return open_


def test_slowloris_costs_no_thread_and_is_cut_off(tmp_path: Path,
                                                  serve: Callable[..., Mirror]) -> None:
    """300 connections that never finish their request head (silent, a half request line,
    a header trickled a byte at a time) do not take a thread each and do not keep a normal
    client from its answer; the oldest beyond the cap and every one past its head deadline
    are closed, trickling or not. Before: a thread per connection, kept while bytes trickle."""
    cache = tmp_path / "cache"
    package_hash = add(cache, make_tree(tmp_path / "tree", TREES["big-and-executable"]))
    workers = 4
    mirror = serve(cache, env={"TREESEED_SERVE_WORKERS": str(workers),
                               "TREESEED_SERVE_MAX_CONNECTIONS": "100",
                               "TREESEED_SERVE_HEAD_TIMEOUT": "3"})
    full = get(mirror, f"/{package_hash}.tar").body
    slow, trickling = open_slow_clients(mirror.port, 300)
    try:
        assert server_threads(mirror) <= workers + 3  # main, relist, workers (and no more)
        reply = get(mirror, f"/{package_hash}.tar")
        assert (reply.status, reply.body) == (200, full)
        still_open = wait_until_closed(slow, trickling)
        assert not still_open, f"the server kept {len(still_open)} slow connections open"
    finally:
        for sock in slow:
            sock.close()
    assert get(mirror, "/").status == 200
    assert "internal error" not in mirror.logged() and "Traceback" not in mirror.logged()


def stalled_reader(mirror: Mirror, path: str) -> socket.socket:
    """A GET whose client never reads: a tiny receive buffer, so the server blocks at once."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(TIMEOUT)
    sock.connect(("127.0.0.1", mirror.port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return sock


def test_stalled_readers_hold_only_workers_and_are_dropped(tmp_path: Path,
                                                           serve: Callable[..., Mirror]) -> None:
    """Clients that ask for a big body and never read it hold at most the worker threads, are
    dropped after the write timeout (they get fewer bytes than Content-Length), and a normal
    client queued behind them gets its whole answer. With every connection busy, one more
    gets a quick 503 instead of a thread."""
    cache = tmp_path / "cache"
    package_hash = big_package(tmp_path, cache)
    path = f"/{package_hash}.tar"
    mirror = serve(cache, env={"TREESEED_SERVE_WORKERS": "2",
                               "TREESEED_SERVE_WRITE_TIMEOUT": "1"})
    readers = [stalled_reader(mirror, path) for _ in range(6)]
    try:
        assert server_threads(mirror) <= 2 + 3
        reply = get(mirror, path, {"Range": "bytes=0-99"})  # queued behind the six
        assert reply.status == 206 and len(reply.body) == 100
        for sock in readers:
            length, got = read_head(sock)
            assert len(got) + len(read_to_end(sock)) < length  # dropped mid-body
    finally:
        for sock in readers:
            sock.close()
    assert "client gone" in mirror.logged()

    busy = serve(cache, env={"TREESEED_SERVE_WORKERS": "2", "TREESEED_SERVE_MAX_CONNECTIONS": "2"})
    readers = [stalled_reader(busy, path) for _ in range(2)]
    try:
        for sock in readers:
            read_head(sock)  # both are being answered: every connection is busy
        with socket.create_connection(("127.0.0.1", busy.port), timeout=TIMEOUT) as extra:
            extra.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            refused = read_to_end(extra)
        assert refused.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in refused, refused
    finally:
        for sock in readers:
            sock.close()
    answered = b""

    def answered_200() -> bool:
        nonlocal answered
        with socket.create_connection(("127.0.0.1", busy.port), timeout=TIMEOUT) as client:
            client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answered = read_to_end(client)
        return answered.startswith(b"HTTP/1.1 200")

    with suppress(WaitTimeout):
        wait_for("a request answered once the readers left", answered_200, timeout=TIMEOUT, poll=0)
    assert answered.startswith(b"HTTP/1.1 200 "), answered[:60]


def test_package_removed_while_being_served(tmp_path: Path, serve: Callable[..., Mirror]) -> None:
    """The response stops short and the connection closes (the client can tell: fewer bytes
    than Content-Length), the server carries on, and the package is then simply absent."""
    cache = tmp_path / "cache"
    package_hash = big_package(tmp_path, cache)
    mirror = serve(cache)
    sock = raw_get(mirror, f"/{package_hash}.tar")
    length, got = read_head(sock)
    run_cli("cache", "rm", package_hash, cache=cache)
    received = len(got)
    while chunk := sock.recv(1 << 16):
        received += len(chunk)
    sock.close()
    assert received < length
    assert get(mirror, f"/{package_hash}.tar").status == 404
    assert "stopped after" in mirror.logged() and "Traceback" not in mirror.logged()


# --------------------------------------------------------------------------- the command


def test_sigint_and_sigterm_exit_zero(tmp_path: Path, serve: Callable[..., Mirror]) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        mirror = serve(tmp_path / "cache")
        assert get(mirror, "/").status == 200
        assert mirror.stop(sig) == 0


def test_index_lists_public_packages(tmp_path: Path, serve: Callable[..., Mirror]) -> None:
    cache = tmp_path / "cache"
    package_hash = add(cache, make_tree(tmp_path / "t", {"treeseed.toml": b'[package]\nname = '
                                                         b'"demo"\nversion = "1.2"\n', "x": b""}))
    reply = get(serve(cache), "/")
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/plain")
    assert f"{package_hash}\t" in reply.body.decode() and "demo 1.2" in reply.body.decode()


@pytest.mark.parametrize("bind", ["nonsense", "127.0.0.1:99999", "[::1:80"])
def test_bad_bind_is_one_line_error(tmp_path: Path, bind: str) -> None:
    proc = run_cli("serve", "--bind", bind, cache=tmp_path / "cache", check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("treeseed: error: --bind") and proc.stderr.count("\n") == 1


def test_port_in_use_is_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run_cli("serve", "--bind", f"127.0.0.1:{port}", cache=tmp_path / "c", check=False)
    assert proc.returncode == 1 and "cannot listen on" in proc.stderr
    assert proc.stderr.count("\n") == 1


# --------------------------------------------------------------------------- the pure parts


@pytest.mark.parametrize(("header", "size", "want"), [
    (None, 10, None), ("bytes=0-0", 10, (0, 1)), ("bytes=2-", 10, (2, 10)),
    ("bytes=2-100", 10, (2, 10)), ("bytes=-3", 10, (7, 10)), ("bytes=-30", 10, (0, 10)),
    ("Bytes = 1-2", 10, (1, 3)), ("bytes=9-9", 10, (9, 10)), ("items=0-1", 10, None),
    ("bytes=0-1,3-4", 10, None), ("bytes", 10, None),
])
def test_parse_range(header: str | None, size: int, want: tuple[int, int] | None) -> None:
    assert parse_range(header, size) == want


@pytest.mark.parametrize("header", ["bytes=10-", "bytes=10-20", "bytes=-0", "bytes=5-4",
                                    "bytes=x-", "bytes=-", "bytes=1-2-3", "bytes=+1-2"])
def test_parse_range_unsatisfiable(header: str) -> None:
    with pytest.raises(Unsatisfiable):
        parse_range(header, 10)


def test_etag_matching() -> None:
    assert etag_matches('"a"', '"a"') and etag_matches('W/"a"', '"a"')
    assert etag_matches(' "b" , W/"a"', '"a"') and etag_matches("*", '"a"')
    assert not etag_matches('"ab"', '"a"') and not etag_matches("", '"a"')
    assert not etag_matches("a", '"a"')


def test_parse_bind() -> None:
    assert parse_bind("127.0.0.1:0")[:2] == ("127.0.0.1", 0)
    assert parse_bind("8750")[:2] == ("127.0.0.1", 8750)
    assert parse_bind("[::1]:80")[:2] == ("::1", 80)
    assert parse_bind("0.0.0.0:8750")[:2] == ("0.0.0.0", 8750)
    with pytest.raises(ServeError, match="HOST:PORT"):
        parse_bind("host")
