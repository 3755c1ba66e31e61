"""The global cache against the real ``treeseed`` command: layout, concurrency, crashes, upkeep.

Every fetch here is a real ``python -m treeseed`` subprocess on an archive the test builds; the
cache is inspected on disk (``p/<bt2>/``, ``tmp/``, ``index.sqlite``) and through ``cache list``,
``verify``, ``rm`` and ``gc``. Concurrency is real too: several processes started together on the
same archive, and a fetch killed with SIGKILL half-way through unpacking.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from helpers import make_tree, run_cli
from waiting import wait_for

from treeseed.cache import Cache
from treeseed.fetch import hash_path

MiB = 1 << 20
ZERO_HASH = "bt2-" + "0" * 64


# --------------------------------------------------------------------------- helpers


def tar_gz(path: Path, files: dict[str, bytes | tuple[int, bytes]], top: str = "pkg",
           level: int = 6) -> Path:
    """A .tar.gz with every file under ``top/``; ``(mode, data)`` sets a file's mode (default 0644)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz", compresslevel=level) as tf:
        for name, value in files.items():
            mode, data = value if isinstance(value, tuple) else (0o644, value)
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size, info.mode, info.mtime = len(data), mode, 1_600_000_000
            tf.addfile(info, io.BytesIO(data))
    return path


def random_files(count: int, size: int) -> dict[str, bytes]:
    """``count`` distinct incompressible files of ``size`` bytes (one urandom call, cheap)."""
    blob = os.urandom(size)
    return {f"data/f{i:04}.bin": i.to_bytes(4, "big") + blob[4:] for i in range(count)}


SMALL = {
    "README": b"hello\n",
    "src/lib.c": b"int x;\n" * 300,
    "bin/run": (0o700, b"#!/bin/sh\necho hi\n"),
    "bin/tool": (0o775, b"#!/bin/sh\n"),
    "private.key": (0o600, b"not secret\n"),
}


def fetch_json(cache: Path, *args: str) -> dict:
    return json.loads(run_cli("fetch", *args, "--json", cache=cache).stdout)


def list_json(cache: Path) -> list[dict]:
    return json.loads(run_cli("cache", "list", "--json", cache=cache).stdout)


def packages(cache: Path) -> list[str]:
    p = cache / "p"
    return sorted(os.listdir(p)) if p.is_dir() else []


def tmp_entries(cache: Path) -> list[str]:
    t = cache / "tmp"
    return sorted(os.listdir(t)) if t.is_dir() else []


def index_rows(cache: Path) -> list[tuple]:
    with sqlite3.connect(cache / "index.sqlite") as db:
        return db.execute("SELECT hash, size, files, source FROM packages ORDER BY hash").fetchall()


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, proc
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("treeseed: error:"), proc.stderr
    return lines[0]


def as_owner(*cmd: str) -> list[str]:
    """``cmd`` run as an ordinary owner of its files: the tests run as root, whose
    CAP_DAC_OVERRIDE ignores permission bits, so root drops it (and its kin) for the command."""
    if os.geteuid() != 0:
        return list(cmd)
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot drop CAP_DAC_OVERRIDE")
    wrapped = [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner", *cmd]
    if subprocess.run([*wrapped[:2], "true"], capture_output=True).returncode != 0:
        pytest.skip("setpriv cannot drop capabilities here")
    return wrapped


def cli_as_owner(cache: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``python -m treeseed`` as an ordinary owner (see :func:`as_owner`)."""
    cmd = as_owner(sys.executable, "-m", "treeseed", "--cache-dir", str(cache), *args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert not check or proc.returncode == 0, proc.stderr
    return proc


def tree_modes(root: Path) -> dict[str, int]:
    """Every entry's permission bits below and including ``root``, symlinks as lstat sees them."""
    out = {".": stat.S_IMODE(root.lstat().st_mode)}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(dirpath, name)
            out[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return out


def tamper(path: Path, data: bytes) -> None:
    """Change a cached file as root would (after giving it a write bit, as a build might)."""
    path.chmod(0o644)
    path.write_bytes(data)


def move_package(src: Path, dest: Path) -> None:
    """Move a package directory to another cache's p/: rename(2) needs the moved directory's
    write bit to rewrite its ``..`` (root ignores that), so it is lent for the move."""
    src.chmod(0o755)
    os.rename(src, dest)
    dest.chmod(0o555)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- install, list, --hash


def test_fetch_installs_normalised_package(tmp_path: Path, cache_dir: Path) -> None:
    archive = tar_gz(tmp_path / "small.tar.gz", SMALL)
    got = fetch_json(cache_dir, str(archive))
    h = got["hash"]
    assert got["cached"] is False
    assert packages(cache_dir) == [h]
    assert tmp_entries(cache_dir) == []
    root = cache_dir / "p" / h
    assert Path(got["path"]).resolve() == root.resolve()
    modes = {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode)
             for p in root.rglob("*") if p.is_file()}
    assert modes == {"README": 0o444, "src/lib.c": 0o444, "bin/run": 0o555, "bin/tool": 0o555,
                     "private.key": 0o444}

    size = sum(len(v[1] if isinstance(v, tuple) else v) for v in SMALL.values())
    (row,) = list_json(cache_dir)
    assert (row["hash"], row["size"], row["files"], row["source"]) == (h, size, 5, archive.absolute().as_uri())
    text = run_cli("cache", "list", cache=cache_dir).stdout
    (line,) = text.splitlines()
    assert line.startswith(h) and f"{size / 1024:.1f} KiB" in line and "5 files" in line
    assert line.endswith(str(archive))

    # The expected hash matches: fine, and from then on no source is needed at all.
    again = fetch_json(cache_dir, str(archive), "--hash", h)
    assert (again["hash"], again["cached"]) == (h, True)
    archive.unlink()
    for gone in (str(archive), f"http://127.0.0.1:{closed_port()}/gone.tar.gz"):
        again = fetch_json(cache_dir, gone, "--hash", h)
        assert (again["hash"], again["cached"], again["files"], again["bytes"]) == (h, True, 5, size)
    assert packages(cache_dir) == [h] and tmp_entries(cache_dir) == []


def test_hash_mismatch_leaves_cache_unchanged(tmp_path: Path, cache_dir: Path) -> None:
    first = tar_gz(tmp_path / "a.tar.gz", {"a": b"a\n"})
    other = tar_gz(tmp_path / "b.tar.gz", {"b": b"b\n"})
    h = fetch_json(cache_dir, str(first))["hash"]
    other_hash = hash_path(other, Cache(tmp_path / "scratch"), ["bt2"]).hashes["bt2"]
    before = (packages(cache_dir), index_rows(cache_dir))

    # A package nobody has seen, and one the cache already knows by its archive's digest.
    for archive, actual in ((other, other_hash), (first, h)):
        proc = run_cli("fetch", str(archive), "--hash", ZERO_HASH, cache=cache_dir, check=False)
        line = one_error_line(proc)
        assert ZERO_HASH in line and actual in line and str(archive) in line
        assert proc.stdout == ""
        assert (packages(cache_dir), index_rows(cache_dir)) == before
        assert tmp_entries(cache_dir) == []


# --------------------------------------------------------------------------- concurrency


@pytest.mark.parametrize("with_hash", [False, True], ids=["no-hash", "hash"])
def test_concurrent_fetches_unpack_once(tmp_path: Path, cache_dir: Path, with_hash: bool) -> None:
    archive = tar_gz(tmp_path / "some.tar.gz", random_files(6, 512 * 1024), level=0)
    expected = hash_path(archive, Cache(tmp_path / "scratch"), ["bt2"]).hashes["bt2"]
    cmd = [sys.executable, "-m", "treeseed", "--cache-dir", str(cache_dir), "fetch", str(archive),
           "--json"] + (["--hash", expected] if with_hash else [])
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    try:
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    assert [p.returncode for p in procs] == [0] * 4, [err for _, err in outs]
    results = [json.loads(out) for out, _ in outs]
    assert {r["hash"] for r in results} == {expected}
    assert sorted(r["cached"] for r in results) == [False, True, True, True]
    assert packages(cache_dir) == [expected]
    assert tmp_entries(cache_dir) == []
    assert [row["hash"] for row in list_json(cache_dir)] == [expected]


# --------------------------------------------------------------------------- crash safety


def _filled_workdir(cache: Path) -> Path | None:
    """A tmp/w-* directory that already holds a regular file, if any."""
    for work in (cache / "tmp").glob("w-*"):
        for _, _, files in os.walk(work):
            if files:
                return work
    return None


def test_killed_fetch_leaves_nothing_half_done(tmp_path: Path, cache_dir: Path) -> None:
    # Stored (level 0) gzip: cheap to build, still a few hundred ms to unpack and hash.
    archive = tar_gz(tmp_path / "large.tar.gz", random_files(128, MiB), level=0)
    cmd = [sys.executable, "-m", "treeseed", "--cache-dir", str(cache_dir), "fetch", str(archive)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def filled() -> Path | None:
        assert proc.poll() is None, "the fetch ended before its work directory was seen filled"
        return _filled_workdir(cache_dir)

    try:
        work = wait_for("the fetch's work directory to fill", filled, timeout=60, poll=0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert packages(cache_dir) == [], "a killed fetch must not leave a package in p/"
    assert work.is_dir()

    h = run_cli("fetch", str(archive), cache=cache_dir).stdout.split("\t")[0]
    assert packages(cache_dir) == [h]
    assert work.is_dir(), "the new fetch must leave the dead one's directory to gc"
    archive.unlink()

    cache = Cache(cache_dir)
    with cache.workdir() as live:
        (live / "partial").write_bytes(b"in progress")
        dry = run_cli("cache", "gc", "--older-than", "1000d", "--dry-run", cache=cache_dir)
        assert str(work) in dry.stdout and work.is_dir()
        gc = run_cli("cache", "gc", "--older-than", "1000d", cache=cache_dir)
        assert str(work) in gc.stdout and str(live) not in gc.stdout
        assert not work.exists()
        assert (live / "partial").read_bytes() == b"in progress"
        assert packages(cache_dir) == [h]
    assert tmp_entries(cache_dir) == []
    run_cli("cache", "rm", h, cache=cache_dir)  # 128 MiB less for pytest to keep around


# --------------------------------------------------------------------------- verify, rm, gc


def _flip_byte(root: Path) -> None:
    f = root / "src/lib.c"
    data = bytearray(f.read_bytes())
    data[100] ^= 0x01
    tamper(f, bytes(data))


def _flip_exec(root: Path) -> None:
    (root / "README").chmod(0o755)


def _add_file(root: Path) -> None:
    (root / "src").chmod(0o755)  # installed 0555: root ignores that, an ordinary owner not
    (root / "src/extra.c").write_bytes(b"")


@pytest.mark.parametrize("corrupt", [_flip_byte, _flip_exec, _add_file], ids=["byte", "exec-bit", "new-file"])
def test_verify_names_corrupted_package(tmp_path: Path, cache_dir: Path, corrupt) -> None:
    bad = fetch_json(cache_dir, str(tar_gz(tmp_path / "small.tar.gz", SMALL)))["hash"]
    good = fetch_json(cache_dir, str(tar_gz(tmp_path / "other.tar.gz", {"x": b"x"})))["hash"]
    assert run_cli("cache", "verify", cache=cache_dir).returncode == 0

    corrupt(cache_dir / "p" / bad)
    for args in ((), (bad,)):
        proc = run_cli("cache", "verify", *args, cache=cache_dir, check=False)
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr
        assert bad in proc.stdout and good not in proc.stdout
    assert run_cli("cache", "verify", good, cache=cache_dir).returncode == 0


def test_rm(tmp_path: Path, cache_dir: Path) -> None:
    keep = fetch_json(cache_dir, str(tar_gz(tmp_path / "keep.tar.gz", {"k": b"k"})))["hash"]
    drop = fetch_json(cache_dir, str(tar_gz(tmp_path / "drop.tar.gz", {"d": b"d"})))["hash"]
    run_cli("cache", "rm", drop, cache=cache_dir)
    assert packages(cache_dir) == [keep]
    assert [row["hash"] for row in list_json(cache_dir)] == [keep]
    assert tmp_entries(cache_dir) == []

    proc = run_cli("cache", "rm", drop, cache=cache_dir, check=False)
    assert proc.returncode == 1 and drop in proc.stderr and "Traceback" not in proc.stderr

    # Only package hashes name packages: a path-like argument must not reach outside p/.
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_bytes(b"!")
    for bogus in ("..", "../tmp", os.path.relpath(victim, cache_dir / "p"), "bt2-123"):
        proc = run_cli("cache", "rm", bogus, cache=cache_dir, check=False)
        assert proc.returncode == 1, bogus
        assert "Traceback" not in proc.stderr
    assert (victim / "precious").read_bytes() == b"!"
    assert packages(cache_dir) == [keep] and (cache_dir / "tmp").is_dir()


def test_gc(tmp_path: Path, cache_dir: Path) -> None:
    hashes = sorted(fetch_json(cache_dir, str(tar_gz(tmp_path / f"{n}.tar.gz", {n: n.encode()})))["hash"]
                    for n in ("one", "two"))
    dry = run_cli("cache", "gc", "--older-than", "0", "--dry-run", cache=cache_dir)
    assert all(h in dry.stdout for h in hashes)
    assert packages(cache_dir) == hashes

    fresh = run_cli("cache", "gc", "--older-than", "1000d", cache=cache_dir)
    assert fresh.stdout == "" and packages(cache_dir) == hashes

    gone = run_cli("cache", "gc", "--older-than", "0", cache=cache_dir)
    assert all(h in gone.stdout for h in hashes)
    assert packages(cache_dir) == [] and tmp_entries(cache_dir) == []
    assert list_json(cache_dir) == []


# --------------------------------------------------------------------------- read-only packages


NESTED = {**SMALL, "src/deep/er/x.h": b"#define X\n", "tools/gen": (0o755, b"#!/bin/sh\n")}


def test_installed_packages_are_read_only(tmp_path: Path, cache_dir: Path) -> None:
    src = make_tree(tmp_path / "src", {"lib/a.c": b"a", "lib/inner/b.c": b"b", "run": ("x", b"#!"),
                                       "link": ("link", "lib/a.c")})
    for args in ((str(tar_gz(tmp_path / "n.tar.gz", NESTED)),), (str(src),)):
        got = fetch_json(cache_dir, *args)
        root = cache_dir / "p" / got["hash"]
        modes = tree_modes(root)
        for rel, mode in modes.items():
            path = root / rel
            if path.is_symlink():
                assert mode == 0o777, rel  # untouched
            elif path.is_dir():
                assert mode == 0o555, rel
            else:
                assert mode == (0o555 if rel in ("bin/run", "bin/tool", "tools/gen", "run") else 0o444), rel
        # Modes hold only the executable bit the hash covers: the tree still hashes to its name.
        assert run_cli("hash", str(root), cache=cache_dir).stdout.strip() == got["hash"]
        assert run_cli("cache", "verify", got["hash"], cache=cache_dir).returncode == 0
        # And an ordinary user (not root, whom permission bits do not stop) cannot change it.
        some_file = root / ("src/lib.c" if (root / "src/lib.c").exists() else "lib/a.c")
        for code in (f"open({str(some_file)!r}, 'ab')", f"open({str(root / 'new')!r}, 'xb')",
                     f"import os; os.rename({str(some_file)!r}, {str(some_file)!r} + '.x')"):
            proc = subprocess.run(as_owner(sys.executable, "-c", code), capture_output=True, text=True)
            assert "PermissionError" in proc.stderr, code


def test_archives_installed_by_rename_alone_are_read_only_too(tmp_path: Path, cache_dir: Path) -> None:
    """treeseed's fetcher creates an archive's files read-only and seals its directories
    itself (the cache then only renames): hard-link copies, directories the package rules
    emptied, deep and empty directories, tar and zip alike end up read-only."""
    import io
    import tarfile
    import zipfile

    tar_path = tmp_path / "links.tar"
    with tarfile.open(tar_path, "w") as tf:
        def add(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, mode: int = 0o644,
                link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.linkname, info.size = kind, mode, link, len(data)
            tf.addfile(info, io.BytesIO(data) if data else None)
        add("top/", kind=tarfile.DIRTYPE, mode=0o777)
        add("top/treeseed.toml", b'[package]\nexclude = ["junk/"]\n')
        add("top/a/b/c/file.txt", b"x" * 20000, mode=0o666)
        add("top/a/b/run", b"#!/bin/sh\n", mode=0o777)
        add("top/hard", kind=tarfile.LNKTYPE, link="top/a/b/c/file.txt")
        add("top/hardrun", kind=tarfile.LNKTYPE, link="top/a/b/run", mode=0o755)
        add("top/junk/deep/x.log", b"gone")
        add("top/empty/", kind=tarfile.DIRTYPE)
    zip_path = tmp_path / "flat.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr("one.txt", b"1")
        zf.writestr("sub/dir/two.txt", b"2")
    for archive in (tar_path, zip_path):
        got = fetch_json(cache_dir, str(archive))
        root = cache_dir / "p" / got["hash"]
        modes = tree_modes(root)
        assert "junk" not in modes
        for rel, mode in modes.items():
            if (root / rel).is_dir():
                assert mode == 0o555, (archive.name, rel)
            else:
                assert mode == (0o555 if rel in ("a/b/run", "hardrun") else 0o444), (archive.name, rel)
        assert run_cli("cache", "verify", got["hash"], cache=cache_dir).returncode == 0


def test_rm_and_gc_remove_read_only_trees_as_their_owner(tmp_path: Path, cache_dir: Path) -> None:
    """Removal must not depend on write bits: packages are 0555 all the way down, and a build
    may have taken the write bit from a directory in a work tree (here: set by the test)."""
    one = cli_as_owner(cache_dir, "fetch", str(tar_gz(tmp_path / "1.tar.gz", NESTED))).stdout.split()[0]
    two = cli_as_owner(cache_dir, "fetch", str(tar_gz(tmp_path / "2.tar.gz", {"d/e/f": b"2"}))).stdout.split()[0]
    for h, nested in ((one, "src/deep"), (two, "d/e")):
        for d in (cache_dir / "p" / h / nested, cache_dir / "p" / h):
            d.chmod(0o555)
    dead = cache_dir / "tmp" / "w-1-dead"  # an abandoned work directory, its files read-only
    (dead / "package" / "sub").mkdir(parents=True)
    (dead / "package" / "sub" / "f").write_bytes(b"f")
    for d in (dead / "package" / "sub", dead / "package"):
        d.chmod(0o500)

    proc = cli_as_owner(cache_dir, "cache", "rm", one, check=False)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert packages(cache_dir) == [two]
    proc = cli_as_owner(cache_dir, "cache", "gc", "--older-than", "0", check=False)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert two in proc.stdout and str(dead) in proc.stdout
    assert packages(cache_dir) == [] and tmp_entries(cache_dir) == []


def test_verify_says_a_changed_entry_is_corrupt_and_repair_fetches_it_again(
        tmp_path: Path, cache_dir: Path) -> None:
    archive = tar_gz(tmp_path / "small.tar.gz", SMALL)
    h = fetch_json(cache_dir, str(archive))["hash"]
    entry = cache_dir / "p" / h
    tamper(entry / "src/lib.c", b"changed by a build step\n")

    proc = run_cli("cache", "verify", cache=cache_dir, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = proc.stdout.splitlines()
    assert line.startswith(f"CORRUPT {h}: cache entry {entry} is corrupt")
    assert "changed it after it was installed" in line
    assert f"treeseed cache verify --repair {h}" in line
    assert packages(cache_dir) == [h]  # reported, not removed

    proc = run_cli("cache", "verify", "--repair", h, cache=cache_dir, check=False)
    assert "Traceback" not in proc.stderr
    assert f"removed it and fetched it again from {archive.absolute().as_uri()}" in proc.stdout
    assert (entry / "src/lib.c").read_bytes() == b"int x;\n" * 300
    assert stat.S_IMODE((entry / "src/lib.c").stat().st_mode) == 0o444
    assert run_cli("cache", "verify", cache=cache_dir).returncode == 0
    assert packages(cache_dir) == [h] and tmp_entries(cache_dir) == []


def test_verify_seals_packages_installed_writable(tmp_path: Path, cache_dir: Path) -> None:
    """Packages installed before installs were read-only become read-only once verified."""
    h = fetch_json(cache_dir, str(tar_gz(tmp_path / "n.tar.gz", NESTED)))["hash"]
    root = cache_dir / "p" / h
    for dirpath, _dirs, files in os.walk(root):
        os.chmod(dirpath, 0o755)
        for name in files:
            os.chmod(Path(dirpath, name), 0o755 if name in ("run", "tool", "gen") else 0o644)
    run_cli("cache", "verify", cache=cache_dir)
    assert {m for rel, m in tree_modes(root).items() if not (root / rel).is_file()} == {0o555}
    assert tree_modes(root)["bin/run"] == 0o555 and tree_modes(root)["README"] == 0o444


# --------------------------------------------------------------------------- the index is derived


def test_index_is_rebuilt_from_disk(tmp_path: Path, cache_dir: Path) -> None:
    small = fetch_json(cache_dir, str(tar_gz(tmp_path / "small.tar.gz", SMALL)))
    for suffix in ("", "-wal", "-shm"):
        Path(f"{cache_dir / 'index.sqlite'}{suffix}").unlink(missing_ok=True)
    (row,) = list_json(cache_dir)
    assert (row["hash"], row["size"], row["files"]) == (small["hash"], small["bytes"], small["files"])

    # A package renamed into p/ whose index row was never written (a crash right after the rename).
    elsewhere = tmp_path / "elsewhere"
    orphan = fetch_json(elsewhere, str(tar_gz(tmp_path / "orphan.tar.gz", {"o/p": b"orphan\n" * 9})))
    move_package(elsewhere / "p" / orphan["hash"], cache_dir / "p" / orphan["hash"])
    rows = {r["hash"]: r for r in list_json(cache_dir)}
    assert set(rows) == {small["hash"], orphan["hash"]}
    assert (rows[orphan["hash"]]["size"], rows[orphan["hash"]]["files"]) == (orphan["bytes"], 1)

    # And the other way round: a row whose directory vanished is dropped.
    move_package(cache_dir / "p" / small["hash"], tmp_path / "gone")  # behind the index's back
    assert [r["hash"] for r in list_json(cache_dir)] == [orphan["hash"]]
    assert run_cli("cache", "verify", cache=cache_dir).returncode == 0


def test_orphan_package_is_served_by_hash(tmp_path: Path, cache_dir: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    orphan = fetch_json(elsewhere, str(tar_gz(tmp_path / "orphan.tar.gz", {"o": b"orphan\n"})))
    (cache_dir / "p").mkdir(parents=True)
    move_package(elsewhere / "p" / orphan["hash"], cache_dir / "p" / orphan["hash"])
    got = fetch_json(cache_dir, "/nonexistent/orphan.tar.gz", "--hash", orphan["hash"])
    assert (got["hash"], got["cached"], got["files"], got["bytes"]) == (orphan["hash"], True, 1, 7)


# --------------------------------------------------------------------------- aliases


def test_archive_and_format_aliases(tmp_path: Path, cache_dir: Path) -> None:
    archive = tar_gz(tmp_path / "small.tar.gz", SMALL)
    first = fetch_json(cache_dir, str(archive), "--format", "nar", "--format", "git")
    assert first["cached"] is False and first["nar"] and first["git"]
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert first["archive_sha256"] == digest

    # Same bytes under another name: recognised by the archive's digest, not unpacked again.
    copy = tmp_path / "renamed.tgz"
    shutil.copyfile(archive, copy)
    for again in (fetch_json(cache_dir, str(archive)), fetch_json(cache_dir, str(copy))):
        assert again["cached"] is True
        assert again["hash"] == first["hash"]
        assert (again["nar"], again["git"], again["archive_sha256"]) == (first["nar"], first["git"], digest)
    assert packages(cache_dir) == [first["hash"]] and tmp_entries(cache_dir) == []

    cache = Cache(cache_dir)
    try:
        assert cache.resolve("nar", first["nar"]) == first["hash"]
        assert cache.resolve("git", first["git"]) == first["hash"]
        assert cache.resolve("archive-sha256", digest) == first["hash"]
        assert cache.resolve("bt2", first["hash"]) == first["hash"]
        assert cache.resolve("nar", "0" * 52) is None
    finally:
        cache.close()


def test_gc_keeps_packages_a_cached_dependency_fetch_used(tmp_path: Path, cache_dir: Path) -> None:
    """A fully cached `treeseed fetch` does not open the index, yet counts as a use: it bumps
    the package directory's mtime, which gc reads alongside the index's last_used."""
    import sqlite3

    lib = make_tree(tmp_path / "lib", {"a.txt": b"a"})
    archive = tmp_path / "lib.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(lib, arcname="lib")
    h = run_cli("hash", str(archive), cache=cache_dir).stdout.strip()
    app = make_tree(tmp_path / "app", {"treeseed.toml": (
        f'[dependencies.lib]\nurl = "../lib.tar.gz"\nhash = "{h}"\n').encode()})
    run_cli("-C", str(app), "fetch", cache=cache_dir)
    month_ago = time.time() - 40 * 86400
    with sqlite3.connect(cache_dir / "index.sqlite") as db:
        db.execute("UPDATE packages SET last_used = ?", (month_ago,))
    os.utime(cache_dir / "p" / h, (month_ago, month_ago))
    assert h in run_cli("cache", "gc", "--older-than", "30d", "--dry-run", cache=cache_dir).stdout
    run_cli("-C", str(app), "fetch", cache=cache_dir)  # everything cached: index untouched
    gc = run_cli("cache", "gc", "--older-than", "30d", cache=cache_dir)
    assert h not in gc.stdout
    assert (cache_dir / "p" / h).is_dir()


def test_a_fresh_index_opened_by_many_threads_at_once(tmp_path: Path) -> None:
    """A project's fetch threads each open the index of a new cache at the same moment: none
    of them may find it 'locked'. Unserialised, two connections setting it up (WAL, schema)
    deadlock inside SQLite, which fails one at once (seen here in about 1 trial in 25)."""
    import threading

    from treeseed.errors import CacheError

    failures: list[CacheError] = []
    for trial in range(200):
        root = tmp_path / f"cache{trial}"
        start = threading.Barrier(6)

        def open_index(root: Path = root, start: threading.Barrier = start) -> None:
            cache = Cache(root)
            start.wait()
            try:
                cache.db.execute("SELECT count(*) FROM packages").fetchone()
            except CacheError as exc:
                failures.append(exc)
            finally:
                cache.close()

        threads = [threading.Thread(target=open_index) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []
