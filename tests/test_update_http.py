"""``treeseed update`` of HTTP(S) archives: an unchanged one costs one conditional request.

Real archives, hashed by the real ``treeseed hash``, served by a real HTTP server on 127.0.0.1
(tests/httpserver.py) that honours ``If-None-Match`` and ``If-Modified-Since`` and logs every
request with its headers and the status it got: that log is the witness for "one request, a
304, no body". A body the server *holds* (never sends until the test says so) proves that a
client finished without needing it.
"""

from __future__ import annotations

import json
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from depskit import Packages, dep_toml, make_root
from helpers import run_cli
from httpserver import Reply, Server

from treeseed.cache import Cache
from treeseed.sources.http import probe
from treeseed.update import unchanged

ETAG = '"v1-5eed"'
LAST_MODIFIED = "Tue, 03 Jun 2025 10:00:00 GMT"


@pytest.fixture
def hold() -> Iterator[threading.Event]:
    """A body held until the test ends (set at teardown so the server thread finishes)."""
    event = threading.Event()
    yield event
    event.set()


def route(body: bytes, validators: dict[str, str], **kw: object) -> Reply:
    return Reply(200, body, {"Content-Type": "application/gzip", **validators}, **kw)  # type: ignore[arg-type]


def update(cache: Path, root: Path, *args: str) -> list[dict]:
    proc = run_cli("-C", str(root), "update", "--json", *args, cache=cache, check=False)
    assert "Traceback" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout)


def sha256_b64(data: bytes) -> str:
    import base64
    import hashlib

    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def pinned_app(tmp_path: Path, server: Server, validators: dict[str, str]
               ) -> tuple[Path, str, str, Packages]:
    """An app pinning ``lib``, served with ``validators``; returns (root, url, hash, packages)."""
    pk = Packages(tmp_path)
    body, h = pk.build("lib")
    server.routes["/lib-1.0.tar.gz"] = route(body, validators)
    url = server.url("/lib-1.0.tar.gz")
    return make_root(tmp_path, dep_toml("lib", url, h)), url, h, pk


@pytest.mark.parametrize("validators", [{"ETag": ETAG}, {"Last-Modified": LAST_MODIFIED}],
                         ids=["etag", "last-modified"])
def test_an_unchanged_archive_costs_one_conditional_request(tmp_path: Path, cache_dir: Path,
                                                            server: Server,
                                                            validators: dict[str, str]) -> None:
    root, url, h, _ = pinned_app(tmp_path, server, validators)
    text = (root / "treeseed.toml").read_text()

    # The first update fetches (nothing recorded yet) and learns the server's validators.
    [first] = update(cache_dir, root)
    assert first["error"] is None and not first["changed"] and first["new"] == h
    assert first["revalidated"] is None

    server.requests.clear()
    [row] = update(cache_dir, root)
    assert row["error"] is None and row["changed"] is False and row["new"] == h
    assert row["revalidated"] == "not-modified" and row["transferred"] == 0
    [request] = server.requests  # one request, conditional, answered without a body
    asked = {"If-None-Match": "if-none-match", "Last-Modified": "if-modified-since"}
    header = asked.get(next(iter(validators)), "if-none-match")
    assert request.headers[header] == next(iter(validators.values()))
    assert request.status == 304
    assert (root / "treeseed.toml").read_text() == text


def test_a_changed_archive_is_fetched_and_its_new_validators_kept(tmp_path: Path, cache_dir: Path,
                                                                   server: Server) -> None:
    root, url, old, pk = pinned_app(tmp_path, server, {"ETag": ETAG})
    update(cache_dir, root)  # learns ETAG for the pinned package
    body, new = pk.build("lib", extra=b"/* 1.0.1 */\n")
    server.routes["/lib-1.0.tar.gz"] = route(body, {"ETag": '"v2"'})

    server.requests.clear()
    [row] = update(cache_dir, root)
    assert row["changed"] and row["old"] == old and row["new"] == new
    assert row["revalidated"] is None and row["transferred"] == len(body)
    conditional, *rest = server.requests
    assert conditional.headers["if-none-match"] == ETAG and conditional.status == 200
    assert tomllib.loads((root / "treeseed.toml").read_text())["dependencies"]["lib"]["hash"] == new

    server.requests.clear()  # the new pin's validators were kept: one 304 from now on
    [again] = update(cache_dir, root)
    assert again["revalidated"] == "not-modified" and not again["changed"]
    assert [(r.headers.get("if-none-match"), r.status) for r in server.requests] == [('"v2"', 304)]


def test_a_stated_digest_of_the_pinned_archive_means_unchanged_without_the_body(
        tmp_path: Path, cache_dir: Path, server: Server, hold: threading.Event) -> None:
    """No validators at all, but the server states the body's SHA-256 (RFC 9530): it is the
    archive the pinned package came from, so the body is never needed. The server holds the
    body for the whole test: an update that waited for it could not finish."""
    pk = Packages(tmp_path)
    body, h = pk.build("lib")
    server.routes["/lib.tar.gz"] = route(body, {})
    url = server.url("/lib.tar.gz")
    run_cli("fetch", url, cache=cache_dir)  # the cache records the archive's digest itself
    root = make_root(tmp_path, dep_toml("lib", url, h))
    server.routes["/lib.tar.gz"] = route(body, {"Repr-Digest": f"sha-256=:{sha256_b64(body)}:"},
                                         hold=hold)

    server.requests.clear()
    [row] = update(cache_dir, root)
    assert row["error"] is None and not row["changed"] and row["revalidated"] == "repr-digest"
    assert row["transferred"] == 0
    assert len(server.requests) == 1 and not hold.is_set()


def test_a_304_nobody_asked_for_is_not_unchanged(tmp_path: Path, cache_dir: Path,
                                                 server: Server) -> None:
    """A server that answers 304 to an unconditional request says nothing about the pin: the
    update falls back to the full fetch, which reports the status; nothing is written."""
    root, url, h, _ = pinned_app(tmp_path, server, {})
    text = (root / "treeseed.toml").read_text()
    server.routes["/lib-1.0.tar.gz"] = Reply(304, b"", {"ETag": ETAG})
    [row] = update(cache_dir, root)
    assert row["revalidated"] is None
    assert "HTTP 304" in row["error"] and url in row["error"]
    assert all("if-none-match" not in r.headers for r in server.requests)
    assert (root / "treeseed.toml").read_text() == text


def test_validators_are_used_only_for_the_pinned_and_cached_package(tmp_path: Path,
                                                                    cache_dir: Path,
                                                                    server: Server) -> None:
    root, url, h, _ = pinned_app(tmp_path, server, {"ETag": ETAG})
    update(cache_dir, root)
    other = "bt2-" + "0" * 64  # the manifest now pins something else: ask unconditionally
    (root / "treeseed.toml").write_text((root / "treeseed.toml").read_text().replace(h, other))
    server.requests.clear()
    [row] = update(cache_dir, root)
    assert row["changed"] and row["new"] == h
    assert "if-none-match" not in server.requests[0].headers

    run_cli("cache", "rm", h, cache=cache_dir)  # validators without their package count for nothing
    server.requests.clear()
    [row] = update(cache_dir, root)
    assert row["new"] == h and row["revalidated"] is None
    assert "if-none-match" not in server.requests[0].headers


def test_a_304_must_carry_the_etag_that_was_asked_for(tmp_path: Path, cache_dir: Path,
                                                      server: Server) -> None:
    """In-process, against the real server: the rules of :func:`treeseed.update.unchanged`."""
    pk = Packages(tmp_path)
    body, h = pk.build("lib")
    server.routes["/a"] = route(body, {"ETag": ETAG})
    server.routes["/liar"] = Reply(304, b"", {"ETag": '"something-else"'})
    cache = Cache(cache_dir)
    run_cli("fetch", server.url("/a"), cache=cache_dir)
    try:
        assert unchanged(probe(server.url("/a"), ETAG), cache, h) == "not-modified"
        assert unchanged(probe(server.url("/a"), '"stale"'), cache, h) is None  # a 200
        assert unchanged(probe(server.url("/liar"), ETAG), cache, h) is None
        assert unchanged(probe(server.url("/liar")), cache, h) is None  # never asked
        assert unchanged(probe(server.url("/a"), ETAG), cache, None) is None  # nothing pinned
        digest = {"Repr-Digest": f"sha-256=:{sha256_b64(b'another archive')}:"}
        server.routes["/b"] = route(body, digest)
        assert unchanged(probe(server.url("/b")), cache, h) is None  # not the pinned archive
    finally:
        cache.close()


def test_after_add_the_first_update_is_already_conditional(tmp_path: Path, cache_dir: Path,
                                                           server: Server) -> None:
    pk = Packages(tmp_path)
    body, h = pk.build("lib")
    server.routes["/lib-1.0.tar.gz"] = route(body, {"ETag": ETAG})
    root = make_root(tmp_path)
    run_cli("-C", str(root), "add", server.url("/lib-1.0.tar.gz"), cache=cache_dir)
    server.requests.clear()
    [row] = update(cache_dir, root)
    assert row["name"] == "lib" and row["new"] == h and row["revalidated"] == "not-modified"
    assert [r.status for r in server.requests] == [304]
