"""NAR, git tree and SWHID hashes checked against the real tools.

Every tree below is hashed with ``hash_tree(..., ["nar", "git", "swhid"])`` and compared with
``nix-hash`` and ``nix hash path`` (the NAR hash), ``nix-store --dump`` (the NAR bytes
themselves) and ``git add -A && git write-tree`` (the tree id). Nix runs with its configuration,
state and store directories pointed into a temporary directory, so nothing here touches the
machine's Nix setup or the network; git runs with a separate git dir, so the tree under test
never gains a ``.git``.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import unicodedata
from collections.abc import Callable
from pathlib import Path

import pytest

from treeseed.errors import BadPackage, TreeseedError
from treeseed.hashing import hash_tree
from treeseed.hashing.gittree import GitTreeFormat, object_id
from treeseed.hashing.nar import (
    NarFormat,
    from_nix32,
    nar_bytes_stream,
    nest,
    nix32,
    parse_nix_hash,
    sri,
)
from treeseed.package import Entry, scan_tree

MiB = 1 << 20
FORMATS = ["nar", "git", "swhid"]


# --- trees -------------------------------------------------------------------------------------


def write(root: Path, rel: str, data: bytes = b"", mode: int = 0o644) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


def link(root: Path, rel: str, target: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, path)


def blob(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def tree_mixed(root: Path) -> None:
    """A little of everything: nesting, exec, empty, a file over 1 MiB, links, unicode."""
    write(root, "README", b"hello\n")
    write(root, "bin/run.sh", b"#!/bin/sh\necho hi\n", 0o755)
    write(root, "src/lib/core.c", b"int main(void) { return 0; }\n")
    write(root, "src/lib/empty.h")
    write(root, "src/data/big.bin", blob(1, MiB + 12345))
    write(root, "src/ünïcödé/名前.txt", "текст\n".encode())
    link(root, "latest", "src/lib/core.c")
    link(root, "src/liblink", "lib")
    link(root, "src/lib/dangling", "not/there")


def tree_sort_order(root: Path) -> None:
    """Names where git's "directory sorts as name/" rule and NAR's plain byte order disagree."""
    for name in ("a.b", "a-b", "a0", "a_", "A", "ab", "a b", "a~"):
        write(root, name, name.encode())
    write(root, "a/b", b"inside a")
    write(root, "a/b.d/x", b"x")
    write(root, "a/b-c", b"-")
    write(root, "a/b0", b"0")
    write(root, "x.y", b"")
    write(root, "x/y", b"")
    write(root, "x-y/z", b"")
    write(root, "x0/z", b"")
    link(root, "a+", "a")
    link(root, "a/b.l", "../a.b")


def tree_unicode(root: Path) -> None:
    """NFC and NFD spellings of one name are different names to every tool (bytes, not text)."""
    nfc = unicodedata.normalize("NFC", "café")
    nfd = unicodedata.normalize("NFD", "café")
    write(root, nfc, b"nfc")
    write(root, nfd, b"nfd")
    write(root, "日本語/ファイル.txt", b"jp")
    write(root, "🦀.rs", b"fn main() {}\n", 0o755)
    write(root, "ß/Ω/ǅ", b"")
    write(root, "\ufeffbom", b"bom")
    link(root, "зеркало", "日本語/ファイル.txt")


def tree_sizes(root: Path) -> None:
    """File lengths around NAR padding (8), the inline/stream switch (64 KiB) and 1 MiB reads."""
    sizes = [0, 1, 7, 8, 9, 15, 16, 17, 65535, 65536, 65537, MiB - 1, MiB, MiB + 1, 3 * MiB + 5]
    for i, size in enumerate(sizes):
        write(root, f"f{size:08d}", blob(i, size), 0o755 if i % 3 == 0 else 0o644)


def tree_name_lengths(root: Path) -> None:
    """Names of 1 to 17 bytes: every amount of padding in a NAR string."""
    for n in range(1, 18):
        write(root, "n" * n, b"z" * n)
        link(root, "d/" + "l" * n, "../" + "n" * n)


def tree_links(root: Path) -> None:
    """Link text is kept raw: trailing slashes, "./", "..", chains, loops and dangling links."""
    write(root, "f", b"file")
    write(root, "sub/g", b"g")
    link(root, "to_file", "f")
    link(root, "to_dir", "sub")
    link(root, "to_dir_slash", "sub/")
    link(root, "dot_slash", "./f")
    link(root, "detour", "sub/../f")
    link(root, "sub/up", "../f")
    link(root, "chain", "to_file")
    link(root, "dangling", "missing")
    link(root, "sub/dangling_dir", "nowhere/at/all/")
    link(root, "loop_a", "loop_b")
    link(root, "loop_b", "loop_a")
    link(root, "self", "self")


def tree_modes(root: Path) -> None:
    """Only the owner exec bit makes a file executable, for Nix, git and treeseed alike."""
    for mode in (0o644, 0o755, 0o744, 0o700, 0o654, 0o645, 0o711, 0o600, 0o444, 0o400, 0o777):
        write(root, f"m{mode:03o}", f"{mode:o}".encode(), mode)


def tree_empty(root: Path) -> None:
    """No entries at all: the empty directory's NAR and git's empty tree."""


def tree_single(root: Path) -> None:
    write(root, "only.txt", b"just me\n")


def tree_deep(root: Path) -> None:
    deep = "/".join(f"d{i}" for i in range(40))
    write(root, deep + "/leaf", b"deep", 0o755)
    link(root, deep + "/up", "../" * 40 + "top")
    write(root, "top", b"top")


def tree_random(seed: int) -> Callable[[Path], None]:
    """A random tree (fixed seed): clashing name shapes, sizes, exec bits and links."""

    def build(root: Path) -> None:
        rng = random.Random(seed)
        parts = ["a", "a.b", "a-b", "a0", "b", "é", "e\u0301", "_", "Z", "z9", "x y"]
        files: list[str] = []
        for i in range(60):
            depth = rng.choice([1, 1, 2, 2, 3, 4])
            rel = "/".join(rng.choice(parts) for _ in range(depth))
            path = root / rel
            if any((root / p).is_file() or (root / p).is_symlink() for p in _prefixes(rel)):
                continue
            if path.exists() or path.is_symlink():
                continue
            if rng.random() < 0.2 and files:
                target = rng.choice(files + ["missing"])
                up = "../" * (depth - 1)
                link(root, rel, up + target)
            else:
                size = rng.choice([0, 1, 8, 100, 4096, 70_000, MiB + rng.randrange(100)])
                write(root, rel, blob(seed * 1000 + i, size), rng.choice([0o644, 0o755, 0o744]))
                files.append(rel)

    return build


def _prefixes(rel: str) -> list[str]:
    parts = rel.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


TREES: dict[str, Callable[[Path], None]] = {
    "mixed": tree_mixed,
    "sort_order": tree_sort_order,
    "unicode": tree_unicode,
    "sizes": tree_sizes,
    "name_lengths": tree_name_lengths,
    "links": tree_links,
    "modes": tree_modes,
    "empty": tree_empty,
    "single": tree_single,
    "deep": tree_deep,
    "random1": tree_random(1),
    "random2": tree_random(2),
    "random3": tree_random(3),
}


@pytest.fixture(params=sorted(TREES))
def tree(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    root.mkdir()
    TREES[request.param](root)
    return root


def ours(root: Path) -> dict[str, str]:
    return hash_tree(root, scan_tree(root, str(root)), FORMATS)


# --- the real tools ----------------------------------------------------------------------------


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (Debian: nix-bin / git)")
    return path


@pytest.fixture(scope="session")
def nix_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for Nix commands with every writable location in a private directory."""
    base = tmp_path_factory.mktemp("nix")
    dirs = {
        "HOME": "home",
        "NIX_CONF_DIR": "conf",
        "NIX_STORE_DIR": "store",
        "NIX_STATE_DIR": "state",
        "NIX_LOG_DIR": "log",
        "NIX_DATA_DIR": "data",
        "XDG_CACHE_HOME": "cache",
        "XDG_CONFIG_HOME": "config",
        "XDG_DATA_HOME": "xdata",
        "XDG_STATE_HOME": "xstate",
    }
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}
    for var, name in dirs.items():
        (base / name).mkdir()
        env[var] = str(base / name)
    (base / "conf" / "nix.conf").write_text(f"store = {base / 'store'}\nsubstituters =\n")
    return env


def run(args: list[str], env: dict[str, str], **kw: object) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, check=True, capture_output=True, **kw)  # type: ignore[call-overload]


def nix_cmd(env: dict[str, str], *args: str) -> str:
    """Run ``nix <args>`` with nix-command enabled; skip when this nix lacks the subcommand."""
    nix = need("nix")
    proc = subprocess.run(
        [nix, "--extra-experimental-features", "nix-command", *args],
        env=env, capture_output=True, text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"`nix {' '.join(args[:2])}` does not work here: {proc.stderr.strip()}")
    return proc.stdout.strip()


def git_write_tree(root: Path, gitdir: Path) -> str:
    git = need("git")
    home = gitdir.parent / "git-home"
    home.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_DIR": str(gitdir),
        "GIT_WORK_TREE": str(root),
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid",
        "LC_ALL": "C",
    }
    run([git, "init", "-q"], env)
    for key, value in [("core.fileMode", "true"), ("core.symlinks", "true"),
                       ("core.autocrlf", "false"), ("core.precomposeUnicode", "false")]:
        run([git, "config", key, value], env)
    run([git, "add", "-A"], env)
    return run([git, "write-tree"], env, text=True).stdout.strip()


# --- against the tools -------------------------------------------------------------------------


def test_nar_matches_nix_hash(tree: Path, nix_env: dict[str, str]) -> None:
    expected = run([need("nix-hash"), "--type", "sha256", "--base32", str(tree)], nix_env, text=True)
    assert nix32(parse_nix_hash(ours(tree)["nar"])) == expected.stdout.strip()


def test_nar_matches_nix_hash_path(tree: Path, nix_env: dict[str, str]) -> None:
    assert ours(tree)["nar"] == nix_cmd(nix_env, "hash", "path", "--type", "sha256", str(tree))


def test_nar_bytes_match_nix_store_dump(tree: Path, nix_env: dict[str, str]) -> None:
    expected = run([need("nix-store"), "--dump", str(tree)], nix_env).stdout
    entries = scan_tree(tree, str(tree))
    # Chunks may be views into a reused buffer: copy each one before asking for the next.
    got = b"".join(bytes(chunk) for chunk in nar_bytes_stream(tree, entries, str(tree)))
    assert got == expected


def test_git_matches_write_tree(tree: Path, tmp_path: Path) -> None:
    expected = git_write_tree(tree, tmp_path / "gitdir")
    got = ours(tree)
    assert got["git"] == expected
    assert got["swhid"] == "swh:1:dir:" + expected


def test_empty_directories_are_not_part_of_the_package(tmp_path: Path, nix_env: dict) -> None:
    """A NAR keeps empty directories and a package cannot: the package NAR is the tree without them."""
    root = tmp_path / "tree"
    write(root, "keep/f", b"f")
    (root / "empty").mkdir()
    (root / "keep" / "hollow" / "deeper").mkdir(parents=True)
    nix_hash = [need("nix-hash"), "--type", "sha256", "--base32", str(root)]
    with_empty = run(nix_hash, nix_env, text=True).stdout.strip()
    got = ours(root)
    git_id = git_write_tree(root, tmp_path / "gitdir")
    (root / "empty").rmdir()
    shutil.rmtree(root / "keep" / "hollow")
    without = run(nix_hash, nix_env, text=True).stdout.strip()
    assert with_empty != without
    assert nix32(parse_nix_hash(got["nar"])) == without
    assert got["git"] == git_id  # git drops empty directories too


def test_hash_tree_single_thread_agrees(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    tree_random(7)(root)
    entries = scan_tree(root, str(root))
    assert hash_tree(root, entries, FORMATS, workers=1) == hash_tree(root, entries, FORMATS)


# --- failure modes -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [10, 200_000])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("change", [-1, +1])
def test_file_changed_after_scan_is_refused(tmp_path: Path, size: int, fmt: str, change: int) -> None:
    root = tmp_path / "tree"
    write(root, "f", bytes(size))
    entries = scan_tree(root, "src")
    write(root, "f", bytes(size + change))
    with pytest.raises(TreeseedError, match="changed while being hashed"):
        hash_tree(root, entries, [fmt], source="src")


def test_path_used_as_file_and_directory_is_refused() -> None:
    with pytest.raises(BadPackage, match="also a file"):
        nest([Entry("a", "file"), Entry("a/b", "file")], "src")
    with pytest.raises(BadPackage, match="both a file and a directory"):
        nest([Entry("a/b", "file"), Entry("a", "file")], "src")
    with pytest.raises(BadPackage, match="listed twice"):
        nest([Entry("a", "file"), Entry("a", "symlink", target="b")], "src")


def test_formats_report_their_names(tmp_path: Path) -> None:
    assert NarFormat(tmp_path, "").name == "nar"
    assert NarFormat(tmp_path, "").file_hasher(Entry("f", "file", 1)) is None
    assert GitTreeFormat(tmp_path, "", swhid=False).name == "git"
    assert GitTreeFormat(tmp_path, "", swhid=True).name == "swhid"


def test_git_objects_known_ids() -> None:
    # `git hash-object /dev/null` and `git mktree </dev/null`, fixed by git itself.
    assert object_id(b"blob", b"").hex() == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
    assert object_id(b"tree", b"").hex() == "4b825dc642cb6eb9a060e54bf8d69288fbee4904"


# --- nix32 / SRI / parsing ---------------------------------------------------------------------

# (hex, nix32, SRI) as printed by nix-hash --to-base32 and `nix hash to-sri` (Nix 2.8).
VECTORS = [
    (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",  # sha256("")
        "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73",
        "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
    ),
    (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",  # sha256("abc")
        "1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s",
        "sha256-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=",
    ),
    (
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000",
        "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    ),
    (
        "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "1zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
        "sha256-//////////////////////////////////////////8=",
    ),
    (
        "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20",
        "080z3qfiq6qs34c1f5hm2h9i448h1w70s30b184hh1q60l2060h1",
        "sha256-AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=",
    ),
]


@pytest.mark.parametrize(("hexd", "b32", "sri_form"), VECTORS)
def test_nix_hash_spellings(hexd: str, b32: str, sri_form: str) -> None:
    digest = bytes.fromhex(hexd)
    assert nix32(digest) == b32
    assert from_nix32(b32) == digest
    assert sri(digest) == sri_form
    for spelling in (hexd, hexd.upper(), b32, sri_form, "sha256:" + b32, "sha256:" + hexd,
                     "sha256:" + sri_form[len("sha256-"):], f"  {sri_form}\n"):
        assert parse_nix_hash(spelling) == digest, spelling


def test_nix32_matches_nix_for_random_digests(nix_env: dict[str, str]) -> None:
    rng = random.Random(32)
    digests = [rng.randbytes(32) for _ in range(20)]
    out = run([need("nix-hash"), "--type", "sha256", "--to-base32", *(d.hex() for d in digests)],
              nix_env, text=True).stdout.split()
    assert out == [nix32(d) for d in digests]
    for d in digests[:3]:
        assert nix_cmd(nix_env, "hash", "to-sri", "--type", "sha256", d.hex()) == sri(d)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "expected sha256"),
        ("sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFV=", "canonical"),  # spare bits set
        ("sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuF", "base64"),
        ("sha256-" + "A" * 40, "canonical"),
        ("2mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73", "beyond"),  # Nix rejects too
        ("0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c7e", "not a nix32 digit"),
        ("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85", "expected sha256"),
        ("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85g", "expected sha256"),
        ("e3b0 44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "expected sha256"),
        ("sha512-z4PhNX7vuL3xVChQ1m2AB9Yg5AULVxXcg/SpIdNs6c5H0NE8XYXysP+DGNKHfuwvY7kxvUdBeoGlODJ6+SfaPg==",
         "is sha512"),
        ("sha1:2jmj7l5rSw0yVb/vlWAYkK/YBwk=", "is sha1"),
    ],
)
def test_parse_nix_hash_rejects(text: str, why: str) -> None:
    with pytest.raises(TreeseedError, match=why):
        parse_nix_hash(text)


def test_sri_refuses_other_lengths() -> None:
    with pytest.raises(ValueError):
        sri(bytes(20))
