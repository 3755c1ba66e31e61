"""The no-op run: ``treeseed fetch`` in a package whose 50 dependencies are all cached.

    python bench/noop.py [--deps 50] [--runs 20] [--importtime]

Builds, in a temporary directory, 50 small packages (.tar.gz archives, each with its own
treeseed.toml) and a package depending on all of them by file:// URL with their hashes, fetches
them once into a temporary cache with the real CLI (on Linux the default cache location under
a temporary XDG_CACHE_HOME, so the run finds it as a user's run would), then times ``treeseed fetch`` (everything
cached: nothing to do) against ``python -c pass`` over alternating runs and reports the
medians and their ratio. Target from the dependencies issue: at most 3x ``python -c pass``.

Two spellings of the command are timed: the installed console script (``treeseed``, next to
this Python) and ``python -m treeseed``. When the ratio misses the target (or with
--importtime), ``python -X importtime`` of the no-op run lists the modules that cost most.
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

TARGET = 3.0


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="treeseed-noop-") as tmp:
        work = Path(tmp)
        root = build_package(work, args.deps)
        env = {k: v for k, v in os.environ.items() if k not in ("TREESEED_CACHE_DIR", "TREESEED_OFFLINE")}
        if sys.platform.startswith("linux"):
            # The default cache location, found as users find it (platformdirs and XDG).
            env["XDG_CACHE_HOME"] = str(work / "xdg-cache")
        else:
            env["TREESEED_CACHE_DIR"] = str(work / "cache")
        commands = treeseed_commands(root)

        first = subprocess.run(commands[0][1] + ["fetch"], capture_output=True, text=True, env=env,
                               timeout=600)
        if first.returncode != 0 or f"{args.deps} fetched" not in first.stderr:
            print(f"the first (fetching) run failed:\n{first.stderr}", file=sys.stderr)
            return 1
        print(f"setup: {first.stderr.strip().splitlines()[-1]}")
        for label, cmd in commands:
            check = subprocess.run(cmd + ["fetch"], capture_output=True, text=True, env=env, timeout=600)
            if check.returncode != 0 or f"{args.deps} already cached" not in check.stderr:
                print(f"{label}: the no-op run did not report everything cached:\n{check.stderr}",
                      file=sys.stderr)
                return 1
        print(f"no-op run says: {check.stderr.strip().splitlines()[-1]}")
        if sys.platform.startswith("linux"):
            assert (work / "xdg-cache" / "treeseed" / "p").is_dir(), "the cache is not where expected"

        baseline = [sys.executable, "-c", "pass"]
        runs: dict[str, list[float]] = {"python -c pass": []}
        runs.update({label: [] for label, _ in commands})
        for _ in range(2):  # warm the page cache and .pyc files; not counted
            for _, cmd in commands:
                timed(cmd + ["fetch"], env)
            timed(baseline, env)
        for _ in range(args.runs):  # alternate, so drift in machine load hits all alike
            runs["python -c pass"].append(timed(baseline, env))
            for label, cmd in commands:
                runs[label].append(timed(cmd + ["fetch"], env))

        base = statistics.median(runs["python -c pass"])
        print(f"\n{args.deps} cached dependencies, {args.runs} alternating runs, median wall time:")
        print(f"  {'python -c pass':<28} {base * 1000:7.1f} ms")
        worst = 0.0
        for label, _ in commands:
            median = statistics.median(runs[label])
            ratio = median / base
            worst = max(worst, ratio)
            spread = f"(min {min(runs[label]) * 1000:.1f}, max {max(runs[label]) * 1000:.1f})"
            print(f"  {label:<28} {median * 1000:7.1f} ms  {ratio:4.2f}x  {spread}")
        verdict = "OK" if worst <= TARGET else "OVER TARGET"
        print(f"target: <= {TARGET:.0f}x python -c pass; worst ratio {worst:.2f}x: {verdict}")

        if worst > TARGET or args.importtime:
            importtime(commands[-1][1] + ["fetch"], env)
    return 0 if worst <= TARGET else 1


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--deps", type=int, default=50, help="number of cached dependencies (default 50)")
    p.add_argument("--runs", type=int, default=20, help="timed runs per command (default 20)")
    p.add_argument("--importtime", action="store_true",
                   help="always show python -X importtime's top offenders")
    return p.parse_args()


def build_package(work: Path, count: int) -> Path:
    """``count`` small archives with manifests, and a package naming each by file:// URL."""
    from treeseed.cache import Cache
    from treeseed.fetch import hash_path

    archives = work / "archives"
    archives.mkdir()
    hash_cache = Cache(work / "hash-cache")
    tables = []
    for i in range(count):
        name = f"lib{i:02d}"
        files = {
            "treeseed.toml": f'[package]\nname = "{name}"\nversion = "1.{i}.0"\n'.encode(),
            f"src/{name}.c": f"int {name}(void) {{ return {i}; }}\n".encode() * 20,
            f"include/{name}.h": f"int {name}(void);\n".encode(),
            "README": f"{name}: a benchmark package\n".encode(),
        }
        archive = archives / f"{name}-1.{i}.0.tar.gz"
        archive.write_bytes(tar_gz(files, f"{name}-1.{i}.0"))
        package_hash = hash_path(archive, hash_cache, ["bt2"]).hashes["bt2"]
        tables.append(f'[dependencies.{name}]\nurl = "{archive.as_uri()}"\nhash = "{package_hash}"\n')
    hash_cache.close()
    root = work / "app"
    root.mkdir()
    (root / "treeseed.toml").write_text('# benchmark package\n[package]\nname = "app"\n'
                                        'version = "0.1.0"\n\n' + "\n".join(tables))
    return root


def tar_gz(files: dict[str, bytes], top: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for rel, data in sorted(files.items()):
            info = tarfile.TarInfo(f"{top}/{rel}")
            info.size = len(data)
            info.mode = 0o644
            tf.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue(), mtime=0)


def treeseed_commands(root: Path) -> list[tuple[str, list[str]]]:
    """The console script next to this Python (if installed there), and ``python -m``."""
    commands = []
    script = Path(sys.executable).parent / "treeseed"
    if script.is_file() and os.access(script, os.X_OK):
        commands.append(("treeseed fetch", [str(script), "-C", str(root)]))
    commands.append(("python -m treeseed fetch", [sys.executable, "-m", "treeseed", "-C", str(root)]))
    return commands


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=True,
                   timeout=120)
    return time.perf_counter() - start


def importtime(cmd: list[str], env: dict[str, str], top: int = 20) -> None:
    """Print the modules the no-op run imports, costliest first (self and cumulative time)."""
    python, rest = cmd[0], cmd[1:]
    if rest[:1] != ["-m"]:
        return
    proc = subprocess.run([python, "-X", "importtime", *rest], capture_output=True, text=True,
                          env=env, timeout=120)
    rows = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cumulative, name = (part.strip() for part in line[len("import time:"):].split("|"))
        rows.append((int(self_us), int(cumulative), name.strip()))
    baseline = subprocess.run([python, "-X", "importtime", "-c", "pass"], capture_output=True,
                              text=True, env=env, timeout=120).stderr
    at_startup = {line.rsplit("|", 1)[-1].strip() for line in baseline.splitlines()}
    extra = [r for r in rows if r[2] not in at_startup]
    total = sum(r[0] for r in extra)
    print(f"\npython -X importtime: {len(extra)} modules beyond bare startup, {total / 1000:.1f} ms "
          "of import time (self)")
    print(f"  top {top} by self time:")
    for self_us, cumulative, name in sorted(extra, reverse=True)[:top]:
        print(f"    {self_us / 1000:7.2f} ms self {cumulative / 1000:7.2f} ms cumulative  {name}")
    print(f"  top {top} by cumulative time:")
    for _self_us, cumulative, name in sorted(extra, key=lambda r: r[1], reverse=True)[:top]:
        print(f"    {cumulative / 1000:7.2f} ms cumulative  {name}")
    heavy = [r[2] for r in extra if r[2].split(".")[0] in HEAVY]
    if heavy:
        print(f"  imported although the no-op path needs none of them: {', '.join(sorted(set(heavy)))}")


#: Modules the all-cached path should never need.
HEAVY = {"rich", "urllib3", "tomlkit", "pathspec", "sqlite3", "_sqlite3", "platformdirs", "ssl",
         "email", "http", "zipfile", "lzma", "bz2", "tarfile", "secrets", "shutil"}


if __name__ == "__main__":
    sys.exit(main())
