"""The Zig package hash against the real ``zig fetch`` (pip ``ziglang==0.15.2``), and the ZON parser.

Every tree and archive is built here, in ``tmp_path``; zig gets its own caches there too. The
comparison is always the exact string ``zig fetch`` prints versus
``hash_tree(root, scan_tree(root, ...), ["zig"])["zig"]``.
"""

from __future__ import annotations

import base64
import importlib.util
import math
import os
import random
import re
import subprocess
import sys
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from treeseed.errors import ManifestError
from treeseed.hashing import hash_files, hash_tree, make_format
from treeseed.hashing import zig as zighash
from treeseed.package import scan_tree
from treeseed.zon import (
    CharLiteral,
    EmptyInit,
    EnumLiteral,
    MultilineString,
    ZigManifest,
    load,
    loads,
    manifest_info,
)

HAVE_ZIG = importlib.util.find_spec("ziglang") is not None
needs_zig = pytest.mark.skipif(not HAVE_ZIG, reason="pip package ziglang (0.15.2) is not installed")


# --- helpers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    target: str


@dataclass(frozen=True)
class Exe:
    data: bytes


DIR = object()  # an (empty) directory


def build_tree(root: Path, spec: dict[str, object]) -> Path:
    """Create ``spec`` (path -> bytes | Exe | Link | DIR) below ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, what in spec.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if what is DIR:
            path.mkdir(exist_ok=True)
        elif isinstance(what, Link):
            os.symlink(what.target, path)
        elif isinstance(what, Exe):
            path.write_bytes(what.data)
            path.chmod(0o755)
        else:
            assert isinstance(what, bytes)
            path.write_bytes(what)
    return root


def zon(name: str = "demo", version: str = "1.2.3", paths: str | None = '""', fid: int | None = 0x1234ABCD,
        extra: str = "") -> bytes:
    """A build.zig.zon; ``fid`` None leaves the fingerprint out, ``paths`` None the paths."""
    fields = [f".name = .{name}", f'.version = "{version}"']
    if fid is not None:
        fields.append(f".fingerprint = 0x{fingerprint(name, fid):x}")
    if paths is not None:
        fields.append(f".paths = .{{ {paths} }}")
    return (".{\n    " + ",\n    ".join(fields) + ",\n" + extra + "}\n").encode()


def fingerprint(name: str, fid: int) -> int:
    return zlib.crc32(name.encode()) << 32 | fid


def zig_run(tmp_path: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["ZIG_GLOBAL_CACHE_DIR"] = str(tmp_path / "zig-global-cache")
    env["ZIG_LOCAL_CACHE_DIR"] = str(tmp_path / "zig-local-cache")
    return subprocess.run(
        [sys.executable, "-m", "ziglang", *args],
        env=env, cwd=cwd or tmp_path, capture_output=True, text=True, timeout=120,
    )


def zig_fetch(tmp_path: Path, target: Path) -> str:
    proc = zig_run(tmp_path, "fetch", str(target))
    assert proc.returncode == 0, f"zig fetch {target} failed:\n{proc.stderr}"
    return proc.stdout.strip()


def ours(root: Path) -> str:
    return hash_tree(root, scan_tree(root, str(root)), ["zig"])["zig"]


def assert_matches_zig(tmp_path: Path, root: Path) -> str:
    expected = zig_fetch(tmp_path, root)
    assert ours(root) == expected
    return expected


def decode(h: str) -> tuple[str, int, int, bytes]:
    """(name-version, id, size, digest prefix) of a printed Zig hash."""
    head, sep, b64 = h[:-45], h[-45], h[-44:]  # base64url has '-' too: split by length
    assert sep == "-"
    raw = base64.urlsafe_b64decode(b64 + "=")
    assert len(raw) == 33
    return head, int.from_bytes(raw[:4], "little"), int.from_bytes(raw[4:8], "little"), raw[8:]


RICH_TREE: dict[str, object] = {
    "README.md": b"# demo\n",
    "build.zig": b"const std = @import(\"std\");\n",
    "src/main.zig": b"pub fn main() void {}\n",
    "src/deep/er/still/x.zig": b"x" * 5000,
    "src/empty.txt": b"",
    "bin/run.sh": Exe(b"#!/bin/sh\necho hi\n"),
    "bin/empty-exe": Exe(b""),
    "docs/caf\u00e9.md": b"nfc",
    "docs/cafe\u0301.md": b"nfd",
    "docs/\u6f22\u5b57/\U0001f600.txt": b"unicode",
    "links/to-file": Link("../src/main.zig"),
    "links/to-dir": Link("../src"),
    "links/dangling": Link("nowhere/inside"),
    "links/self-dir": Link("."),
    "empty-dir": DIR,
    "nested/empty/dirs": DIR,
    "z": b"last",
    "a b c/with space": b"spaces",
}


# --- zig fetch on directories -----------------------------------------------------------------


@needs_zig
def test_tree_without_manifest(tmp_path: Path) -> None:
    root = build_tree(tmp_path / "pkg", RICH_TREE)
    h = assert_matches_zig(tmp_path, root)
    head, fid, size, _ = decode(h)
    assert head == "N-V"
    assert fid == 0xFFFF  # a naked package's id, not 0
    expected_size = sum(len(v.data if isinstance(v, Exe) else v) for v in RICH_TREE.values()
                        if isinstance(v, (bytes, Exe)))
    assert size == expected_size


@needs_zig
def test_exec_bit_and_empty_dirs_do_not_matter(tmp_path: Path) -> None:
    plain = build_tree(tmp_path / "plain", {"a/run.sh": b"#!/bin/sh\n", "b": b"1"})
    other = build_tree(tmp_path / "other", {"a/run.sh": Exe(b"#!/bin/sh\n"), "b": b"1", "c/d/e": DIR})
    assert ours(plain) == ours(other) == zig_fetch(tmp_path, other)


@needs_zig
def test_manifest_with_paths_excluding_files(tmp_path: Path) -> None:
    spec = dict(RICH_TREE)
    spec["build.zig.zon"] = zon(paths='"build.zig", "build.zig.zon", "./src/", "docs/caf\\u{e9}.md", '
                                      '"links/to-dir", "bin/run.sh/", "not/there"')
    root = build_tree(tmp_path / "pkg", spec)
    h = assert_matches_zig(tmp_path, root)
    head, fid, size, _ = decode(h)
    assert (head, fid) == ("demo-1.2.3", 0x1234ABCD)
    kept = ["build.zig", "build.zig.zon", "src/main.zig", "src/deep/er/still/x.zig", "src/empty.txt",
            "docs/caf\u00e9.md", "bin/run.sh"]
    assert size == sum((root / p).stat().st_size for p in kept)

    # Excluded files do not count at all: changing one leaves the hash as it is.
    (root / "README.md").write_bytes(b"changed")
    (root / "links/to-file").unlink()
    (root / "bin/empty-exe").write_bytes(b"now with contents")
    assert ours(root) == h == zig_fetch(tmp_path, root)


@needs_zig
def test_manifest_can_exclude_itself(tmp_path: Path) -> None:
    root = build_tree(tmp_path / "pkg", {"build.zig.zon": zon(paths='"src"'), "src/a.zig": b"a", "b": b"b"})
    h = assert_matches_zig(tmp_path, root)
    assert decode(h)[0] == "demo-1.2.3"  # the manifest still names the package
    assert decode(h)[2] == 1


@pytest.mark.parametrize("paths", ['""', '"."', '"./"', '"src/.."', '"x", ""'])
@needs_zig
def test_paths_that_include_everything(tmp_path: Path, paths: str) -> None:
    spec = dict(RICH_TREE)
    spec["build.zig.zon"] = zon(paths=paths)
    root = build_tree(tmp_path / "pkg", spec)
    h = assert_matches_zig(tmp_path, root)
    assert decode(h)[2] == sum(e.size for e in scan_tree(root, "pkg"))


@pytest.mark.parametrize(
    "paths",
    [
        '"src/deep/../main.zig"',  # normalised to src/main.zig
        '"src//deep"',  # empty components vanish
        '"links/to-dir"',  # a symlink to a directory is one entry; nothing below it is followed
        '"SRC"',  # case matters
        '"sr"',  # prefixes of names do not match
        '"src/main"',
        '"../pkg/src"',  # never matches: normalisation keeps the leading ..
        '"x/../.."',
        '"/src"',  # absolute: never matches
        '"src\\\\deep"',  # a backslash is an ordinary byte on POSIX
        '"empty-dir"',  # directories hold nothing of their own
    ],
)
@needs_zig
def test_paths_normalisation(tmp_path: Path, paths: str) -> None:
    spec = dict(RICH_TREE)
    spec["build.zig.zon"] = zon(paths=paths)
    assert_matches_zig(tmp_path, build_tree(tmp_path / "pkg", spec))


@needs_zig
def test_manifest_without_fingerprint_hashes_with_id_zero(tmp_path: Path) -> None:
    root = build_tree(tmp_path / "pkg", {"build.zig.zon": zon(fid=None), "a": b"a"})
    h = assert_matches_zig(tmp_path, root)
    assert decode(h)[:2] == ("demo-1.2.3", 0)


@pytest.mark.parametrize(
    ("manifest", "version_part"),
    [
        (b'.{ .name = "legacy_string_name", .version = "0.1.0", .paths = .{""} }', "legacy_string_name-0.1.0"),
        (zon(version="1_0.2.3"), "demo-10.2.3"),  # Zig re-prints the version it parsed
        (zon(version="1.0.0-rc.1+build-7.x"), "demo-1.0.0-rc.1+build-7.x"),
        (zon(version="1.2.3+0001"), "demo-1.2.3+0001"),
        (zon(name="i32"), "i32-1.2.3"),
        (zon(name="a" * 32), "a" * 32 + "-1.2.3"),
        (zon(fid=0xFFFFFFFE), "demo-1.2.3"),
        (b'.{ .name = .demo, .name = .other, .version = "1.0.0", .paths = .{""} }', "other-1.0.0"),
        (b'\xef\xbb\xbf// comment\n.{ .@"name" = .demo, .version = \n "9.9.9", .paths = .{ "", },'
         b' .unknown = .{ .x = .{ 1, 2.5, \'c\', .e, null }, .@"q q" = -0x10 },'
         b' .dependencies = .{ .d = .{ .url = "https://example.com/x.tar.gz", .hash = "N-V-x", .lazy = true },'
         b' .e = .{ .path = "../e" } } }', "demo-9.9.9"),
    ],
)
@needs_zig
def test_manifest_variants(tmp_path: Path, manifest: bytes, version_part: str) -> None:
    root = build_tree(tmp_path / "pkg", {"build.zig.zon": manifest, "src/x.zig": b"x"})
    h = assert_matches_zig(tmp_path, root)
    assert decode(h)[0] == version_part


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        (b'.{ .version = "1.0.0", .paths = .{""} }', "missing top-level 'name' field"),
        (b'.{ .name = .demo, .paths = .{""} }', "missing top-level 'version' field"),
        (b'.{ .name = .demo, .version = "1.0.0" }', "missing top-level 'paths' field"),
        (b'.{ .name = .demo, .version = "1.0.0", .paths = .{} }', "expected paths expression to be a list of strings"),
        (b'.{ .name = .demo, .version = "1.0.0", .paths = .{ "a", 1 } }', "expected string literal"),
        (b'.{ .name = .demo, .version = "1.0", .paths = .{""} }', "unable to parse semantic version: InvalidVersion"),
        (b'.{ .name = .demo, .version = "01.0.0", .paths = .{""} }', "unable to parse semantic version: InvalidVersion"),
        (b'.{ .name = .demo, .version = "1.0.0-a_b", .paths = .{""} }', "unable to parse semantic version: InvalidVersion"),
        (b'.{ .name = .demo, .version = "99999999999999999999.0.0", .paths = .{""} }', "unable to parse semantic version: Overflow"),
        (b'.{ .name = .demo, .version = \n\\\\1.0.0\n, .paths = .{""} }', "expected string literal"),
        (b'.{ .name = "foo-bar", .version = "1.0.0", .paths = .{""} }', "name must be a valid bare zig identifier"),
        (b'.{ .name = .@"demo", .version = "1.0.0", .paths = .{""} }', "name must be a valid bare zig identifier"),
        (b'.{ .name = .' + b"a" * 33 + b', .version = "1.0.0", .paths = .{""} }', "exceeds max length of 32"),
        (b'.{ .name = .demo, .version = "1.0.0", .fingerprint = 0x1234, .paths = .{""} }', "invalid fingerprint: 0x1234"),
        (zon(fid=0), "invalid fingerprint"),
        (zon(fid=0xFFFFFFFF), "invalid fingerprint"),
        (b'.{ .name = .demo, .version = "1.0.0", .fingerprint = -1, .paths = .{""} }', "expected integer literal"),
        (b'.{ .name = .demo, .version = "1.0.0", .fingerprint = 0x1_0000_0000_0000_0000, .paths = .{""} }',
         "expected u64 integer literal, found big_int"),
        (b'.{ .name = .demo, .version = "1.0.0", .paths = .{""}, .dependencies = .{ .d = .{ .url = "u", .path = "p" } } }',
         "dependency should specify only one of 'url' and 'path' fields."),
        (b'.{ .name = .demo, .version = "1.0.0", .paths = .{""}, .dependencies = .{ .d = .{ .hash = "h" } } }',
         "dependency requires location field, one of 'url' or 'path'."),
        (b'.{ .name = .demo, .version = "1.0.0", .paths = .{""}, .dependencies = .{ "d" } }',
         "expected dependencies expression to be a struct"),
        (b'.{ .name = .demo, .version = "1.0.0", .paths = .{"a\tb"} }', "string literal contains invalid byte"),
        (b'.{ .name = .demo, // a\tcomment\n .version = "1.0.0", .paths = .{""} }', "comment contains invalid byte"),
        (b'.{ .name = .demo, /// doc\n .version = "1.0.0", .paths = .{""} }', "documentation comment"),
        (b'.{ .name = .demo, .version = "1.0.0", .paths = .{""}, .x = .{ 1 2 } }', "expected ',' after initializer"),
        (b'"just a string"', "expected top level expression to be a struct"),
    ],
)
@needs_zig
def test_manifests_zig_refuses(tmp_path: Path, manifest: bytes, message: str) -> None:
    root = build_tree(tmp_path / "pkg", {"build.zig.zon": manifest, "a": b"a"})
    proc = zig_run(tmp_path, "fetch", str(root))
    assert proc.returncode != 0, f"zig accepted it: {proc.stdout}"
    with pytest.raises(ManifestError) as info:
        ours(root)
    assert message in str(info.value)
    assert str(root / "build.zig.zon") in str(info.value)
    assert info.value.line is not None


@needs_zig
def test_many_files_and_a_large_one(tmp_path: Path) -> None:
    """Enough files for the thread pool, and one file read in several 1 MiB chunks."""
    rng = random.Random(17)
    spec: dict[str, object] = {}
    for i in range(300):
        depth = rng.randrange(4)
        name = "/".join(f"d{rng.randrange(5)}" for _ in range(depth)) + f"/f{i}"
        spec[name.lstrip("/")] = rng.randbytes(rng.randrange(0, 3000))
    spec["big.bin"] = rng.randbytes(3 * 1024 * 1024 + 17)
    spec["build.zig.zon"] = zon(paths='"d1", "d3/d0", "big.bin", "build.zig.zon"')
    root = build_tree(tmp_path / "pkg", spec)
    assert_matches_zig(tmp_path, root)


# --- zig fetch on archives --------------------------------------------------------------------


def make_tar_gz(path: Path, src: Path, arcname: str | None) -> Path:
    """Pack ``src`` (below ``arcname``, or at the top level when None) keeping links and modes."""
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        if arcname is not None:
            tar.add(src, arcname=arcname, recursive=True)
        else:
            for child in sorted(src.iterdir()):
                tar.add(child, arcname=child.name, recursive=True)
    return path


@needs_zig
def test_archive_with_one_top_directory(tmp_path: Path) -> None:
    spec = dict(RICH_TREE)
    spec["build.zig.zon"] = zon(paths='"build.zig.zon", "src", "bin", "links", "docs"')
    root = build_tree(tmp_path / "src-tree" / "demo-1.2.3", spec)
    archive = make_tar_gz(tmp_path / "demo.tar.gz", root, "demo-1.2.3")
    assert zig_fetch(tmp_path, archive) == ours(root) == zig_fetch(tmp_path, root)


@needs_zig
def test_archive_top_directory_named_src_is_stripped_too(tmp_path: Path) -> None:
    root = build_tree(tmp_path / "t" / "src", {"main.zig": b"m", "lib/a.zig": b"a"})
    archive = make_tar_gz(tmp_path / "x.tar.gz", root, "src")
    assert zig_fetch(tmp_path, archive) == ours(root)


@needs_zig
def test_archive_without_common_root(tmp_path: Path) -> None:
    root = build_tree(tmp_path / "t", {"build.zig.zon": zon(fid=None), "src/main.zig": b"m", "x": Exe(b"x")})
    archive = make_tar_gz(tmp_path / "x.tar.gz", root, None)
    assert zig_fetch(tmp_path, archive) == ours(root)


@needs_zig
def test_legacy_hash_matches_zig(tmp_path: Path) -> None:
    """Zig 0.15 still accepts ``1220…`` hashes; a wrong one makes it print the right one."""
    root = build_tree(tmp_path / "t" / "dep", {"build.zig.zon": zon(name="dep"), "dep.zig": b"pub const x = 1;\n",
                                               "sub/l": Link("../dep.zig")})
    archive = make_tar_gz(tmp_path / "dep.tar.gz", root, "dep")
    fmt = make_format("zig", root)
    entries = scan_tree(root, str(root))
    printed = fmt.finish(root, entries, hash_files(root, entries, [fmt])["zig"])
    assert printed == zig_fetch(tmp_path, archive)
    assert fmt.legacy == zighash.legacy_hash(fmt.digest) and re.fullmatch("1220[0-9a-f]{64}", fmt.legacy)

    project = build_tree(tmp_path / "proj", {"build.zig": b'const std = @import("std");\n'
                                                         b"pub fn build(b: *std.Build) void { _ = b; }\n"})
    wrong = "1220" + "0" * 64
    for declared in (wrong, fmt.legacy):
        deps = f'.dependencies = .{{ .dep = .{{ .url = "file://{archive}", .hash = "{declared}" }} }},\n'
        (project / "build.zig.zon").write_bytes(zon(name="proj", extra=deps))
        proc = zig_run(tmp_path, "build", "--fetch", cwd=project)
        if declared == wrong:
            assert f"but the fetched package has '{fmt.legacy}'" in proc.stderr, proc.stderr
        else:
            assert proc.returncode == 0, proc.stderr


# --- the format's pieces, without zig ---------------------------------------------------------


def test_size_saturates_at_u32() -> None:
    h = zighash.package_hash(bytes(32), 5 << 32, "n", "1.0.0", 7)
    assert decode(h)[1:3] == (7, 0xFFFFFFFF)
    assert decode(zighash.package_hash(bytes(32), 12))[:3] == ("N-V", 0xFFFF, 12)


def test_fingerprint_high_bits_are_not_hashed(tmp_path: Path) -> None:
    root = build_tree(tmp_path / "p", {"build.zig.zon": zon(fid=0xCAFEF00D)})
    assert decode(ours(root))[1] == 0xCAFEF00D


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("", "."), (".", "."), ("./", "."), ("src/..", "."), ("./src/", "src"), ("a//b/./c", "a/b/c"),
        ("a/b/../c", "a/c"), ("..", ".."), ("../a", "../a"), ("a/../../b", "../b"), ("x/../..", ".."),
        ("/abs/../x", "/x"), ("/", "/"), ("/..", "/"),
    ],
)
def test_normalize_path_follows_zig_resolve(raw: str, normalized: str) -> None:
    assert zighash.normalize_path(raw) == normalized


def test_paths_filter() -> None:
    keep = zighash.paths_filter(["src", "./build.zig", "docs/a.md", "../up", "/abs"])
    assert keep("src/x/y.zig") and keep("src") and keep("build.zig") and keep("docs/a.md")
    assert not keep("srcx/y") and not keep("docs/b.md") and not keep("build.zig.zon") and not keep("up")
    assert not keep("abs")
    for everything in (None, [], [""], ["."], ["x", "a/.."]):
        assert zighash.paths_filter(everything)("any/thing")


def test_no_manifest_paths_means_everything_for_scan(tmp_path: Path) -> None:
    root = build_tree(tmp_path / "p", {"build.zig.zon": zon(paths='"src"'), "src/a": b"a", "b": b"b"})
    keep = zighash.paths_filter(manifest_info(load(root / "build.zig.zon")).paths)
    assert [e.path for e in scan_tree(root, "p", keep)] == ["src/a"]


# --- the ZON parser ---------------------------------------------------------------------------


def test_struct_tuple_and_scalars() -> None:
    text = r"""
    // leading comment
    .{
        .name = .demo, // trailing comment
        .@"quoted name" = .@"quoted value",
        .list = .{ "a", "b", },
        .nested = .{ .x = .{ .y = true }, .z = false },
        .nothing = null,
        .empty = .{},
        .ints = .{ 0, 42, -7, 1_000_000, 0xff, 0xFF_FF, 0o17, 0b1010, -0x10, 18446744073709551616 },
        .floats = .{ 1.5, -2.0, 1e3, 1.5E-3, 1_0.2_5, 0x1.8p1, 0x10, inf, -inf },
        .chars = .{ 'a', '\n', '\x41', '\u{1F600}', 'é', '\'' },
    }
    """
    v = loads(text)
    assert v == {
        "name": "demo",
        "quoted name": "quoted value",
        "list": ["a", "b"],
        "nested": {"x": {"y": True}, "z": False},
        "nothing": None,
        "empty": {},
        "ints": [0, 42, -7, 1000000, 255, 65535, 15, 10, -16, 1 << 64],
        "floats": [1.5, -2.0, 1000.0, 0.0015, 10.25, 3.0, 16, math.inf, -math.inf],
        "chars": [97, 10, 65, 0x1F600, 0xE9, 39],
    }
    assert list(v) == ["name", "quoted name", "list", "nested", "nothing", "empty", "ints", "floats", "chars"]
    assert isinstance(v["name"], EnumLiteral) and v["name"] == "demo" and isinstance(v["name"], str)
    assert isinstance(v["quoted name"], EnumLiteral)
    assert type(v["list"][0]) is str
    assert type(v["ints"][4]) is int and type(v["floats"][6]) is int
    assert all(isinstance(c, CharLiteral) for c in v["chars"])
    assert math.isnan(loads("nan")) and math.isnan(loads("-nan"))
    assert v.key_lines["name"] == 4 and v.key_lines["chars"] == 12 and v.line == 3
    assert v["list"].item_lines == [6, 6]


def test_empty_init_is_both_empty_struct_and_empty_tuple() -> None:
    e = loads(".{}")
    assert isinstance(e, EmptyInit) and isinstance(e, dict)
    assert e == {} and len(e) == 0 and not e and list(e) == [] and e.get("x") is None
    assert [x for x in e] == [] and dict(e.items()) == {}
    assert loads(".{ .a = .{ } }")["a"] == {}


def test_strings_and_escapes() -> None:
    assert loads(r'"a\nb\tc\rd\\e\"f\'g"') == "a\nb\tc\rd\\e\"f'g"
    assert loads(r'"\x41\x7a\u{41}\u{e9}\u{1F600}\u{0000000041}"') == "AzAé\U0001f600A"
    assert loads('"caf\u00e9 \u6f22\u5b57"') == "caf\u00e9 \u6f22\u5b57"  # UTF-8 passes through
    # \xNN is a byte: a lone 0xff is not UTF-8, so it comes back surrogate-escaped.
    raw = loads(r'"\xff\xc3\xa9"')
    assert raw.encode("utf-8", "surrogateescape") == b"\xff\xc3\xa9"
    assert loads(r'"\xc3\xa9"') == "é"


def test_multiline_strings() -> None:
    text = ".{ .m = \r\n    \\\\first \"line\" \\n kept\r\n    // a comment between lines\n    \\\\\n    \\\\third\n, .n = 1 }"
    v = loads(text)
    assert v["m"] == 'first "line" \\n kept\n\nthird'
    assert isinstance(v["m"], MultilineString)
    assert loads("\\\\only") == "only"


def test_duplicate_fields_last_wins_like_zig_fetch() -> None:
    v = loads(".{ .a = 1, .b = 2, .a = 3 }")
    assert v == {"a": 3, "b": 2} and list(v) == ["a", "b"]


def test_bom_and_keywords_as_quoted_names() -> None:
    assert loads("\ufeff.{ .@\"if\" = .@\"while\", .true = .null }") == {"if": "while", "true": "null"}


ZIG_LEXICAL_CASES = [
    "0", "-0x10", "0x1.8p-3", "0x.5", "1e+10", "1E5", "1_0.2_5", "0b1_0", "0o7_7", "1.5e-3",
    "00", "0X1", "1__0", "1_", "0x_1", "0b2", "0o1.5", "1e", "0x", "1._5", "1e_5", "0xp1", "1e5e5",
    '"\\x41\\u{1F600}\\u{10ffff}"', '"\\u{d800}"', '"\\u{110000}"', '"\\u{}"', '"\\u41"', '"\\x4"',
    '"\\q"', '"tab\there"', "'a'", "''", "'ab'", "'\\u{d800}'", "'\u00e9'",
]


@pytest.mark.parametrize("literal", ZIG_LEXICAL_CASES)
@needs_zig
def test_literals_accepted_exactly_when_zig_accepts(tmp_path: Path, literal: str) -> None:
    """``zig ast-check`` runs Zig's own ZON checks; the parser must agree on every literal."""
    text = f".{{ .a = {literal} }}\n"
    path = tmp_path / "x.zon"
    path.write_text(text)
    zig_ok = zig_run(tmp_path, "ast-check", str(path)).returncode == 0
    try:
        loads(text)
        ours_ok = True
    except ManifestError:
        ours_ok = False
    assert ours_ok == zig_ok


@pytest.mark.parametrize(
    ("text", "line", "key", "fragment"),
    [
        ('.{\n .a = 1,\n .b = "unterminated\n}', 3, "b", "unterminated string literal"),
        ('.{ .dependencies = .{\n  .foo = .{\n    .url = "bad \\q escape",\n  },\n}}', 3, "dependencies.foo.url",
         "invalid escape character: 'q'"),
        ('.{ .p = .{ "ok",\n "\\u{D800}" } }', 2, "p[1]", "unicode scalar value"),
        ('.{ .p = "\\u{110000}" }', 1, "p", "unicode scalar value"),
        ('.{ .p = "\\u{}" }', 1, "p", "empty unicode escape sequence"),
        ('.{ .p = "\\x4" }', 1, "p", "two hex digits"),
        ('.{ .p = "a\tb" }', 1, "p", "string literal contains invalid byte: '\\x09'"),
        ('.{ .a = 1, // tab\there\n}', 1, None, "comment contains invalid byte"),
        ('//! container doc\n.{}', 1, None, "documentation comments"),
        ('.{\n/// doc\n.a = 1 }', 2, None, "documentation comments"),
        ('.{ .if = 1 }', 1, None, "'if' is a keyword"),
        ('.{ .a = 1, 2 }', 1, None, "expected '.'"),
        ('.{ 1, .a = 2 }', 1, "[1]", "field initializer in a tuple"),
        ('.{ .a = 1 .b = 2 }', 1, "a", "expected ',' after initializer"),
        ('.{ .a = 1,\n .b = 2,\n', 3, None, "found end of file"),
        ('.{ .a = 00 }', 1, "a", "leading zero"),
        ('.{ .a = 0X10 }', 1, "a", "base prefix must be lowercase"),
        ('.{ .a = 1__0 }', 1, "a", "repeated '_'"),
        ('.{ .a = 10_ }', 1, "a", "ends in '_'"),
        ('.{ .a = 0x_1 }', 1, "a", "'_' must sit between digits"),
        ('.{ .a = 0b102 }', 1, "a", "invalid digit '2' for base 2"),
        ('.{ .a = 0o1.5 }', 1, "a", "only decimal and hexadecimal"),
        ('.{ .a = 1e }', 1, "a", "ends in 'e'"),
        ('.{ .a = 0x }', 1, "a", "expected a digit after the base prefix"),
        ('.{ .a = foo }', 1, "a", "found identifier 'foo'"),
        ('.{ .a = 1 + 2 }', 1, "a", "unexpected character '+'"),
        ('.{ .a = - "x" }', 1, "a", "expected a number after '-'"),
        ("\n\n.{ .a = '' }", 3, "a", "character literal"),
        (".{ .a = 'ab' }", 1, "a", "single character"),
        (".{ .a = .{ .b = 1 } } extra", 1, None, "expected end of file"),
        (".{ .a = $ }", 1, "a", "unexpected character '$'"),
        (".{ .a = .{ .b = .{ .c = . } } }", 1, "a.b.c", "expected '{' or a name after '.'"),
    ],
)
def test_errors_name_file_line_and_key(text: str, line: int, key: str | None, fragment: str) -> None:
    with pytest.raises(ManifestError) as info:
        loads(text, "pkg/build.zig.zon")
    err = info.value
    assert (err.path, err.line, err.key) == ("pkg/build.zig.zon", line, key)
    assert fragment in str(err)
    assert str(err).startswith(f"pkg/build.zig.zon:{line}" + (f" (key {key!r})" if key else "") + ": ")


def test_load_reads_files_and_requires_a_struct(tmp_path: Path) -> None:
    path = tmp_path / "build.zig.zon"
    path.write_bytes(b'.{ .name = .x, .paths = .{ "\xff" } }')  # raw non-UTF-8 byte in a string
    v = load(path)
    assert v["paths"][0].encode("utf-8", "surrogateescape") == b"\xff"
    path.write_text(".{ 1, 2 }")
    with pytest.raises(ManifestError, match=r"build\.zig\.zon:1: expected top level expression to be a struct"):
        load(path)
    with pytest.raises(ManifestError, match="cannot read"):
        load(tmp_path / "missing.zon")


def test_manifest_info() -> None:
    text = """.{
        .name = .demo,
        .version = "1.0.0-beta.2",
        .fingerprint = 0x%x,
        .minimum_zig_version = "0.15.0",
        .dependencies = .{
            .remote = .{ .url = "https://example.com/r.tar.gz", .hash = "r-1.0.0-AAAA" },
            .local = .{ .path = "../local", .lazy = true },
        },
        .paths = .{ "build.zig", "build.zig.zon", "src" },
        .future_field = .{ .anything = 1 },
    }""" % fingerprint("demo", 99)  # noqa: UP031 (ZON braces would all need doubling)
    m = manifest_info(loads(text))
    assert m == ZigManifest(
        name="demo",
        version="1.0.0-beta.2",
        fingerprint=fingerprint("demo", 99),
        paths=["build.zig", "build.zig.zon", "src"],
        dependencies={
            "remote": {"url": "https://example.com/r.tar.gz", "path": None, "hash": "r-1.0.0-AAAA", "lazy": False},
            "local": {"url": None, "path": "../local", "hash": None, "lazy": True},
        },
        minimum_zig_version="0.15.0",
    )
    assert m.id == 99 and m.lines["paths"] == 10
    bare = manifest_info(loads('.{ .name = "demo", .version = "0.0.0", .dependencies = .{} }'))
    assert (bare.fingerprint, bare.paths, bare.dependencies, bare.id) == (None, None, {}, 0)


@pytest.mark.parametrize(
    ("text", "line", "key", "fragment"),
    [
        ('.{\n .name = .demo,\n .version = "1.0.0",\n .dependencies = .{\n  .d = .{\n   .url = "u",\n   .lazy = 1,\n  },\n },\n}',
         7, "dependencies.d.lazy", "expected boolean"),
        ('.{\n .name = .demo,\n .version = "1.0.0",\n .dependencies = .{\n  .d = .{\n   .url = .u,\n  },\n },\n}',
         6, "dependencies.d.url", "expected string literal"),
        ('.{\n .name = .demo,\n .version = "1.0.0",\n .paths = .{\n  "a",\n  .b,\n },\n}', 6, "paths[1]",
         "expected string literal"),
        ('.{\n .name = 5,\n .version = "1.0.0" }', 2, "name", "expected enum literal"),
        ('.{\n .name = .demo,\n .version = "1.0.0",\n .fingerprint = \'a\' }', 4, "fingerprint", "expected integer literal"),
        ('.{\n .name = .demo,\n .version = "1.0.0",\n .minimum_zig_version = "0.x" }', 4, "minimum_zig_version",
         "unable to parse semantic version"),
        ('\n.{\n .name = .demo,\n}', 2, None, "missing top-level 'version' field"),
    ],
)
def test_manifest_info_errors(text: str, line: int, key: str | None, fragment: str) -> None:
    with pytest.raises(ManifestError) as info:
        manifest_info(loads(text, "m.zon"), "m.zon")
    assert (info.value.line, info.value.key) == (line, key)
    assert fragment in str(info.value)


def test_zig_format_is_registered(tmp_path: Path) -> None:
    root = build_tree(tmp_path / "p", {"a": b"a"})
    fmt = make_format("zig", root)
    assert fmt.name == "zig" and isinstance(fmt, zighash.ZigFormat)
    result = hash_tree(root, scan_tree(root, "p"), ["bt2", "zig"])
    assert result["zig"].startswith("N-V-") and result["bt2"].startswith("bt2-")
