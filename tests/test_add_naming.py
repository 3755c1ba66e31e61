"""``treeseed add`` names a dependency by the package's own name (``six``, not ``six-1.17.0``).

End to end: real archives served on 127.0.0.1, the real CLI, the manifest it writes. The
precedence and the sanitising of stranger's metadata are checked on real trees in-process
(:func:`treeseed.naming.dependency_name`), each source alone and against the next.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

import pytest
from depskit import error_lines, make_root, serve
from helpers import make_tree, run_cli, tar_gz
from httpserver import Server

from treeseed.naming import dependency_name, name_from_url, safe_name

PKG_INFO = b"Metadata-Version: 2.1\nName: six\nVersion: 1.17.0\n\nName: not-the-description\n"


def added(root: Path) -> dict:
    return tomllib.loads((root / "treeseed.toml").read_text())["dependencies"]


def test_an_sdist_is_named_from_its_pkg_info(tmp_path: Path, cache_dir: Path, server: Server) -> None:
    """The URL says ``download`` and a digest; the sdist's PKG-INFO says ``six``."""
    body = tar_gz({"PKG-INFO": PKG_INFO, "six.py": b"# six\n"}, "six-1.17.0")
    url = serve(server, "/packages/9a/3b/0123456789abcdef/download.tar.gz", body)
    root = make_root(tmp_path)
    proc = run_cli("-C", str(root), "add", url, cache=cache_dir)
    assert proc.stdout.startswith("added six bt2-")
    assert added(root)["six"]["url"] == url


def test_without_metadata_the_url_names_it_without_its_version(tmp_path: Path, cache_dir: Path,
                                                               server: Server) -> None:
    body = tar_gz({"README": b"just files\n"}, "libfoo-0.9")
    plain = serve(server, "/libfoo-0.9.tar.gz", body)
    forge = serve(server, "/owner/libbar/archive/refs/tags/v2.1.0.tar.gz", body + b"\0" * 512)
    root = make_root(tmp_path)
    run_cli("-C", str(root), "add", plain, cache=cache_dir)
    run_cli("-C", str(root), "add", forge, cache=cache_dir)
    deps = added(root)
    assert deps["libfoo"]["url"] == plain
    assert deps["libbar"]["url"] == forge


def test_name_overrides_and_must_be_a_valid_key(tmp_path: Path, cache_dir: Path,
                                                server: Server) -> None:
    body = tar_gz({"PKG-INFO": PKG_INFO}, "six-1.17.0")
    url = serve(server, "/six-1.17.0.tar.gz", body)
    root = make_root(tmp_path)
    text = (root / "treeseed.toml").read_text()
    err = error_lines(run_cli("-C", str(root), "add", url, "--name", "../six", cache=cache_dir,
                              check=False))
    assert "--name '../six'" in err and "letters, digits" in err
    assert server.hits == []  # refused before anything was fetched
    assert (root / "treeseed.toml").read_text() == text
    run_cli("-C", str(root), "add", url, "--name", "py-six", cache=cache_dir)
    assert list(added(root)) == ["py-six"]


# --------------------------------------------------------------------------- precedence, in-process


SOURCES = {
    "treeseed.toml": b'[package]\nname = "from-treeseed"\n',
    "build.zig.zon": b'.{ .name = .from_zon, .version = "0.1.0", .paths = .{""} }\n',
    "PKG-INFO": b"Metadata-Version: 2.1\nName: from-pkg-info\n",
    "pyproject.toml": b'[project]\nname = "from-pyproject"\n',
    "package.json": json.dumps({"name": "@scope/from-npm"}).encode(),
    "Cargo.toml": b'[package]\nname = "from-cargo"\n',
}
EXPECTED = ["from-treeseed", "from_zon", "from-pkg-info", "from-pyproject", "scope-from-npm",
            "from-cargo"]


@pytest.mark.parametrize("first", range(len(SOURCES)), ids=list(SOURCES))
def test_precedence_of_metadata_files(tmp_path: Path, first: int) -> None:
    """With every source from ``first`` on present, the ``first`` one names the package."""
    tree = make_tree(tmp_path / "t", dict(list(SOURCES.items())[first:]))
    assert dependency_name(tree, "https://example.org/url-name-1.0.tar.gz") == EXPECTED[first]


@pytest.mark.parametrize(("metadata", "expected"), [
    (b"Name: ../../etc/passwd\n", "etc-passwd"),          # no path survives
    (b"Name: evil\n name\n", "evil"),                     # one line only
    (b"Name: My Package (fork)\n", "My-Package-fork"),
    (b"Name: \xc3\xa9t\xc3\xa9\n", "url-name"),           # nothing ASCII left: the URL's name
    (b"Name: ...\n", "url-name"),
    (b"Name: " + b"x" * 500 + b"\n", "x" * 64),
    (b"\n\nName: after-the-headers\n", "url-name"),       # the description is not a header
], ids=["path", "continuation", "spaces", "non-ascii", "dots", "long", "body"])
def test_metadata_names_are_sanitised(tmp_path: Path, metadata: bytes, expected: str) -> None:
    tree = make_tree(tmp_path / "t", {"PKG-INFO": metadata})
    name = dependency_name(tree, "https://example.org/url-name-1.0.tar.gz")
    assert name == expected
    assert safe_name(name) == name  # what add writes is a key manifest.py accepts


def test_metadata_behind_a_symlink_or_too_large_is_not_read(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "t", {"real/PKG-INFO": b"Name: linked\n",
                                      "PKG-INFO": ("link", "real/PKG-INFO"),
                                      "package.json": b'{"name": "' + b"n" * (2 << 20) + b'"}',
                                      "Cargo.toml": b"[package\nname = broken"})
    assert os.path.islink(tree / "PKG-INFO")
    assert dependency_name(tree, "https://example.org/fallback-2.0.zip") == "fallback"


@pytest.mark.parametrize(("url", "expected"), [
    ("https://zlib.net/zlib-1.3.1.tar.gz", "zlib"),
    ("https://files.pythonhosted.org/packages/ab/cd/python-dateutil-2.9.0.post0.tar.gz",
     "python-dateutil"),
    ("https://github.com/o/repo/archive/refs/tags/v1.2.3.tar.gz", "repo"),
    ("https://codeload.github.com/o/repo/tar.gz/refs/tags/v1.0", "repo"),
    ("https://github.com/o/r/archive/0123456789abcdef0123456789abcdef01234567.zip", "r"),
    ("git+https://github.com/madler/zlib.git#v1.3.1", "zlib"),
    ("https://example.org/c-ares-1.28.1.tar.gz?download=1", "c-ares"),
    ("https://example.org/v8-12.0.tar.xz", "v8"),
    ("../vendor/vend.tar.gz", "vend"),
    ("https://example.org/", "dependency"),
])
def test_names_from_urls(url: str, expected: str) -> None:
    assert name_from_url(url) == expected
