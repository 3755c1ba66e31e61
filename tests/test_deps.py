"""Dependencies: ``treeseed fetch`` (no URL) in a package, ``add``, ``path`` and ``--offline``.

Every package here is a real .tar.gz served by a real HTTP server on 127.0.0.1
(tests/httpserver.py), hashed by the real ``treeseed hash``, and fetched by the real CLI in a
subprocess pointed at the package with ``-C``. The server's request log (``hits``) is the
witness for what was fetched, how often, and that a cached run asks for nothing.
"""

from __future__ import annotations

import json
import os
import threading
import tomllib
from pathlib import Path

import pytest
from depskit import (
    Packages,
    assert_declared,
    cached,
    dep_toml,
    deps_fetch,
    error_lines,
    make_root,
    manifest,
    serve,
)
from helpers import only_insertions, run_cli, run_on_terminal, tar_gz
from httpserver import Server, closed_port

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


# --------------------------------------------------------------------------- a tree of packages


def test_three_levels_deep(tmp_path: Path, cache_dir: Path, server: Server) -> None:
    """root -> a -> b -> c: a relative URL in a (read against a's own URL), an absolute one in b."""
    pk = Packages(tmp_path)
    c_body, c = pk.build("c")
    c_url = serve(server, "/deep/er/c-1.0.tar.gz", c_body)
    b_body, b = pk.build("b", dep_toml("c", c_url, c))
    serve(server, "/pkgs/b-1.0.tar.gz", b_body)
    a_body, a = pk.build("a", dep_toml("b", "b-1.0.tar.gz", b))  # relative to a's URL
    a_url = serve(server, "/pkgs/a-1.0.tar.gz", a_body)
    root = make_root(tmp_path, dep_toml("a", a_url, a))

    proc = deps_fetch(cache_dir, root, check=True)
    assert sorted(server.hits) == ["/deep/er/c-1.0.tar.gz", "/pkgs/a-1.0.tar.gz", "/pkgs/b-1.0.tar.gz"]
    assert cached(cache_dir) == {a, b, c}
    for name, h in (("a", a), ("b", b), ("c", c)):
        assert f"fetched {name} {h}" in proc.stderr
    assert server.url("/pkgs/b-1.0.tar.gz") in proc.stderr  # where b came from
    assert "3 dependencies: 3 fetched" in proc.stderr.splitlines()[-1]
    assert proc.stdout == ""

    out = run_cli("-C", str(root), "path", "a", cache=cache_dir).stdout
    assert out == f"{cache_dir / 'p' / a}\n"
    assert (Path(out.strip()) / "src" / "a.c").is_file()

    # Everything cached: nothing is asked of the server, and the summary says so.
    again = deps_fetch(cache_dir, root, check=True)
    assert len(server.hits) == 3
    assert "fetched" not in again.stderr.replace("0 fetched", "")
    assert "3 dependencies: 0 fetched (0 B), 3 already cached" in again.stderr

    # The JSON report names each package's parent.
    report = json.loads(deps_fetch(cache_dir, root, "--json", check=True).stdout)
    assert {(r["name"], r["hash"], r["parent"], r["cached"]) for r in report} == {
        ("a", a, None, True), ("b", b, "a", True), ("c", c, "b", True)}

    # A package missing deep in the tree is fetched alone.
    run_cli("cache", "rm", c, cache=cache_dir)
    third = deps_fetch(cache_dir, root, check=True)
    assert server.hits[3:] == ["/deep/er/c-1.0.tar.gz"]
    assert "3 dependencies: 1 fetched" in third.stderr


def test_run_from_a_subdirectory_finds_the_package(tmp_path: Path, cache_dir: Path,
                                                   server: Server) -> None:
    pk = Packages(tmp_path)
    body, h = pk.build("a")
    root = make_root(tmp_path, dep_toml("a", serve(server, "/a.tar.gz", body), h))
    deps_fetch(cache_dir, root / "src", check=True)
    assert cached(cache_dir) == {h}
    assert run_cli("-C", str(root / "src"), "path", "a", cache=cache_dir).stdout.strip() \
        == str(cache_dir / "p" / h)


def test_lazy_dependencies(tmp_path: Path, cache_dir: Path, server: Server) -> None:
    """The package's own lazy deps wait for --lazy; a lazy dep of a dep is never fetched."""
    pk = Packages(tmp_path)
    inner_body, inner = pk.build("inner")
    serve(server, "/inner.tar.gz", inner_body)
    a_body, a = pk.build("a", dep_toml("inner", "inner.tar.gz", inner, lazy=True))
    lazy_body, lazy = pk.build("docs")
    root = make_root(tmp_path, dep_toml("a", serve(server, "/a.tar.gz", a_body), a),
                     dep_toml("docs", serve(server, "/docs.tar.gz", lazy_body), lazy, lazy=True))

    proc = deps_fetch(cache_dir, root, check=True)
    assert server.hits == ["/a.tar.gz"]
    assert cached(cache_dir) == {a}
    assert "1 dependency: 1 fetched" in proc.stderr
    missing = run_cli("-C", str(root), "path", "docs", cache=cache_dir, check=False)
    # A lazy dependency not fetched yet: the build protocol's distinct status (75), not an error.
    assert missing.returncode == 75 and missing.stdout == ""
    assert "'docs'" in missing.stderr and "not in the cache" in missing.stderr

    proc = deps_fetch(cache_dir, root, "--lazy", check=True)
    assert server.hits == ["/a.tar.gz", "/docs.tar.gz"]
    assert cached(cache_dir) == {a, lazy}
    assert f"fetched docs {lazy}" in proc.stderr
    assert "/inner.tar.gz" not in server.hits
    assert run_cli("-C", str(root), "path", "docs", cache=cache_dir).stdout.strip() \
        == str(cache_dir / "p" / lazy)


def test_shared_dependency_is_fetched_once(tmp_path: Path, cache_dir: Path, server: Server) -> None:
    """A diamond, root -> a, b -> c, where a and b name c at different URLs with the same hash."""
    pk = Packages(tmp_path)
    c_body, c = pk.build("c")
    serve(server, "/x/c.tar.gz", c_body)
    serve(server, "/y/c.tar.gz", c_body)
    a_body, a = pk.build("a", dep_toml("c", "../x/c.tar.gz", c))
    b_body, b = pk.build("b", dep_toml("c", server.url("/y/c.tar.gz"), c))
    root = make_root(tmp_path, dep_toml("a", serve(server, "/a/a.tar.gz", a_body), a),
                     dep_toml("b", serve(server, "/b/b.tar.gz", b_body), b))

    proc = run_cli("-C", str(root), "fetch", "-j", "8", cache=cache_dir)
    assert sorted(h for h in server.hits if "c.tar.gz" in h) in (["/x/c.tar.gz"], ["/y/c.tar.gz"])
    assert len(server.hits) == 3
    assert cached(cache_dir) == {a, b, c}
    assert proc.stderr.count(f"fetched c {c}") == 1
    assert "3 dependencies: 3 fetched" in proc.stderr


def test_dependencies_are_fetched_in_parallel(tmp_path: Path, cache_dir: Path, server: Server) -> None:
    """The server holds each reply until both requests are in: a serial client would wait for
    the barrier's timeout and get 503 instead."""
    pk = Packages(tmp_path)
    barrier = threading.Barrier(2, timeout=120)  # an outer bound: a busy machine starts processes slowly
    (one_body, one), (two_body, two) = pk.build("one"), pk.build("two")
    root = make_root(tmp_path,
                     dep_toml("one", serve(server, "/one.tar.gz", one_body, barrier=barrier), one),
                     dep_toml("two", serve(server, "/two.tar.gz", two_body, barrier=barrier), two))
    proc = deps_fetch(cache_dir, root)
    assert proc.returncode == 0, proc.stderr
    assert cached(cache_dir) == {one, two}


def test_progress_display_on_a_terminal(tmp_path: Path, cache_dir: Path, server: Server) -> None:
    """On a terminal (a real pty) the run draws bars with bytes and rate, then the summary."""
    pk = Packages(tmp_path)
    big_body, big = pk.build("big", extra=os.urandom(3 << 20))
    root = make_root(tmp_path, dep_toml("big", serve(server, "/big.tar.gz", big_body, trickle=0.01), big))
    text = run_on_terminal("-C", str(root), "fetch", cache=cache_dir)
    assert "big" in text and "packages" in text
    assert "MB" in text and "/s" in text  # bytes so far and the rate
    assert big in text
    assert "1 dependency: 1 fetched" in text


# --------------------------------------------------------------------------- URLs and mirrors


@pytest.mark.parametrize("dead", ["refused", "404"])
def test_dead_first_url_falls_back_to_a_mirror(tmp_path: Path, cache_dir: Path, server: Server,
                                               dead: str) -> None:
    pk = Packages(tmp_path)
    body, h = pk.build("a")
    if dead == "refused":
        first, reason = f"http://127.0.0.1:{closed_port()}/a.tar.gz", "connection refused"
    else:
        first, reason = server.url("/gone/a.tar.gz"), "HTTP 404"
    mirror = serve(server, "/mirror/a.tar.gz", body)
    root = make_root(tmp_path, dep_toml("a", first, h, mirrors=[mirror]))

    proc = deps_fetch(cache_dir, root, check=True)
    assert cached(cache_dir) == {h}
    warning = next(line for line in proc.stderr.splitlines() if line.startswith("warning: a: "))
    assert first in warning and reason in warning, proc.stderr
    assert f"fetched a {h}" in proc.stderr and f"from {mirror}" in proc.stderr


def test_mirror_serving_other_content_is_rejected(tmp_path: Path, cache_dir: Path,
                                                  servers) -> None:
    pk = Packages(tmp_path)
    good_body, good = pk.build("a")
    evil_body, evil = pk.build("a", extra=b"/* backdoor */\n")
    assert good != evil
    bad_srv, good_srv = servers(), servers()
    bad = serve(bad_srv, "/a.tar.gz", evil_body)
    ok = serve(good_srv, "/a.tar.gz", good_body)
    root = make_root(tmp_path, dep_toml("a", bad, good, mirrors=[ok]))

    proc = deps_fetch(cache_dir, root, check=True)
    assert bad_srv.hits == ["/a.tar.gz"] and good_srv.hits == ["/a.tar.gz"]
    assert cached(cache_dir) == {good}  # the other package was never installed
    warning = next(line for line in proc.stderr.splitlines() if line.startswith("warning: a: "))
    assert bad in warning and "hash mismatch" in warning and evil in warning
    assert f"fetched a {good}" in proc.stderr and f"from {ok}" in proc.stderr


def test_all_urls_failing_lists_each_with_its_reason(tmp_path: Path, cache_dir: Path,
                                                     server: Server) -> None:
    pk = Packages(tmp_path)
    good_body, good = pk.build("a")
    other_body, other = pk.build("a", extra=b"/* changed */\n")
    refused = f"http://127.0.0.1:{closed_port()}/a.tar.gz"
    missing = server.url("/404/a.tar.gz")
    wrong = serve(server, "/wrong/a.tar.gz", other_body)
    root = make_root(tmp_path, dep_toml("a", refused, good, mirrors=[missing, wrong]))

    proc = deps_fetch(cache_dir, root)
    err = error_lines(proc)
    assert "1 dependency could not be fetched" in err
    assert "  a, declared at " in err
    assert_declared(err, root, "a")
    by_url = {url: next(line for line in err.splitlines() if url in line)
              for url in (refused, missing, wrong)}
    assert "connection refused" in by_url[refused]
    assert "HTTP 404" in by_url[missing]
    assert "hash mismatch" in by_url[wrong] and good in by_url[wrong] and other in by_url[wrong]
    assert cached(cache_dir) == set()
    assert not os.listdir(cache_dir / "tmp")


def test_two_failing_dependencies_are_both_listed(tmp_path: Path, cache_dir: Path,
                                                  server: Server) -> None:
    pk = Packages(tmp_path)
    ok_body, ok = pk.build("ok")
    x_body, x = pk.build("x")
    y_body, y = pk.build("y")
    x_url = server.url("/missing/x.tar.gz")
    y_url = f"http://127.0.0.1:{closed_port()}/y.tar.gz"
    root = make_root(tmp_path, dep_toml("x", x_url, x),
                     dep_toml("ok", serve(server, "/ok.tar.gz", ok_body), ok),
                     dep_toml("y", y_url, y))
    err = error_lines(deps_fetch(cache_dir, root))
    assert "2 dependencies could not be fetched" in err
    assert "  x, declared at " in err and "  y, declared at " in err
    assert_declared(err, root, "x")
    assert_declared(err, root, "y")
    assert f"{x_url}: HTTP 404" in err
    assert y_url in err and "connection refused" in err
    assert cached(cache_dir) == {ok}  # the one that works is fetched all the same


def test_failing_dependency_of_a_dependency_names_its_parent(tmp_path: Path, cache_dir: Path,
                                                             server: Server) -> None:
    pk = Packages(tmp_path)
    _, b = pk.build("b")
    a_body, a = pk.build("a", dep_toml("b", "nowhere/b.tar.gz", b))
    root = make_root(tmp_path, dep_toml("a", serve(server, "/pkgs/a.tar.gz", a_body), a))
    err = error_lines(deps_fetch(cache_dir, root))
    assert "  b (needed by a), declared at " in err
    assert f"a ({a}): treeseed.toml:" in err  # the manifest inside a, with its line
    assert f"{server.url('/pkgs/nowhere/b.tar.gz')}: HTTP 404" in err
    assert cached(cache_dir) == {a}


# --------------------------------------------------------------------------- manifest errors


@pytest.mark.parametrize("body, key, line, words", [
    ('url = "https://example.invalid/x.tar.gz"\nurll = "oops"\n', "urll", 3, "unknown key"),
    ('url = "https://example.invalid/x.tar.gz"\nlazy = "yes"\n', "lazy", 3, "must be a boolean"),
    ('url = "https://example.invalid/x.tar.gz"\nmirrors = "https://m.invalid/x"\n', "mirrors", 3,
     "must be a list"),
    ('url = "https://example.invalid/x.tar.gz"\nhash = "sha256-abc"\n', "hash", 3,
     "not a treeseed hash"),
    ('hash = "bt2-' + "0" * 64 + '"\n', "x", 1, "has no url"),
], ids=["unknown-key", "wrong-type", "mirrors-not-a-list", "malformed-hash", "missing-url"])
def test_manifest_errors_name_file_line_and_key(tmp_path: Path, cache_dir: Path, server: Server,
                                                body: str, key: str, line: int, words: str) -> None:
    root = tmp_path / "app"
    root.mkdir()
    text = '# app\n[package]\nname = "app"\n\n# the one dependency\n[dependencies.x]\n' + body
    (root / "treeseed.toml").write_text(text)
    expected_line = line + 5  # body lines count from the [dependencies.x] header
    for args in (("fetch",), ("path", "x")):
        proc = run_cli("-C", str(root), *args, cache=cache_dir, check=False)
        err = error_lines(proc)
        (first,) = err.splitlines()
        assert first.startswith(f"treeseed: error: {root.resolve() / 'treeseed.toml'}:{expected_line} "
                                f"(key {key!r}): "), first
        assert words in first
    assert server.hits == [] and cached(cache_dir) == set()


def test_manifest_error_in_an_inline_table_names_its_line(tmp_path: Path, cache_dir: Path) -> None:
    root = tmp_path / "app"
    root.mkdir()
    (root / "treeseed.toml").write_text('[package]\nname = "app"\n\n[dependencies]\n'
                                        'ok = { url = "https://example.invalid/ok.tar.gz" }\n'
                                        'x = { url = "https://example.invalid/x.tar.gz", lazy = 1 }\n')
    (first,) = error_lines(run_cli("-C", str(root), "fetch", cache=cache_dir, check=False)).splitlines()
    assert first.startswith(f"treeseed: error: {root.resolve() / 'treeseed.toml'}:6 (key 'lazy'): ")
    assert "must be a boolean, not integer" in first


def test_error_in_a_fetched_manifest_names_the_package(tmp_path: Path, cache_dir: Path,
                                                       server: Server) -> None:
    # Built by hand: a package whose own manifest is broken cannot be hashed by treeseed.
    body = tar_gz({"treeseed.toml": b'[package]\nname = "a"\n\n[dependencies.b]\nurl = 1\n'}, "a-1.0")
    url = serve(server, "/a.tar.gz", body)
    root = make_root(tmp_path, dep_toml("a", url, "bt2-" + "1" * 64))
    err = error_lines(deps_fetch(cache_dir, root))
    assert "  a, declared at " in err
    assert url in err and "treeseed.toml:5 (key 'url')" in err and "must be a string" in err


# --------------------------------------------------------------------------- --offline


def test_offline(tmp_path: Path, cache_dir: Path, server: Server) -> None:
    pk = Packages(tmp_path)
    have_body, have = pk.build("have")
    have_url = serve(server, "/have.tar.gz", have_body)
    run_cli("fetch", have_url, "--hash", have, cache=cache_dir)  # cached beforehand
    (m1_body, m1), (m2_body, m2) = pk.build("m1"), pk.build("m2")
    m1_url = serve(server, "/m1.tar.gz", m1_body)
    m2_url = serve(server, "/m2.tar.gz", m2_body)
    local_body, local = pk.build("local")
    (tmp_path / "vendor").mkdir()
    (tmp_path / "vendor" / "local.tar.gz").write_bytes(local_body)
    # An http URL with a file:// mirror: offline, the mirror serves it.
    mir_body, mir = pk.build("mir")
    (tmp_path / "vendor" / "mir.tar.gz").write_bytes(mir_body)
    mir_mirror = (tmp_path / "vendor" / "mir.tar.gz").as_uri()
    deps = [dep_toml("have", have_url, have), dep_toml("m1", m1_url, m1),
            dep_toml("local", "../vendor/local.tar.gz", local), dep_toml("m2", m2_url, m2),
            dep_toml("mir", server.url("/mir.tar.gz"), mir, mirrors=[mir_mirror])]
    root = make_root(tmp_path, *deps)
    hits = list(server.hits)

    err = error_lines(deps_fetch(cache_dir, root, "--offline"))
    assert server.hits == hits  # no network at all
    assert "2 dependencies could not be fetched" in err
    for name in ("m1", "m2"):
        assert f"  {name}, declared at " in err
        assert_declared(err, root, name)
    assert err.count("--offline") >= 2
    for name in ("have", "local", "mir"):
        assert f"  {name}," not in err
    assert cached(cache_dir) == {have, local, mir}  # what needs no network was done

    # The environment variable means the same; with only what is at hand, the run succeeds.
    (root / "treeseed.toml").write_text(manifest("app", deps[0], deps[2], deps[4]))
    run_cli("cache", "rm", local, mir, cache=cache_dir)
    proc = deps_fetch(cache_dir, root, env={"TREESEED_OFFLINE": "1"}, check=True)
    assert server.hits == hits
    assert cached(cache_dir) == {have, local, mir}
    assert "3 dependencies: 2 fetched" in proc.stderr and "1 already cached" in proc.stderr


def test_offline_names_a_missing_dependency_of_a_cached_one(tmp_path: Path, cache_dir: Path,
                                                            server: Server) -> None:
    pk = Packages(tmp_path)
    b_body, b = pk.build("b")
    serve(server, "/b.tar.gz", b_body)
    a_body, a = pk.build("a", dep_toml("b", "b.tar.gz", b))
    a_url = serve(server, "/a.tar.gz", a_body)
    run_cli("fetch", a_url, "--hash", a, cache=cache_dir)
    root = make_root(tmp_path, dep_toml("a", a_url, a))
    err = error_lines(deps_fetch(cache_dir, root, "--offline"))
    assert "  b (needed by a), declared at " in err and "--offline" in err
    assert server.hits == ["/a.tar.gz"]


def test_examples_fetch_offline_from_an_empty_cache(cache_dir: Path) -> None:
    app = EXAMPLES / "app"
    before = {p: p.stat().st_mtime_ns for p in EXAMPLES.rglob("*")}
    proc = run_cli("-C", str(app), "fetch", "--offline", cache=cache_dir)
    assert "fetched greet bt2-" in proc.stderr and "fetched hello bt2-" in proc.stderr
    assert "2 dependencies: 2 fetched" in proc.stderr
    greet = Path(run_cli("-C", str(app), "path", "greet", cache=cache_dir).stdout.strip())
    assert (greet / "src" / "greet.h").is_file()
    assert len(cached(cache_dir)) == 2
    assert {p: p.stat().st_mtime_ns for p in EXAMPLES.rglob("*")} == before  # examples untouched
    again = run_cli("-C", str(app), "fetch", "--offline", cache=cache_dir)
    assert "2 dependencies: 0 fetched (0 B), 2 already cached" in again.stderr


# --------------------------------------------------------------------------- add


ROOT_TEXT = """\
# My application.   Odd spacing, comments and key order are the user's own.

[package]
version = "0.3.0"     # bumped by hand
name    = "app"

# Libraries we vendor.
[dependencies.zlib]
# pinned after review
hash = "bt2-{zero}"
url = "https://example.invalid/zlib-1.3.1.tar.gz"   # upstream

[options.debug]
# trailing table stays where it is
type = "bool"
default = true
""".format(zero="0" * 64)


def make_app(tmp_path: Path, text: str = ROOT_TEXT) -> Path:
    root = tmp_path / "app"
    root.mkdir()
    (root / "treeseed.toml").write_text(text)
    return root


def test_add_writes_url_and_hash_keeping_the_file(tmp_path: Path, cache_dir: Path,
                                                  server: Server) -> None:
    pk = Packages(tmp_path)
    body, h = pk.build("greet")
    url = serve(server, "/dl/greet-2.1.tar.gz", body)
    root = make_app(tmp_path)

    proc = run_cli("-C", str(root), "add", url, cache=cache_dir)
    assert f"added greet {h}" in proc.stdout
    new = (root / "treeseed.toml").read_text()
    inserted = only_insertions(ROOT_TEXT, new)
    assert "[dependencies.greet]" in inserted
    data = tomllib.loads(new)
    assert data["dependencies"]["greet"] == {"url": url, "hash": h}
    assert data["dependencies"]["zlib"]["url"].endswith("zlib-1.3.1.tar.gz")
    assert data["options"] == {"debug": {"type": "bool", "default": True}}
    assert cached(cache_dir) == {h}

    # The written entry is what `path` and `fetch` read back.
    assert run_cli("-C", str(root), "path", "greet", cache=cache_dir).stdout.strip() \
        == str(cache_dir / "p" / h)


def test_add_with_name_and_lazy(tmp_path: Path, cache_dir: Path, server: Server) -> None:
    pk = Packages(tmp_path)
    body, h = pk.build("greet")
    url = serve(server, "/greet.tar.gz", body)
    root = make_app(tmp_path)
    run_cli("-C", str(root), "add", url, "--name", "hi", "--lazy", cache=cache_dir)
    new = (root / "treeseed.toml").read_text()
    only_insertions(ROOT_TEXT, new)
    assert tomllib.loads(new)["dependencies"]["hi"] == {"url": url, "hash": h, "lazy": True}


def test_add_names_a_package_without_manifest_after_its_url(tmp_path: Path, cache_dir: Path,
                                                            server: Server) -> None:
    body = tar_gz({"README": b"just files\n"}, "libfoo-0.9")
    url = serve(server, "/libfoo-0.9.tar.gz", body)
    root = make_app(tmp_path, '[package]\nname = "app"\n')
    run_cli("-C", str(root), "add", url, cache=cache_dir)
    new = (root / "treeseed.toml").read_text()
    assert new.startswith('[package]\nname = "app"\n')
    assert tomllib.loads(new)["dependencies"]["libfoo"]["url"] == url  # the version is the hash's


def test_add_a_local_path_is_written_relative_to_the_package(tmp_path: Path, cache_dir: Path) -> None:
    pk = Packages(tmp_path)
    body, h = pk.build("vend")
    (tmp_path / "third_party").mkdir()
    (tmp_path / "third_party" / "vend.tar.gz").write_bytes(body)
    root = make_app(tmp_path)
    (root / "src" / "deep").mkdir(parents=True)
    # Given relative to where the command runs (-C app/src/deep), written relative to app/.
    run_cli("-C", str(root / "src" / "deep"), "add", "../../../third_party/vend.tar.gz",
            cache=cache_dir)
    new = (root / "treeseed.toml").read_text()
    only_insertions(ROOT_TEXT, new)
    assert tomllib.loads(new)["dependencies"]["vend"] == {"url": "../third_party/vend.tar.gz", "hash": h}
    # Read back from an empty cache: the relative URL resolves against the package directory.
    (root / "treeseed.toml").write_text(
        '[package]\nname = "app"\n\n' + dep_toml("vend", "../third_party/vend.tar.gz", h))
    other = tmp_path / "other-cache"
    proc = deps_fetch(other, root, "--offline", check=True)
    assert f"fetched vend {h}" in proc.stderr
    assert (tmp_path / "third_party" / "vend.tar.gz").as_uri() in proc.stderr


def test_add_with_a_mirror(tmp_path: Path, cache_dir: Path, servers) -> None:
    pk = Packages(tmp_path)
    body, h = pk.build("greet")
    one, two = servers(), servers()
    url = serve(one, "/greet.tar.gz", body)
    same = serve(two, "/same/greet.tar.gz", body)
    root = make_app(tmp_path)
    run_cli("-C", str(root), "add", url, "--mirror", same, cache=cache_dir)
    new = (root / "treeseed.toml").read_text()
    only_insertions(ROOT_TEXT, new)
    assert tomllib.loads(new)["dependencies"]["greet"] == {"url": url, "mirrors": [same], "hash": h}


def test_add_checks_that_a_mirror_serves_the_same_package(tmp_path: Path, cache_dir: Path,
                                                          servers) -> None:
    pk = Packages(tmp_path)
    body, h = pk.build("greet")
    other_body, other = pk.build("greet", extra=b"/* not the same */\n")
    one, two = servers(), servers()
    url = serve(one, "/greet.tar.gz", body)
    same = serve(two, "/same/greet.tar.gz", body)
    different = serve(two, "/different/greet.tar.gz", other_body)
    root = make_app(tmp_path)

    proc = run_cli("-C", str(root), "add", url, "--mirror", different, cache=cache_dir, check=False)
    assert two.hits == ["/different/greet.tar.gz"]  # the mirror itself was asked
    err = error_lines(proc)
    assert different in err and "hash mismatch" in err and other in err
    assert (root / "treeseed.toml").read_text() == ROOT_TEXT
    assert cached(cache_dir) == {h}

    run_cli("-C", str(root), "add", url, "--mirror", same, cache=cache_dir)
    assert two.hits == ["/different/greet.tar.gz", "/same/greet.tar.gz"]


def test_add_an_existing_name_changes_nothing(tmp_path: Path, cache_dir: Path, server: Server) -> None:
    pk = Packages(tmp_path)
    body, _ = pk.build("greet")
    url = serve(server, "/greet.tar.gz", body)
    root = make_app(tmp_path)
    err = error_lines(run_cli("-C", str(root), "add", url, "--name", "zlib", cache=cache_dir,
                              check=False))
    assert "'zlib' already exists" in err
    assert f"{root.resolve() / 'treeseed.toml'}:" in err
    assert (root / "treeseed.toml").read_text() == ROOT_TEXT


def test_add_to_a_manifest_without_dependencies(tmp_path: Path, cache_dir: Path,
                                                server: Server) -> None:
    pk = Packages(tmp_path)
    body, h = pk.build("greet")
    url = serve(server, "/greet.tar.gz", body)
    text = '# just a package\n[package]\nname = "app"  # the name\n'
    root = make_app(tmp_path, text)
    run_cli("-C", str(root), "add", url, cache=cache_dir)
    new = (root / "treeseed.toml").read_text()
    assert new.startswith(text)
    assert tomllib.loads(new)["dependencies"] == {"greet": {"url": url, "hash": h}}
    proc = deps_fetch(cache_dir, root, check=True)
    assert "1 dependency: 0 fetched (0 B), 1 already cached" in proc.stderr


def test_add_offline_uses_no_network(tmp_path: Path, cache_dir: Path, server: Server) -> None:
    pk = Packages(tmp_path)
    body, _ = pk.build("greet")
    url = serve(server, "/greet.tar.gz", body)
    root = make_app(tmp_path)
    proc = run_cli("--offline", "-C", str(root), "add", url, cache=cache_dir, check=False)
    assert server.hits == []
    assert "--offline" in error_lines(proc)
    assert (root / "treeseed.toml").read_text() == ROOT_TEXT


# --------------------------------------------------------------------------- path


def test_path_errors(tmp_path: Path, cache_dir: Path) -> None:
    root = make_app(tmp_path, '[package]\nname = "app"\n\n'
                    + dep_toml("pinned", "https://example.invalid/p.tar.gz", "bt2-" + "a" * 64)
                    + "\n" + dep_toml("loose", "https://example.invalid/l.tar.gz"))
    unknown = error_lines(run_cli("-C", str(root), "path", "nope", cache=cache_dir, check=False))
    assert "no dependency named 'nope'" in unknown and "loose, pinned" in unknown
    not_fetched = error_lines(run_cli("-C", str(root), "path", "pinned", cache=cache_dir, check=False))
    assert "'pinned'" in not_fetched and "not in the cache" in not_fetched
    assert "treeseed fetch" in not_fetched
    unpinned = error_lines(run_cli("-C", str(root), "path", "loose", cache=cache_dir, check=False))
    assert "'loose'" in unpinned and "no hash" in unpinned
    nowhere = tmp_path / "not-a-package"
    nowhere.mkdir()
    outside = error_lines(run_cli("-C", str(nowhere), "path", "x", cache=cache_dir, check=False))
    assert "no treeseed.toml" in outside
