"""An idle `treeseed seed` of 1,000 and 10,000 small packages: start-up, CPU, memory, status.

    python bench/seeder_scale.py [--packages 1000,10000] [--window 60] [--before REV]

For each N it builds (once, kept in ``bench/.work/seeder_scale/cache-N``) a cache of N small
packages the way treeseed installs them: each tree is hashed by the library's own assembly
(``assemble.adopt_tree`` + ``finish_tree``), gets its real ``t/<hash>.torrent`` and ``.leaves``
(``swarm.torrents.write``) and goes in through the one install (``install.install``) with an
https source, so the index marks it as from the network and the seeder publishes it. (Nothing
is downloaded: a fetch of N local trees would only add N fetcher processes to the build.)

Then it starts ``treeseed seed`` on that cache in the foreground, loopback only: listening on
127.0.0.1, LSD and UPnP off, seed_delay 0, and a DHT of ``--dht-nodes`` (default 16)
libtorrent sessions in this process on 127.0.0.1 (no public bootstrap node), so the seeder's
routing table fills and its announces and alias puts really go out. Its ``seed/`` directory
is removed first, so every run is a cold start. Measured:

start s       from the process's start to its first status answer over the socket, which
              comes after every package was added (the status lists all N)
CPU %         utime + stime from /proc/<pid>/stat over the idle window, in % of one core
RSS MB        VmRSS at the end of the window
status s      median of 5 ``GET /status.json`` on the status page (and the socket's status)
resume writes files under seed/resume/ written during the window
DHT ann./min  packages announced during the window, per minute (a package announced to
              several DHT nodes counts once); libtorrent's dht_announce_interval is 900 s, so
              an even spread is N/15 per minute; "peak" is the busiest 10 s scaled to a minute
DHT counters  from the seeder's own status (libtorrent's session counters): announce_peer
              and put messages sent per minute, alias items put per minute, DHT bytes sent
              per second, and requests of other nodes it dropped for want of
              dht_upload_rate_limit quota (libtorrent never holds back its own messages; once
              they use up the quota it stops answering others)

``--before REV`` also runs the seeder of git revision REV (``git archive`` of ``src/`` into
a temp dir, first on PYTHONPATH) on the same caches, for a before/after table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / ".work" / "seeder_scale"
ANNOUNCE_INTERVAL = 900  # libtorrent's dht_announce_interval default, seconds


# --------------------------------------------------------------------------- the caches


def _make_packages(cache_root: str, start: int, count: int) -> None:
    """Install packages ``start`` .. ``start + count - 1`` into the cache (one process)."""
    import random

    from treeseed.assemble import adopt_tree, finish_tree
    from treeseed.cache import Cache
    from treeseed.install import Delivery, install
    from treeseed.swarm.torrents import write

    cache = Cache(Path(cache_root))
    try:
        for i in range(start, start + count):
            rng = random.Random(i)
            source = f"https://packages.invalid/bench-{i}.tar.gz"
            with cache.workdir() as work:
                tree = work / "package"
                tree.mkdir()
                (tree / "treeseed.toml").write_text(
                    f'[package]\nname = "bench-{i}"\nversion = "1.0.{i}"\n')
                (tree / "data.bin").write_bytes(rng.randbytes(rng.randrange(1_000, 40_000)))
                (tree / "README").write_text(f"package {i}\n")
                package = finish_tree(adopt_tree(tree, source), source)
                write(work, package.hash, package.entries, package.digests, source)
                manifest = package.rules.manifest
                install(cache, Delivery(package.root, work, package.hash, len(package.entries),
                                        package.size, source, manifest.name if manifest else None,
                                        manifest.version if manifest else None))
    finally:
        cache.close()


def build_cache(n: int) -> Path:
    root = WORK / f"cache-{n}"
    stamp = WORK / f"cache-{n}.done"
    if stamp.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    t0 = time.monotonic()
    workers = max(1, min(4, os.cpu_count() or 1))
    per = -(-n // workers)
    procs = [subprocess.Popen([sys.executable, __file__, "--make", str(root), str(s), str(min(per, n - s))])
             for s in range(0, n, per)]
    if any(p.wait() for p in procs):
        raise SystemExit(f"building the cache of {n} packages failed")
    got = len(os.listdir(root / "p"))
    if got != n:
        raise SystemExit(f"the cache holds {got} packages, not {n}")
    stamp.write_text("")
    print(f"built {n} packages in {time.monotonic() - t0:.0f} s ({root})", flush=True)
    return root


# --------------------------------------------------------------------------- the DHT router


def free_port() -> int:
    for _ in range(100):
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port
    raise SystemExit("no free port on 127.0.0.1")


class Router:
    """A DHT of ``count`` nodes on 127.0.0.1, all bootstrapped from the first, recording each
    announce they receive. With more than one node the seeder's routing table fills (a
    bootstrap node alone is never added to it), so its announces and puts really go out."""

    def __init__(self, count: int = 16) -> None:
        import libtorrent as lt

        self.lt = lt
        ports = [free_port() for _ in range(count)]
        self.nodes = [f"127.0.0.1:{port}" for port in ports]
        self.sessions = [self._session(port, self.nodes[0] if i else "")
                         for i, port in enumerate(ports)]
        self.announces: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _session(self, port: int, bootstrap: str):  # noqa: ANN202
        lt = self.lt
        return lt.session({
            "listen_interfaces": f"127.0.0.1:{port}", "enable_dht": True,
            "dht_bootstrap_nodes": bootstrap, "enable_lsd": False, "enable_upnp": False,
            "enable_natpmp": False, "enable_incoming_utp": False, "enable_outgoing_utp": False,
            "dht_restrict_routing_ips": False, "dht_restrict_search_ips": False,
            "dht_prefer_verified_node_ids": False, "dht_max_torrents": 100_000,
            "dht_upload_rate_limit": 1 << 20, "dht_block_ratelimit": 1 << 20,
            "alert_queue_size": 1 << 18, "alert_mask": lt.alert.category_t.dht_notification})

    def _run(self) -> None:
        while not self._stop.is_set():
            time.sleep(0.2)
            for session in self.sessions:
                now = time.monotonic()
                for alert in session.pop_alerts():
                    if isinstance(alert, self.lt.dht_announce_alert):
                        self.announces.append((now, str(alert.info_hash)))

    def between(self, t0: float, t1: float) -> list[tuple[float, str]]:
        """Each package's announces in [t0, t1), once: an announce reaches up to 8 nodes,
        so what several nodes receive within 60 s of the first is the same announce."""
        first: dict[str, float] = {}
        out = []
        for t, h in sorted(self.announces):
            if h in first and t - first[h] < 60:
                continue
            first[h] = t
            if t0 <= t < t1:
                out.append((t, h))
        return out

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for session in self.sessions:
            session.pause()


# --------------------------------------------------------------------------- one run


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def socket_status(cache: Path, timeout: float = 30) -> dict | None:
    path = cache / "seed" / "seeder.sock"
    if not path.exists():
        return None
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            s.sendall(b'{"op": "status"}\n')
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                data += chunk
        return json.loads(data)
    except (OSError, ValueError):
        return None


def resume_mtimes(cache: Path) -> dict[str, int]:
    d = cache / "seed" / "resume"
    if not d.is_dir():
        return {}
    out = {}
    with os.scandir(d) as it:
        for e in it:
            with contextlib.suppress(FileNotFoundError):
                out[e.name] = e.stat().st_mtime_ns
    return out


def run(cache: Path, n: int, window: float, router: Router, pythonpath: str | None,
        steady: bool = False) -> dict:
    shutil.rmtree(cache / "seed", ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix="seeder-scale-"))
    settings = tmp / "settings.toml"
    settings.write_text(
        "torrent = true\nlsd = false\nupnp = false\nseed_delay = 0\n"
        f'listen = "127.0.0.1:{free_port()}"\ndht = true\n'
        f"dht_bootstrap = {json.dumps(router.nodes[:1])}\n")  # the others are found through it: a bootstrap node never enters the routing table
    env = {**os.environ, "TREESEED_CONFIG": str(settings), "HOME": str(tmp)}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    log = open(tmp / "seed.log", "wb")  # noqa: SIM115
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "treeseed", "--cache-dir", str(cache), "seed"],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=tmp)
    try:
        first = None
        while first is None:
            if proc.poll() is not None:
                raise SystemExit(f"the seeder exited: {(tmp / 'seed.log').read_text()[-2000:]}")
            first = socket_status(cache)
            if first is None:
                time.sleep(0.05)
        start = time.monotonic() - t0
        seeding = first["seeding"]
        time.sleep(3)  # let the start-up's last work settle before the window
        first_phase = 0.0
        while steady:  # until every package's first announce is made: the steady state
            left = (socket_status(cache) or {}).get("dht", {}).get("first_announces_left", 0)
            if not left or proc.poll() is not None:
                first_phase = time.monotonic() - t0
                break
            time.sleep(5)
        resume_before = resume_mtimes(cache)
        dht0 = (socket_status(cache) or {}).get("dht", {})
        c0, w0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(window)
        c1, w1 = cpu_seconds(proc.pid), time.monotonic()
        last = socket_status(cache) or {}
        dht1 = last.get("dht", {})
        per_min = 60 / (w1 - w0)

        def delta(key: str) -> float:
            return float(dht1.get(key, 0) - dht0.get(key, 0))
        rss = rss_mb(proc.pid)
        resume_after = resume_mtimes(cache)
        writes = sum(1 for k, v in resume_after.items() if resume_before.get(k) != v)
        url = json.loads((cache / "seed" / "seeder.json").read_text())["status_url"]
        http = []
        for _ in range(5):
            t = time.monotonic()
            with urllib.request.urlopen(url + "status.json", timeout=60) as r:
                body = json.loads(r.read())
            http.append(time.monotonic() - t)
        sock = []
        for _ in range(3):
            t = time.monotonic()
            socket_status(cache)
            sock.append(time.monotonic() - t)
        burst = len(router.between(t0, t0 + start + 10))
        announces = router.between(w0, w1)
        per_slice: dict[int, int] = {}
        for t, _ in announces:
            per_slice[int((t - w0) // 10)] = per_slice.get(int((t - w0) // 10), 0) + 1
        return {
            "n": n, "seeding": seeding, "listed": len(body["packages"]), "start": start,
            "cpu": 100 * (c1 - c0) / (w1 - w0), "rss": rss,
            "status_http": statistics.median(http), "status_socket": statistics.median(sock),
            "resume_writes": writes, "resume_files": len(resume_after),
            "announce_min": len(announces) * 60 / (w1 - w0),
            "announce_peak": max(per_slice.values(), default=0) * 6,
            "announce_distinct": len({h for _, h in announces}), "announce_first_10s": burst,
            "dht_nodes": last.get("dht_nodes", 0),
            "announce_msgs_min": delta("announce_peer_out") * per_min,
            "put_msgs_min": delta("put_out") * per_min,
            "alias_puts_min": delta("alias_puts") * per_min,
            "dht_kb_s": delta("bytes_out") / (w1 - w0) / 1000,
            "dht_dropped": delta("messages_in_dropped"),
            "dht_limit_kb_s": dht1.get("upload_rate_limit", 0) / 1000,
            "first_phase": first_phase,
        }
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- the table


def targets(n: int) -> dict[str, str]:
    return {"start": "< 10 s" if n >= 10_000 else "-", "cpu": "<= 1%" if n <= 600 else
            ("<= 5%" if n >= 10_000 else "-"), "rss": "-", "status_http": "< 0.5 s",
            "status_socket": "< 0.5 s", "resume_writes": "0",
            "announce_min": f"~{n * 60 / ANNOUNCE_INTERVAL:.0f} (N/15)",
            "announce_peak": f"~{n * 60 / ANNOUNCE_INTERVAL:.0f}",
            "announce_first_10s": f"<= {max(4, -(-n // ANNOUNCE_INTERVAL)) * 10}",
            "alias_puts_min": f"~{min(600, n * 5 / 100):.0f}-{min(600, n * 6 / 100):.0f}",
            "dht_dropped": "0"}


ROWS = [("start", "start-up to first status, s", "{:.2f}"), ("dht_nodes", "DHT nodes known", "{}"), ("cpu", "idle CPU, % of a core", "{:.2f}"),
        ("rss", "RSS, MB", "{:.0f}"), ("status_http", "status page (HTTP), s", "{:.3f}"),
        ("status_socket", "status (socket), s", "{:.3f}"),
        ("resume_writes", "resume files written in window", "{}"),
        ("announce_min", "DHT announces / min", "{:.0f}"),
        ("announce_peak", "busiest 10 s, as / min", "{:.0f}"),
        ("announce_distinct", "distinct packages announced", "{}"),
        ("announce_first_10s", "announces in the first 10 s", "{}"),
        ("announce_msgs_min", "announce_peer messages / min", "{:.0f}"),
        ("put_msgs_min", "put messages / min", "{:.0f}"),
        ("alias_puts_min", "alias items put / min", "{:.0f}"),
        ("dht_kb_s", "DHT sent, kB/s", "{:.1f}"),
        ("dht_limit_kb_s", "dht_upload_rate_limit, kB/s", "{:.0f}"),
        ("dht_dropped", "others' requests dropped", "{:.0f}")]


def print_table(results: dict[tuple[str, int], dict], ns: list[int], labels: list[str],
                window: float, dht_nodes: int, steady: bool) -> None:
    phase = ("after every first announce (steady state)" if steady
             else "from 3 s after start-up (first announces under way: the busiest phase)")
    print(f"\nidle window {window:.0f} s, {phase}; DHT: {dht_nodes} nodes on 127.0.0.1; "
          "cold start (no seed/ dir)")
    for n in ns:
        print(f"\nN = {n}")
        header = f"  {'':34}{'target':>14}" + "".join(f"{label:>12}" for label in labels)
        print(header)
        t = targets(n)
        for key, title, fmt in ROWS:
            cells = "".join(f"{fmt.format(results[(label, n)][key]) if (label, n) in results else '-':>12}"
                            for label in labels)
            print(f"  {title:34}{t.get(key, '-'):>14}{cells}")
        for label in labels:
            r = results.get((label, n))
            if r and (r["seeding"] != n or r["listed"] != n):
                print(f"  note: {label} seeded {r['seeding']} and listed {r['listed']} of {n}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--make":
        _make_packages(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packages", default="1000,10000")
    ap.add_argument("--window", type=float, default=60.0, help="idle window, seconds")
    ap.add_argument("--before", metavar="REV", help="also run the seeder of this git revision")
    ap.add_argument("--dht-nodes", type=int, default=16, help="nodes of the loopback DHT")
    ap.add_argument("--steady", action="store_true",
                    help="start the window once every package's first announce is made (at "
                         "N/900 per second, at least 4: 4 min for 1,000, 14 min for 10,000); "
                         "by default it starts at once, in the busiest phase")
    args = ap.parse_args()
    ns = [int(x) for x in args.packages.split(",")]
    runs: list[tuple[str, str | None]] = []
    old = None
    if args.before:
        old = Path(tempfile.mkdtemp(prefix="seeder-before-"))
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.before, "src"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        runs.append((f"before {args.before}"[:11], str(old / "src")))
    runs.append(("now", str(ROOT / "src")))
    router = Router(args.dht_nodes)
    results: dict[tuple[str, int], dict] = {}
    try:
        for n in ns:
            cache = build_cache(n)
            for label, path in runs:
                print(f"N = {n}, {label}: running ({args.window:.0f} s idle window)", flush=True)
                results[(label, n)] = run(cache, n, args.window, router, path, args.steady)
                print("  " + json.dumps(results[(label, n)]), flush=True)
    finally:
        router.close()
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    print_table(results, ns, [label for label, _ in runs], args.window, args.dht_nodes,
                args.steady)


if __name__ == "__main__":
    main()
