"""``treeseed serve`` as a Nix binary cache, against the real Nix (Debian's nix-bin, Nix 2.8).

Every Nix here runs with a private store (``store = DIR``), a private configuration, state and
narinfo disk cache, no daemon, ``require-sigs = true`` and only the key a test names trusted.
The derivations are fixed-output ones whose builder fails (in a private store Nix builds in a
chroot where even ``/bin/sh`` is absent): a build that succeeds, and never says "building",
was substituted; one that fails because its builder did was not. treeseed serve runs as a real process on
127.0.0.1; the swarm test uses seeders and a DHT on loopback (tests/swarmkit.py). Every wait is
on an event (a log line, an answer), bounded only to fail instead of hanging.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import make_tree, run_cli
from httpserver import Reply
from mirrorkit import Mirror, get
from swarmkit import free_port
from waiting import wait_for

from treeseed.hashing.nar import flat_store_path_hash, from_nix32, nix32, store_path_hash
from treeseed.narstream import NarLayout
from treeseed.package import scan_tree

pytestmark = pytest.mark.skipif(shutil.which("nix-build") is None,
                                reason="nix-build (Debian's nix-bin) is not installed")

NIX_TIMEOUT = 300
TREE: dict[str, object] = {
    "README": b"a source tree\n",
    "src/main.c": b"int main(void) { return 0; }\n",
    "bin/run": ("x", b"#!/bin/sh\necho run\n"),
    "link": ("link", "src/main.c"),
    "big.bin": os.urandom(300_000),  # goes out with sendfile
}


# --------------------------------------------------------------------------- a private Nix


class Nix:
    """A private Nix store with its own configuration: ``substituters`` and ``keys`` only."""

    def __init__(self, root: Path, substituter: str = "", keys: tuple[str, ...] = ()) -> None:
        self.root = root
        self.store = root / "store"
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}
        for var, name in (("HOME", "home"), ("NIX_CONF_DIR", "conf"), ("NIX_STATE_DIR", "state"),
                          ("NIX_LOG_DIR", "log"), ("XDG_CACHE_HOME", "xdg-cache")):
            (root / name).mkdir(parents=True, exist_ok=True)
            self.env[var] = str(root / name)
        (root / "conf" / "nix.conf").write_text(
            f"store = {self.store}\nsubstituters = {substituter}\nrequire-sigs = true\n"
            f"trusted-public-keys = {' '.join(keys)}\nsandbox = false\nbuild-users-group =\n"
            "connect-timeout = 30\n")

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(list(args), env=self.env, capture_output=True, text=True,
                              timeout=NIX_TIMEOUT, check=False, stdin=subprocess.DEVNULL)
        if check:
            assert proc.returncode == 0, f"{' '.join(args)}:\n{proc.stderr}"
        return proc

    def build(self, name: str, mode: str, nix32_hash: str) -> subprocess.CompletedProcess[str]:
        """nix-build of a fixed-output derivation whose builder fails."""
        expr = (f'derivation {{ name = "{name}"; system = builtins.currentSystem; '
                f'builder = "/bin/sh"; args = [ "-c" "exit 1" ]; '
                f'outputHashMode = "{mode}"; outputHashAlgo = "sha256"; '
                f'outputHash = "{nix32_hash}"; }}')
        return self.run("nix-build", "--no-out-link", "-E", expr, check=False)

    def real(self, store_path: str) -> Path:
        """Where a /nix/store path's files are in this private store."""
        return self.store / store_path.lstrip("/")

    def substituted(self, name: str, mode: str, nix32_hash: str, expected_path: str) -> Path:
        """Build, and prove the output came from a substituter: success, the builder never
        ran, and Nix's own check of the path passes."""
        proc = self.build(name, mode, nix32_hash)
        assert proc.returncode == 0, proc.stderr
        assert "building '" not in proc.stderr, f"the builder ran: not substituted\n{proc.stderr}"
        assert proc.stdout.strip() == expected_path
        self.run("nix-store", "--verify-path", expected_path)
        return self.real(expected_path)

    def refused(self, name: str, mode: str, nix32_hash: str) -> str:
        """Build, and prove nothing was substituted: Nix fell back to the builder."""
        proc = self.build(name, mode, nix32_hash)
        assert proc.returncode != 0 and "building '" in proc.stderr, proc.stderr
        assert "builder for" in proc.stderr and "failed" in proc.stderr, proc.stderr
        return proc.stderr


def nix_key_pair(root: Path, name: str) -> tuple[Path, str]:
    """A key pair made by Nix itself: (secret key file, public key text)."""
    root.mkdir(parents=True, exist_ok=True)
    secret, public = root / f"{name}.secret", root / f"{name}.public"
    subprocess.run(["nix-store", "--generate-binary-cache-key", name, str(secret), str(public)],
                   check=True, capture_output=True, timeout=NIX_TIMEOUT,
                   env={**os.environ, "NIX_CONF_DIR": str(root), "HOME": str(root)})
    return secret, public.read_text().strip()


def nix_hash(path: Path, flat: bool = False) -> str:
    args = ["nix-hash", "--type", "sha256", "--base32", *(["--flat"] if flat else []), str(path)]
    return subprocess.run(args, check=True, capture_output=True, text=True,
                          timeout=NIX_TIMEOUT).stdout.strip()


def snapshot(root: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            out[rel] = (("link", os.readlink(path)) if path.is_symlink()
                        else (path.read_bytes(), os.access(path, os.X_OK)))
    return out


# --------------------------------------------------------------------------- treeseed


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """treeseed's settings file (and so its signing key) in this test's directory."""
    return {"TREESEED_CONFIG": str(tmp_path / "treeseed" / "config.toml")}


def add_shared(cache: Path, tree: Path, env: dict[str, str]) -> str:
    package = run_cli("fetch", str(tree), cache=cache, env=env).stdout.split("\t", 1)[0]
    run_cli("seed", "--share", package, cache=cache, env=env)
    return package


def public_key(env: dict[str, str]) -> str:
    return run_cli("nix", "key", env=env).stdout.strip()


def narinfo(mirror: Mirror, store_hash: str) -> dict[str, str] | None:
    reply = get(mirror, f"/{store_hash}.narinfo")
    if reply.status == 404:
        return None
    assert reply.status == 200, reply
    return dict(line.split(": ", 1) for line in reply.body.decode().splitlines())


def wait_offered(mirror: Mirror, store_hash: str) -> dict[str, str]:
    """Until serve has hashed the package's NAR (its indexer) and offers the path."""
    return wait_for(f"{store_hash}.narinfo", lambda: narinfo(mirror, store_hash), timeout=180)


# --------------------------------------------------------------------------- the pieces, against Nix


def test_nar_layout_is_nix_store_dump_in_every_range(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree", TREE)
    nix = Nix(tmp_path / "nix")
    dumped = subprocess.run(["nix-store", "--dump", str(tree)], env=nix.env, capture_output=True,
                            check=True, timeout=NIX_TIMEOUT).stdout
    layout = NarLayout.for_tree(tree, scan_tree(tree, "t"))

    def read(start: int, stop: int) -> bytes:
        out = b""
        for piece in layout.pieces(start, stop):
            if isinstance(piece, bytes):
                out += piece
            else:
                with open(piece.path, "rb") as f:
                    f.seek(piece.offset)
                    out += f.read(piece.count)
        return out

    assert layout.size == len(dumped)
    for start, stop in ((0, len(dumped)), (0, 1), (100, 50_000), (len(dumped) - 7, len(dumped)),
                        (123_456, 123_456), (40_000, 300_100)):
        assert read(start, stop) == dumped[start:stop], (start, stop)
    archive = tmp_path / "file.bin"
    archive.write_bytes(os.urandom(70_000))
    flat = NarLayout.for_file(archive, archive.stat().st_size)
    flat_dump = subprocess.run(["nix-store", "--dump", str(archive)], env=nix.env,
                               capture_output=True, check=True, timeout=NIX_TIMEOUT).stdout
    assert flat.size == len(flat_dump)
    got = b"".join(p if isinstance(p, bytes) else archive.read_bytes()[p.offset:p.offset + p.count]
                   for p in flat.pieces())
    assert got == flat_dump


def test_store_paths_are_nixs_for_every_name_and_mode(tmp_path: Path) -> None:
    nix = Nix(tmp_path / "nix")
    tree = make_tree(tmp_path / "foo-1.0-src", TREE)
    added = nix.run("nix-store", "--add-fixed", "--recursive", "sha256", str(tree)).stdout.strip()
    assert added == f"/nix/store/{store_path_hash(from_nix32(nix_hash(tree)), 'foo-1.0-src')}-foo-1.0-src"
    archive = tmp_path / "pkg-1.0.tar.gz"
    archive.write_bytes(os.urandom(1000))
    added = nix.run("nix-store", "--add-fixed", "sha256", str(archive)).stdout.strip()
    digest = hashlib.sha256(archive.read_bytes()).digest()
    assert added == f"/nix/store/{flat_store_path_hash(digest, 'pkg-1.0.tar.gz')}-pkg-1.0.tar.gz"


def test_the_key_is_nixs_format_private_and_never_in_the_cache(tmp_path: Path, env: dict[str, str],
                                                               serve: Callable[..., Mirror]) -> None:
    key = public_key(env)
    path = Path(env["TREESEED_CONFIG"]).parent / "nix-signing-key"
    assert path.stat().st_mode & 0o777 == 0o600
    assert public_key(env) == key  # made once
    secret = path.read_text().strip()
    name, raw = secret.split(":")
    assert key.startswith(f"{name}:") and len(base64.b64decode(raw)) == 64
    # A key Nix made is used as it is: Nix's secret-key file format is treeseed's.
    nix_secret, nix_public = nix_key_pair(tmp_path / "keys", "lan-mirror-1")
    assert public_key({**env, "TREESEED_NIX_KEY": str(nix_secret)}) == nix_public
    # Readable by others: refused, with what to do.
    path.chmod(0o640)
    refused = run_cli("nix", "key", env=env, check=False)
    assert refused.returncode == 1 and f"chmod 600 {path}" in refused.stderr, refused.stderr
    path.chmod(0o600)
    cache = tmp_path / "cache"
    mirror = serve(cache, env=env)
    assert not any(p.name == path.name for p in cache.rglob("*"))
    for probe in ("/nix-signing-key", f"/{path.name}", "/../treeseed/nix-signing-key"):
        assert get(mirror, probe).status == 404, probe
    info = get(mirror, "/nix-cache-info")
    assert (info.status, info.body) == (200, b"StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n")


# --------------------------------------------------------------------------- substitution


def test_nix_substitutes_a_source_from_serve(tmp_path: Path, env: dict[str, str],
                                             serve: Callable[..., Mirror]) -> None:
    """A package fetched with nothing but its bt2 hash: serve hashes its NAR itself, offers
    /nix/store/<hash>-source, and Nix, trusting only treeseed's key, substitutes it."""
    tree = make_tree(tmp_path / "src" / "pkg", TREE)
    cache = tmp_path / "cache"
    package = add_shared(cache, tree, env)
    nar = nix_hash(tree)
    store_hash = store_path_hash(from_nix32(nar))
    mirror = serve(cache, env=env)
    info = wait_offered(mirror, store_hash)
    assert info["StorePath"] == f"/nix/store/{store_hash}-source"
    assert info["NarHash"] == f"sha256:{nar}" and info["URL"] == f"nar/{package}.nar"

    nix = Nix(tmp_path / "nix", mirror.url, (public_key(env),))
    out = nix.substituted("source", "recursive", nar, info["StorePath"])
    assert snapshot(out) == snapshot(tree)
    logged = mirror.logged()
    assert f'"GET /{store_hash}.narinfo HTTP/1.1" 200' in logged
    assert f'"GET /nar/{package}.nar HTTP/1.1" 200' in logged

    # The NAR is Nix's own serialisation of the path, and ranges of it are exact.
    dumped = subprocess.run(["nix-store", "--dump", str(out)], capture_output=True, check=True,
                            timeout=NIX_TIMEOUT).stdout
    whole = get(mirror, f"/nar/{package}.nar")
    assert whole.body == dumped and int(info["NarSize"]) == len(dumped)
    assert hashlib.sha256(dumped).digest() == from_nix32(nar)
    part = get(mirror, f"/nar/{package}.nar", {"Range": "bytes=1000-200000"})
    assert (part.status, part.body) == (206, dumped[1000:200001])
    bad = get(mirror, f"/nar/{package}.nar", {"Range": f"bytes={len(dumped)}-"})
    assert bad.status == 416


def test_nix_substitutes_archives_kept_by_prefetch(tmp_path: Path, env: dict[str, str],
                                                   serve: Callable[..., Mirror], servers) -> None:
    """`treeseed nix prefetch URL` keeps the archive: its flat path (fetchurl's, named after
    the URL) is substituted byte for byte, origin down; `--unpack` offers the unpacked tree
    as nix-prefetch-url --unpack and fetchzip name it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(make_tree(tmp_path / "t" / "pkg-1.0", TREE), arcname="pkg-1.0")
    body = buf.getvalue()
    origin = servers()
    origin.routes["/dl/pkg-1.0.tar.gz"] = Reply(body=body)
    cache = tmp_path / "cache"
    flat = run_cli("nix", "prefetch", origin.url("/dl/pkg-1.0.tar.gz"), cache=cache,
                   env=env).stdout.split()[0]
    unpacked = run_cli("nix", "prefetch", "--unpack", origin.url("/dl/pkg-1.0.tar.gz"),
                       cache=cache, env=env).stdout.split()[0]
    origin.close()  # origin down
    mirror = serve(cache, env=env)
    key = public_key(env)

    flat_hash = flat_store_path_hash(from_nix32(flat), "pkg-1.0.tar.gz")
    info = wait_offered(mirror, flat_hash)
    out = Nix(tmp_path / "nix-flat", mirror.url, (key,)).substituted(
        "pkg-1.0.tar.gz", "flat", flat, info["StorePath"])
    assert out.read_bytes() == body
    for name in ("source", "pkg-1.0.tar.gz"):
        path = f"/nix/store/{store_path_hash(from_nix32(unpacked), name)}-{name}"
        out = Nix(tmp_path / f"nix-{name}", mirror.url, (key,)).substituted(
            name, "recursive", unpacked, path)
        assert snapshot(out) == snapshot(tmp_path / "t" / "pkg-1.0")


def test_private_packages_and_foreign_keys_are_refused(tmp_path: Path, env: dict[str, str],
                                                       serve: Callable[..., Mirror]) -> None:
    cache = tmp_path / "cache"
    secret = make_tree(tmp_path / "src" / "secret",
                       {**TREE, "treeseed.toml": b'[package]\nname = "secret"\nprivate = true\n'})
    public = make_tree(tmp_path / "src" / "public", {**TREE, "README": b"public\n"})
    secret_package = add_shared(cache, secret, env)
    public_package = add_shared(cache, public, env)
    mirror = serve(cache, env=env)
    public_hash = store_path_hash(from_nix32(nix_hash(public)))
    wait_offered(mirror, public_hash)
    secret_nar = nix_hash(secret)
    secret_hash = store_path_hash(from_nix32(secret_nar))
    # Private: the narinfo and the NAR answer exactly as for a path nobody has.
    absent = get(mirror, f"/{'0' * 32}.narinfo")
    for path in (f"/{secret_hash}.narinfo", f"/nar/{secret_package}.nar"):
        reply = get(mirror, path)
        assert (reply.status, reply.body) == (absent.status, absent.body) == (404, b"not found\n")
    Nix(tmp_path / "nix-private", mirror.url, (public_key(env),)).refused(
        "source", "recursive", secret_nar)
    assert f'"GET /{secret_hash}.narinfo HTTP/1.1" 404' in mirror.logged()

    # Another key trusted: Nix reads the narinfo and refuses its signature.
    _, other = nix_key_pair(tmp_path / "keys", "someone-else-1")
    stderr = Nix(tmp_path / "nix-other-key", mirror.url, (other,)).refused(
        "source", "recursive", nix_hash(public))
    assert f'"GET /{public_hash}.narinfo HTTP/1.1" 200' in mirror.logged()
    assert "is not signed by any of the keys in 'trusted-public-keys'" in stderr, stderr
    assert f"/nar/{public_package}.nar" not in mirror.logged()


def test_requests_for_store_paths_are_checked(tmp_path: Path, env: dict[str, str],
                                              serve: Callable[..., Mirror]) -> None:
    """A store hash in a URL is untrusted: only 32 nix32 characters name one."""
    cache = tmp_path / "cache"
    tree = make_tree(tmp_path / "src" / "pkg", TREE)
    package = add_shared(cache, tree, env)
    mirror = serve(cache, env=env)
    good = store_path_hash(from_nix32(nix_hash(tree)))
    wait_offered(mirror, good)
    for path in (f"/{good.upper()}.narinfo", f"/{good[:-1]}.narinfo", f"/{good}e.narinfo",
                 f"/{good[:-1]}e.narinfo", f"/{good}.narinfo/", f"/{good}-source.narinfo",
                 f"/nar/{package}.nar/", f"/nar/{package.upper()}.nar", "/nar/../p.nar",
                 f"/nar/sha256-{'0' * 64}.nar", f"/nar/{package[:-1]}.nar"):
        assert get(mirror, path).status == 404, path


def test_import_then_a_fresh_store_substitutes_it(tmp_path: Path, env: dict[str, str],
                                                  serve: Callable[..., Mirror]) -> None:
    """What one Nix user's store holds is offered to another's, under its own name."""
    first = Nix(tmp_path / "nix-first")
    tree = make_tree(tmp_path / "src" / "foo-1.0-src", TREE)
    added = first.run("nix-store", "--add-fixed", "--recursive", "sha256", str(tree)).stdout.strip()
    cache = tmp_path / "cache"
    # Not a fixed-output path: its name does not go with its contents. Nothing is installed.
    impostor = tmp_path / "fake" / f"{added.split('/')[-1][:32]}-bar-1.0-src"
    shutil.copytree(first.real(added), impostor, symlinks=True)
    refused = run_cli("nix", "import", str(impostor), cache=cache, env=env, check=False)
    assert refused.returncode == 1 and "not a fixed-output source" in refused.stderr, refused.stderr
    assert not (cache / "p").exists() or not any((cache / "p").iterdir())

    out = run_cli("nix", "import", str(first.real(added)), cache=cache, env=env)
    package = out.stdout.split("\t")[0]
    assert out.stdout.strip() == f"{package}\t{added}" and "not published" in out.stderr
    mirror = serve(cache, env=env)
    store_hash = added.split("/")[-1][:32]
    assert narinfo(mirror, store_hash) is None  # imported, not shared
    run_cli("nix", "import", "--share", str(first.real(added)), cache=cache, env=env)
    wait_offered(mirror, store_hash)
    fresh = Nix(tmp_path / "nix-fresh", mirror.url, (public_key(env),))
    got = fresh.substituted("foo-1.0-src", "recursive", nix_hash(tree), added)
    assert snapshot(got) == snapshot(tree)

    # A fetchurl output (a flat file) is imported as an archive, kept byte for byte.
    archive = tmp_path / "bar-2.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(tree, arcname="bar-2.0")
    flat = first.run("nix-store", "--add-fixed", "sha256", str(archive)).stdout.strip()
    run_cli("nix", "import", "--share", str(first.real(flat)), cache=cache, env=env)
    wait_offered(mirror, flat.split("/")[-1][:32])
    got = fresh.substituted("bar-2.0.tar.gz", "flat", nix_hash(archive, flat=True), flat)
    assert got.read_bytes() == archive.read_bytes()


# --------------------------------------------------------------------------- the swarm


def test_a_store_path_only_the_swarm_has_is_substituted(tmp_path: Path, nodes, dht_router,
                                                        serve: Callable[..., Mirror]) -> None:
    """Cache A seeds the source and publishes its DHT aliases; B's serve has never seen it.
    Nix asks B: B looks the store hash up in the DHT, fetches the package from A, checks
    its NAR gives that exact path, and only then answers."""
    from swarmkit import dht_settings, wait_published

    a = nodes("a", **dht_settings(dht_router.node))
    tree = make_tree(tmp_path / "src" / "swarmed", TREE)
    package = a.install(tree)
    nar = nix_hash(tree)
    store_hash = store_path_hash(from_nix32(nar))
    a.start_seeder()
    wait_published(a, "nix-store", store_hash)

    b = nodes("b", **dht_settings(dht_router.node))
    b_env = {"TREESEED_CONFIG": str(b.config), "TREESEED_SERVE_NIX_LOOKUP_WAIT": "280"}
    mirror = serve(b.cache, env=b_env)
    key = run_cli("nix", "key", env=b_env).stdout.strip()
    nix = Nix(tmp_path / "nix", mirror.url, (key,))
    out = nix.substituted("source", "recursive", nar, f"/nix/store/{store_hash}-source")
    assert snapshot(out) == snapshot(tree)
    assert (b.cache / "p" / package).is_dir()
    assert f"asking the swarm for /nix/store/{store_hash}-source" in mirror.logged()


def test_a_swarm_lookup_never_blocks_the_server(tmp_path: Path, nodes,
                                                serve: Callable[..., Mirror]) -> None:
    """With torrenting on and a DHT that answers nothing, a narinfo request for an unknown
    store hash waits on a lookup thread; other requests are answered meanwhile, and it ends
    in a plain 404."""
    b = nodes("b", torrent=True, dht=True, dht_bootstrap=[f"127.0.0.1:{free_port()}"])
    secret = make_tree(tmp_path / "src" / "secret",
                       {**TREE, "treeseed.toml": b'[package]\nname = "secret"\nprivate = true\n'})
    run_cli("fetch", str(secret), cache=b.cache, env={"TREESEED_CONFIG": str(b.config)})
    secret_hash = store_path_hash(from_nix32(nix_hash(secret)))
    mirror = serve(b.cache, env={"TREESEED_CONFIG": str(b.config),
                                   "TREESEED_SERVE_NIX_LOOKUP_WAIT": "20"})
    unknown = nix32(hashlib.sha256(b"nobody has this").digest()[:20])
    # Until serve has hashed every package's NAR once, it cannot tell a private package's
    # path from an unknown one, and asks the swarm for neither.
    wait_for("the store-path index", lambda: "Nix store paths known for 1 package;"
             in mirror.logged(), timeout=180)
    answers: list[int] = []
    asking = threading.Thread(target=lambda: answers.append(get(mirror, f"/{unknown}.narinfo").status))
    asking.start()
    wait_for("the lookup to start",
             lambda: f"asking the swarm for /nix/store/{unknown}-source" in mirror.logged())
    assert get(mirror, "/nix-cache-info").status == 200
    assert get(mirror, "/").status == 200
    # The private package's path is known here: it is never asked of the swarm.
    assert get(mirror, f"/{secret_hash}.narinfo").status == 404
    asking.join(timeout=300)
    assert answers == [404]
    assert "asking the swarm" in mirror.logged() and secret_hash not in mirror.logged().replace(
        f'"GET /{secret_hash}.narinfo HTTP/1.1" 404', "")
