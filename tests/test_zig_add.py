"""``treeseed zig add URL``: ``zig fetch --save`` through treeseed, checked by the real Zig.

Packages are real archives on a local HTTP server; the expected hash is what the real
``zig fetch`` (pip ``ziglang`` 0.15.2) prints for the same archive. After ``zig add`` the server
is stopped and the real ``zig build`` must build the project from what treeseed placed: the
edited ``build.zig.zon`` is read by Zig itself. The edit must be insertions only (or, for an
existing dependency, the two values), every comment and odd space left as it was.
"""

from __future__ import annotations

import importlib.util
import json
import zlib
from pathlib import Path

import pytest
from helpers import only_insertions, run_cli, tar_gz
from httpserver import Reply, Server
from zigkit import zig, zig_fetch_hash

from treeseed import zon

needs_zig = pytest.mark.skipif(importlib.util.find_spec("ziglang") is None,
                               reason="pip package ziglang (0.15.2) is not installed")


@pytest.fixture(autouse=True)
def zig_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Private HOME, Zig caches and treeseed config (conftest isolates the rest)."""
    env = {"HOME": str(tmp_path / "home"), "ZIG_GLOBAL_CACHE_DIR": str(tmp_path / "zig-global"),
           "ZIG_LOCAL_CACHE_DIR": str(tmp_path / "zig-local"),
           "TREESEED_CONFIG": str(tmp_path / "treeseed-config.toml")}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def fingerprint(name: str) -> str:
    return f"0x{zlib.crc32(name.encode()) << 32 | 0x5EED0002:x}"


ALPHA = {"build.zig": b'const std = @import("std");\npub fn build(b: *std.Build) void { _ = b; }\n',
         "build.zig.zon": (f'.{{\n    .name = .alpha,\n    .version = "0.1.0",\n    .fingerprint = '
                           f'{fingerprint("alpha")},\n    .paths = .{{ "build.zig", "build.zig.zon", '
                           f'"a.txt" }},\n}}\n').encode(),
         "a.txt": b"from alpha\n", "notes.md": b"outside .paths\n"}

PROJECT_ZON = f"""\
.{{
    // My project.   Comments and odd   spacing are the user's own.
    .name = .proj,
    .version = "0.1.0",
    .fingerprint = {fingerprint("proj")}, // never change this
    .dependencies = .{{
        // vendored in this tree
        .local = .{{ .path = "vendor/local" }}, // keep me
    }},
    .paths = .{{ "build.zig", "build.zig.zon" }},
}}
"""

PROJECT_BUILD = b"""const std = @import("std");
pub fn build(b: *std.Build) void {
    const alpha = b.dependency("alpha", .{});
    const local = b.dependency("local", .{});
    b.getInstallStep().dependOn(&b.addInstallFile(alpha.path("a.txt"), "a.txt").step);
    b.getInstallStep().dependOn(&b.addInstallFile(local.path("l.txt"), "l.txt").step);
}
"""


def make_project(tmp_path: Path, zon_text: str, build: bytes) -> Path:
    root = tmp_path / "proj"
    (root / "vendor" / "local").mkdir(parents=True)
    (root / "vendor" / "local" / "build.zig").write_bytes(ALPHA["build.zig"])
    (root / "vendor" / "local" / "l.txt").write_bytes(b"from local\n")
    (root / "build.zig").write_bytes(build)
    (root / "build.zig.zon").write_text(zon_text)
    return root


@needs_zig
def test_zig_add_saves_url_and_hash_and_zig_builds_offline(tmp_path: Path, servers,
                                                           zig_env: dict[str, str]) -> None:
    server: Server = servers()
    archive = tar_gz(ALPHA, "alpha-0.1.0")
    server.routes["/alpha-0.1.0.tar.gz"] = Reply(body=archive)
    url = server.url("/alpha-0.1.0.tar.gz")
    expected = zig_fetch_hash(tmp_path, archive, "alpha.tar.gz")
    root = make_project(tmp_path, PROJECT_ZON, PROJECT_BUILD)

    proc = run_cli("-C", str(root), "zig", "add", url, cache=tmp_path / "cache")
    placed = Path(zig_env["ZIG_GLOBAL_CACHE_DIR"]) / "p" / expected
    assert proc.stdout == f"{expected}\t{placed}\n"
    assert f"added alpha in {root / 'build.zig.zon'} for Zig 0.15" in proc.stderr
    assert sorted(p.name for p in placed.iterdir()) == ["a.txt", "build.zig", "build.zig.zon"]
    text = (root / "build.zig.zon").read_text()
    inserted = only_insertions(PROJECT_ZON, text)
    assert inserted == (f"        .alpha = .{{\n            .url = \"{url}\",\n"
                        f"            .hash = \"{expected}\",\n        }},\n")

    server.close()  # Zig reads the edited file and finds alpha where treeseed put it
    built = zig("build", cwd=root)
    assert built.returncode == 0, built.stderr
    assert (root / "zig-out" / "a.txt").read_text() == "from alpha\n"
    assert (root / "zig-out" / "l.txt").read_text() == "from local\n"


@needs_zig
def test_zig_add_a_lazy_package_without_manifest_under_a_quoted_name(
        tmp_path: Path, servers, zig_env: dict[str, str]) -> None:
    """No ``.dependencies`` yet; a package with no build.zig.zon is named from its URL
    (``c-ares``, not an identifier: written ``.@"c-ares"``); ``--lazy``."""
    server: Server = servers()
    archive = tar_gz({"c.txt": b"from c-ares\n"}, "c-ares-1.28.1")
    server.routes["/c-ares-1.28.1.tar.gz"] = Reply(body=archive)
    url = server.url("/c-ares-1.28.1.tar.gz")
    expected = zig_fetch_hash(tmp_path, archive, "c.tar.gz")
    zon_text = (f'.{{ .name = .proj, .version = "0.1.0", .fingerprint = {fingerprint("proj")},\n'
                '  // no dependencies yet\n  .paths = .{""} }\n')
    build = b"""const std = @import("std");
pub fn build(b: *std.Build) void {
    if (b.lazyDependency("c-ares", .{})) |c| {
        b.getInstallStep().dependOn(&b.addInstallFile(c.path("c.txt"), "c.txt").step);
    }
}
"""
    root = make_project(tmp_path, zon_text, build)
    out = run_cli("-C", str(root), "zig", "add", url, "--lazy", "--json", "--zig-version", "0.15",
                  cache=tmp_path / "cache").stdout
    got = json.loads(out)
    assert (got["name"], got["hash"], got["status"]) == ("c-ares", expected, "added")
    text = (root / "build.zig.zon").read_text()
    assert "// no dependencies yet" in text
    dep = zon.manifest_info(zon.loads(text)).dependencies["c-ares"]
    assert dep == {"url": url, "path": None, "hash": expected, "lazy": True}
    server.close()
    built = zig("build", cwd=root)
    assert built.returncode == 0, built.stderr
    assert (root / "zig-out" / "c.txt").read_text() == "from c-ares\n"


def test_zig_add_again_replaces_only_the_values(tmp_path: Path, server: Server) -> None:
    """The same name again: ``.url`` and ``.hash`` change in place, comments stay; the same
    package again changes nothing."""
    server.routes["/alpha.tar.gz"] = Reply(body=tar_gz(ALPHA, "alpha-0.1.0"))
    root = make_project(tmp_path, PROJECT_ZON, PROJECT_BUILD)
    cache = tmp_path / "cache"
    args = ("--zig-version", "0.15", "--json")
    first = json.loads(run_cli("-C", str(root), "zig", "add", server.url("/alpha.tar.gz"), *args,
                               cache=cache).stdout)
    zon_path = root / "build.zig.zon"
    zon_path.write_text(zon_path.read_text().replace(f'"{first["hash"]}",', f'"{first["hash"]}", // pinned'))
    before = zon_path.read_text()

    again = json.loads(run_cli("-C", str(root), "zig", "add", server.url("/alpha.tar.gz"), *args,
                               cache=cache).stdout)
    assert again["status"] == "unchanged" and zon_path.read_text() == before

    changed = dict(ALPHA, **{"a.txt": b"from alpha 0.1.1\n"})
    server.routes["/alpha-0.1.1.tar.gz"] = Reply(body=tar_gz(changed, "alpha-0.1.1"))
    new = json.loads(run_cli("-C", str(root), "zig", "add", server.url("/alpha-0.1.1.tar.gz"),
                             *args, cache=cache).stdout)
    assert new["status"] == "updated" and new["name"] == "alpha" and new["hash"] != first["hash"]
    want = before.replace(server.url("/alpha.tar.gz"), server.url("/alpha-0.1.1.tar.gz"))
    assert zon_path.read_text() == want.replace(first["hash"], new["hash"])


def test_zig_add_refuses_to_replace_a_path_dependency(tmp_path: Path, server: Server) -> None:
    server.routes["/alpha.tar.gz"] = Reply(body=tar_gz(ALPHA, "alpha-0.1.0"))
    root = make_project(tmp_path, PROJECT_ZON, PROJECT_BUILD)
    proc = run_cli("-C", str(root), "zig", "add", server.url("/alpha.tar.gz"), "--name", "local",
                   "--zig-version", "0.15", cache=tmp_path / "cache", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "build.zig.zon:8" in proc.stderr and "'local' exists and is not a .url dependency" \
        in proc.stderr
    assert (root / "build.zig.zon").read_text() == PROJECT_ZON


# --------------------------------------------------------------------------- the edit, in-process

H = "alpha-0.1.0-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"


@pytest.mark.parametrize(("before", "after"), [
    ('.{\n    .name = .p,\n    .version = "0.1.0",\n    .dependencies = .{},\n}\n',
     '.{\n    .name = .p,\n    .version = "0.1.0",\n    .dependencies = .{\n        .a = .{\n'
     f'            .url = "u",\n            .hash = "{H}",\n        }},\n    }},\n}}\n'),
    ('.{\n\t.name = .p,\n\t.version = "0.1.0",\n\t.dependencies = .{\n\t\t// none\n\t},\n}\n',
     '.{\n\t.name = .p,\n\t.version = "0.1.0",\n\t.dependencies = .{\n\t\t// none\n\t\t.a = .{\n'
     f'\t\t\t.url = "u",\n\t\t\t.hash = "{H}",\n\t\t}},\n\t}},\n}}\n'),
    ('.{ .name = .p, .version = "0.1.0", .dependencies = .{ .b = .{ .url = "v" } } }',
     '.{ .name = .p, .version = "0.1.0", .dependencies = .{ .b = .{ .url = "v" }, '
     f'.a = .{{ .url = "u", .hash = "{H}" }} }} }}'),
    ('.{\r\n    .name = .p,\r\n    .version = "0.1.0", // v\r\n}\r\n',
     '.{\r\n    .name = .p,\r\n    .version = "0.1.0", // v\r\n    .dependencies = .{\r\n'
     f'        .a = .{{\r\n            .url = "u",\r\n            .hash = "{H}",\r\n        }},\r\n'
     '    },\r\n}\r\n'),
], ids=["empty-struct", "tabs-and-a-comment", "one-line", "crlf-no-dependencies"])
def test_with_dependency_edits_minimally(before: str, after: str) -> None:
    assert zon.with_dependency(before, "a", "u", H) == after


def test_with_dependency_escapes_what_it_writes() -> None:
    out = zon.with_dependency('.{ .name = .p, .version = "0.1.0" }', "a b", 'http://x/"q"\\', H)
    assert '.@"a b" = .{ .url = "http://x/\\"q\\"\\\\"' in out
    assert zon.loads(out)["dependencies"]["a b"]["url"] == 'http://x/"q"\\'
