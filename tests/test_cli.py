"""``treeseed hash`` and ``treeseed fetch`` as a user runs them: output shapes, package rules.

The rules a package declares (``treeseed.toml`` include/exclude, else ``build.zig.zon`` ``.paths``)
decide which files are the package: a tree with extra, excluded files must hash exactly like the
tree without them, whatever those files hold. A malformed manifest is one error line naming the
file, the line and the key.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import urllib.parse
import zlib
from pathlib import Path

import pytest
from helpers import make_tree, run_cli

TREE_KEYS = {"bt2", "zig", "nar", "git", "swhid", "ipfs", "files", "bytes"}

SPEC: dict[str, object] = {
    "README.md": b"# demo\n",
    "src/main.c": b"int main(void) { return 0; }\n",
    "src/util/strings.h": b"#pragma once\n",
    "bin/run": ("x", b"#!/bin/sh\nexec ./main\n"),
    "docs/link": ("link", "../README.md"),
}


def hash_json(path: Path, cache: Path) -> dict:
    return json.loads(run_cli("hash", str(path), "--json", cache=cache).stdout)


def tar_gz(src: Path, archive: Path, top: str = "demo-1.0") -> Path:
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src, arcname=top)
    return archive


def one_error_line(proc) -> str:  # type: ignore[no-untyped-def]
    assert proc.returncode == 1, proc
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("treeseed: error:"), proc.stderr
    return lines[0]


# --------------------------------------------------------------------------- output shapes


def test_hash_json_dir_and_archive(tmp_path: Path, cache_dir: Path) -> None:
    tree = make_tree(tmp_path / "demo", SPEC)
    of_dir = hash_json(tree, cache_dir)
    assert set(of_dir) == TREE_KEYS
    assert of_dir["bt2"].startswith("bt2-")
    assert of_dir["files"] == 5
    assert of_dir["bytes"] == sum(len(v) if isinstance(v, bytes) else len(v[1])
                                  for v in SPEC.values() if not (isinstance(v, tuple) and v[0] == "link"))

    archive = tar_gz(tree, tmp_path / "demo-1.0.tar.gz")
    of_archive = hash_json(archive, cache_dir)
    assert set(of_archive) == TREE_KEYS | {"archive_sha256"}
    assert of_archive["archive_sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    # The archive's single top-level directory is stripped: the same tree, the same hashes.
    assert {k: of_archive[k] for k in TREE_KEYS} == of_dir
    # Hashing never installs anything.
    assert not (cache_dir / "p").exists() or not any((cache_dir / "p").iterdir())


def test_format_selection(tmp_path: Path, cache_dir: Path) -> None:
    tree = make_tree(tmp_path / "demo", SPEC)
    full = hash_json(tree, cache_dir)
    assert run_cli("hash", str(tree), cache=cache_dir).stdout == full["bt2"] + "\n"
    assert run_cli("hash", str(tree), "--format", "git", cache=cache_dir).stdout == full["git"] + "\n"
    out = run_cli("hash", str(tree), "--format", "nar", "--format", "swhid", "--format", "bt2",
                  cache=cache_dir).stdout
    assert out.splitlines() == [f"nar\t{full['nar']}", f"swhid\t{full['swhid']}", f"bt2\t{full['bt2']}"]

    archive = tar_gz(tree, tmp_path / "demo.tar.gz")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    out = run_cli("hash", str(archive), "--format", "archive-sha256", "--format", "zig", cache=cache_dir).stdout
    assert out.splitlines() == [f"archive-sha256\t{digest}", f"zig\t{full['zig']}"]


# --------------------------------------------------------------------------- package rules


TOML = b"""\
[package]
name = "demo"
version = "1.0.0"
include = ["src/", "README.md", "bin/*"]
exclude = ["*.log", "src/generated/", "bin/*.bak"]
"""

KEPT = {
    "treeseed.toml": TOML,
    "README.md": b"# demo\n",
    "src/main.c": b"int main(void) { return 0; }\n",
    "src/deep/er/x.c": b"int x;\n",
    "bin/run": ("x", b"#!/bin/sh\n"),
}
DROPPED = {
    "notes.txt": b"not part of the package\n",
    "build/out.o": b"\x7fELF" + b"\0" * 64,
    "src/debug.log": b"noise\n",
    "src/generated/big.c": b"/* generated */\n" * 100,
    "bin/run.bak": b"old\n",
    "build/tool": ("x", b"#!/bin/sh\n"),
}


def test_toml_rules_drop_files(tmp_path: Path, cache_dir: Path) -> None:
    lean = hash_json(make_tree(tmp_path / "lean", KEPT), cache_dir)
    full_tree = make_tree(tmp_path / "full", {**KEPT, **DROPPED})
    assert hash_json(full_tree, cache_dir) == lean
    assert lean["files"] == len(KEPT)

    # What the rules drop never matters: change it, add to it, and nothing moves.
    make_tree(full_tree, {"notes.txt": b"changed\n", "src/generated/more.c": b"more\n",
                          "src/debug.log": b"", "build/logs/x.log": b"x"})
    assert hash_json(full_tree, cache_dir) == lean

    # The same rules hold for an archive and for fetching either.
    archive = tar_gz(full_tree, tmp_path / "full.tar.gz")
    assert {k: v for k, v in hash_json(archive, cache_dir).items() if k != "archive_sha256"} == lean
    for source in (full_tree, archive):
        got = json.loads(run_cli("fetch", str(source), "--json", cache=cache_dir).stdout)
        assert got["hash"] == lean["bt2"]
    root = cache_dir / "p" / lean["bt2"]
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()) == sorted(KEPT)


def zon(paths: str, name: str = "demo") -> bytes:
    fingerprint = zlib.crc32(name.encode()) << 32 | 0x1234ABCD
    return (f'.{{\n    .name = .{name},\n    .version = "1.0.0",\n    .fingerprint = 0x{fingerprint:x},\n'
            f"    .paths = .{{ {paths} }},\n}}\n").encode()


ZON_KEPT = {
    "build.zig.zon": zon('"build.zig", "build.zig.zon", "src", "LICENSE"'),
    "build.zig": b"const std = @import(\"std\");\n",
    "src/main.zig": b"pub fn main() void {}\n",
    "src/lib/util.zig": b"pub const x = 1;\n",
    "LICENSE": b"MIT\n",
}
ZON_DROPPED = {
    "README.md": b"# not listed\n",
    "test/t.zig": b"test {}\n",
    "zig-out/bin/demo": ("x", b"\x7fELF"),
    "srcs/other.zig": b"// 'src' does not cover 'srcs'\n",
}


def test_zon_paths_drop_files(tmp_path: Path, cache_dir: Path) -> None:
    lean = hash_json(make_tree(tmp_path / "lean", ZON_KEPT), cache_dir)
    full_tree = make_tree(tmp_path / "full", {**ZON_KEPT, **ZON_DROPPED})
    assert hash_json(full_tree, cache_dir) == lean
    assert lean["files"] == len(ZON_KEPT)
    make_tree(full_tree, {"README.md": b"changed\n", "test/more.zig": b"x"})
    assert hash_json(full_tree, cache_dir) == lean
    got = json.loads(run_cli("fetch", str(full_tree), "--json", cache=cache_dir).stdout)
    assert got["hash"] == lean["bt2"]

    # A treeseed.toml takes precedence: without include rules, every file is the package.
    make_tree(full_tree, {"treeseed.toml": b'[package]\nname = "demo"\n'})
    everything = hash_json(full_tree, cache_dir)
    assert everything["files"] == len(ZON_KEPT) + len(ZON_DROPPED) + 2


@pytest.mark.parametrize("text, line, key", [
    (b'[package]\nname = "demo"\n\nversoin = "1.0"\n', 4, "versoin"),
    (b'[package]\nname = "demo"\nversion = "1.0"\nprivate = "yes"\n', 4, "private"),
    (b'# rules\n[package]\ninclude = "src/"\n', 3, "include"),
    (b'[package]\nexclude = ["a", 1]\n', 2, "exclude"),
    (b'[package]\nname = "demo"\n[depends]\nzlib = "1"\n', 3, "depends"),
], ids=["unknown-key", "bool-as-string", "string-for-list", "non-string-item", "unknown-table"])
def test_malformed_toml(tmp_path: Path, cache_dir: Path, text: bytes, line: int, key: str) -> None:
    tree = make_tree(tmp_path / "demo", {"treeseed.toml": text, "a.c": b"a"})
    manifest = tree / "treeseed.toml"
    for command in ("hash", "fetch"):
        err = one_error_line(run_cli(command, str(tree), cache=cache_dir, check=False))
        assert f"{manifest}:{line}" in err and repr(key) in err, err
    assert not any((cache_dir / "p").iterdir())


# --------------------------------------------------------------------------- fetch of local sources


def test_fetch_dir_equals_hash_dir(tmp_path: Path, cache_dir: Path) -> None:
    tree = make_tree(tmp_path / "demo", SPEC)
    expected = hash_json(tree, cache_dir)
    got = json.loads(run_cli("fetch", str(tree), "--json", cache=cache_dir).stdout)
    assert (got["hash"], got["files"], got["bytes"]) == (expected["bt2"], expected["files"], expected["bytes"])
    root = Path(got["path"])
    assert (root / "bin/run").stat().st_mode & 0o777 == 0o555  # executable, read-only in the cache
    assert (root / "docs/link").readlink() == Path("../README.md")
    # The source tree is untouched and the copy verifies.
    assert hash_json(tree, cache_dir) == expected
    assert run_cli("cache", "verify", cache=cache_dir).returncode == 0


def test_fetch_file_url_with_spaces(tmp_path: Path, cache_dir: Path) -> None:
    folder = tmp_path / "my packages" / "v 1 (final)"
    tree = make_tree(folder / "demo src", SPEC)
    archive = tar_gz(tree, folder / "demo 1.0.tar.gz")
    expected = hash_json(tree, cache_dir)["bt2"]
    for target in (archive, tree):
        url = "file://" + urllib.parse.quote(str(target))
        assert "%20" in url
        got = json.loads(run_cli("fetch", url, "--json", cache=cache_dir).stdout)
        assert got["hash"] == expected, target
    assert [p.name for p in (cache_dir / "p").iterdir()] == [expected]


def test_json_reports_a_format_it_cannot_compute(tmp_path: Path, cache_dir: Path) -> None:
    """A build.zig.zon Zig would reject leaves the zig hash undefined: --json says so and
    still prints the other formats; asking for zig alone is an error."""
    root = make_tree(tmp_path / "pkg", {"a.txt": b"a",
                                        "build.zig.zon": b'.{ .name = .x, .version = "0.1.0" }'})
    proc = run_cli("hash", str(root), "--json", cache=cache_dir)
    got = json.loads(proc.stdout)
    assert got["zig"] is None and "paths" in got["errors"]["zig"]
    assert got["bt2"].startswith("bt2-") and got["nar"].startswith("sha256-")
    assert "warning: no zig hash" in proc.stderr
    only = run_cli("hash", str(root), "--format", "zig", cache=cache_dir, check=False)
    assert only.returncode == 1 and "missing top-level 'paths'" in only.stderr


def test_manifest_error_inside_archive_names_the_archive(tmp_path: Path, cache_dir: Path) -> None:
    """The unpacked copy lives in a work directory that is gone by the time the user reads the
    error: the message names the archive and the manifest inside it, with the line."""
    root = make_tree(tmp_path / "pkg", {"treeseed.toml": b'[package]\nname = "x"\nbogus = 1\n',
                                        "a.txt": b"a"})
    archive = tar_gz(root, tmp_path / "pkg.tar.gz")
    proc = run_cli("fetch", str(archive), cache=cache_dir, check=False)
    assert proc.returncode == 1
    assert f"{archive}: treeseed.toml:3 (key 'bogus')" in proc.stderr
    assert "/tmp/w-" not in proc.stderr


# --------------------------------------------------------------------------- bad input, --json errors


@pytest.mark.parametrize("jobs", ["0", "-3", "many"])
@pytest.mark.parametrize("command", [("fetch",), ("update",), ("build",), ("zig", "fetch")],
                         ids=["fetch", "update", "build", "zig-fetch"])
def test_jobs_must_be_a_positive_number(tmp_path: Path, cache_dir: Path, command: tuple[str, ...],
                                        jobs: str) -> None:
    """-j 0 used to reach the thread pool (a traceback); now argparse refuses it in one line.
    The package needs a fetch, so a -j that slipped through would reach the pool."""
    make_tree(tmp_path / "dep", {"a.txt": b"a"})
    project = make_tree(tmp_path / "app", {"treeseed.toml": b'[package]\nname = "app"\n'
                                           b'[dependencies.dep]\nurl = "../dep"\n'})
    proc = run_cli("-C", str(project), *command, "--jobs", jobs, cache=cache_dir, check=False)
    assert proc.returncode == 2, proc
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"treeseed {' '.join(command)}: error: argument -j/--jobs: "), line
    assert "1 or more" in line and "--help" in line
    assert not (cache_dir / "p").exists()


def json_error(proc) -> dict:  # type: ignore[no-untyped-def]
    """The error of a --json command: one line on stderr, the same message as JSON on stdout."""
    line = one_error_line(proc)
    got = json.loads(proc.stdout)
    assert got["error"] == line.removeprefix("treeseed: error: ")
    return got


def test_json_error_for_a_missing_file(tmp_path: Path, cache_dir: Path) -> None:
    missing = tmp_path / "nowhere.tar.gz"
    got = json_error(run_cli("fetch", str(missing), "--json", cache=cache_dir, check=False))
    assert str(missing) in got["error"] and got["what"].endswith("Error")


def test_json_error_for_hash_of_a_bad_path(tmp_path: Path, cache_dir: Path) -> None:
    missing = tmp_path / "no-such-dir"
    got = json_error(run_cli("hash", str(missing), "--json", cache=cache_dir, check=False))
    assert got["what"] == "TreeseedError"
    assert got["error"] == f"{missing}: no such file or directory"


def test_json_error_for_a_hash_mismatch(tmp_path: Path, cache_dir: Path) -> None:
    tree = make_tree(tmp_path / "demo", SPEC)
    wrong = "bt2-" + "0" * 64
    got = json_error(run_cli("fetch", str(tree), "--hash", wrong, "--json", cache=cache_dir,
                             check=False))
    actual = hash_json(tree, tmp_path / "other-cache")["bt2"]
    assert got["what"] == "HashMismatch"
    assert (got["expected"], got["actual"]) == (wrong, actual)
    assert "hash mismatch" in got["error"]
    assert not (cache_dir / "p").exists() or not any((cache_dir / "p").iterdir())


def test_json_error_for_a_command_without_a_package(tmp_path: Path, cache_dir: Path) -> None:
    """update --json outside a package: every command taking --json reports errors this way."""
    empty = tmp_path / "empty"
    empty.mkdir()
    got = json_error(run_cli("-C", str(empty), "update", "--json", cache=cache_dir, check=False))
    assert "treeseed.toml" in got["error"] and got["what"] == "TreeseedError"


def test_a_scheme_nobody_fetches_is_one_line_naming_what_to_configure(cache_dir: Path) -> None:
    """An unknown scheme with no configured fetcher: one line that names the scheme, what
    treeseed fetches and the [fetchers] entry that would take it; nothing is cached."""
    proc = run_cli("fetch", "s3://bucket/pkg.tar.gz", cache=cache_dir, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "no fetcher for scheme 's3'" in lines[0] and "git+file://" in lines[0]
    assert '[fetchers] "s3" = "command ..."' in lines[0]
    assert not (cache_dir / "p").exists() or not any((cache_dir / "p").iterdir())


def test_the_parser_of_one_command_is_the_full_parser_s() -> None:
    """main builds only the named command's family; every command must parse the same there
    as in the whole parser, and each family must register exactly its FAMILIES entries."""
    from treeseed.cli import FAMILIES, build_parser, command_of

    full = build_parser()
    commands = next(a for a in full._actions if a.choices)
    assert set(commands.choices) == set(FAMILIES)
    for command in FAMILIES:
        alone = build_parser(command)
        only = next(a for a in alone._actions if a.choices)
        assert command in only.choices
        assert set(only.choices) == {c for c, m in FAMILIES.items() if m is FAMILIES[command]}
        assert (only.choices[command].format_usage().split(" ", 2)[2]
                == commands.choices[command].format_usage().split(" ", 2)[2])
    assert command_of(["--cache-dir", "fetch", "-q", "hash", "x"]) == "hash"
    assert command_of(["-C", "dir", "-v", "seed", "status"]) == "seed"
    assert command_of(["--cache-dir=x", "update"]) == "update"
    assert command_of(["nosuch"]) is None and command_of(["-q"]) is None
