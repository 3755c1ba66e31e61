"""Tree hashing speed: `treeseed hash DIR` (bt2) versus plain SHA-256 of the same bytes.

    python bench/hash_tree.py [DIR] [--runs 3]

Default DIR: the Linux source tree, unpacked once from /usr/src/linux-source-6.1.tar.xz into
bench/.work/linux (apt-get install -y linux-source-6.1). Compared, side by side on the same
files (read from the page cache after a warm-up pass):

* `sha256sum` over every file (coreutils, one core): the plain SHA-256 floor;
* `treeseed hash DIR` (BEP 52 merkle hashing on a thread per core), and with `--format nar`
  and `--format git` for the other formats.

The issue's target: bt2 "close to the speed of plain SHA-256".
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LINUX = Path("/usr/src/linux-source-6.1.tar.xz")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dir", nargs="?", help="tree to hash (default: the Linux source tree)")
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    tree = Path(args.dir) if args.dir else linux_tree()
    files = [str(f) for f in sorted(tree.rglob("*")) if f.is_file() and not f.is_symlink()]
    size = sum(os.path.getsize(f) for f in files)
    print(f"{tree}: {len(files)} files, {size / 1e6:.0f} MB, {os.cpu_count()} cores")
    list_file = HERE / ".work" / "hash-tree-files.txt"
    list_file.parent.mkdir(parents=True, exist_ok=True)
    list_file.write_text("\0".join(files))
    tools = {
        "sha256sum (1 core)": ["sh", "-c", f"xargs -0 -a '{list_file}' sha256sum > /dev/null"],
        "treeseed hash bt2": [sys.executable, "-m", "treeseed", "hash", str(tree)],
        "treeseed hash nar": [sys.executable, "-m", "treeseed", "hash", str(tree), "--format", "nar"],
        "treeseed hash git": [sys.executable, "-m", "treeseed", "hash", str(tree), "--format", "git"],
    }
    subprocess.run(tools["sha256sum (1 core)"], check=True)  # warm the page cache
    times: dict[str, list[float]] = {name: [] for name in tools}
    for _ in range(args.runs):
        for name, cmd in tools.items():
            start = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["sha256sum (1 core)"])
    print("\n| tool | median s | MB/s | x sha256sum |\n| --- | --- | --- | --- |")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.2f} | {size / 1e6 / med:.0f} | {med / base:.2f} |")
    return 0


def linux_tree() -> Path:
    dest = HERE / ".work" / "linux"
    if not dest.is_dir():
        if not LINUX.exists():
            raise SystemExit(f"{LINUX} missing: apt-get install -y linux-source-6.1, or pass a DIR")
        print(f"unpacking {LINUX} into {dest} (once) ...")
        dest.mkdir(parents=True)
        subprocess.run(["tar", "-xf", str(LINUX), "-C", str(dest)], check=True)
    (top,) = [p for p in dest.iterdir() if p.is_dir()]
    return top


if __name__ == "__main__":
    sys.exit(main())
