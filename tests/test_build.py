"""``treeseed build``: configure, fetch what this configuration needs, run steps, watch.

Every dependency here is a real .tar.gz served by a real HTTP server on 127.0.0.1
(tests/httpserver.py) whose request log (``hits``) counts requests per path: it is the witness
that a lazy dependency the configuration does not need is never downloaded, that one it needs
is downloaded once, and that a second run downloads nothing. The builds are real: the real CLI
in a subprocess (``-C PKG``), real ``build.py`` scripts and shell scripts, and ``cc`` compiling
a tiny C program whose output says which headers it was compiled with.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import run_cli, tar_gz
from httpserver import Reply, Server
from waiting import wait_for

ZLIB = "/pkgs/zlib-1.0.tar.gz"
LAME = "/pkgs/lame-1.0.tar.gz"

# The example build script of the issue, plus a step that runs what it built.
PLAYER_BUILD_PY = '''\
def build(b):
    mp3 = b.option("enable-mp3", bool, "MP3 decoding via lame", default=True)
    z = b.dependency("zlib")
    cmd = ["cc", "-o", "player", "main.c", f"-I{z}"]
    if mp3:
        lame = b.lazy_dependency("lame")
        if lame is not None:
            cmd.append(f"-I{lame}")
    b.step("player", cmd, default=True)
    b.step("run", ["./player"], depends_on=["player"])
'''

# Says which headers it was compiled against: the proof of what the configure pass handed out.
MAIN_C = b'''\
#include <stdio.h>
#include "zlib.h"
#if __has_include("lame.h")
#include "lame.h"
#endif
int main(void) {
#ifdef LAME_V
    printf("player zlib %d lame %d\\n", ZLIB_V, LAME_V);
#else
    printf("player zlib %d no mp3\\n", ZLIB_V);
#endif
    return 0;
}
'''

WITH_MP3 = "player zlib 13 lame 399"
WITHOUT_MP3 = "player zlib 13 no mp3"


# --------------------------------------------------------------------------- helpers


class Packages:
    """Makes package archives and hashes them (in a cache of its own: the one under test
    starts empty), in this process: the CLI's own ``hash`` is tested elsewhere."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "archives"
        self.dir.mkdir()
        self.hash_cache = tmp / "hash-cache"

    def build(self, name: str, files: dict[str, bytes], *deps: str) -> tuple[bytes, str]:
        from treeseed.cache import Cache
        from treeseed.fetch import hash_path

        toml = f'[package]\nname = "{name}"\nversion = "1.0.0"\n' + "".join("\n" + d for d in deps)
        body = tar_gz({"treeseed.toml": toml.encode(), **files}, f"{name}-1.0")
        archive = self.dir / f"{name}-{len(os.listdir(self.dir))}.tar.gz"
        archive.write_bytes(body)
        cache = Cache(self.hash_cache)
        try:
            return body, hash_path(archive, cache, []).hashes["bt2"]
        finally:
            cache.close()


def dep_toml(name: str, url: str, hash: str, lazy: bool = False) -> str:
    lines = [f"[dependencies.{name}]", f'url = "{url}"', f'hash = "{hash}"']
    if lazy:
        lines.append("lazy = true")
    return "\n".join(lines) + "\n"


def serve(srv: Server, path: str, body: bytes, **kw: object) -> str:
    srv.routes[path] = Reply(200, body, {"Content-Type": "application/gzip"}, **kw)  # type: ignore[arg-type]
    return srv.url(path)


def write_package(root: Path, files: dict[str, str | bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            path.write_text(data)
        else:
            path.write_bytes(data)
    return root.resolve()


def build(cache: Path, root: Path, *args: str, env: dict[str, str] | None = None
          ) -> subprocess.CompletedProcess[str]:
    return run_cli("-C", str(root), "build", *args, cache=cache, env=env, check=False)


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def failed(proc: subprocess.CompletedProcess[str]) -> str:
    """A clean failure: status 1, one ``treeseed: error:`` and no Python traceback."""
    assert proc.returncode == 1, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "treeseed: error: " in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr


def cached(cache: Path) -> set[str]:
    p = cache / "p"
    return set(os.listdir(p)) if p.exists() else set()


def line_of(path: Path, needle: str) -> int:
    """1-based number of the first line of ``path`` containing ``needle``."""
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


@dataclass
class World:
    """zlib (eager) and lame (lazy) on a server, and the player package that needs them."""

    server: Server
    packages: Packages
    zlib: str
    lame: str
    zlib_dep: str  # the [dependencies.*] tables, for other packages to reuse
    lame_dep: str

    def hits(self, path: str) -> int:
        return self.server.hits.count(path)

    def player(self, root: Path, build_py: str = PLAYER_BUILD_PY, package: str = "") -> Path:
        toml = f'[package]\nname = "player"\nversion = "1.0.0"\n{package}\n' \
               f"{self.zlib_dep}\n{self.lame_dep}"
        return write_package(root, {"treeseed.toml": toml, "build.py": build_py, "main.c": MAIN_C})


@pytest.fixture
def world(tmp_path: Path, server: Server) -> World:
    pk = Packages(tmp_path)
    zlib_body, zlib = pk.build("zlib", {"zlib.h": b"#define ZLIB_V 13\n"})
    lame_body, lame = pk.build("lame", {"lame.h": b"#define LAME_V 399\n"})
    zlib_url = serve(server, ZLIB, zlib_body)
    lame_url = serve(server, LAME, lame_body)
    return World(server, pk, zlib, lame, dep_toml("zlib", zlib_url, zlib),
                 dep_toml("lame", lame_url, lame, lazy=True))


# --------------------------------------------------------------------------- the proof


def test_fetch_downloads_exactly_what_the_configuration_needs(tmp_path: Path, cache_dir: Path,
                                                              world: World) -> None:
    root = world.player(tmp_path / "player")

    # mp3 off: the lazy dependency is never asked for, not one byte of it.
    ok(build(cache_dir, root, "--fetch", "-Denable-mp3=false"))
    assert world.hits(LAME) == 0
    assert world.hits(ZLIB) == 1
    assert cached(cache_dir) == {world.zlib}
    assert not (root / "player").exists()  # --fetch never runs a step

    # mp3 on: configure misses lame, fetches it once, configures again.
    ok(build(cache_dir, root, "--fetch", "-Denable-mp3=true"))
    assert world.hits(LAME) == 1
    assert world.hits(ZLIB) == 1
    assert cached(cache_dir) == {world.zlib, world.lame}
    assert not (root / "player").exists()

    # A second run (and the default, which is mp3 on) asks the server for nothing at all.
    before = list(world.server.hits)
    ok(build(cache_dir, root, "--fetch", "-Denable-mp3=true"))
    ok(build(cache_dir, root, "--fetch=needed"))
    assert world.server.hits == before
    assert not (root / "player").exists()

    # Without --fetch: the default step compiles, against the headers this configuration chose.
    proc = ok(build(cache_dir, root))
    assert (root / "player").is_file()
    assert "built player" in proc.stderr
    run = subprocess.run([str(root / "player")], capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == WITH_MP3

    # Steps on the command line; with mp3 off the same cache builds without lame.
    assert ok(build(cache_dir, root, "run", "-Denable-mp3=false")).stdout.strip().endswith(WITHOUT_MP3)
    assert ok(build(cache_dir, root, "run")).stdout.strip().endswith(WITH_MP3)
    assert world.server.hits == before


def test_fetch_all_fetches_lazy_dependencies_the_configuration_does_not_need(
        tmp_path: Path, cache_dir: Path, world: World) -> None:
    root = world.player(tmp_path / "player")
    ok(build(cache_dir, root, "--fetch=all", "-Denable-mp3=false"))
    assert world.hits(LAME) == 1 and world.hits(ZLIB) == 1
    assert cached(cache_dir) == {world.zlib, world.lame}
    assert not (root / "player").exists()
    before = list(world.server.hits)
    ok(build(cache_dir, root, "--fetch", "all", "-Denable-mp3=false"))
    assert world.server.hits == before


def test_offline_missing_lazy_dependency_names_it_and_the_option(tmp_path: Path, cache_dir: Path,
                                                                 world: World) -> None:
    root = world.player(tmp_path / "player")
    ok(build(cache_dir, root, "--fetch", "-Denable-mp3=false"))  # zlib only
    before = list(world.server.hits)

    err = failed(build(cache_dir, root, "--offline"))
    assert "--offline" in err
    assert "lame" in err
    assert "enable-mp3=true" in err  # the option read before the request
    line = line_of(root / "build.py", 'b.lazy_dependency("lame")')
    assert f"{root / 'build.py'}:{line}" in err
    assert world.server.hits == before
    assert world.lame not in cached(cache_dir)

    # The global spelling, and a configuration that needs nothing missing, works offline.
    err = failed(run_cli("--offline", "-C", str(root), "build", cache=cache_dir, check=False))
    assert "lame" in err and "enable-mp3=true" in err
    ok(run_cli("--offline", "-C", str(root), "build", "-Denable-mp3=false", cache=cache_dir,
               check=False))
    assert (root / "player").is_file()
    assert world.server.hits == before


def test_offline_missing_eager_dependency_is_named(tmp_path: Path, cache_dir: Path,
                                                   world: World) -> None:
    root = world.player(tmp_path / "player")
    err = failed(build(cache_dir, root, "--offline", "-Denable-mp3=false"))
    assert "zlib" in err and "--offline" in err
    assert world.server.hits == []


# --------------------------------------------------------------------------- a dependency's build


CODEC_BUILD_PY = '''\
def build(b):
    use_x = b.option("x", bool, "decode with x", default=False)
    out = b.option("out", str, "where the library goes")
    header = "codec.h"
    if use_x:
        x = b.lazy_dependency("x")
        if x is not None:
            header = f"{x}/x.h"
    # runs in codec's own directory: codec.h is relative to it
    b.step("lib", ["sh", "-c", 'cat "$1" > "$2/codec.txt"', "sh", header, out])
'''

APP_BUILD_PY = '''\
from pathlib import Path


def build(b):
    use_x = b.option("codec-x", bool, "codec with x", default=True)
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    b.build_dependency("codec", x=use_x, out=str(out))
    b.step("app", ["sh", "-c", "cp out/codec.txt out/app.txt && echo app saw $(cat out/app.txt)"],
           depends_on=["codec:lib"], default=True)
'''


@pytest.fixture
def codec_app(tmp_path: Path, server: Server) -> tuple[Path, str, str]:
    """app -> codec (built by app) -> x, lazy, declared by codec relative to codec's URL."""
    pk = Packages(tmp_path)
    x_body, x = pk.build("x", {"x.h": b"#define X_V 7\n"})
    serve(server, "/pkgs/x-1.0.tar.gz", x_body)
    codec_body, codec = pk.build("codec", {"build.py": CODEC_BUILD_PY.encode(),
                                           "codec.h": b"#define CODEC_PLAIN 1\n"},
                                 dep_toml("x", "x-1.0.tar.gz", x, lazy=True))
    codec_url = serve(server, "/pkgs/codec-1.0.tar.gz", codec_body)
    root = write_package(tmp_path / "app", {
        "treeseed.toml": '[package]\nname = "app"\nversion = "1.0.0"\n\n'
                         + dep_toml("codec", codec_url, codec),
        "build.py": APP_BUILD_PY})
    return root, codec, x


def test_lazy_dependency_of_a_dependency_built_by_the_package(cache_dir: Path, server: Server,
                                                              codec_app) -> None:
    root, codec, x = codec_app

    # codec without x: codec is fetched (eager), x is not.
    ok(build(cache_dir, root, "--fetch", "-Dcodec-x=false"))
    assert server.hits == ["/pkgs/codec-1.0.tar.gz"]
    assert cached(cache_dir) == {codec}

    # With x: codec's own script misses x, which is fetched from codec's neighbourhood.
    proc = ok(build(cache_dir, root))
    assert server.hits == ["/pkgs/codec-1.0.tar.gz", "/pkgs/x-1.0.tar.gz"]
    assert cached(cache_dir) == {codec, x}
    assert (root / "out" / "app.txt").read_text() == "#define X_V 7\n"  # codec:lib ran first
    assert "app saw #define X_V 7" in proc.stdout

    # codec's steps are codec:STEP: listed, and runnable on their own.
    listing = ok(build(cache_dir, root, "--list")).stdout
    assert "  codec:lib\n" in listing
    assert "  app [default] (after codec:lib)" in listing
    (root / "out" / "codec.txt").unlink()
    (root / "out" / "app.txt").unlink()
    ok(build(cache_dir, root, "codec:lib", "-Dcodec-x=false"))
    assert (root / "out" / "codec.txt").read_text() == "#define CODEC_PLAIN 1\n"
    assert not (root / "out" / "app.txt").exists()
    assert len(server.hits) == 2


def test_lazy_dependency_of_a_dependency_offline_names_it(cache_dir: Path, server: Server,
                                                          codec_app) -> None:
    root, codec, x = codec_app
    ok(build(cache_dir, root, "--fetch", "-Dcodec-x=false"))
    err = failed(build(cache_dir, root, "--offline"))
    script = cache_dir / "p" / codec / "build.py"
    line = line_of(script, 'b.lazy_dependency("x")')
    assert f"x of app/codec, asked for at {script}:{line}" in err
    assert "x=true" in err
    assert server.hits == ["/pkgs/codec-1.0.tar.gz"]


def test_fetch_all_follows_lazy_dependencies_of_dependencies(cache_dir: Path, server: Server,
                                                             codec_app) -> None:
    root, codec, x = codec_app
    ok(build(cache_dir, root, "--fetch=all", "-Dcodec-x=false"))
    assert sorted(server.hits) == ["/pkgs/codec-1.0.tar.gz", "/pkgs/x-1.0.tar.gz"]
    assert cached(cache_dir) == {codec, x}


def test_unknown_option_for_a_dependency_build(cache_dir: Path, server: Server, codec_app) -> None:
    root, codec, x = codec_app
    (root / "build.py").write_text(APP_BUILD_PY.replace("x=use_x", "xx=use_x"))
    err = failed(build(cache_dir, root, "--fetch"))
    assert "codec's build.py has no option xx" in err
    assert "out, x" in err


# --------------------------------------------------------------------------- several misses


def test_all_misses_of_a_pass_are_fetched_together(tmp_path: Path, cache_dir: Path,
                                                   server: Server) -> None:
    """Two lazy dependencies behind two options: one configure pass misses both, one fetch
    round gets both at once (the server holds each reply until both requests are in, so a
    fetch of one after the other fails), and the script runs exactly twice."""
    pk = Packages(tmp_path)
    barrier = threading.Barrier(2, timeout=120)  # an outer bound: a busy machine starts processes slowly
    la_body, la = pk.build("la", {"la.h": b"A\n"})
    lb_body, lb = pk.build("lb", {"lb.h": b"B\n"})
    la_url = serve(server, "/la.tar.gz", la_body, barrier=barrier)
    lb_url = serve(server, "/lb.tar.gz", lb_body, barrier=barrier)
    root = write_package(tmp_path / "two", {
        "treeseed.toml": '[package]\nname = "two"\n\n' + dep_toml("la", la_url, la, lazy=True)
                         + "\n" + dep_toml("lb", lb_url, lb, lazy=True),
        "build.py": '''\
from pathlib import Path


def build(b):
    with open(Path(__file__).parent / "passes.log", "a") as f:
        f.write("pass\\n")
    files = []
    if b.option("use-a", bool, "a", default=True):
        a = b.lazy_dependency("la")
        files.append(f"{a}/la.h")
    if b.option("use-b", bool, "b", default=True):
        bb = b.lazy_dependency("lb")
        files.append(f"{bb}/lb.h")
    b.step("show", ["cat", *files])
'''})
    proc = ok(build(cache_dir, root, "-j", "4"))
    assert sorted(server.hits) == ["/la.tar.gz", "/lb.tar.gz"]
    assert cached(cache_dir) == {la, lb}
    assert (root / "passes.log").read_text() == "pass\n" * 2
    assert proc.stdout == "A\nB\n"

    # Everything cached: one pass, no request.
    ok(build(cache_dir, root, "-j", "4"))
    assert (root / "passes.log").read_text() == "pass\n" * 3
    assert len(server.hits) == 2


# --------------------------------------------------------------------------- options and --list


OPTIONS_BUILD_PY = '''\
import enum
import json
from pathlib import Path


class Codec(enum.Enum):
    MP3 = "mp3"
    OGG = "ogg"


def build(b):
    mp3 = b.option("enable-mp3", bool, "MP3 decoding via lame", default=True)
    level = b.option("level", int, "optimisation level", default=2)
    codec = b.option("codec", Codec, "the codec", default=Codec.MP3)
    flags = b.option("flags", list[str], "extra compiler flags", default=[])
    arch = b.option("arch", ("x86", "arm"), "target architecture", default="x86")
    Path(__file__).with_name("seen.json").write_text(json.dumps({
        "mp3": mp3, "level": level, "codec": getattr(codec, "name", repr(codec)),
        "is_member": isinstance(codec, Codec), "flags": flags, "arch": arch}))
    b.step("noop", ["true"], default=True)
    b.step("other", ["true"], depends_on=["noop"])
'''

DECLARED = [
    "-Denable-mp3=<bool>  MP3 decoding via lame (default: true)",
    "-Dlevel=<int>  optimisation level (default: 2)",
    "-Dcodec=<enum(mp3|ogg)>  the codec (default: mp3)",
    "-Dflags=<list>  extra compiler flags (default: empty)",
    "-Darch=<enum(x86|arm)>  target architecture (default: x86)",
]


@pytest.fixture
def options_pkg(tmp_path: Path) -> Path:
    # No treeseed.toml at all: a build.py alone makes a package that can build.
    return write_package(tmp_path / "opts", {"build.py": OPTIONS_BUILD_PY})


def test_option_types_parse(cache_dir: Path, options_pkg: Path) -> None:
    root = options_pkg
    ok(build(cache_dir, root))
    assert json.loads((root / "seen.json").read_text()) == {
        "mp3": True, "level": 2, "codec": "MP3", "is_member": True, "flags": [], "arch": "x86"}

    ok(build(cache_dir, root, "-Denable-mp3=off", "-Dlevel=0x10", "-Dcodec=ogg",
             "-Dflags=-O2, -g", "-Darch=arm"))
    assert json.loads((root / "seen.json").read_text()) == {
        "mp3": False, "level": 16, "codec": "OGG", "is_member": True, "flags": ["-O2", "-g"],
        "arch": "arm"}

    ok(build(cache_dir, root, "-Denable-mp3=YES", "-Dlevel=-3", "-Dflags="))
    seen = json.loads((root / "seen.json").read_text())
    assert (seen["mp3"], seen["level"], seen["flags"]) == (True, -3, [])


@pytest.mark.parametrize("define, reason", [
    ("-Dnope=1", "unknown option -Dnope"),
    ("-Denable-mp3=maybe", "-Denable-mp3=maybe: expected true or false"),
    ("-Dlevel=many", "-Dlevel=many: expected an integer"),
    ("-Dcodec=flac", "-Dcodec=flac: expected one of mp3, ogg"),
    ("-Darch=mips", "-Darch=mips: expected one of x86, arm"),
])
def test_bad_option_is_rejected_with_the_declared_options(cache_dir: Path, options_pkg: Path,
                                                          define: str, reason: str) -> None:
    proc = build(cache_dir, options_pkg, define)
    err = failed(proc)
    assert reason in err
    assert "declared options:" in err
    # The offending option (or, for an unknown one, every option) is described with its type.
    described = DECLARED if define == "-Dnope=1" else [
        d for d in DECLARED if d.startswith(define.split("=")[0] + "=")]
    for line in described:
        assert line in err, err
    assert proc.stdout == ""


@pytest.mark.parametrize("define", ["-Denable-mp3=maybe", "-Dlevel=many", "-Dcodec=flac"])
def test_wrong_type_lists_every_declared_option(cache_dir: Path, options_pkg: Path,
                                                define: str) -> None:
    err = failed(build(cache_dir, options_pkg, define))
    for line in DECLARED:
        assert line in err, err


@pytest.mark.parametrize("define", ["-Denable-mp3", "-D=true"])
def test_malformed_define_is_rejected(cache_dir: Path, options_pkg: Path, define: str) -> None:
    err = failed(build(cache_dir, options_pkg, define))
    assert "write -Dname=value" in err
    # Rejected before any step or fetch: the script ran at most in --list mode, to name options.
    assert not (cache_dir / "p").exists() or not any((cache_dir / "p").iterdir())


def test_malformed_define_lists_the_declared_options(cache_dir: Path, options_pkg: Path) -> None:
    err = failed(build(cache_dir, options_pkg, "-Denable-mp3"))
    for line in DECLARED:
        assert line in err, err


def test_list_shows_options_and_steps(cache_dir: Path, options_pkg: Path) -> None:
    out = ok(build(cache_dir, options_pkg, "--list")).stdout
    for line in DECLARED:
        assert f"  {line}\n" in out, out
    assert "steps:\n  noop [default]\n  other (after noop)\n" in out


def test_list_from_an_empty_cache_asks_the_network_nothing(tmp_path: Path, cache_dir: Path,
                                                           world: World) -> None:
    root = world.player(tmp_path / "player")
    for args in (("--list",), ("--list", "-Denable-mp3=false"), ("--offline", "--list")):
        out = ok(build(cache_dir, root, *args)).stdout
        assert "  -Denable-mp3=<bool>  MP3 decoding via lame (default: true)\n" in out
        assert "steps:\n  player [default]\n  run (after player)\n" in out
    assert world.server.hits == []
    assert cached(cache_dir) == set()
    assert not (root / "player").exists()


# --------------------------------------------------------------------------- steps


def steps_pkg(tmp_path: Path, body: str, header: str = "") -> Path:
    return write_package(tmp_path / "steps", {"build.py": header + "def build(b):\n" + body})


def test_steps_run_in_dependency_order(tmp_path: Path, cache_dir: Path) -> None:
    root = steps_pkg(tmp_path, '''\
    b.step("c", ["sh", "-c", "echo c >> order.log"], depends_on=["b"])
    b.step("a", ["sh", "-c", "echo a >> order.log"])
    b.step("b", ["sh", "-c", "echo b >> order.log"], depends_on=["a"])
    b.step("unrelated", ["sh", "-c", "echo unrelated >> order.log"])
''')
    ok(build(cache_dir, root, "c", "-j", "4"))
    assert (root / "order.log").read_text() == "a\nb\nc\n"


# Each waits (bounded: 30 s) for the other's marker: run one after the other, the first fails.
MEET = ('touch {me}.mark; i=0; while [ ! -e {other}.mark ]; do i=$((i+1)); '
        'if [ $i -gt 600 ]; then echo "{me} never met {other}"; exit 9; fi; sleep 0.05; done; '
        'echo "{me} met {other}"')


def test_independent_steps_run_in_parallel(tmp_path: Path, cache_dir: Path) -> None:
    root = steps_pkg(tmp_path, f'''\
    p = b.step("p", ["sh", "-c", {MEET.format(me="p", other="q")!r}])
    q = b.step("q", ["sh", "-c", {MEET.format(me="q", other="p")!r}])
    b.step("all", ["echo", "both done"], depends_on=[p, q], default=True)
''')
    proc = ok(build(cache_dir, root, "-j", "2"))
    lines = proc.stdout.splitlines()
    assert "[p] p met q" in lines and "[q] q met p" in lines  # prefixed: several may run at once
    assert lines[-1] == "[all] both done"


def test_failing_step_stops_the_build(tmp_path: Path, cache_dir: Path) -> None:
    root = steps_pkg(tmp_path, '''\
    b.step("first", ["echo", "first ran"])
    b.step("bad", ["sh", "-c", "echo about to fail; exit 3"], depends_on=["first"])
    b.step("after", ["touch", "after.ran"], depends_on=["bad"], default=True)
''')
    proc = build(cache_dir, root, "-j", "4")
    err = failed(proc)
    assert "step 'bad' failed with exit status 3" in err
    assert "[first] first ran" in proc.stdout and "[bad] about to fail" in proc.stdout
    assert not (root / "after.ran").exists()
    assert "built" not in err


def test_callable_steps(tmp_path: Path, cache_dir: Path) -> None:
    root = steps_pkg(tmp_path, '''\
    def generate():
        (HERE / "gen.txt").write_text("generated\\n")

    g = b.step("gen", generate)
    b.step("use", ["cat", "gen.txt"], depends_on=[g], default=True)
    b.step("explode", lambda: 1 / 0)
''', header="from pathlib import Path\n\nHERE = Path(__file__).parent\n\n\n")
    proc = ok(build(cache_dir, root))
    assert "[use] generated" in proc.stdout
    err = failed(build(cache_dir, root, "explode"))
    assert "step 'explode' failed: ZeroDivisionError: division by zero" in err


def test_default_step_selection(tmp_path: Path, cache_dir: Path) -> None:
    # A single step is the default even unmarked.
    root = steps_pkg(tmp_path / "one", '    b.step("only", ["touch", "only.ran"])\n')
    ok(build(cache_dir, root))
    assert (root / "only.ran").exists()

    # Two unmarked steps: no default, and the error lists the steps.
    root = steps_pkg(tmp_path / "two", '''\
    b.step("a", ["touch", "a.ran"])
    b.step("b", ["touch", "b.ran"])
''')
    err = failed(build(cache_dir, root))
    assert "no step given and no default step; steps: a, b" in err
    assert not (root / "a.ran").exists() and not (root / "b.ran").exists()
    ok(build(cache_dir, root, "b"))
    assert (root / "b.ran").exists() and not (root / "a.ran").exists()
    err = failed(build(cache_dir, root, "zzz"))
    assert "no step 'zzz'; steps: a, b" in err

    # No steps at all.
    root = steps_pkg(tmp_path / "none", '    b.option("x", int, "x", default=1)\n')
    assert "no default step; steps: none" in failed(build(cache_dir, root))


def test_step_cycle_and_unknown_dependency(tmp_path: Path, cache_dir: Path) -> None:
    root = steps_pkg(tmp_path / "cycle", '''\
    b.step("a", ["touch", "a.ran"], depends_on=["b"], default=True)
    b.step("b", ["touch", "b.ran"], depends_on=["a"])
''')
    err = failed(build(cache_dir, root))
    assert "cycle: a -> b -> a" in err
    assert not (root / "a.ran").exists() and not (root / "b.ran").exists()

    root = steps_pkg(tmp_path / "ghost", '    b.step("a", ["true"], depends_on=["ghost"])\n')
    assert "step 'a' depends on 'ghost', which is not a step" in failed(build(cache_dir, root))


def test_step_output_streams_while_the_step_runs(tmp_path: Path, cache_dir: Path) -> None:
    """The step prints a line, then waits for a file the test writes only after reading that
    line from treeseed's stdout: the line cannot have come from a step that had finished."""
    root = steps_pkg(tmp_path, '''\
    b.step("talk", ["sh", "-c", "echo first-line; i=0; while [ ! -e go ]; do i=$((i+1)); "
                    "if [ $i -gt 1200 ]; then exit 8; fi; sleep 0.05; done; echo second-line"])
''')
    out_path = tmp_path / "stdout.txt"
    with open(out_path, "wb") as out, open(tmp_path / "stderr.txt", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "treeseed", "--cache-dir", str(cache_dir),
                                 "-C", str(root), "build"], stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL)
    try:
        wait_for("the step's first line", lambda: "first-line" in out_path.read_text())
        assert proc.poll() is None
        assert "second-line" not in out_path.read_text()
        (root / "go").touch()
        assert proc.wait(timeout=60) == 0, (tmp_path / "stderr.txt").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert out_path.read_text() == "first-line\nsecond-line\n"


# --------------------------------------------------------------------------- script errors


def test_exception_in_build_py_names_the_line(tmp_path: Path, cache_dir: Path) -> None:
    root = write_package(tmp_path / "broken", {"build.py": '''\
def configure_codec(name):
    raise ValueError(f"no codec called {name}")


def build(b):
    codec = b.option("codec", str, "the codec", default="mp4")
    configure_codec(codec)
'''})
    script = root / "build.py"
    err = failed(build(cache_dir, root))
    assert f"{script}:{line_of(script, 'raise ValueError')}: ValueError: no codec called mp4" in err
    assert f'line {line_of(script, "configure_codec(codec)")}, in build' in err  # the script's frames
    assert "treeseed/" not in err and "runpy" not in err  # and only those


def test_error_at_import_of_build_py(tmp_path: Path, cache_dir: Path) -> None:
    root = write_package(tmp_path / "broken", {"build.py": "import os\nimport no_such_module_xyz\n"})
    err = failed(build(cache_dir, root))
    assert f"{root / 'build.py'}:2: ModuleNotFoundError: No module named 'no_such_module_xyz'" in err
    assert "treeseed/" not in err and "runpy" not in err


def test_syntax_error_in_build_py(tmp_path: Path, cache_dir: Path) -> None:
    root = write_package(tmp_path / "broken", {"build.py": "def build(b):\n    b.step(\n"})
    err = failed(build(cache_dir, root))
    assert "SyntaxError" in err and str(root / "build.py") in err
    assert "treeseed/" not in err and "runpy" not in err


def test_syntax_error_in_build_py_names_the_line(tmp_path: Path, cache_dir: Path) -> None:
    root = write_package(tmp_path / "broken", {"build.py": "def build(b):\n    b.step(\n"})
    err = failed(build(cache_dir, root))
    assert f"{root / 'build.py'}:2: SyntaxError: " in err


def test_build_py_without_build_function(tmp_path: Path, cache_dir: Path) -> None:
    root = write_package(tmp_path / "broken", {"build.py": "x = 1\n"})
    assert "defines no build(b) function" in failed(build(cache_dir, root))


def test_build_py_asking_for_an_undeclared_dependency(tmp_path: Path, cache_dir: Path,
                                                      world: World) -> None:
    root = world.player(tmp_path / "player", PLAYER_BUILD_PY.replace('"lame"', '"lamer"'))
    err = failed(build(cache_dir, root))
    script = root / "build.py"
    assert f"{script}:{line_of(script, 'lazy_dependency')}: 'lamer' is not a dependency" in err
    assert "it declares lame, zlib" in err
    assert world.hits(LAME) == 0


# --------------------------------------------------------------------------- any language


SHELL_TOML = '''\
[package]
name = "shplayer"
version = "1.0.0"
build = "sh build.sh"

[options.enable-mp3]
type = "bool"
default = false
description = "MP3 decoding via lame"

[options.level]
type = "int"
default = 2
description = "optimisation level"

'''

BUILD_SH = '''\
set -e
echo "pass fetch-only=${TREESEED_FETCH_ONLY:-0} mp3=$TREESEED_OPT_ENABLE_MP3 args=$*" >> passes.log
printf '%s\\n' "$TREESEED_OPTIONS" > options.json
if [ "$TREESEED_OPT_LEVEL" = 99 ]; then
    echo "level 99 is too high" >&2
    exit 4
fi
z=$(treeseed path zlib)
inc="-I$z"
if [ "$TREESEED_OPT_ENABLE_MP3" = true ]; then
    lame=$(treeseed path lame)
    inc="$inc -I$lame"
fi
if [ "${TREESEED_FETCH_ONLY:-}" = 1 ]; then
    echo "fetch only: resolved"
    exit 0
fi
cc -o player main.c $inc
./player
'''


def shell_pkg(world: World, root: Path) -> Path:
    return write_package(root, {"treeseed.toml": SHELL_TOML + world.zlib_dep + "\n" + world.lame_dep,
                                "build.sh": BUILD_SH, "main.c": MAIN_C})


def passes(root: Path) -> list[str]:
    path = root / "passes.log"
    lines = path.read_text().splitlines() if path.exists() else []
    path.unlink(missing_ok=True)
    return lines


def test_shell_script_protocol(tmp_path: Path, cache_dir: Path, world: World) -> None:
    root = shell_pkg(world, tmp_path / "sh")

    # Fetch only, mp3 off (the default): lame is never requested, nothing is compiled.
    proc = ok(build(cache_dir, root, "--fetch"))
    assert world.hits(LAME) == 0 and world.hits(ZLIB) == 1
    assert passes(root) == ["pass fetch-only=1 mp3=false args="]
    assert "fetch only: resolved" in proc.stdout
    assert not (root / "player").exists()
    assert json.loads((root / "options.json").read_text()) == {"enable-mp3": False, "level": 2}

    # mp3 on: `treeseed path lame` misses (75), the runner fetches it and runs the script again.
    proc = ok(build(cache_dir, root, "--fetch", "-Denable-mp3=true", "-Dlevel=3"))
    assert world.hits(LAME) == 1
    assert passes(root) == ["pass fetch-only=1 mp3=true args="] * 2
    assert "lazy dependency 'lame' is not fetched yet" in proc.stdout
    assert not (root / "player").exists()
    assert json.loads((root / "options.json").read_text()) == {"enable-mp3": True, "level": 3}
    assert cached(cache_dir) == {world.zlib, world.lame}
    world_cache = cache_dir

    # Building for real: everything cached, one pass, nothing asked of the server.
    before = list(world.server.hits)
    proc = ok(build(world_cache, root, "-Denable-mp3=true"))
    assert passes(root) == ["pass fetch-only=0 mp3=true args="]
    assert proc.stdout.strip() == WITH_MP3
    proc = ok(build(world_cache, root, "install"))  # steps reach the command as arguments
    assert passes(root) == ["pass fetch-only=0 mp3=false args=install"]
    assert proc.stdout.strip() == WITHOUT_MP3
    assert world.server.hits == before

    # A build (not fetch-only) that misses: fetched, rerun, compiled with it.
    fresh = tmp_path / "cache2"
    proc = ok(build(fresh, root, "-Denable-mp3=true"))
    assert world.hits(LAME) == 2 and world.hits(ZLIB) == 2
    assert passes(root) == ["pass fetch-only=0 mp3=true args="] * 2
    assert proc.stdout.strip().endswith(WITH_MP3)

    # A failure that is not a miss is the command's failure, with its status.
    err = failed(build(world_cache, root, "-Dlevel=99"))
    assert "build command 'sh build.sh' failed with exit status 4" in err


def test_shell_fetch_all(tmp_path: Path, cache_dir: Path, world: World) -> None:
    root = shell_pkg(world, tmp_path / "sh")
    ok(build(cache_dir, root, "--fetch=all"))
    assert world.hits(LAME) == 1 and world.hits(ZLIB) == 1
    assert passes(root) == ["pass fetch-only=1 mp3=false args="]


def test_shell_offline_miss_names_the_dependency_and_options(tmp_path: Path, cache_dir: Path,
                                                             world: World) -> None:
    root = shell_pkg(world, tmp_path / "sh")
    ok(build(cache_dir, root, "--fetch"))
    before = list(world.server.hits)
    err = failed(build(cache_dir, root, "--offline", "-Denable-mp3=true"))
    assert "lame" in err and "enable-mp3=true" in err
    assert world.server.hits == before


def test_treeseed_path_of_a_missing_lazy_dependency_outside_a_build(tmp_path: Path,
                                                                    cache_dir: Path,
                                                                    world: World) -> None:
    root = shell_pkg(world, tmp_path / "sh")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TREESEED_") or k == "TREESEED_CACHE_DIR"}
    proc = subprocess.run([sys.executable, "-m", "treeseed", "--cache-dir", str(cache_dir), "-C",
                           str(root), "path", "lame"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 75, proc.stderr
    assert proc.stdout == ""
    assert "lazy dependency 'lame'" in proc.stderr and "not in the cache" in proc.stderr
    assert "treeseed build --fetch" in proc.stderr
    assert world.server.hits == []


def test_shell_protocol_without_treeseed_on_path(tmp_path: Path, cache_dir: Path,
                                                 world: World) -> None:
    root = shell_pkg(world, tmp_path / "sh")
    bare = os.pathsep.join(d for d in ("/usr/local/bin", "/usr/bin", "/bin")
                           if not (Path(d) / "treeseed").exists())
    proc = subprocess.run([sys.executable, "-m", "treeseed", "--cache-dir", str(cache_dir), "-C",
                           str(root), "build"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PATH": bare})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith(WITHOUT_MP3)


@pytest.mark.parametrize("define, reason", [
    ("-Dnope=1", "unknown option -Dnope"),
    ("-Denable-mp3=maybe", "-Denable-mp3=maybe: expected true or false"),
    ("-Dlevel=x", "-Dlevel=x: expected an integer"),
])
def test_shell_bad_option_lists_the_declared_options(tmp_path: Path, cache_dir: Path,
                                                     world: World, define: str, reason: str) -> None:
    root = shell_pkg(world, tmp_path / "sh")
    err = failed(build(cache_dir, root, define))
    assert reason in err
    assert "  -Denable-mp3=<bool>  MP3 decoding via lame (default: false)" in err
    assert "  -Dlevel=<int>  optimisation level (default: 2)" in err
    assert not (root / "passes.log").exists()  # rejected before the script runs
    assert world.server.hits == []  # and before anything is fetched


def test_shell_list(tmp_path: Path, cache_dir: Path, world: World) -> None:
    root = shell_pkg(world, tmp_path / "sh")
    out = ok(build(cache_dir, root, "--list")).stdout
    assert "build command: sh build.sh" in out
    assert "  -Denable-mp3=<bool>  MP3 decoding via lame (default: false)" in out
    assert world.server.hits == [] and not (root / "passes.log").exists()


# --------------------------------------------------------------------------- --watch


WATCH_BUILD_PY = '''\
def build(b):
    mp3 = b.option("enable-mp3", bool, "MP3 decoding via lame", default=False)
    z = b.dependency("zlib")
    cmd = ["cc", "-o", "out/player", "main.c", f"-I{z}"]
    if mp3:
        lame = b.lazy_dependency("lame")
        if lame is not None:
            cmd.append(f"-I{lame}")
    b.step("outdir", ["mkdir", "-p", "out"])
    b.step("player", cmd, depends_on=["outdir"])
    b.step("run", ["./out/player"], depends_on=["player"], default=True)
'''


def test_watch_rebuilds_on_change_and_stops_on_ctrl_c(tmp_path: Path, cache_dir: Path,
                                                      world: World) -> None:
    # The build's outputs (out/) are not part of the package: changing them is no reason to build.
    root = world.player(tmp_path / "player", WATCH_BUILD_PY, package='exclude = ["out/"]')
    out_path, err_path = tmp_path / "watch.out", tmp_path / "watch.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "treeseed", "--cache-dir", str(cache_dir), "-C", str(root),
             "build", "--watch", "-j", "2"],
            stdout=out, stderr=err, stdin=subprocess.DEVNULL,
            # Ctrl-C must reach Python as KeyboardInterrupt even if this runner ignores SIGINT.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def stdout() -> str:
        return out_path.read_text()

    def stderr() -> str:
        return err_path.read_text()

    def builds() -> int:
        return stderr().count("build done; watching for changes")

    def settled(n: int) -> Callable[[], bool]:
        return lambda: stderr().count("watching for changes") >= n or proc.poll() is not None

    try:
        # Watched closely, and edited the moment it says it is watching: that edit must count.
        wait_for("the first build", settled(1), poll=0.001)
        script = root / "build.py"
        script.write_text(script.read_text().replace("default=False", "default=True"))
        assert proc.poll() is None, stderr()
        assert builds() == 1, stderr()
        assert stdout().splitlines()[-1] == f"[run] {WITHOUT_MP3}"
        assert world.hits(LAME) == 0 and world.hits(ZLIB) == 1

        # build.py turned mp3 on: configure again, fetch lame once, rebuild, run.
        wait_for("the rebuild after build.py changed", settled(2))
        assert builds() == 2, stderr()
        assert "treeseed: changed: build.py" in stderr()
        assert world.hits(LAME) == 1
        assert stdout().splitlines()[-1] == f"[run] {WITH_MP3}"

        # An output changes (no rebuild: not watched), then a source file (rebuild). Had the
        # output been watched, it would be named in a "changed:" line, or make a build of its own.
        with open(root / "out" / "player", "ab") as f:
            f.write(b"\0")
        with open(root / "main.c", "ab") as f:
            f.write(b"/* edited */\n")
        wait_for("the rebuild after main.c changed", settled(3))
        assert builds() == 3, stderr()
        changes = [line for line in stderr().splitlines() if line.startswith("treeseed: changed:")]
        assert changes == ["treeseed: changed: build.py", "treeseed: changed: main.c"]

        # A broken build.py reports the error and keeps watching; fixing it builds again.
        good = script.read_text()
        script.write_text(good.replace("def build(b):", "def build(b):\n    raise RuntimeError('oops')"))
        wait_for("the failed rebuild", settled(4))
        assert "treeseed: error: " in stderr() and "RuntimeError: oops" in stderr()
        assert proc.poll() is None
        script.write_text(good)
        wait_for("the rebuild after the fix", settled(5))
        assert builds() == 4, stderr()

        # treeseed.toml is watched too.
        with open(root / "treeseed.toml", "a") as f:
            f.write("# touched\n")
        wait_for("the rebuild after treeseed.toml changed", settled(6))
        assert builds() == 5, stderr()
        assert "treeseed: changed: treeseed.toml" in stderr()
        assert stdout().splitlines()[-1] == f"[run] {WITH_MP3}"
        assert world.hits(LAME) == 1 and world.hits(ZLIB) == 1  # nothing fetched twice

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert "treeseed: watch stopped" in stderr()
    assert "Traceback" not in stderr()


def test_watch_edit_during_a_build_is_not_lost(tmp_path: Path, cache_dir: Path) -> None:
    go = tmp_path / "go"  # outside the package: creating it changes nothing watched
    root = write_package(tmp_path / "slow", {"build.py": f'''\
def build(b):
    b.step("slow", ["sh", "-c", "echo step waiting v1; i=0; while [ ! -e {go} ]; do "
                    "i=$((i+1)); if [ $i -gt 1200 ]; then exit 8; fi; sleep 0.05; done"])
'''})
    out_path, err_path = tmp_path / "watch.out", tmp_path / "watch.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "treeseed", "--cache-dir", str(cache_dir), "-C", str(root),
             "build", "--watch"], stdout=out, stderr=err, stdin=subprocess.DEVNULL,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_for("the step to start", lambda: "step waiting v1" in out_path.read_text()
                 or proc.poll() is not None)
        script = root / "build.py"
        script.write_text(script.read_text().replace("v1", "v2"))  # saved mid-build
        go.touch()
        wait_for("the first build", lambda: "watching for changes" in err_path.read_text()
                 or proc.poll() is not None)
        # Touch another watched file: the next change reported must include the mid-build edit
        # (if it was taken into account, it will already have started a rebuild by itself).
        with open(root / "treeseed.toml", "a") as f:
            f.write("# touched\n")
        wait_for("a rebuild", lambda: "treeseed: changed:" in err_path.read_text()
                 or proc.poll() is not None)
        first_change = next(line for line in err_path.read_text().splitlines()
                            if line.startswith("treeseed: changed:"))
        assert "build.py" in first_change
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
