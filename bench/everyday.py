"""Everyday archives: ``treeseed fetch file://ARCHIVE`` against ``tar -xf`` and ``zig fetch``.

    python bench/everyday.py [--runs 7] [--dir /dev/shm/treeseed-everyday] [--zig 0.15.2]

Most dependencies are small or medium archives, where the fixed costs of a fetch (starting
Python, starting the fetcher, opening the index) weigh as much as unpacking. This fetches a few
real PyPI sdists (``pip download``) and npm tarballs (``npm pack``) once into
bench/.work/everyday/, then times, side by side and alternating run by run, ``tar -xf`` into an
empty directory (the floor: it hashes nothing), ``treeseed fetch`` into an empty cache, and
``zig fetch`` (installed from PyPI into bench/.work/ on first use, as bench/unpack_hash.py does)
into an emptied global cache. It prints medians and the ratios the speed issue set as targets
for medium archives: treeseed at most 1.5x tar, and zig fetch at least 2.5x treeseed.

Python runs with its bytecode cache (a stray PYTHONDONTWRITEBYTECODE is dropped and treeseed is
compiled once first): an installed treeseed has .pyc files, and compiling every module on every
run would be measured instead of treeseed. The default --dir is on tmpfs, so disk writeback
does not add noise.
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from unpack_hash import Zig  # noqa: E402  (the same Zig install and reset as the big-archive bench)

#: (kind, spec, file name): real packages people depend on every day.
ARCHIVES = [
    ("pypi", "django==5.1.4", "Django-5.1.4.tar.gz"),
    ("pypi", "sphinx==8.1.3", "sphinx-8.1.3.tar.gz"),
    ("pypi", "requests==2.32.3", "requests-2.32.3.tar.gz"),
    ("npm", "typescript@5.7.2", "typescript-5.7.2.tgz"),
    ("npm", "react-dom@19.0.0", "react-dom-19.0.0.tgz"),
    ("npm", "lodash@4.17.21", "lodash-4.17.21.tgz"),
]
#: The issue's targets are for medium archives (here, 4 MB and more). The small ones are shown
#: for what they are: the fixed cost of a fetch (a Python start-up is already 5x a tar of
#: requests), which bench/many.py measures where it adds up, over 100 dependencies.
MEDIUM_BYTES = 4_000_000
TREESEED_OVER_TAR = 1.5
ZIG_OVER_TREESEED = 2.5


def main() -> int:
    args = parse_args()
    store = HERE / ".work" / "everyday"
    archives = [fetch_once(store, kind, spec, name) for kind, spec, name in ARCHIVES]
    env = bench_env()
    baseline = None
    if args.baseline:
        compileall.compile_dir(Path(args.baseline) / "treeseed", quiet=1)
        baseline = {**env, "PYTHONPATH": str(Path(args.baseline).resolve())}
    zig = Zig(args.zig, HERE / ".work")
    scratch_root = Path(args.dir)
    scratch_root.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} cores; scratch: {scratch_root}; runs: {args.runs}; "
          f"{sys.executable} ({sys.version.split()[0]}); zig {zig.version}")
    rows = []
    for archive in archives:
        zig.warm_up(archive)
        times = measure(archive, scratch_root, args.runs, zig, env, baseline)
        rows.append((archive, times))
    table(rows, zig)
    return 0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=7, help="runs per tool (median reported)")
    p.add_argument("--dir", default="/dev/shm/treeseed-everyday", help="scratch directory")
    p.add_argument("--zig", default="0.15.2", help="zig version to compare (default 0.15.2)")
    p.add_argument("--baseline", metavar="SRC",
                   help="also time the treeseed whose package lies in SRC (e.g. the src/ of "
                        "`git archive OLD src | tar -x`), for a before/after table in one run")
    return p.parse_args()


def fetch_once(store: Path, kind: str, spec: str, name: str) -> Path:
    """Download one archive from its registry with its own client, once (``pip download`` of
    an sdist, ``npm pack`` of an npm package). The PyPI packages are pure Python, so pip's
    metadata step builds nothing."""
    path = store / name
    if path.is_file():
        return path
    store.mkdir(parents=True, exist_ok=True)
    if kind == "pypi":
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
               "-d", str(store), spec]
    else:
        cmd = ["npm", "pack", "--silent", "--pack-destination", str(store), spec]
    subprocess.run(cmd, check=True, capture_output=True)
    if not path.is_file():
        raise SystemExit(f"{' '.join(cmd)} did not leave {path}")
    return path


def bench_env() -> dict[str, str]:
    """The environment for timed commands: bytecode cache on, treeseed compiled once."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONDONTWRITEBYTECODE", "TREESEED_CACHE_DIR", "TREESEED_FETCHER")}
    import treeseed

    compileall.compile_dir(Path(treeseed.__file__).parent, quiet=1)
    return env


def commands(archive: Path, scratch: Path, zig: Zig, env: dict[str, str],
             baseline: dict[str, str] | None) -> dict[str, tuple[list[str], dict]]:
    (scratch / "tar").mkdir()
    zig_cmd, zig_env = zig.command(archive, scratch)
    zig_env = {k: v for k, v in zig_env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    fetch = [sys.executable, "-m", "treeseed", "--cache-dir", str(scratch / "ts"), "fetch", "-q",
             archive.as_uri()]
    out = {
        "tar -xf": (["tar", "-xf", str(archive), "-C", str(scratch / "tar")], env),
        "treeseed fetch": (fetch, env),
        zig.name: (zig_cmd, zig_env),
    }
    if baseline is not None:
        out["baseline"] = (fetch, baseline)
    return out


def measure(archive: Path, root: Path, runs: int, zig: Zig, env: dict[str, str],
            baseline: dict[str, str] | None) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {}
    for _ in range(runs + 1):  # the first round warms the page cache and is not counted
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            for name, (cmd, cmd_env) in commands(archive, Path(tmp), zig, env, baseline).items():
                start = time.perf_counter()
                proc = subprocess.run(cmd, env=cmd_env, capture_output=True, text=True)
                elapsed = time.perf_counter() - start
                if proc.returncode != 0:
                    raise SystemExit(f"{name} failed on {archive.name}: {proc.stderr.strip()}")
                times.setdefault(name, []).append(elapsed)
                _clear(Path(tmp))
                zig.reset()
    return {name: values[1:] for name, values in times.items()}


def _clear(scratch: Path) -> None:
    for child in scratch.iterdir():
        if child.name != "tar":
            shutil.rmtree(child, ignore_errors=True)
    shutil.rmtree(scratch / "tar", ignore_errors=True)
    (scratch / "tar").mkdir()


def table(rows: list[tuple[Path, dict[str, list[float]]]], zig: Zig) -> None:
    before = any("baseline" in times for _, times in rows)
    print(f"\n| archive | MB | tar -xf (ms) | treeseed (ms) | {zig.name} (ms) | treeseed / tar "
          f"(target <= {TREESEED_OVER_TAR}) | zig / treeseed (target >= {ZIG_OVER_TREESEED}) |"
          + (" baseline (ms) | baseline / tar | zig / baseline |" if before else ""))
    print("| --- " * (10 if before else 7) + "|")
    met = True
    for archive, times in rows:
        tar, ts, zg = (statistics.median(times[n]) for n in ("tar -xf", "treeseed fetch", zig.name))
        medium = archive.stat().st_size >= MEDIUM_BYTES
        ok = ts / tar <= TREESEED_OVER_TAR and zg / ts >= ZIG_OVER_TREESEED
        met = met and (ok or not medium)
        verdict = ("" if ok else " missed") if medium else " small: no target"
        print(f"| {archive.name} | {archive.stat().st_size / 1e6:.1f} | {tar * 1e3:.0f} | "
              f"{ts * 1e3:.0f} | {zg * 1e3:.0f} | {ts / tar:.2f} | {zg / ts:.2f} |"
              + (_baseline_cells(times, tar, zg) if before else "") + verdict)
    print(f"\nboth targets met on every medium archive (>= {MEDIUM_BYTES / 1e6:.0f} MB): "
          f"{'yes' if met else 'no'}")


def _baseline_cells(times: dict[str, list[float]], tar: float, zig: float) -> str:
    base = statistics.median(times["baseline"])
    return f" {base * 1e3:.0f} | {base / tar:.2f} | {zig / base:.2f} |"


if __name__ == "__main__":
    sys.exit(main())
