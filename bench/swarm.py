"""N treeseed caches fetching one 300 MB package on loopback, with and without the swarm.

    python bench/swarm.py [--ns 1,2,4,8] [--runs 3] [--size-mb 300] [--modes http,swarm,staggered]
                          [--origin-rate 20M]

One origin HTTP server (in this process, on 127.0.0.1, ``sendfile`` under a byte counter) serves
the package as a plain .tar, at most ``--origin-rate`` bytes per second in total over all its
connections (default 20 MB/s, what a forge or tarball host gives one client at best; ``0``
means loopback speed, where the swarm can only lose). For each N, every mode starts from N empty caches, launches N
``treeseed -C app fetch --json`` processes at once (``app`` pins the package by url and hash)
and times until the last one exits; the origin's counter gives the bytes it sent, and each
fetch's JSON says whether the swarm or the origin delivered. Modes, alternated within each run:

http       ``--no-torrent``: N plain HTTP fetches.
swarm      torrenting on, the default head start (2 s) in every cache. Each cache runs its own
           detached ``treeseed seed`` (started before the clock, as a user's would be), listening
           on 127.0.0.1:<its port> with DHT, LSD and UPnP off and ``peers`` = every other cache:
           the seeders find each other without any discovery. A fetch asks its cache's seeder,
           which downloads from the swarm; the origin starts once the head start has passed.
staggered  the same, but cache i's head start is ``i * --step`` seconds (default 10): cache 0
           goes to the origin at once, the others wait in the swarm.

How one copy is enough. N caches that start together find each other within the head start
(``peers`` lists every other cache here; the DHT, LSD or a tracker would do the same), and none
holds the package yet. Each downloader ranks itself and every connected downloader by SHA-256
of the info-hash and the peer id (``treeseed.swarm.session.origin_rank``; peer ids come with
the handshake, so no extra message is needed): only the first in rank goes to the origin,
halfway through the head start, and the others hold their origin download back ("wait") until
the swarm delivers or stalls (20 s without progress, ``TREESEED_SWARM_STALL``). The first
cache installs the package, its seeder seeds it, and the others download it from that seeder
and from each other. A cache with no way to find any peer (no peers, DHT, LSD, trackers or
mirrors) skips the head start. ``staggered`` (cache i's head start is ``i * --step`` seconds)
is kept to compare with a deliberate order.

Measured on the 2-core development machine with the origin at 20 MB/s (the default;
``python bench/swarm.py --ns 1,8 --runs 1 --modes http,swarm``):

      N   http s   swarm s (ratio)   origin copies http / swarm   caches served by the swarm
      1    16.1     16.6 (1.03)          1.00 / 1.00                 0 of 1
      8   124.5     27.0 (0.22)          8.00 / 1.00                 7 of 8

Against a real origin's bandwidth the swarm wins where it matters: eight caches take 0.22x the
time of eight plain downloads and the origin serves one copy; a lone cache pays 3%.

Earlier, against an origin of unlimited (loopback) bandwidth (``--origin-rate 0``, runs=3,
medians):

      N   http s   swarm s (ratio)   origin copies http / swarm   caches served by the swarm
      1     1.1      2.4 (2.17)          1.00 / 1.00                 0 of 1
      2     1.8      4.0 (2.19)          2.00 / 1.00                 1 of 2
      4     4.8      6.1 (1.27)          4.00 / 1.00                 3 of 4
      8     9.7      9.8 (1.02)          8.00 / 1.00                 7 of 8

(N = 1 then took 1.6 s, 1.27x, once a cache with no way to find a peer skipped the head start.)
The origin target is met for every N. The time target is met only at N = 8. On loopback the
origin has unlimited bandwidth, so N plain fetches run side by side, while the swarm works
in sequence: one origin fetch, install and seeding start, and then the swarm copy. Each swarm
download is also checked twice, once by libtorrent's block hashes and once by treeseed's own
re-hash of the tree. Each fetched tree is checked to be in its cache. The package is random,
incompressible bytes in 424 files (4 large, 20 medium, 400 small). It is built once in
bench/.work/swarm/ and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work" / "swarm"
TREESEED = [sys.executable, "-m", "treeseed"]
FETCH_TIMEOUT = 300


# --------------------------------------------------------------------------- the package


def build_package(size_mb: int) -> tuple[Path, str]:
    """``package.tar`` of ``size_mb`` MB of random files and its bt2 hash, built once."""
    stamp = WORK / f"package-{size_mb}.json"
    tar = WORK / f"package-{size_mb}.tar"
    if stamp.exists() and tar.exists():
        return tar, json.loads(stamp.read_text())["hash"]
    tree = WORK / f"package-{size_mb}"
    shutil.rmtree(tree, ignore_errors=True)
    total = size_mb * 1000 * 1000
    # Four large files (half the bytes), 20 medium ones (a quarter), the rest small: 424 files.
    layout = [("large", 4, total // 2), ("medium", 20, total // 4), ("small", 400, total // 4)]
    for kind, count, bytes_ in layout:
        for i in range(count):
            path = tree / "data" / kind / f"{i // 50:02d}" / f"{kind}-{i:03d}.bin"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(bytes_ // count))
    (tree / "treeseed.toml").write_text('[package]\nname = "bench-swarm"\nversion = "1.0"\n')
    (tree / "bin").mkdir()
    (tree / "bin" / "run.sh").write_text("#!/bin/sh\necho bench\n")
    (tree / "bin" / "run.sh").chmod(0o755)
    subprocess.run(["tar", "-cf", str(tar), "-C", str(tree.parent), tree.name], check=True)
    shutil.rmtree(tree)
    hash_cache = WORK / "hash-cache"
    out = subprocess.run([*TREESEED, "--cache-dir", str(hash_cache), "hash", str(tar)],
                         check=True, capture_output=True, text=True).stdout.strip()
    shutil.rmtree(hash_cache, ignore_errors=True)
    stamp.write_text(json.dumps({"hash": out}))
    return tar, out


# --------------------------------------------------------------------------- the origin


class RateLimit:
    """A token bucket shared by every connection of the origin: ``rate`` bytes per second in
    total (0: no limit), with one chunk of burst."""

    CHUNK = 256 << 10

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.lock = threading.Lock()
        self.next_free = time.monotonic()

    def chunk(self) -> int:
        return self.CHUNK if self.rate else 4 << 20

    def take(self, n: int) -> None:
        """Wait until ``n`` more bytes fit under the rate."""
        if not self.rate:
            return
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next_free)
            self.next_free = start + n / self.rate
        if start > now:
            time.sleep(start - now)


class Origin:
    """Serves one file on 127.0.0.1 with sendfile and counts every byte it sends."""

    def __init__(self, path: Path, rate: float = 0.0) -> None:
        origin = self
        self.path = path
        self.limit = RateLimit(rate)
        self.sent = 0
        self.requests = 0
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:
                if self.path != "/package.tar":
                    self.send_error(404)
                    return
                size = origin.path.stat().st_size
                with origin.lock:
                    origin.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/x-tar")
                self.send_header("Content-Length", str(size))
                self.end_headers()
                self.wfile.flush()
                with open(origin.path, "rb") as f:
                    offset = 0
                    while offset < size:
                        want = min(origin.limit.chunk(), size - offset)
                        origin.limit.take(want)
                        try:
                            n = self.connection.sendfile(f, offset, want)
                        except OSError:  # the client cancelled (its swarm won the race)
                            return
                        if n == 0:
                            return
                        offset += n
                        with origin.lock:
                            origin.sent += n

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/package.tar"

    def take(self) -> tuple[int, int]:
        with self.lock:
            sent, requests, self.sent, self.requests = self.sent, self.requests, 0, 0
        return sent, requests

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# --------------------------------------------------------------------------- the caches


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def settings_text(port: int, peers: list[int]) -> str:
    peer_list = ", ".join(f'"127.0.0.1:{p}"' for p in peers)
    return (f'torrent = true\nlisten = "127.0.0.1:{port}"\npeers = [{peer_list}]\n'
            'dht = false\ndht_bootstrap = []\nlsd = false\nupnp = false\nseed_delay = 0\n')


class Caches:
    """N empty caches under bench/.work/swarm/run, each with its own settings file."""

    def __init__(self, n: int, origin: Origin, package_hash: str) -> None:
        self.root = WORK / "run"
        shutil.rmtree(self.root, ignore_errors=True)
        self.app = self.root / "app"
        self.app.mkdir(parents=True)
        (self.app / "treeseed.toml").write_text(
            f'[package]\nname = "app"\n\n[dependencies.big]\nurl = "{origin.url}"\n'
            f'hash = "{package_hash}"\n')
        ports = free_ports(n)
        self.dirs = [self.root / f"c{i}" for i in range(n)]
        self.envs = []
        for i, d in enumerate(self.dirs):
            d.mkdir()
            (d / "settings.toml").write_text(settings_text(ports[i], ports[:i] + ports[i + 1:]))
            self.envs.append({**os.environ, "TREESEED_CONFIG": str(d / "settings.toml")})
        self.package_hash = package_hash
        self.seeders = False

    def cli(self, i: int, *args: str, env: dict | None = None, timeout: float = 60) -> str:
        proc = subprocess.run([*TREESEED, "--cache-dir", str(self.dirs[i] / "cache"), *args],
                              env={**self.envs[i], **(env or {})}, capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode:
            raise SystemExit(f"treeseed {' '.join(args)} (cache {i}) failed: {proc.stderr.strip()}")
        return proc.stdout

    def start_seeders(self) -> None:
        self.seeders = True
        threads = [threading.Thread(target=self.cli, args=(i, "seed", "--detach"))
                   for i in range(len(self.dirs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def fetch_all(self, torrent: bool, head_starts: list[float] | None = None) -> tuple[float, int]:
        """All N fetches at once: wall time until the last exits, and how many of the N got
        the package from the swarm (``fetch --json`` names where each dependency came from)."""
        procs = []
        start = time.perf_counter()
        for i, d in enumerate(self.dirs):
            env = dict(self.envs[i])
            if head_starts is not None:
                env["TREESEED_SWARM_HEAD_START"] = str(head_starts[i])
            procs.append(subprocess.Popen(
                [*TREESEED, "--cache-dir", str(d / "cache"), "-C", str(self.app), "fetch", "--json",
                 "--torrent" if torrent else "--no-torrent"],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        errors, outputs = [], []
        for i, p in enumerate(procs):
            out, err = p.communicate(timeout=FETCH_TIMEOUT)
            outputs.append(out)
            if p.returncode:
                errors.append(f"cache {i}: {err.strip()}")
        elapsed = time.perf_counter() - start
        if errors:
            raise SystemExit("fetch failed:\n" + "\n".join(errors))
        for d in self.dirs:
            if not (d / "cache" / "p" / self.package_hash).is_dir():
                raise SystemExit(f"{d}: the package is not in the cache after the fetch")
        from_swarm = sum(json.loads(out)[0]["url"].startswith("swarm") for out in outputs)
        return elapsed, from_swarm

    def logs(self) -> str:
        """The tail of each seeder's log, for a failed run."""
        out = []
        for i, d in enumerate(self.dirs):
            log = d / "cache" / "seed" / "seeder.log"
            if log.exists():
                out.append(f"--- cache {i} seeder.log\n" + "\n".join(
                    log.read_text(errors="replace").splitlines()[-15:]))
        return "\n".join(out)

    def close(self) -> None:
        if self.seeders:
            threads = [threading.Thread(target=self.cli, args=(i, "seed", "stop"))
                       for i in range(len(self.dirs))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        shutil.rmtree(self.root, ignore_errors=True)


def run_once(mode: str, n: int, origin: Origin, package_hash: str, step: float) -> dict:
    caches = Caches(n, origin, package_hash)
    try:
        if mode != "http":
            caches.start_seeders()
        origin.take()
        head_starts = [i * step for i in range(n)] if mode == "staggered" else None
        elapsed, from_swarm = caches.fetch_all(mode != "http", head_starts)
        sent, requests = origin.take()
    except BaseException:
        print(caches.logs(), file=sys.stderr)
        raise
    finally:
        caches.close()
    return {"time": elapsed, "origin": sent, "requests": requests, "from_swarm": from_swarm}


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ns", default="1,2,4,8", help="numbers of caches (default 1,2,4,8)")
    parser.add_argument("--runs", type=int, default=3, help="runs per N and mode; medians shown")
    parser.add_argument("--size-mb", type=int, default=300)
    parser.add_argument("--modes", default="http,swarm,staggered")
    parser.add_argument("--step", type=float, default=10.0,
                        help="staggered: seconds between the caches' head starts (default 10)")
    parser.add_argument("--origin-rate", default="20M",
                        help="the origin's total bytes/s (20M, 500k, 0 for unlimited; default 20M)")
    args = parser.parse_args()
    rate = parse_rate(args.origin_rate)
    ns = [int(x) for x in args.ns.split(",")]
    modes = args.modes.split(",")
    WORK.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tar, package_hash = build_package(args.size_mb)
    size = tar.stat().st_size
    print(f"machine: {os.cpu_count()} cores, {os.uname().machine}, Python {sys.version.split()[0]}; "
          f"package {package_hash[:16]}..., {size / 1e6:.0f} MB as .tar; runs per cell: {args.runs}; "
          f"staggered step {args.step:g} s; origin "
          f"{f'{rate / 1e6:g} MB/s' if rate else 'unlimited (loopback)'}", flush=True)
    origin = Origin(tar, rate)
    results: dict[tuple[int, str], list[dict]] = {}
    try:
        for n in ns:
            for run in range(args.runs):
                for mode in modes:  # alternate the modes within each run
                    r = run_once(mode, n, origin, package_hash, args.step)
                    results.setdefault((n, mode), []).append(r)
                    print(f"  N={n} {mode:<9} run {run + 1}: {r['time']:6.1f} s, origin "
                          f"{r['origin'] / size:4.2f} copies in {r['requests']} requests; "
                          f"{r['from_swarm']} of {n} caches served by the swarm", flush=True)
    finally:
        origin.close()
    report(ns, modes, results, size)
    print(f"\nbench took {time.perf_counter() - started:.0f} s")
    return 0


def parse_rate(text: str) -> float:
    """``20M`` -> 20e6 bytes/s, ``500k`` -> 5e5, ``0`` -> no limit."""
    units = {"k": 1e3, "m": 1e6, "g": 1e9}
    text = text.strip().lower().removesuffix("b/s").removesuffix("/s")
    factor = units.get(text[-1:], 1.0)
    return float(text[:-1] if text[-1:] in units else text) * factor


def report(ns: list[int], modes: list[str], results: dict, size: int) -> None:
    def med(n: int, mode: str, key: str) -> float:
        return statistics.median(r[key] for r in results[(n, mode)])

    swarmy = [m for m in modes if m != "http"]
    print()
    head = f"{'N':>3}" + "".join(f"  {m + ' s':>12}" + ("" if m == "http" else f" {'ratio':>5}")
                                 for m in modes)
    head += "  origin copies (" + " / ".join(modes) + ")"
    if swarmy:
        head += "  served by the swarm (" + " / ".join(swarmy) + ")"
    print(head)
    for n in ns:
        line = f"{n:>3}"
        for mode in modes:
            t = med(n, mode, "time")
            line += f"  {t:12.1f}"
            if mode != "http":
                line += f" {t / med(n, 'http', 'time'):5.2f}" if "http" in modes else f" {'-':>5}"
        line += "  " + " / ".join(f"{med(n, m, 'origin') / size:.2f}" for m in modes)
        if swarmy:
            line += "  " + " / ".join(f"{med(n, m, 'from_swarm'):g} of {n}" for m in swarmy)
        print(line)
    print("ratio: time / http time (target: at most 1.00). origin copies: bytes the origin sent / "
          "package size\n(target with the swarm: near 1 whatever N). Medians of the runs above.")


if __name__ == "__main__":
    sys.exit(main())
