"""Unpack-and-hash speed: treeseed fetch versus plain `tar -xf` and `zig fetch`, side by side.

    python bench/unpack_hash.py [--runs 3] [--dir DIR] [--archive PATH ...] [--zig 0.17.0 ...]

Default archives: the Linux source tarball Debian's `linux-source-6.1` package ships
(/usr/src/linux-source-6.1.tar.xz, ~1.4 GB unpacked, ~80k files) and a PyPI sdist (Django's,
fetched with `pip download` into bench/.work/ on first use). Each tool starts from nothing on
every run: tar gets an empty directory, treeseed an empty cache, zig an empty global cache.
Runs alternate between tools, `sync` runs before each (so one tool's dirty pages are not the
next one's bill), and the median is reported with ratios. `tar -xf` hashes nothing: it is the
floor. Targets from the foundation issue: treeseed within 1.3x of tar, and at least 5x faster
than zig fetch.

Zig: each `--zig VERSION` (default 0.15.2 and 0.17.0) is installed from PyPI into
bench/.work/zig-VERSION on first use. Zig 0.17 compiles its package manager into the global
cache on first use (minutes): that happens once, in a warm-up fetch that is not timed; each
timed run then starts from that cache with its packages (p/) and temporaries removed.

Use --dir /dev/shm/... to measure on tmpfs, where disk writeback does not add noise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LINUX = Path("/usr/src/linux-source-6.1.tar.xz")
SDIST = ("django==5.1.4", "Django")
DEFAULT_ZIGS = ["0.15.2", "0.17.0"]


def main() -> int:
    args = parse_args()
    work = Path(args.dir) if args.dir else HERE / ".work"
    work.mkdir(parents=True, exist_ok=True)
    archives = [Path(a) for a in args.archive] or default_archives(work)
    zigs = [] if args.no_zig else [Zig(v, HERE / ".work") for v in args.zig or DEFAULT_ZIGS]
    print(f"machine: {os.cpu_count()} cores; work dir: {work}; runs: {args.runs}; "
          f"zig: {', '.join(z.version for z in zigs) or 'none'}")
    rows = []
    for archive in archives:
        print(f"\n{archive.name} ({archive.stat().st_size / 1e6:.1f} MB)")
        for zig in zigs:
            zig.warm_up(archive)
        times = measure(archive, work, args.runs, zigs)
        rows.append((archive.name, times))
        report(times)
    summary(rows)
    return 0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="runs per tool (median is reported)")
    p.add_argument("--dir", help="where to unpack (default bench/.work)")
    p.add_argument("--archive", action="append", default=[], help="archive(s) to use instead")
    p.add_argument("--zig", action="append", metavar="VERSION",
                   help=f"zig version(s) to compare (default {' and '.join(DEFAULT_ZIGS)})")
    p.add_argument("--no-zig", action="store_true", help="skip zig fetch")
    return p.parse_args()


def default_archives(work: Path) -> list[Path]:
    found = []
    if LINUX.exists():
        found.append(LINUX)
    else:
        print(f"note: {LINUX} missing; install it with: apt-get install -y linux-source-6.1")
    found.append(pypi_sdist(work))
    return found


def pypi_sdist(work: Path) -> Path:
    """A medium archive: a real sdist, downloaded once with pip."""
    dest = work / "sdist"
    existing = sorted(dest.glob(f"{SDIST[1]}-*.tar.gz")) if dest.exists() else []
    if existing:
        return existing[0]
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                    "-d", str(dest), SDIST[0]], check=True, capture_output=True)
    return sorted(dest.glob(f"{SDIST[1]}-*.tar.gz"))[0]


class Zig:
    """One Zig version from PyPI, installed beside the benchmark, with a persistent global cache."""

    def __init__(self, version: str, work: Path) -> None:
        self.version = version
        self.home = work / f"zig-{version}"
        self.cache = work / f"zig-{version}-cache"
        if not (self.home / "ziglang").is_dir():
            print(f"installing ziglang=={version} into {self.home} ...")
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(self.home),
                            f"ziglang=={version}"], check=True)

    @property
    def name(self) -> str:
        return f"zig fetch {self.version}"

    def command(self, archive: Path, scratch: Path) -> tuple[list[str], dict]:
        env = {**os.environ, "PYTHONPATH": str(self.home), "ZIG_GLOBAL_CACHE_DIR": str(self.cache),
               "ZIG_LOCAL_CACHE_DIR": str(scratch / "zig-local")}
        return [sys.executable, "-m", "ziglang", "fetch", str(archive)], env

    def reset(self) -> None:
        """Forget fetched packages but keep what zig compiled for itself."""
        for sub in ("p", "tmp"):
            shutil.rmtree(self.cache / sub, ignore_errors=True)

    def warm_up(self, archive: Path) -> None:
        """One untimed fetch, so a one-off compile of zig's package manager is not measured."""
        with tempfile.TemporaryDirectory() as tmp:
            cmd, env = self.command(archive, Path(tmp))
            subprocess.run(cmd, env=env, capture_output=True, check=True)
        self.reset()


def commands(archive: Path, scratch: Path, zigs: list[Zig]) -> dict[str, tuple[list[str], dict]]:
    """Each tool's command for one run, starting from an empty target inside ``scratch``."""
    env = dict(os.environ)
    (scratch / "tar").mkdir()
    out = {
        "tar -xf": (["tar", "-xf", str(archive), "-C", str(scratch / "tar")], env),
        "treeseed fetch": ([sys.executable, "-m", "treeseed", "--cache-dir", str(scratch / "ts"),
                            "fetch", f"file://{archive}"], env),
    }
    for zig in zigs:
        out[zig.name] = zig.command(archive, scratch)
    return out


def measure(archive: Path, work: Path, runs: int, zigs: list[Zig]) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {}
    for _ in range(runs):
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            for name, (cmd, env) in commands(archive, Path(tmp), zigs).items():
                subprocess.run(["sync"])
                start = time.perf_counter()
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
                elapsed = time.perf_counter() - start
                if proc.returncode != 0:
                    raise SystemExit(f"{name} failed: {proc.stderr.strip()}")
                times.setdefault(name, []).append(elapsed)
                print(f"  {name:<18} {elapsed:7.2f} s")
                _clear(Path(tmp))
                for zig in zigs:
                    zig.reset()
    return times


def _clear(scratch: Path) -> None:
    """Remove one tool's output before the next tool runs, so each starts with the same disk."""
    for child in scratch.iterdir():
        if child.name != "tar":
            shutil.rmtree(child, ignore_errors=True)
    tar_dir = scratch / "tar"
    shutil.rmtree(tar_dir, ignore_errors=True)
    tar_dir.mkdir()


def report(times: dict[str, list[float]]) -> None:
    base = statistics.median(times["tar -xf"])
    print(f"  {'tool':<18} {'median s':>9} {'x tar':>7}")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"  {name:<18} {med:9.2f} {med / base:7.2f}")


def summary(rows: list[tuple[str, dict[str, list[float]]]]) -> None:
    zig_names = sorted({n for _, t in rows for n in t if n.startswith("zig")})
    head = " | ".join(f"{n} (s) | {n} / treeseed" for n in zig_names)
    print(f"\n| archive | tar -xf (s) | treeseed (s) | treeseed / tar | {head} |")
    print("| --- " * (4 + 2 * len(zig_names)) + "|")
    for name, times in rows:
        tar = statistics.median(times["tar -xf"])
        ts = statistics.median(times["treeseed fetch"])
        cols = []
        for zig in zig_names:
            z = statistics.median(times[zig])
            cols.append(f"{z:.2f} | {z / ts:.1f}")
        print(f"| {name} | {tar:.2f} | {ts:.2f} | {ts / tar:.2f} | {' | '.join(cols)} |")


if __name__ == "__main__":
    sys.exit(main())
