"""Unpack-and-hash speed: treeseed fetch versus plain `tar -xf` and `zig fetch`, side by side.

    python bench/unpack_hash.py [--runs 3] [--dir DIR] [--archive PATH ...]

Default archives: the Linux source tarball Debian's `linux-source-6.1` package ships
(/usr/src/linux-source-6.1.tar.xz, ~1.4 GB unpacked, ~80k files) and a PyPI sdist (Django's,
fetched with `pip download` into bench/.work/ on first use). Each tool starts from nothing on
every run: tar gets an empty directory, treeseed an empty cache, zig an empty global cache.
Runs alternate between tools, `sync` runs before each (so one tool's dirty pages are not the
next one's bill), and the median is reported with ratios. `tar -xf` hashes nothing: it is the
floor. Targets from the foundation issue: treeseed within 1.3x of tar, and at least 5x faster
than zig fetch.

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


def main() -> int:
    args = parse_args()
    work = Path(args.dir) if args.dir else HERE / ".work"
    work.mkdir(parents=True, exist_ok=True)
    archives = [Path(a) for a in args.archive] or default_archives(work)
    zig = zig_command()
    print(f"machine: {os.cpu_count()} cores; work dir: {work}; runs: {args.runs}; zig: {zig_version(zig)}")
    rows = []
    for archive in archives:
        print(f"\n{archive.name} ({archive.stat().st_size / 1e6:.1f} MB)")
        times = measure(archive, work, args.runs, zig)
        rows.append((archive.name, times))
        report(times)
    summary(rows)
    return 0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="runs per tool (median is reported)")
    p.add_argument("--dir", help="where to unpack (default bench/.work)")
    p.add_argument("--archive", action="append", default=[], help="archive(s) to use instead")
    p.add_argument("--no-zig", action="store_true", help="skip zig fetch")
    args = p.parse_args()
    if args.no_zig:
        os.environ["TREESEED_BENCH_NO_ZIG"] = "1"
    return args


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


def zig_command() -> list[str] | None:
    if os.environ.get("TREESEED_BENCH_NO_ZIG"):
        return None
    try:
        import ziglang  # noqa: F401
    except ImportError:
        print("note: zig not installed (pip install -e '.[bench]'); skipping zig fetch")
        return None
    return [sys.executable, "-m", "ziglang"]


def zig_version(zig: list[str] | None) -> str:
    if zig is None:
        return "none"
    return subprocess.run(zig + ["version"], capture_output=True, text=True).stdout.strip()


def commands(archive: Path, scratch: Path, zig: list[str] | None) -> dict[str, tuple[list[str], dict]]:
    """Each tool's command for one run, starting from an empty target inside ``scratch``."""
    env = dict(os.environ)
    out = {
        "tar -xf": (["tar", "-xf", str(archive), "-C", str(scratch / "tar")], env),
        "treeseed fetch": ([sys.executable, "-m", "treeseed", "--cache-dir", str(scratch / "ts"),
                            "fetch", f"file://{archive}"], env),
    }
    (scratch / "tar").mkdir()
    if zig:
        zenv = {**env, "ZIG_GLOBAL_CACHE_DIR": str(scratch / "zig"),
                "ZIG_LOCAL_CACHE_DIR": str(scratch / "zig-local")}
        out["zig fetch"] = (zig + ["fetch", str(archive)], zenv)
    return out


def measure(archive: Path, work: Path, runs: int, zig: list[str] | None) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {}
    for _ in range(runs):
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            for name, (cmd, env) in commands(archive, Path(tmp), zig).items():
                subprocess.run(["sync"])
                start = time.perf_counter()
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
                elapsed = time.perf_counter() - start
                if proc.returncode != 0:
                    raise SystemExit(f"{name} failed: {proc.stderr.strip()}")
                times.setdefault(name, []).append(elapsed)
                print(f"  {name:<15} {elapsed:7.2f} s")
                _clear(Path(tmp))
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
    print(f"  {'tool':<15} {'median s':>9} {'x tar':>7}")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"  {name:<15} {med:9.2f} {med / base:7.2f}")


def summary(rows: list[tuple[str, dict[str, list[float]]]]) -> None:
    print("\n| archive | tar -xf (s) | treeseed (s) | treeseed / tar | zig fetch (s) | zig / treeseed |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, times in rows:
        tar = statistics.median(times["tar -xf"])
        ts = statistics.median(times["treeseed fetch"])
        zig = statistics.median(times["zig fetch"]) if "zig fetch" in times else None
        zig_cols = f"{zig:.2f} | {zig / ts:.1f}" if zig else "- | -"
        print(f"| {name} | {tar:.2f} | {ts:.2f} | {ts / tar:.2f} | {zig_cols} |")


if __name__ == "__main__":
    sys.exit(main())
