"""Many dependencies at once: a project of 100 real archives served from 127.0.0.1, fetched cold.

    python bench/many.py [--runs 3] [--jobs 4] [--dir /dev/shm/treeseed-many]

Downloads once into bench/.work/many/ a set of real PyPI sdists (``pip download``) and npm
tarballs (``npm pack``), serves them from a real HTTP server on 127.0.0.1, and writes the same
100 dependencies twice: a ``treeseed.toml`` (url + bt2 hash) and a ``build.zig.zon`` (url + Zig
hash, both computed by treeseed and checked by Zig itself on every run). Then, alternating run
by run, each from an empty cache:

* ``treeseed fetch`` in the project (``-j``, default 4);
* ``zig build --fetch`` (Zig 0.15.2 from PyPI, installed into bench/.work/ on first use, its
  global cache emptied of packages before each run);
* ``nix-prefetch-url --unpack URL`` for each archive in turn, the way a Nix user prefetches
  (Debian's nix-bin; skipped with a note if it is missing).

and, with everything cached, ``treeseed fetch`` against ``python -c pass`` (bench/noop.py times
the 50-dependency no-op on its own). Prints medians and ratios; the issue's target is treeseed
at least 3x faster than Zig.
"""

from __future__ import annotations

import argparse
import http.server
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from everyday import bench_env  # noqa: E402
from unpack_hash import Zig  # noqa: E402

PYPI = ["requests==2.32.3", "six==1.17.0", "idna==3.10", "certifi==2024.12.14", "attrs==24.3.0",
        "packaging==24.2", "pyparsing==3.2.0", "click==8.1.8", "jinja2==3.1.5", "markupsafe==3.0.2",
        "pygments==2.18.0", "docutils==0.21.2", "pytz==2024.2", "urllib3==2.3.0", "tomli==2.2.1",
        "iniconfig==2.0.0", "pluggy==1.5.0", "wheel==0.45.1", "itsdangerous==2.2.0", "flask==3.1.0"]
NPM = ["lodash@4.17.21", "react@19.0.0", "react-dom@19.0.0", "typescript@5.7.2", "express@4.21.2",
       "chalk@5.4.1", "commander@12.1.0", "debug@4.4.0", "ms@2.1.3", "semver@7.6.3",
       "uuid@11.0.3", "axios@1.7.9", "moment@2.30.1", "dayjs@1.11.13", "yargs@17.7.2",
       "minimist@1.2.8", "glob@11.0.0", "rimraf@6.0.1", "mkdirp@3.0.1", "fs-extra@11.2.0",
       "async@3.2.6", "bluebird@3.7.2", "underscore@1.13.7", "classnames@2.5.1", "prop-types@15.8.1",
       "redux@5.0.1", "rxjs@7.8.1", "tslib@2.8.1", "zod@3.24.1", "vue@3.5.13",
       "jquery@3.7.1", "d3@7.9.0", "three@0.171.0", "marked@15.0.4", "highlight.js@11.11.0",
       "prettier@3.4.2", "eslint@9.17.0", "webpack@5.97.1", "rollup@4.29.1", "esbuild@0.24.2",
       "postcss@8.4.49", "sass@1.83.0", "less@4.2.1", "mocha@11.0.1", "chai@5.1.2",
       "jest@29.7.0", "ws@8.18.0", "socket.io@4.8.1", "body-parser@1.20.3", "cors@2.8.5",
       "dotenv@16.4.7", "jsonwebtoken@9.0.2", "bcryptjs@2.4.3", "validator@13.12.0", "qs@6.13.1",
       "cheerio@1.0.0", "node-fetch@3.3.2", "immer@10.1.1", "mobx@6.13.5", "graphql@16.10.0",
       "luxon@3.5.0", "date-fns@4.1.0", "ramda@0.30.1", "handlebars@4.7.8", "ejs@3.1.10",
       "pug@3.0.3", "colors@1.4.0", "ora@8.1.1", "inquirer@12.3.0", "yaml@2.6.1",
       "js-yaml@4.1.0", "xml2js@0.6.2", "cookie@1.0.2", "mime@4.0.6", "nanoid@5.0.9",
       "picomatch@4.0.2", "micromatch@4.0.8", "chokidar@4.0.3", "acorn@8.14.0", "terser@5.37.0"]
TARGET_ZIG = 3.0


def main() -> int:
    args = parse_args()
    store = HERE / ".work" / "many"
    archives = download(store)
    env = bench_env()
    zig = Zig("0.15.2", HERE / ".work")
    scratch = Path(args.dir)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    server, base = serve(store)
    try:
        hashes = package_hashes(archives, scratch)
        project = write_projects(scratch / "project", archives, hashes, base, zig, env)
        nix = shutil.which("nix-prefetch-url")
        print(f"machine: {os.cpu_count()} cores; {len(archives)} archives "
              f"({sum(a.stat().st_size for a in archives) / 1e6:.0f} MB) from {base}; "
              f"runs: {args.runs}; treeseed -j {args.jobs}; zig {zig.version}; "
              f"nix-prefetch-url: {nix or 'missing, skipped'}")
        times = measure(project, archives, base, scratch, args, zig, env, nix)
        noop = measure_noop(project, scratch, env, args.runs)
    finally:
        server.shutdown()
    report(times, noop)
    return 0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="runs per tool (median reported)")
    p.add_argument("--jobs", type=int, default=4, help="treeseed fetch -j (default 4)")
    p.add_argument("--dir", default="/dev/shm/treeseed-many", help="scratch directory")
    return p.parse_args()


def download(store: Path) -> list[Path]:
    """Each archive once, with the registries' own clients; 100 in all."""
    store.mkdir(parents=True, exist_ok=True)
    done = store / ".done"
    if not done.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary",
                        ":all:", "-d", str(store), *PYPI], check=True)
        subprocess.run(["npm", "pack", "--silent", "--pack-destination", str(store), *NPM],
                       check=True, stdout=subprocess.DEVNULL)
        done.touch()
    archives = sorted(p for p in store.iterdir() if p.name.endswith((".tar.gz", ".tgz")))
    if len(archives) != len(PYPI) + len(NPM):
        raise SystemExit(f"expected {len(PYPI) + len(NPM)} archives in {store}, found "
                         f"{len(archives)}; remove {done} to download again")
    return archives


class _Quiet(http.server.SimpleHTTPRequestHandler):
    """Silent, and gzip archives served as gzip (as the registries do): Python's default
    ``application/x-tar`` for ``.tgz`` makes Zig read them as plain tar."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".tgz": "application/gzip", ".gz": "application/gzip"}

    def log_message(self, *args: object) -> None:
        pass


def serve(root: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = lambda *a: _Quiet(*a, directory=str(root))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def package_hashes(archives: list[Path], scratch: Path) -> dict[str, dict[str, str]]:
    """bt2 and Zig hashes of every archive, computed once by treeseed (Zig checks its own on
    every run: a wrong one fails the bench)."""
    from treeseed.cache import Cache
    from treeseed.fetch import hash_path

    cache = Cache(scratch / "hash-cache")
    out = {a.name: hash_path(a, cache, ["bt2", "zig"]).hashes for a in archives}
    cache.close()
    shutil.rmtree(scratch / "hash-cache", ignore_errors=True)
    return out


def write_projects(root: Path, archives: list[Path], hashes: dict[str, dict[str, str]], base: str,
                   zig: Zig, env: dict[str, str]) -> Path:
    """One directory holding both manifests, naming the same 100 URLs."""
    root.mkdir()
    names = [f"d{i:03d}" for i in range(len(archives))]
    toml = ['[package]\nname = "many"\nversion = "0.1.0"\n']
    zon = []
    for name, archive in zip(names, archives, strict=True):
        url = f"{base}/{archive.name}"
        toml.append(f'[dependencies.{name}]\nurl = "{url}"\nhash = "{hashes[archive.name]["bt2"]}"\n')
        zon.append(f'        .{name} = .{{ .url = "{url}", .hash = "{hashes[archive.name]["zig"]}" }},')
    (root / "treeseed.toml").write_text("\n".join(toml))
    (root / "build.zig").write_text('const std = @import("std");\n'
                                    "pub fn build(b: *std.Build) void {\n    _ = b;\n}\n")
    (root / "build.zig.zon").write_text(_zon(zon, _fingerprint(root, zon, zig, env)))
    return root


def _zon(deps: list[str], fingerprint: str) -> str:
    return (".{\n    .name = .many,\n    .version = \"0.1.0\",\n"
            f"    .fingerprint = {fingerprint},\n    .minimum_zig_version = \"0.15.2\",\n"
            "    .paths = .{\"\"},\n    .dependencies = .{\n" + "\n".join(deps) + "\n    },\n}\n")


def _fingerprint(root: Path, deps: list[str], zig: Zig, env: dict[str, str]) -> str:
    """Zig 0.15 wants a fingerprint it derives itself: ask it (its error suggests one)."""
    (root / "build.zig.zon").write_text(_zon(deps, "0x1"))
    with tempfile.TemporaryDirectory() as tmp:
        cmd, zenv = zig_build(root, Path(tmp), zig, env)
        proc = subprocess.run(cmd, env=zenv, capture_output=True, text=True, cwd=root)
    for word in proc.stderr.replace(";", " ").split():
        if word.startswith("0x") and len(word) > 10:
            return word.rstrip(".,:")
    raise SystemExit(f"zig did not suggest a fingerprint:\n{proc.stderr[-2000:]}")


def zig_build(root: Path, cache: Path, zig: Zig, env: dict[str, str]) -> tuple[list[str], dict]:
    cmd, zenv = zig.command(root, cache)
    zenv = {**{k: v for k, v in zenv.items() if k != "PYTHONDONTWRITEBYTECODE"},
            "ZIG_GLOBAL_CACHE_DIR": str(cache / "zig-global")}
    return [sys.executable, "-m", "ziglang", "build", "--fetch"], zenv


def measure(project: Path, archives: list[Path], base: str, scratch: Path, args: argparse.Namespace,
            zig: Zig, env: dict[str, str], nix: str | None) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {}
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(dir=scratch) as tmp:
            work = Path(tmp)
            runs = {
                "treeseed fetch": ([sys.executable, "-m", "treeseed", "--cache-dir", str(work / "ts"),
                                    "fetch", "-q", "-j", str(args.jobs)], env),
                "zig build --fetch": zig_build(project, work, zig, env),
            }
            for name, (cmd, cmd_env) in runs.items():
                times.setdefault(name, []).append(timed(cmd, cmd_env, project))
            if nix:
                times.setdefault("nix-prefetch-url --unpack (each)", []).append(
                    _nix_all(nix, [f"{base}/{a.name}" for a in archives], env))
    return times


def _nix_all(nix: str, urls: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    for url in urls:
        subprocess.run([nix, "--unpack", url], env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed:\n{proc.stderr[-3000:]}")
    return elapsed


def measure_noop(project: Path, scratch: Path, env: dict[str, str], runs: int) -> dict[str, list[float]]:
    """Everything cached: treeseed fetch of the 100 against a bare interpreter start."""
    cache = scratch / "noop-cache"
    fetch = [sys.executable, "-m", "treeseed", "--cache-dir", str(cache), "fetch", "-q"]
    timed(fetch, env, project)
    out: dict[str, list[float]] = {"python -c pass": [], "treeseed fetch (all cached)": []}
    for _ in range(max(runs, 5) * 2):
        out["python -c pass"].append(timed([sys.executable, "-c", "pass"], env, project))
        out["treeseed fetch (all cached)"].append(timed(fetch, env, project))
    return out


def report(times: dict[str, list[float]], noop: dict[str, list[float]]) -> None:
    ts = statistics.median(times["treeseed fetch"])
    print("\n| tool, 100 dependencies, cold | median s | / treeseed |\n| --- | --- | --- |")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.2f} | {med / ts:.2f} |")
    zig = statistics.median(times["zig build --fetch"])
    print(f"\nzig / treeseed: {zig / ts:.2f} (target >= {TARGET_ZIG}): "
          f"{'met' if zig / ts >= TARGET_ZIG else 'missed'}")
    base = statistics.median(noop["python -c pass"])
    cached = statistics.median(noop["treeseed fetch (all cached)"])
    print(f"all 100 cached: treeseed fetch {cached * 1e3:.0f} ms, python -c pass {base * 1e3:.0f} ms: "
          f"{cached / base:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
