"""Hostile and broken archives against the real ``treeseed`` command.

Every archive here is built by the test itself (``tarfile``/``zipfile`` with hand-made
``TarInfo``/``ZipInfo`` objects, byte surgery where the libraries refuse), written under a
misleading name, and given to ``treeseed fetch`` and ``treeseed hash`` in a subprocess. A hostile
archive must end in exactly one ``treeseed: error:`` line naming the archive, the entry and the
problem, exit status 1, no traceback, nothing written outside the cache's ``tmp/`` (the whole
test directory is snapshotted around the run) and nothing added to the cache. The positive half
checks what a good archive becomes: format sniffed from content, only the owner-exec bit kept
(installed read-only: 0444/0555), one top-level directory stripped, excluded fifos and devices
ignored, zip symlinks and exec bits, multi-member / multi-stream compressed data.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import sqlite3
import stat
import subprocess
import sys
import tarfile
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from treeseed.cache import EXEC_MODE, FILE_MODE
from treeseed.errors import UnpackError
from treeseed.tar import TarReader
from treeseed.unpack import Limits, TreeWriter, unpack_archive

MiB = 1 << 20
# Installed packages are read-only (treeseed.cache.seal): what unpacking writes 0644 / 0755.
RO, RX = oct(FILE_MODE), oct(EXEC_MODE)

# --------------------------------------------------------------------------- archive builders


def member(
    name: str,
    data: bytes = b"",
    *,
    type: bytes = tarfile.REGTYPE,
    mode: int = 0o644,
    linkname: str = "",
    pax: dict[str, str] | None = None,
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = type
    info.mode = mode
    info.mtime = 1_600_000_000
    info.size = len(data) if type == tarfile.REGTYPE else 0
    info.linkname = linkname
    if type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    if pax:
        info.pax_headers = dict(pax)
    return info, data


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes]], *, format: int = tarfile.PAX_FORMAT,
              encoding: str = "utf-8") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=format, encoding=encoding,
                      errors="surrogateescape") as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if info.size else None)
    return buf.getvalue()


def zip_bytes(entries: list[tuple[str, bytes, int]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    """``(name, data, st_mode)`` entries; st_mode 0 leaves external_attr empty (a DOS zip)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name" is what some tests want
        with zipfile.ZipFile(buf, "w", method) as zf:
            for name, data, mode in entries:
                info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
                info.create_system = 3
                info.external_attr = mode << 16
                info.compress_type = method
                zf.writestr(info, data)
    return buf.getvalue()


COMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "tar": lambda b: b,
    "gz": lambda b: gzip.compress(b, mtime=0),
    "xz": lzma.compress,
    "bz2": bz2.compress,
    "zst": lambda b: zstandard.ZstdCompressor().compress(b),
}

REG = stat.S_IFREG
GOOD_TAR = [
    member("pkg/", type=tarfile.DIRTYPE, mode=0o755),
    member("pkg/README", b"hello\n"),
    member("pkg/bin/run", b"#!/bin/sh\necho hi\n", mode=0o755),
    member("pkg/src/lib.c", b"int x;\n" * 1000),
    member("pkg/link", type=tarfile.SYMTYPE, linkname="src/lib.c"),
]
GOOD_ZIP = [
    ("pkg/", b"", stat.S_IFDIR | 0o755),
    ("pkg/README", b"hello\n", REG | 0o644),
    ("pkg/bin/run", b"#!/bin/sh\necho hi\n", REG | 0o755),
    ("pkg/src/lib.c", b"int x;\n" * 1000, REG | 0o644),
    ("pkg/link", b"src/lib.c", stat.S_IFLNK | 0o777),
]


# --------------------------------------------------------------------------- running the CLI


def run(cache: Path, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
        ) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TREESEED_")}
    clean.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "treeseed", "--cache-dir", str(cache), *args],
        capture_output=True, text=True, env=clean, cwd=cwd, timeout=300,
    )


def snapshot(top: Path, skip: Path) -> dict[str, tuple[int, int, str]]:
    """Every path below ``top`` except ``skip``: type/mode, size, symlink target."""
    seen: dict[str, tuple[int, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if Path(dirpath, d) != skip]
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            link = os.readlink(p) if stat.S_ISLNK(st.st_mode) else ""
            seen[str(p.relative_to(top))] = (st.st_mode, st.st_size if not stat.S_ISDIR(st.st_mode) else 0, link)
    return seen


def assert_cache_empty(cache: Path) -> None:
    for sub in ("p", "tmp"):
        d = cache / sub
        assert not d.exists() or not any(d.iterdir()), f"{d} holds {sorted(os.listdir(d))}"
    db = cache / "index.sqlite"
    if db.exists():
        con = sqlite3.connect(db)
        try:
            assert con.execute("SELECT COUNT(*) FROM packages").fetchone()[0] == 0
            assert con.execute("SELECT COUNT(*) FROM aliases").fetchone()[0] == 0
        finally:
            con.close()


def assert_rejected(tmp_path: Path, archive: Path, command: str, entry: str | None, problem: str,
                    *extra: str, env: dict[str, str] | None = None) -> str:
    """Run ``treeseed <command> archive``; demand one clean error line and no side effects."""
    cache = tmp_path / "cache"
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    before = snapshot(tmp_path, cache)
    proc = run(cache, command, str(archive), *extra, env=env, cwd=cwd)
    after = snapshot(tmp_path, cache)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("treeseed: error: "), line
    assert str(archive) in line, line
    if entry is not None:
        assert entry in line, (entry, line)
    assert problem in line, (problem, line)
    assert after == before, "something was written outside the cache"
    assert_cache_empty(cache)
    return line


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory next to the cache that hostile entries aim at; it must stay as it is."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "sentinel").write_text("untouched")
    return d


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / "in" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- hostile tar entries

# Each case: build(outside) -> (tar members, entry the error must name, problem it must state).
# The work tree sits at <tmp>/cache/tmp/w-*/tree, so four ".." reach the test directory.
UP4 = "../../../../"


def _dotdot(out):
    return [member("ok.txt", b"ok"), member(UP4 + "pwned", b"evil")], UP4 + "pwned", "leaves the package"


def _dotdot_inside(out):
    return [member("pkg/a/../../" + UP4 + "pwned", b"evil")], "pkg/a/../../", "leaves the package"


def _absolute(out):
    target = str(out / "pwned")
    return [member("ok.txt", b"ok"), member(target, b"evil")], target, "leaves the package"


def _pax_path(out):
    pax = {"path": UP4 + "pwned"}
    return [member("innocent.txt", b"evil", pax=pax)], UP4 + "pwned", "leaves the package"


def _pax_absolute(out):
    target = str(out / "pwned")
    return [member("innocent.txt", b"evil", pax={"path": target})], target, "leaves the package"


def _pax_linkpath(out):
    pax = {"linkpath": "../outside"}
    members = [member("a.txt", b"a"),
               member("hlink", type=tarfile.LNKTYPE, linkname="a.txt", pax=pax)]
    return members, "hlink", "../outside"


def _symlink_abs_then_write(out):
    members = [member("a", type=tarfile.SYMTYPE, linkname=str(out)), member("a/evil", b"evil")]
    return members, "a/evil", "which is a symlink"


def _symlink_up_then_write(out):
    members = [member("a", type=tarfile.SYMTYPE, linkname=".."), member("a/evil", b"evil")]
    return members, "a/evil", "which is a symlink"


def _symlink_deep_then_write(out):
    members = [member("pkg/d", type=tarfile.SYMTYPE, linkname=UP4 + "outside"),
               member("pkg/d/sub/evil", b"evil")]
    return members, "pkg/d/sub/evil", "which is a symlink"


def _symlink_then_hardlink_through(out):
    members = [member("a", type=tarfile.SYMTYPE, linkname=str(out)),
               member("b", type=tarfile.LNKTYPE, linkname="a/sentinel")]
    return members, "b", "not an earlier file"


def _symlink_absolute(out):
    members = [member("ok.txt", b"ok"), member("link", type=tarfile.SYMTYPE, linkname=str(out))]
    return members, "link", "escapes the package"


def _symlink_relative_escape(out):
    members = [member("pkg/ok.txt", b"ok"),
               member("pkg/sub/link", type=tarfile.SYMTYPE, linkname="../../x")]
    return members, "sub/link", "escapes the package"


def _symlink_non_utf8_target(out):
    members = [member("ok.txt", b"ok"),
               member("link", type=tarfile.SYMTYPE, linkname="caf\udce9")]
    return members, "link", "UTF-8"


def _symlink_long_target(out):
    members = [member("ok.txt", b"ok"),
               member("link", type=tarfile.SYMTYPE, linkname="t/" * 2500 + "x")]
    return members, "link", "longer than"


def _symlink_nul_target(out):
    members = [member("ok.txt", b"ok"),
               member("link", type=tarfile.SYMTYPE, pax={"linkpath": "ok.txt\x00/../../x"})]
    return members, "link", "NUL"


def _hardlink_up(out):
    members = [member("ok.txt", b"ok"),
               member("hlink", type=tarfile.LNKTYPE, linkname="../outside")]
    return members, "hlink", "../outside"


def _hardlink_passwd(out):
    members = [member("ok.txt", b"ok"),
               member("hlink", type=tarfile.LNKTYPE, linkname="/etc/passwd")]
    return members, "hlink", "/etc/passwd"


def _hardlink_forward(out):
    members = [member("hlink", type=tarfile.LNKTYPE, linkname="later.txt"),
               member("later.txt", b"x")]
    return members, "hlink", "not an earlier file"


def _hardlink_self(out):
    # Before the fix, materialising this link looped forever.
    members = [member("ok.txt", b"ok"), member("a", type=tarfile.LNKTYPE, linkname="a")]
    return members, "'a'", "hard link to itself"


def _hardlink_self_spelled(out):
    members = [member("pkg/ok", b"ok"), member("pkg/a", type=tarfile.LNKTYPE, linkname="./pkg/a/")]
    return members, "pkg/a", "hard link to itself"


def _hardlink_cycle(out):
    # a -> b, b -> a: the first link names a later entry, so the cycle cannot even be recorded.
    members = [member("ok.txt", b"ok"), member("a", type=tarfile.LNKTYPE, linkname="b"),
               member("b", type=tarfile.LNKTYPE, linkname="a")]
    return members, "'a'", "not an earlier file"


def _hardlink_to_dir(out):
    members = [member("d/", type=tarfile.DIRTYPE, mode=0o755), member("d/f", b"x"),
               member("h", type=tarfile.LNKTYPE, linkname="d")]
    return members, "'h'", "not an earlier file"


def _hardlink_to_fifo(out):
    members = [member("ok.txt", b"ok"), member("p", type=tarfile.FIFOTYPE),
               member("h", type=tarfile.LNKTYPE, linkname="p")]
    return members, "'h'", "not an earlier file"


def _chr(out):
    return [member("ok.txt", b"ok"), member("dev/null", type=tarfile.CHRTYPE)], "dev/null", "device"


def _blk(out):
    return [member("ok.txt", b"ok"), member("dev/sda", type=tarfile.BLKTYPE)], "dev/sda", "device"


def _fifo(out):
    return [member("ok.txt", b"ok"), member("pipe", type=tarfile.FIFOTYPE)], "pipe", "fifo"


def _fifo_in_top_dir(out):
    members = [member("pkg/ok.txt", b"ok"), member("pkg/run/pipe", type=tarfile.FIFOTYPE)]
    return members, "run/pipe", "fifo"


def _duplicate_file(out):
    return [member("a.txt", b"one"), member("a.txt", b"two")], "a.txt", "duplicate entry"


def _file_then_dir(out):
    members = [member("a", b"one"), member("a", type=tarfile.DIRTYPE, mode=0o755)]
    return members, "'a'", "duplicate entry"


def _below_file(out):
    return [member("a", b"one"), member("a/b", b"two")], "a/b", "which is a file"


def _duplicate_symlink_file(out):
    members = [member("a", type=tarfile.SYMTYPE, linkname="b"), member("a", b"x")]
    return members, "'a'", "duplicate entry"


def _deep(out):
    path = "/".join(["d"] * 200) + "/f"
    return [member(path, b"x")], "d/d/d/d", "201 levels deep"


def _long_path(out):
    return [member("n" * 5000, b"x")], "n" * 80, "longer than 4096 bytes"


def _long_component(out):
    return [member("pkg/" + "c" * 300, b"x")], "c" * 80, "longer than 255 bytes"


def _long_but_legal(out):
    # Exactly 4096 bytes in components of 200: within the package limits, but past PATH_MAX
    # below any cache directory; the OS refuses it, and that must be a clean error too.
    path = "/".join([f"{i:02d}" + "p" * 198 for i in range(20)] + ["f" * 76])
    assert len(path) == 4096
    return [member(path, b"x")], path[:40], "too long"


def _control_char(out):
    return [member("bad\nname", b"x")], "bad\\nname", "control character"


def _backslash(out):
    return [member("..\\..\\evil", b"x")], "evil", "backslash"


def _dot_entry(out):
    return [member("a/./b", b"x")], "a/./b", "'.'"


def _root_entry(out):
    return [member("./", b"x")], None, "package root"


def _sparse(out):
    info, _ = member("sparse", b"")
    info.type = tarfile.GNUTYPE_SPARSE
    return [(info, b"")], "sparse", "sparse"


# Links whose target passes the lexical check but resolves outside through another link.
# Each list is (path, target) of symlinks next to a regular file "ok.txt" (no common top dir).
LINK_ESCAPES = {
    # the brief's case: a/b/l is '..' (= a), so a/b/l/../.. is the package's parent on disk
    "through-link": [("a/b/l", ".."), ("m", "a/b/l/../..")],
    # l resolves shallower than it sits: ../../../z from a/b/c is z; two more '..' leave
    "shallow-link": [("a/b/c/l", "../../../z"), ("m", "a/b/c/l/../../x")],
    # the same through a chain: l2 -> l -> ../../../z
    "chain": [("a/b/c/l", "../../../z"), ("a/b/c/l2", "l"), ("m", "a/b/c/l2/../../x")],
    # a link to a link to a directory: t -> s -> d, so t/../.. is the package's parent
    "link-to-link-to-dir": [("d/keep", ""), ("s", "d"), ("u/v/w/t", "../../../s"),
                            ("m", "u/v/w/t/../../z")],
    # no escape, but on disk l/.. is a/b while the hash would record a: refused too
    "meaning-differs": [("a/b/x/keep", ""), ("a/b/l", "x"), ("m", "a/b/l/../..")],
    # '..' out of a name that does not exist: what it would mean depends on what appears there
    "missing-name": [("m", "nothere/../ok.txt")],
}


def link_escape_tar(case: str) -> list[tuple[tarfile.TarInfo, bytes]]:
    members = [member("ok.txt", b"ok")]
    for path, target in LINK_ESCAPES[case]:
        members.append(member(path, b"x") if not target else
                       member(path, type=tarfile.SYMTYPE, linkname=target))
    return members


def _link_escape(case: str):
    def build(out):
        return link_escape_tar(case), "'m'", "is not a directory of the package"
    return build


def _sparse_pax(out):
    members = [member("ok.txt", b"ok"), member("sparse", b"x", pax={"GNU.sparse.major": "1"})]
    return members, "sparse", "sparse"


TAR_CASES = [
    pytest.param(_dotdot, id="dotdot"),
    pytest.param(_dotdot_inside, id="dotdot-inside"),
    pytest.param(_absolute, id="absolute"),
    pytest.param(_pax_path, id="pax-path"),
    pytest.param(_pax_absolute, id="pax-absolute"),
    pytest.param(_pax_linkpath, id="pax-linkpath"),
    pytest.param(_symlink_abs_then_write, id="symlink-abs-then-write"),
    pytest.param(_symlink_up_then_write, id="symlink-up-then-write"),
    pytest.param(_symlink_deep_then_write, id="symlink-deep-then-write"),
    pytest.param(_symlink_then_hardlink_through, id="hardlink-through-symlink"),
    pytest.param(_symlink_absolute, id="symlink-absolute"),
    pytest.param(_symlink_relative_escape, id="symlink-relative-escape"),
    pytest.param(_symlink_non_utf8_target, id="symlink-non-utf8-target"),
    pytest.param(_symlink_long_target, id="symlink-long-target"),
    pytest.param(_symlink_nul_target, id="symlink-nul-target"),
    pytest.param(_hardlink_up, id="hardlink-up"),
    pytest.param(_hardlink_passwd, id="hardlink-etc-passwd"),
    pytest.param(_hardlink_forward, id="hardlink-forward"),
    pytest.param(_hardlink_self, id="hardlink-self"),
    pytest.param(_hardlink_self_spelled, id="hardlink-self-spelled"),
    pytest.param(_hardlink_cycle, id="hardlink-cycle"),
    pytest.param(_hardlink_to_dir, id="hardlink-to-dir"),
    pytest.param(_hardlink_to_fifo, id="hardlink-to-fifo"),
    pytest.param(_chr, id="chrdev"),
    pytest.param(_blk, id="blkdev"),
    pytest.param(_fifo, id="fifo"),
    pytest.param(_fifo_in_top_dir, id="fifo-in-top-dir"),
    pytest.param(_duplicate_file, id="duplicate-file"),
    pytest.param(_file_then_dir, id="duplicate-file-dir"),
    pytest.param(_below_file, id="below-file"),
    pytest.param(_duplicate_symlink_file, id="duplicate-symlink-file"),
    pytest.param(_deep, id="depth-200"),
    pytest.param(_long_path, id="path-5000"),
    pytest.param(_long_component, id="component-300"),
    pytest.param(_long_but_legal, id="path-past-path-max"),
    pytest.param(_control_char, id="control-char"),
    pytest.param(_backslash, id="backslash"),
    pytest.param(_dot_entry, id="dot-component"),
    pytest.param(_root_entry, id="root-entry"),
    pytest.param(_sparse, id="sparse"),
    pytest.param(_sparse_pax, id="sparse-pax"),
    *[pytest.param(_link_escape(case), id=f"symlink-escape-{case}") for case in LINK_ESCAPES],
]


@pytest.mark.parametrize("command", ["fetch", "hash"])
@pytest.mark.parametrize("build", TAR_CASES)
def test_hostile_tar_entry(tmp_path: Path, outside: Path, build, command: str) -> None:
    members, entry, problem = build(outside)
    archive = write(tmp_path, "package.zip", gzip.compress(tar_bytes(members)))  # the name lies
    assert_rejected(tmp_path, archive, command, entry, problem)
    assert sorted(os.listdir(outside)) == ["sentinel"]


@pytest.mark.parametrize("fmt", ["gnu", "ustar", "pax-binary"])
def test_non_utf8_tar_name(tmp_path: Path, fmt: str) -> None:
    name = "pkg/caf\udce9.txt"  # the byte 0xE9 alone: latin-1, not UTF-8
    if fmt == "pax-binary":  # a PAX 'path' record with hdrcharset=BINARY carries the raw bytes
        data = tar_bytes([member("pkg/ok", b"ok"), member(name, b"x")])
        assert b"hdrcharset=BINARY" in data
    else:
        data = tar_bytes([member("pkg/ok", b"ok"), member("pkg/caf\xe9.txt", b"x")], encoding="latin-1",
                         format=tarfile.GNU_FORMAT if fmt == "gnu" else tarfile.USTAR_FORMAT)
    assert b"caf\xe9.txt" in data
    archive = write(tmp_path, "package.tar", data)
    line = assert_rejected(tmp_path, archive, "fetch", "pkg/caf\\\\xe9.txt", "not valid UTF-8")
    assert "\udce9" not in line


def test_partial_unpack_is_removed(tmp_path: Path) -> None:
    """A good file written before the bad entry is found is removed with the work directory."""
    members = [member("pkg/big", os.urandom(3 * MiB)), member("pkg/../../../../x", b"x")]
    archive = write(tmp_path, "a.tar.xz", lzma.compress(tar_bytes(members)))
    assert_rejected(tmp_path, archive, "fetch", "pkg/../", "leaves the package")


# --------------------------------------------------------------------------- broken archives


def _truncated(compress: str, cut: float) -> Callable[[], bytes]:
    def build() -> bytes:
        data = COMPRESS[compress](tar_bytes(GOOD_TAR + [member("pkg/blob", os.urandom(256 * 1024))]))
        return data[: int(len(data) * cut)]
    return build


def _tar_cut_at(where: str) -> Callable[[], bytes]:
    """A plain tar (no compression layer to notice) cut inside its second header or data."""
    def build() -> bytes:
        data = tar_bytes([member("pkg/a", b"a" * 1000), member("pkg/b", b"b" * 1000)])
        second = 512 + 1024  # pkg/a's header and its 1000 bytes padded to 1024
        assert data[second:second + 5] == b"pkg/b"
        return data[: second + 200] if where == "header" else data[: second + 512 + 300]
    return build


def _corrupt(compress: str) -> Callable[[], bytes]:
    # zstd frames carry a checksum only when asked (the zstd tool asks by default); without one,
    # damage inside stored literals is undetectable by any reader.
    squeeze = (lambda b: zstandard.ZstdCompressor(write_checksum=True).compress(b)) \
        if compress == "zst" else COMPRESS[compress]

    def build() -> bytes:
        data = bytearray(squeeze(tar_bytes(GOOD_TAR + [member("pkg/blob", os.urandom(64 * 1024))])))
        mid = len(data) // 2
        for i in range(mid, mid + 16):
            data[i] ^= 0x55
        return bytes(data)
    return build


def _tar_bad_checksum() -> bytes:
    data = bytearray(tar_bytes([member("pkg/a", b"a" * 1000), member("pkg/b", b"b" * 1000)]))
    second = 512 + 1024
    assert data[second:second + 5] == b"pkg/b"
    data[second + 1] = ord("X")  # the header no longer matches its checksum
    return bytes(data)


def _gz_of_text() -> bytes:
    return gzip.compress(b"this is not a tar archive at all\n" * 100)


def _gz_trailing_garbage() -> bytes:
    return gzip.compress(tar_bytes(GOOD_TAR)) + b"garbage after the gzip member"


def _bad_zip() -> bytes:
    data = bytearray(zip_bytes(GOOD_ZIP))
    eocd = data.rindex(b"PK\x05\x06")
    data[eocd + 16:eocd + 20] = (len(data) + 999).to_bytes(4, "little")  # central dir offset
    return bytes(data)


def _zip_bad_crc() -> bytes:
    data = bytearray(zip_bytes([("pkg/a.txt", b"hello world, hello world" * 50, REG | 0o644)],
                               method=zipfile.ZIP_STORED))
    at = data.index(b"hello world")
    data[at] ^= 0x01
    return bytes(data)


def _html(prefix: bytes) -> Callable[[], bytes]:
    def build() -> bytes:
        return prefix + b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>" \
                        b"<body><h1>Not Found</h1></body></html>\n"
    return build


BROKEN_CASES = [
    pytest.param(_truncated("gz", 0.5), "truncated gz", id="truncated-gz"),
    pytest.param(_truncated("gz", 0.999), "truncated gz", id="truncated-gz-trailer"),
    pytest.param(_truncated("xz", 0.5), "truncated xz", id="truncated-xz"),
    pytest.param(_truncated("bz2", 0.5), "truncated bz2", id="truncated-bz2"),
    pytest.param(_truncated("zst", 0.5), "truncated zst", id="truncated-zst"),
    pytest.param(_truncated("tar", 0.5), "ends inside this file", id="truncated-tar-data"),
    pytest.param(_tar_cut_at("header"), "truncated", id="truncated-tar-header"),
    pytest.param(_tar_cut_at("data"), "ends inside this file", id="truncated-tar-second-file"),
    pytest.param(_corrupt("gz"), "corrupt", id="corrupt-gz"),
    pytest.param(_corrupt("xz"), "corrupt xz", id="corrupt-xz"),
    pytest.param(_corrupt("bz2"), "corrupt", id="corrupt-bz2"),
    pytest.param(_corrupt("zst"), "corrupt", id="corrupt-zst"),
    pytest.param(_tar_bad_checksum, "corrupt", id="tar-bad-checksum"),
    pytest.param(_gz_of_text, "not a readable tar archive", id="gz-not-tar"),
    pytest.param(_gz_trailing_garbage, "corrupt gz", id="gz-trailing-garbage"),
    pytest.param(_bad_zip, "corrupt zip", id="zip-bad-directory"),
    pytest.param(_zip_bad_crc, "corrupt zip entry", id="zip-bad-crc"),
    pytest.param(lambda: b"", "is empty", id="empty-file"),
    pytest.param(lambda: b"\x00" * 100, "not a tar", id="zeros"),
    pytest.param(lambda: b"just some text\n", "not a tar", id="text"),
    pytest.param(_html(b""), "HTML", id="html"),
    pytest.param(_html(b"\n\n   "), "HTML", id="html-leading-space"),
    pytest.param(lambda: b"<HTML><BODY>Login required</BODY></HTML>", "HTML", id="html-upper"),
    pytest.param(_html(b"\xef\xbb\xbf"), "HTML", id="html-bom"),
]


@pytest.mark.parametrize("command", ["fetch", "hash"])
@pytest.mark.parametrize(("build", "problem"), BROKEN_CASES)
def test_broken_archive(tmp_path: Path, build, problem: str, command: str) -> None:
    archive = write(tmp_path, "pkg-1.0.tar.gz", build())
    assert_rejected(tmp_path, archive, command, None, problem)


# --------------------------------------------------------------------------- size limits


def _bomb_tar() -> bytes:
    return gzip.compress(tar_bytes([member("pkg/zeros", bytes(16 * MiB))]), compresslevel=9)


def _bomb_zip() -> bytes:
    return zip_bytes([("pkg/zeros", bytes(16 * MiB), REG | 0o644)])


def _bomb_hardlinks() -> bytes:
    # 600 KiB of data, then 20 hard links to it: each becomes an independent copy on disk.
    members = [member("pkg/data", os.urandom(600 * 1024))]
    members += [member(f"pkg/copy{i}", type=tarfile.LNKTYPE, linkname="pkg/data") for i in range(20)]
    return tar_bytes(members)


def _bomb_many_files() -> bytes:
    return zip_bytes([(f"pkg/f{i:03d}", bytes(64 * 1024), REG | 0o644) for i in range(40)])


BOMBS = [
    pytest.param(_bomb_tar, "pkg/zeros", id="gzip"),
    pytest.param(_bomb_zip, "pkg/zeros", id="zip"),
    pytest.param(_bomb_hardlinks, "pkg/copy", id="hardlinks"),
    pytest.param(_bomb_many_files, "pkg/f0", id="many-files"),
]


@pytest.mark.parametrize("how", ["option", "env"])
@pytest.mark.parametrize("command", ["fetch", "hash"])
@pytest.mark.parametrize(("build", "entry"), BOMBS)
def test_size_limit(tmp_path: Path, build, entry: str, command: str, how: str) -> None:
    archive = write(tmp_path, "bomb.bin", build())
    if how == "option":
        line = assert_rejected(tmp_path, archive, command, entry, "size limit", "--max-size", "1M")
    else:
        line = assert_rejected(tmp_path, archive, command, entry, "size limit",
                               env={"TREESEED_MAX_UNPACK_SIZE": "1M"})
    assert "1048576" in line
    # Under the limit, the same archive is fine.
    cache = tmp_path / "cache"
    proc = run(cache, command, str(archive), env={"TREESEED_MAX_UNPACK_SIZE": "64M"})
    assert proc.returncode == 0, proc.stderr


def test_option_beats_env(tmp_path: Path) -> None:
    archive = write(tmp_path, "bomb.tgz", _bomb_tar())
    assert_rejected(tmp_path, archive, "fetch", "pkg/zeros", "size limit", "--max-size", "2M",
                    env={"TREESEED_MAX_UNPACK_SIZE": "1G"})
    proc = run(tmp_path / "cache", "fetch", str(archive), "--max-size", "1G",
               env={"TREESEED_MAX_UNPACK_SIZE": "1M"})
    assert proc.returncode == 0, proc.stderr


def build_dir(root: Path, case: str) -> Path:
    """The LINK_ESCAPES case as a real directory, for the scan_tree paths (local dirs, git)."""
    root.mkdir(parents=True)
    (root / "ok.txt").write_bytes(b"ok")
    for path, target in LINK_ESCAPES[case]:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        if target:
            os.symlink(target, root / path)
        else:
            (root / path).write_bytes(b"x")
    return root


@pytest.mark.parametrize("command", ["fetch", "hash"])
@pytest.mark.parametrize("case", sorted(LINK_ESCAPES))
def test_link_escapes_in_a_directory(tmp_path: Path, case: str, command: str) -> None:
    root = build_dir(tmp_path / "src", case)
    if case != "missing-name":  # (the scenario is real: the system resolves it outside)
        resolved = Path(os.path.realpath(root / "m"))
        assert (resolved == root.parent or root not in resolved.parents) == \
            (case not in ("meaning-differs",))
    assert_rejected(tmp_path, root, command, "'m'", "is not a directory of the package")


@pytest.mark.parametrize("case", sorted(LINK_ESCAPES))
def test_link_escapes_in_a_zip(tmp_path: Path, case: str) -> None:
    entries = [("ok.txt", b"ok", REG | 0o644)]
    entries += [(path, target.encode(), stat.S_IFLNK | 0o777) if target else (path, b"x", REG | 0o644)
                for path, target in LINK_ESCAPES[case]]
    archive = write(tmp_path, "links.zip", zip_bytes(entries))
    assert_rejected(tmp_path, archive, "hash", "'m'", "is not a directory of the package")


def test_links_that_climb_real_directories_are_kept(tmp_path: Path) -> None:
    """'..' out of real directories, links to links to directories, links into links: all
    fine, and every installed link resolves inside the package."""
    data = tar_bytes([
        member("pkg/src/lib/a.c", b"a"),
        member("pkg/include/x.h", b"x"),
        member("pkg/include/lib", type=tarfile.SYMTYPE, linkname="../src/lib"),
        member("pkg/alias", type=tarfile.SYMTYPE, linkname="include/lib"),
        member("pkg/deep", type=tarfile.SYMTYPE, linkname="alias/a.c"),
        member("pkg/src/up", type=tarfile.SYMTYPE, linkname="../include/../src/lib/./a.c"),
        member("pkg/loop1", type=tarfile.SYMTYPE, linkname="loop2"),   # resolves nowhere: kept
        member("pkg/loop2", type=tarfile.SYMTYPE, linkname="loop1"),
    ])
    _, path = fetch_ok(tmp_path, write(tmp_path, "ok.tar", data))
    assert (path / "deep").read_bytes() == b"a" and (path / "src" / "up").read_bytes() == b"a"
    for link in ("include/lib", "alias", "deep", "src/up"):
        assert path in Path(os.path.realpath(path / link)).parents


# --------------------------------------------------------------------------- hostile metadata


def tar_with_global(members: list[tuple[tarfile.TarInfo, bytes]], records: dict[str, str]) -> bytes:
    """A PAX tar whose first header is a global (``g``) header holding ``records``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers=records) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if info.size else None)
    return buf.getvalue()


# ~1 MiB of global records (tarfile writes them as one 'g' header), then thousands of
# identical directory headers: each header used to copy every global record.
HUGE_GLOBAL = {f"k{i:05d}": "v" for i in range(75_000)}


def test_global_pax_header_is_parsed_once_and_not_copied(tmp_path: Path) -> None:
    data = tar_with_global([member("pkg/", type=tarfile.DIRTYPE, mode=0o755)] * 50
                           + [member("pkg/a", b"a")], HUGE_GLOBAL)
    assert data[156:157] == b"g" and 900_000 < len(data) <= 1 << 20  # one global header
    reader = TarReader(io.BytesIO(data).read, "g.tar")
    names = [m.name for m in reader.members()]
    assert names == ["pkg/"] * 50 + ["pkg/a"]
    # Only the keys treeseed reads survive the parse: nothing left to merge into each member.
    assert reader.global_pax == {}
    assert reader.headers == 52
    assert 900_000 <= reader.meta_bytes < len(data)


def test_huge_global_header_and_many_headers_unpack_in_one_pass(tmp_path: Path) -> None:
    """The brief's hostile archive: it unpacks, to the same package as without the global
    header (treeseed reads no key from it), in one pass over the headers (HEAD: ~30 s)."""
    members = [member("pkg/", type=tarfile.DIRTYPE, mode=0o755)] * 3000 + [member("pkg/a", b"a")]
    hostile = write(tmp_path, "hostile.tgz", gzip.compress(tar_with_global(members, HUGE_GLOBAL)))
    assert hostile.stat().st_size < 200_000
    plain = write(tmp_path, "plain.tar", tar_bytes([member("pkg/a", b"a")]))
    got = run(tmp_path / "cache", "hash", str(hostile))
    assert got.returncode == 0, got.stderr
    assert got.stdout == run(tmp_path / "cache", "hash", str(plain)).stdout


def test_pax_metadata_is_bounded_over_the_whole_archive(tmp_path: Path) -> None:
    """Each PAX header is under the 1 MiB per-header limit; together they pass 32 MiB."""
    members = [member(f"pkg/f{i}", b"x", pax={"comment": "c" * 900_000}) for i in range(40)]
    archive = write(tmp_path, "meta.tar.gz", gzip.compress(tar_bytes(members), compresslevel=1))
    line = assert_rejected(tmp_path, archive, "hash", None, "PAX and long-name headers add up to more than")
    assert str(32 << 20) in line
    fewer = write(tmp_path, "fewer.tar.gz", gzip.compress(tar_bytes(members[:5]), compresslevel=1))
    assert run(tmp_path / "cache", "hash", str(fewer)).returncode == 0


def test_meta_headers_count_against_the_entry_limit(tmp_path: Path) -> None:
    """600 files, each behind its own PAX header: 1200 headers."""
    members = [member(f"pkg/f{i}", b"x", pax={"comment": str(i)}) for i in range(600)]
    archive = write(tmp_path, "pax.tar", tar_bytes(members))
    with pytest.raises(UnpackError, match="more than 1000 tar headers"):
        unpack_archive(archive, tmp_path / "tree", str(archive), Limits(max_entries=1000))
    assert len(unpack_archive(archive, tmp_path / "ok", str(archive), Limits(max_entries=1300)).entries) == 600


# --------------------------------------------------------------------------- hostile zips


def _zip_name_patch(data: bytes, placeholder: bytes, raw: bytes) -> bytes:
    """Replace a name in both the local header and the central directory (same length)."""
    assert len(placeholder) == len(raw) and data.count(placeholder) == 2
    return data.replace(placeholder, raw)


ZIP_CASES = [
    pytest.param(lambda out: ([("ok", b"ok", REG | 0o644), (UP4 + "pwned", b"evil", REG | 0o644)],
                              UP4 + "pwned", "leaves the package"), id="dotdot"),
    pytest.param(lambda out: ([(str(out / "pwned"), b"evil", REG | 0o644)],
                              str(out / "pwned"), "leaves the package"), id="absolute"),
    pytest.param(lambda out: ([("a.txt", b"one", REG | 0o644), ("a.txt", b"two", REG | 0o644)],
                              "a.txt", "duplicate entry"), id="duplicate"),
    pytest.param(lambda out: ([("a", b"..", stat.S_IFLNK | 0o777), ("a/evil", b"x", REG | 0o644)],
                              "a/evil", "which is a symlink"), id="symlink-then-write"),
    pytest.param(lambda out: ([("ok", b"ok", REG | 0o644), ("a", str(out).encode(), stat.S_IFLNK | 0o777)],
                              "'a'", "escapes the package"), id="symlink-absolute"),
    pytest.param(lambda out: ([("ok", b"ok", REG | 0o644), ("fifo", b"", stat.S_IFIFO | 0o644)],
                              "fifo", "special file"), id="fifo"),
    pytest.param(lambda out: ([("ok", b"ok", REG | 0o644), ("dev", b"", stat.S_IFCHR | 0o644)],
                              "dev", "special file"), id="chrdev"),
    pytest.param(lambda out: ([("/".join(["d"] * 150) + "/f", b"x", REG | 0o644)],
                              "d/d/d", "151 levels deep"), id="deep"),
    pytest.param(lambda out: ([("z" * 5000, b"x", REG | 0o644)], "z" * 80, "longer than 4096"),
                 id="long"),
]


@pytest.mark.parametrize("command", ["fetch", "hash"])
@pytest.mark.parametrize("build", ZIP_CASES)
def test_hostile_zip(tmp_path: Path, outside: Path, build, command: str) -> None:
    entries, entry, problem = build(outside)
    archive = write(tmp_path, "package.tar.gz", zip_bytes(entries))
    assert_rejected(tmp_path, archive, command, entry, problem)
    assert sorted(os.listdir(outside)) == ["sentinel"]


def test_zip_non_utf8_name(tmp_path: Path) -> None:
    data = zip_bytes([("pkg/ok", b"ok", REG | 0o644), ("pkg/caf?.txt", b"x", REG | 0o644)])
    archive = write(tmp_path, "a.zip", _zip_name_patch(data, b"pkg/caf?.txt", b"pkg/caf\xe9.txt"))
    assert_rejected(tmp_path, archive, "fetch", "caf\\\\xe9.txt", "not valid UTF-8")


# --------------------------------------------------------------------------- what good archives become


def fetch_ok(tmp_path: Path, archive: Path, *extra: str) -> tuple[str, Path]:
    cache = tmp_path / "cache"
    proc = run(cache, "fetch", str(archive), *extra)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    package_hash, path = proc.stdout.splitlines()[0].split("\t")
    assert Path(path) == cache / "p" / package_hash
    assert not any((cache / "tmp").iterdir())
    hashed = run(cache, "hash", str(archive), *extra)
    assert hashed.returncode == 0, hashed.stderr
    assert hashed.stdout.strip() == package_hash
    return package_hash, Path(path)


def tree(root: Path) -> dict[str, tuple[str, int | str]]:
    out: dict[str, tuple[str, int | str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", 0)
            else:
                out[rel] = (oct(stat.S_IMODE(st.st_mode)), st.st_size)
    return out


EXPECTED_GOOD = {
    "README": (RO, 6),
    "bin": ("dir", 0),
    "bin/run": (RX, 18),
    "src": ("dir", 0),
    "src/lib.c": (RO, 7000),
    "link": ("link", "src/lib.c"),
}


@pytest.mark.parametrize(("fmt", "name"), [
    ("tar", "package.tar.gz"),
    ("gz", "package.zip"),
    ("xz", "package.tar.bz2"),
    ("bz2", "package.tar.zst"),
    ("zst", "package.tgz"),
    ("zip", "package.tar.xz"),
])
def test_formats_sniffed_by_content(tmp_path: Path, fmt: str, name: str) -> None:
    data = zip_bytes(GOOD_ZIP) if fmt == "zip" else COMPRESS[fmt](tar_bytes(GOOD_TAR))
    package_hash, path = fetch_ok(tmp_path, write(tmp_path, name, data))
    assert tree(path) == EXPECTED_GOOD
    # Every format of the same tree is the same package.
    reference = write(tmp_path, "reference.tar", tar_bytes(GOOD_TAR))
    assert run(tmp_path / "cache", "hash", str(reference)).stdout.strip() == package_hash


@pytest.mark.parametrize(("mode", "expected"), [
    (0o6755, 0o755),   # setuid + setgid dropped
    (0o4744, 0o755),
    (0o2644, 0o644),
    (0o1777, 0o755),   # sticky, world-writable
    (0o700, 0o755),
    (0o744, 0o755),
    (0o611, 0o644),    # group/other exec without owner exec: not executable
    (0o600, 0o644),
    (0o000, 0o644),
])
@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_only_owner_exec_bit_survives(tmp_path: Path, mode: int, expected: int, kind: str) -> None:
    if kind == "tar":
        data = tar_bytes([member("tool", b"#!/bin/sh\n", mode=mode), member("other", b"x")])
    else:
        data = zip_bytes([("tool", b"#!/bin/sh\n", REG | mode), ("other", b"x", REG | 0o644)])
    _, path = fetch_ok(tmp_path, write(tmp_path, "x", data))
    installed = {0o755: EXEC_MODE, 0o644: FILE_MODE}[expected]  # the cache seals packages read-only
    assert stat.S_IMODE((path / "tool").lstat().st_mode) == installed
    assert stat.S_IMODE((path / "other").lstat().st_mode) == FILE_MODE


@pytest.mark.parametrize(("names", "expected"), [
    (["pkg/a", "pkg/b/c"], {"a", "b", "b/c"}),          # one top-level directory: stripped
    (["pkg-1.0/pkg-1.0/a"], {"pkg-1.0", "pkg-1.0/a"}),    # only one level
    (["a/x", "b/y"], {"a", "a/x", "b", "b/y"}),         # two: kept
    (["only-file"], {"only-file"}),                      # a single file is not a directory
    (["./pkg/a", "./pkg/b"], {"a", "b"}),                # ./ spellings are the same entries
])
def test_single_top_level_directory_stripped(tmp_path: Path, names: list[str], expected: set[str]) -> None:
    data = tar_bytes([member(n, n.encode()) for n in names])
    _, path = fetch_ok(tmp_path, write(tmp_path, "t.tar", data))
    assert set(tree(path)) == expected


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_excluded_specials_are_not_an_error(tmp_path: Path, kind: str) -> None:
    toml = b'[package]\nexclude = ["dev/", "*.fifo"]\n'
    if kind == "tar":
        data = gzip.compress(tar_bytes([
            member("pkg/treeseed.toml", toml),
            member("pkg/src/a.c", b"int a;\n"),
            member("pkg/dev/null", type=tarfile.CHRTYPE),
            member("pkg/dev/sda", type=tarfile.BLKTYPE),
            member("pkg/src/ctl.fifo", type=tarfile.FIFOTYPE),
        ]))
    else:
        data = zip_bytes([
            ("pkg/treeseed.toml", toml, REG | 0o644),
            ("pkg/src/a.c", b"int a;\n", REG | 0o644),
            ("pkg/dev/null", b"", stat.S_IFCHR | 0o666),
            ("pkg/src/ctl.fifo", b"", stat.S_IFIFO | 0o644),
        ])
    _, path = fetch_ok(tmp_path, write(tmp_path, "special.tar.gz", data))
    assert tree(path) == {"treeseed.toml": (RO, len(toml)), "src": ("dir", 0),
                          "src/a.c": (RO, 7)}


def test_zip_symlinks_and_exec_bits(tmp_path: Path) -> None:
    data = zip_bytes([
        ("pkg/bin/tool", b"#!/bin/sh\n", REG | 0o755),
        ("pkg/bin/data", b"d", REG | 0o644),
        ("pkg/tool", b"bin/tool", stat.S_IFLNK | 0o777),
        ("pkg/dir-link", b"bin", stat.S_IFLNK | 0o777),
        ("pkg/dos.txt", b"no unix mode", 0),
    ])
    _, path = fetch_ok(tmp_path, write(tmp_path, "z.tar", data))
    assert tree(path) == {
        "bin": ("dir", 0),
        "bin/tool": (RX, 10),
        "bin/data": (RO, 1),
        "tool": ("link", "bin/tool"),
        "dir-link": ("link", "bin"),
        "dos.txt": (RO, 12),
    }


def test_tar_hardlinks_become_copies(tmp_path: Path) -> None:
    data = tar_bytes([
        member("pkg/a", b"shared", mode=0o755),
        member("pkg/sub/b", type=tarfile.LNKTYPE, linkname="pkg/a", mode=0o644),
        member("pkg/l", type=tarfile.SYMTYPE, linkname="a"),
        member("pkg/l2", type=tarfile.LNKTYPE, linkname="pkg/l"),
    ])
    _, path = fetch_ok(tmp_path, write(tmp_path, "h.tar", data))
    assert tree(path) == {"a": (RX, 6), "sub": ("dir", 0), "sub/b": (RO, 6),
                          "l": ("link", "a"), "l2": ("link", "a")}
    assert (path / "a").stat().st_ino != (path / "sub" / "b").stat().st_ino


def test_hardlink_chains_are_recorded_flat(tmp_path: Path) -> None:
    """Each hard link is recorded pointing straight at the chain's file: finishing costs one
    step per link (a chain of N links once cost N**2 steps) and cannot loop."""
    writer = TreeWriter(tmp_path / "tree", "chain.tar", Limits())
    writer.add_file("pkg/f", False, 5, iter([b"chain"]))
    writer.add_symlink("pkg/l", "f")
    previous, previous_link = "pkg/f", "pkg/l"
    for i in range(300):
        writer.add_hardlink(f"pkg/h{i}", previous, i % 2 == 0)
        writer.add_hardlink(f"pkg/s{i}", previous_link, False)
        previous, previous_link = f"pkg/h{i}", f"pkg/s{i}"
    assert {target for target, _ in writer.hardlinks.values()} == {"pkg/f", "pkg/l"}
    result = writer.finish()
    assert (result.root / "h299").read_bytes() == b"chain"
    assert os.readlink(result.root / "s299") == "f"
    assert stat.S_IMODE((result.root / "h298").stat().st_mode) == 0o755
    assert len(result.entries) == 602


def test_repeated_entries_count_against_the_entry_limit(tmp_path: Path) -> None:
    """A repeated directory entry adds no path but still costs work: it counts."""
    data = tar_bytes([member("pkg/", type=tarfile.DIRTYPE, mode=0o755)] * 50 + [member("pkg/a", b"a")])
    archive = write(tmp_path, "dirs.tar", data)
    with pytest.raises(UnpackError, match="more than 20 "):
        unpack_archive(archive, tmp_path / "tree", str(archive), Limits(max_entries=20))
    assert unpack_archive(archive, tmp_path / "tree2", str(archive), Limits(max_entries=200)).entries


# --------------------------------------------------------------------------- version control

# Version-control metadata at several depths, and names that merely look like it (kept).
VCS_JUNK = {".git/config": b"[core]\n", ".git/objects/ab/cdef": b"blob", "sub/.svn/entries": b"12\n",
            "sub/deep/.hg/store/data": b"hg", "lib/.git": b"gitdir: ../.git/modules/lib\n"}
LOOKALIKES = {".gitignore": b"*.o\n", ".github/ci.yml": b"on: push\n", "x.git/a": b"a", ".hgtags": b"t",
              ".svnignore": b"s", ".git2/b": b"b", "src/main.c": b"int main;\n"}


def hash_of(tmp_path: Path, target: Path) -> str:
    proc = run(tmp_path / "cache", "hash", str(target))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def test_checkout_hash_ignores_vcs_metadata(tmp_path: Path) -> None:
    """A local directory that is a checkout hashes as its files alone, before and after git
    rewrites its own metadata (HEAD: .git was hashed, and 'git status' could change it)."""
    plain = write_tree(tmp_path / "plain", LOOKALIKES)
    repo = write_tree(tmp_path / "repo", LOOKALIKES)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    write_tree(repo, {k: v for k, v in VCS_JUNK.items() if not k.startswith(".git/")})
    expected = hash_of(tmp_path, plain)
    assert hash_of(tmp_path, repo) == expected
    os.utime(repo / "src" / "main.c", (1, 1))
    subprocess.run([*git, "status", "--porcelain"], check=True, capture_output=True)
    subprocess.run([*git, "commit", "-qm", "two", "--allow-empty"], check=True)
    assert hash_of(tmp_path, repo) == expected
    _, fetched = fetch_ok(tmp_path, repo)
    assert not [p for p in fetched.rglob("*") if p.name in (".git", ".hg", ".svn")]
    assert (fetched / ".gitignore").is_file() and (fetched / ".github" / "ci.yml").is_file()


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_archive_vcs_metadata_is_not_part_of_the_package(tmp_path: Path, kind: str) -> None:
    """Even a manifest that asks for .git does not get it; a fifo inside .git is no error."""
    toml = b'[package]\ninclude = [".git/", "**/.svn/**", "*"]\n'
    files = {"treeseed.toml": toml, **LOOKALIKES}
    if kind == "tar":
        data = tar_bytes([member(f"pkg/{k}", v) for k, v in {**files, **VCS_JUNK}.items()]
                         + [member("pkg/.git/fifo", type=tarfile.FIFOTYPE),
                            member("pkg/.hg/link", type=tarfile.SYMTYPE, linkname="../src/main.c")])
    else:
        data = zip_bytes([(f"pkg/{k}", v, REG | 0o644) for k, v in {**files, **VCS_JUNK}.items()])
    with_vcs = write(tmp_path, f"vcs.{kind}", data)
    without = write(tmp_path, "plain.tar", tar_bytes([member(f"pkg/{k}", v) for k, v in files.items()]))
    package_hash, path = fetch_ok(tmp_path, with_vcs)
    assert package_hash == hash_of(tmp_path, without)
    assert set(tree(path)) == {".gitignore", ".github", ".github/ci.yml", "x.git", "x.git/a", ".hgtags",
                               ".svnignore", ".git2", ".git2/b", "src", "src/main.c", "treeseed.toml"}


def _split(data: bytes, parts: int) -> list[bytes]:
    step = len(data) // parts + 1
    return [data[i:i + step] for i in range(0, len(data), step)]


MULTI = {
    "gz": lambda chunks: b"".join(gzip.compress(c, mtime=0) for c in chunks),
    "gz-padded": lambda chunks: b"".join(gzip.compress(c, mtime=0) for c in chunks) + bytes(1000),
    "xz": lambda chunks: b"".join(lzma.compress(c) for c in chunks),
    "bz2": lambda chunks: b"".join(bz2.compress(c) for c in chunks),
    "zst": lambda chunks: b"".join(zstandard.ZstdCompressor().compress(c) for c in chunks),
}


@pytest.mark.parametrize("kind", sorted(MULTI))
def test_multi_member_streams(tmp_path: Path, kind: str) -> None:
    raw = tar_bytes(GOOD_TAR + [member("pkg/blob", os.urandom(3 * MiB))])
    single, _ = fetch_ok(tmp_path, write(tmp_path, "single.tar", raw))
    multi = write(tmp_path, "multi.tar", MULTI[kind](_split(raw, 5)))
    proc = run(tmp_path / "cache", "hash", str(multi))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == single


GZ_STREAMS = {
    "members": lambda raw: MULTI["gz"](_split(raw, 5)),
    "members-padded": lambda raw: MULTI["gz-padded"](_split(raw, 5)),
    "truncated": lambda raw: gzip.compress(raw)[: len(gzip.compress(raw)) // 2],
    "trailer-cut": lambda raw: gzip.compress(raw)[:-3],
    "trailing-garbage": lambda raw: gzip.compress(raw) + b"garbage after the gzip member",
    "corrupt": lambda raw: _flip_middle(gzip.compress(raw, compresslevel=1)),
}


def _flip_middle(data: bytes) -> bytes:
    out = bytearray(data)
    for i in range(len(out) // 2, len(out) // 2 + 16):
        out[i] ^= 0x55
    return bytes(out)


def _inflate_all(data: bytes, inflater: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, bytes]:
    """What the unpacker's gzip reading makes of ``data``: ("ok", bytes) or ("error", message)."""
    from treeseed import unpack

    if inflater == "zlib":
        monkeypatch.setitem(sys.modules, "isal", None)  # the fallback where isal has no wheel
    else:
        pytest.importorskip("isal")
    try:
        return "ok", b"".join(unpack._decompress(io.BytesIO(data), "gz", "x.tar.gz", lambda c: None))
    except UnpackError as exc:
        return "error", exc.problem.encode()
    finally:
        monkeypatch.undo()


@pytest.mark.parametrize("stream", sorted(GZ_STREAMS))
def test_isal_inflates_as_zlib_does(stream: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """ISA-L (python-isal, where its wheel exists) and zlib (elsewhere) give the same bytes for
    every gzip stream and refuse the same broken ones, with the same words."""
    raw = tar_bytes(GOOD_TAR + [member("pkg/blob", os.urandom(3 * MiB))])
    data = GZ_STREAMS[stream](raw)
    by_isal = _inflate_all(data, "isal", monkeypatch)
    by_zlib = _inflate_all(data, "zlib", monkeypatch)
    assert by_isal[0] == by_zlib[0], (by_isal[0], by_isal[1][:200], by_zlib[1][:200])
    if by_zlib[0] == "ok":
        assert by_isal[1] == by_zlib[1] and by_zlib[1].startswith(raw)
    else:
        assert by_isal[1].split(b":")[0] == by_zlib[1].split(b":")[0]
    assert by_zlib[0] == ("ok" if stream.startswith("members") else "error")
