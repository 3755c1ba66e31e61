"""Aliases in the DHT: other ecosystems' hashes of a package, mapped to its bt2 hash.

A package's bt2 hash is its swarm address, but users hold other hashes of the same tree: a
``build.zig.zon`` names it by its Zig hash, a Nix expression by its NAR hash or store path, a
git user by its tree id. For every package it publishes, the seeder writes one BEP 44 mutable
item per such hash into the mainline DHT. Anyone can then find the bt2 hash from the hash they
hold, with no mirror and no index.

Items are addressed by an ed25519 public key and a salt. The key pair is fixed and published
here (:data:`SEED`, :data:`PUBLIC_KEY`, and :data:`SECRET_KEY`, the 64-byte expanded secret key
libtorrent signs with), so every treeseed looks in the same place; the salt is
``<format>:<value>`` (:func:`salt`). The value is the text ``bt2-<hex>``.

Since the secret key is public, **anyone can write these items**: every answer is a hint.
The package it names is fetched by its bt2 hash (so the bytes are that package's), then hashed
in the format asked for, and installed only if that hash is the one the user gave
(:func:`treeseed.locate.obtain_by_alias`). A wrong hint costs a download, never a wrong
install; anyone can also overwrite or censor an item, which makes a lookup fall back to the
other sources.

BEP 44's limits: a value of at most 1,000 bytes bencoded (ours are 71), a salt of at most 64
bytes (a longer ``<format>:<value>`` is shortened to ``<format>#<base64url of its SHA-256>``),
items forgotten after about two hours. :class:`AliasPublisher` re-puts each item every
:data:`REPUBLISH` seconds, spreading the puts evenly over that time, at most
:data:`MAX_PUTS_PER_SECOND` (docs/swarm.md counts them).
"""

from __future__ import annotations

import base64
import collections
import hashlib
import heapq
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import TreeseedError
from ..ids import is_bt2

if TYPE_CHECKING:
    from ..cache import Cache
    from .session import Swarm

#: The published key pair of every treeseed alias item. The seed is the ordinary 32-byte
#: ed25519 private key; :data:`SECRET_KEY` is its expanded form (SHA-512 of the seed, clamped),
#: which is what libtorrent's ``dht_put_mutable_item`` takes. Public on purpose: see above.
SEED = bytes.fromhex("05878e91c349f5c597b2e84541a05ee631c8b6798bc9ea022805d66ed8a873c1")
PUBLIC_KEY = bytes.fromhex("a59ba7c7b9a792ff7271d4d86077dd30cf1fdcb8ab5e8219b2c4d57db961258a")
SECRET_KEY = bytes.fromhex(
    "f8728dd69642f8d426d2a6a6bdd58c7358f522af61d49faf1e04d4a4b0d32264"
    "fe03e0d4e042e926f24c8e9f3380b2f4dd45fcd8947ff26dc154bf0ebea86e7d")

#: Formats published, as the index names them; ``zig`` is published in both spellings, and
#: ``nix-store`` is the hash part of ``/nix/store/<hash>-source``.
PUBLISHED = ("zig", "nar", "git", "nix-store", "archive-sha256", "ipfs")
MAX_SALT = 64  # BEP 44
MAX_VALUE = 1000  # BEP 44, bencoded
#: Seconds between two puts of one item: well inside the ~2 h nodes keep an item.
REPUBLISH = 100 * 60
#: Upper bound of the put rate; below it, the rate is what spreads every item evenly over
#: :data:`REPUBLISH`. A burst of :data:`BURST` lets a newly seeded package go out at once.
MAX_PUTS_PER_SECOND = 10.0
MIN_PUTS_PER_SECOND = 0.5
BURST = 8
#: Items a package whose aliases are not hashed yet is counted as (zig twice, nar, git,
#: nix-store): a cold cache's first round then goes at the rate its items need, not at the
#: floor while most packages still count as one.
ITEMS_GUESS = 6  # ... and ipfs
#: Outer bounds of one lookup and one put (a put is a DHT traversal and then the stores).
GET_TIMEOUT = 30.0
PUT_TIMEOUT = 60.0
READY_AFTER = 2.0


def salt(fmt: str, value: str) -> bytes:
    """The item's salt for ``value`` in format ``fmt``: ``<format>:<value>``, or, past BEP 44's
    64 bytes, ``<format>#`` and the unpadded base64url SHA-256 of the value."""
    plain = f"{fmt}:{value}".encode()
    if len(plain) <= MAX_SALT:
        return plain
    digest = base64.urlsafe_b64encode(hashlib.sha256(value.encode()).digest()).rstrip(b"=")
    return f"{fmt}#".encode() + digest


def item_value(package_hash: str) -> bytes:
    """What an item holds: the text ``bt2-<hex>`` (libtorrent stores it as a bencoded string)."""
    if not is_bt2(package_hash):
        raise TreeseedError(f"{package_hash!r} is not a treeseed hash")
    return package_hash.encode()


def parse_value(item: Any) -> str | None:
    """The bt2 hash an item names, or None for anything else (anyone can write these items)."""
    if isinstance(item, bytes):
        item = item.decode("ascii", "replace")
    return item if isinstance(item, str) and is_bt2(item) else None


def package_aliases(cache: Cache, package_hash: str) -> list[tuple[str, str]]:
    """The (format, value) pairs published for a cached package. Hashes the index lacks are
    computed from the tree once and recorded (so the next run reads them), never taken from
    anyone else."""
    from ..hashing import hash_tree
    from ..hashing.nar import parse_nix_hash, store_path_hash
    from ..install import record_aliases
    from ..package import scan_tree

    root = cache.path(package_hash)
    known = cache.aliases(package_hash)
    missing = [f for f in ("nar", "git", "ipfs") if f not in known]
    if missing:
        computed = hash_tree(root, scan_tree(root, package_hash), missing, package_hash)
        record_aliases(cache, package_hash, computed)
        known.update(computed)
    out = [(f, known[f]) for f in ("nar", "git", "archive-sha256", "ipfs") if f in known]
    out.append(("nix-store", store_path_hash(parse_nix_hash(known["nar"]))))
    try:
        from ..interop.zig import zig_hash

        zig = zig_hash(root, package_hash, allow_missing_paths=True)
    except TreeseedError:
        pass  # a build.zig.zon Zig itself would refuse: no Zig hash to publish
    else:
        out += [("zig", zig.hash), ("zig", zig.legacy)]
    return out


class AliasDht:
    """BEP 44 puts and gets of alias items through one :class:`~.session.Swarm`'s session.

    Results arrive as alerts, which the swarm pops wherever it pops them (the seeder's loop, a
    download): this object chains itself in front of ``swarm.on_alert`` and waits on a
    condition, popping alerts itself meanwhile so it never depends on another loop running.
    """

    def __init__(self, swarm: Swarm) -> None:
        import libtorrent as lt

        self.swarm = swarm
        session = swarm.session
        mask = session.get_settings()["alert_mask"] | lt.alert.category_t.dht_notification
        session.apply_settings({"alert_mask": mask})
        self._cond = threading.Condition()
        self._got: dict[bytes, list[tuple[int, Any, bool]]] = {}  # salt -> (seq, item, authoritative)
        self._put: dict[bytes, int] = {}  # salt -> nodes that stored it
        #: The DHT finished its bootstrap (libtorrent never puts its bootstrap routers into
        #: the routing table, so a table can stay empty while lookups through them work).
        self.bootstrapped = False
        self._created = time.monotonic()
        #: Called with (salt, nodes that stored it) for each put's result.
        self.on_put: Callable[[bytes, int], None] | None = None
        self._next = swarm.on_alert
        swarm.on_alert = self._on_alert

    def close(self) -> None:
        """Unchain from the swarm (which would otherwise keep this object alive)."""
        if self.swarm.on_alert == self._on_alert:
            self.swarm.on_alert = self._next

    def _on_alert(self, alert: Any) -> None:
        import libtorrent as lt

        if isinstance(alert, lt.dht_bootstrap_alert):
            with self._cond:
                self.bootstrapped = True
                self._cond.notify_all()
        elif isinstance(alert, lt.dht_mutable_item_alert) and bytes(alert.key) == PUBLIC_KEY:
            with self._cond:
                self._got.setdefault(bytes(alert.salt), []).append(
                    (alert.seq, alert.item, alert.authoritative))
                self._cond.notify_all()
        elif isinstance(alert, lt.dht_put_alert) and bytes(alert.public_key) == PUBLIC_KEY:
            with self._cond:
                self._put[bytes(alert.salt)] = alert.num_success
                self._cond.notify_all()
            if self.on_put is not None:
                self.on_put(bytes(alert.salt), alert.num_success)
        if self._next is not None:
            self._next(alert)

    @property
    def ready(self) -> bool:
        """The DHT has bootstrapped (a put or get made before reaches nobody). Its alert may
        have come before this object turned DHT alerts on: after :data:`READY_AFTER` seconds a
        running DHT counts as ready, since lookups start from the bootstrap nodes anyway."""
        return self.bootstrapped or (time.monotonic() - self._created >= READY_AFTER
                                     and self.swarm.session.is_dht_running())

    def wait_for_nodes(self, deadline: float) -> bool:
        """Wait until the DHT is :attr:`ready`."""
        return bool(self._wait(lambda: self.ready, deadline))

    def put_async(self, fmt: str, value: str, package_hash: str) -> bytes:
        """Start putting the item for ``value``; returns its salt (:meth:`put` waits)."""
        data = item_value(package_hash)
        key = salt(fmt, value)
        assert len(data) + 4 <= MAX_VALUE
        with self._cond:
            self._put.pop(key, None)
        self.swarm.session.dht_put_mutable_item(SECRET_KEY, PUBLIC_KEY, data, key)
        return key

    def put(self, fmt: str, value: str, package_hash: str, timeout: float = PUT_TIMEOUT) -> int:
        """Put one item and wait for libtorrent's answer: the number of nodes that stored it."""
        deadline = time.monotonic() + timeout
        if not self.wait_for_nodes(deadline):
            return 0
        key = self.put_async(fmt, value, package_hash)
        found = self._wait(lambda: self._put.get(key), deadline)
        return found or 0

    def get(self, fmt: str, value: str, timeout: float = GET_TIMEOUT) -> str | None:
        """The bt2 hash the DHT names for ``value`` (a hint: verify it), or None. Waits for the
        lookup's final (authoritative) answer, else takes the newest seen by the deadline."""
        deadline = time.monotonic() + timeout
        if not self.wait_for_nodes(deadline):
            return None
        key = salt(fmt, value)
        with self._cond:
            self._got.pop(key, None)
        self.swarm.session.dht_get_mutable_item(PUBLIC_KEY, key)
        self._wait(lambda: any(a for _, _, a in self._got.get(key, [])), deadline)
        with self._cond:
            answers = self._got.pop(key, [])
        for _, item, _ in sorted(answers, key=lambda a: (a[2], a[0]), reverse=True):
            found = parse_value(item)
            if found is not None:
                return found
        return None

    def _wait(self, check: Callable[[], Any], deadline: float) -> Any:
        while True:
            self.swarm.handle_alerts()
            with self._cond:
                found = check()
                if found or time.monotonic() > deadline:
                    return found
                self._cond.wait(0.05)


class AliasPublisher:
    """Keeps the aliases of every seeded package in the DHT (a thread of the seeder).

    :meth:`publish` queues a package that starts being seeded: its items go out at once (up
    to :data:`BURST`). Each item is put again :data:`REPUBLISH` seconds later; the rate is
    the one that spreads all items evenly over that time, within
    [:data:`MIN_PUTS_PER_SECOND`, :data:`MAX_PUTS_PER_SECOND`]. Nothing is put before the
    seeder announces (its ``seed_delay``) or before the DHT has bootstrapped.
    """

    def __init__(self, swarm: Swarm, dht: AliasDht, cache_root: Path,
                 log: Callable[[str], None]) -> None:
        self.swarm = swarm
        self.dht = dht
        self.cache_root = cache_root
        self.log = log
        self._lock = threading.Lock()
        self._new: collections.deque[str] = collections.deque()
        self._due: list[tuple[float, str, str, str]] = []  # (when, package, format, value)
        self._items: dict[str, list[tuple[str, str]]] = {}  # package -> its aliases
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.puts = 0  # puts made so far
        self._unconfirmed: set[bytes] = set()  # first puts whose result is still to be logged
        dht.on_put = self._put_result
        self._thread = threading.Thread(target=self._run, name="treeseed-aliases", daemon=True)

    @classmethod
    def start_for(cls, swarm: Swarm, cache_root: Path, log: Callable[[str], None]
                  ) -> AliasPublisher:
        """A running publisher with its own :class:`AliasDht` on ``swarm`` (the seeder's)."""
        publisher = cls(swarm, AliasDht(swarm), cache_root, log)
        publisher.start()
        return publisher

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
        self.dht.close()

    def publish(self, package_hash: str) -> None:
        with self._lock:
            if package_hash not in self._items:
                self._items[package_hash] = []
                self._new.append(package_hash)
        self._wake.set()

    def forget(self, package_hash: str) -> None:
        with self._lock:
            self._items.pop(package_hash, None)  # its queued puts are dropped when due

    def _put_result(self, key: bytes, stored: int) -> None:
        with self._lock:
            first = key in self._unconfirmed
            self._unconfirmed.discard(key)
        if first:
            self.log(f"alias {key.decode('ascii', 'replace')} put in the DHT, stored by "
                     f"{stored} nodes")

    def rate(self) -> float:
        """Puts per second that spread every item evenly over :data:`REPUBLISH`."""
        with self._lock:
            items = sum(len(v) or ITEMS_GUESS for v in self._items.values())
        return min(MAX_PUTS_PER_SECOND, max(MIN_PUTS_PER_SECOND, items / REPUBLISH))

    def _run(self) -> None:
        from ..cache import Cache

        cache = Cache(self.cache_root)
        tokens, last = float(BURST), time.monotonic()
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                tokens = min(BURST, tokens + (now - last) * self.rate())
                last = now
                if tokens < 1 or not self.swarm.announcing or not self.dht.ready:
                    self._wake.wait(0.2)
                    self._wake.clear()
                    continue
                job = self._next_put(cache, now)
                if job is None:
                    self._wake.wait(0.5)
                    self._wake.clear()
                    continue
                package_hash, fmt, value = job
                if not cache.has(package_hash):  # left the cache: its items lapse
                    self.forget(package_hash)
                    continue
                try:
                    self.dht.put_async(fmt, value, package_hash)
                except Exception as exc:  # the session closing under us; a bad value
                    self.log(f"alias {fmt}:{value} of {package_hash} not put: {exc}")
                    continue
                tokens -= 1
                self.puts += 1
                with self._lock:
                    if package_hash in self._items:
                        heapq.heappush(self._due, (now + REPUBLISH, package_hash, fmt, value))
        finally:
            cache.close()

    def _next_put(self, cache: Cache, now: float) -> tuple[str, str, str] | None:
        """The next item to put: a new package's first, then the earliest due re-put."""
        with self._lock:
            package_hash = self._new.popleft() if self._new else None
        if package_hash is not None:
            try:
                items = package_aliases(cache, package_hash) if cache.has(package_hash) else []
            except (TreeseedError, OSError) as exc:
                self.log(f"no aliases published for {package_hash}: {exc}")
                items = []
            with self._lock:
                if package_hash not in self._items:
                    return None  # unseeded meanwhile
                self._items[package_hash] = items
                for fmt, value in items:  # before every re-put: when=0
                    heapq.heappush(self._due, (0.0, package_hash, fmt, value))
                    self._unconfirmed.add(salt(fmt, value))
            if items:
                self.log(f"publishing {len(items)} aliases of {package_hash} in the DHT: "
                         + ", ".join(f"{f}:{v}" for f, v in items))
        with self._lock:
            while self._due and self._due[0][0] <= now:
                _, package_hash, fmt, value = heapq.heappop(self._due)
                if (fmt, value) in self._items.get(package_hash, ()):
                    return package_hash, fmt, value
        return None


# --------------------------------------------------------------------------- hashes users hold

_HEX40 = re.compile(r"[0-9a-f]{40}")
_STORE_PATH = re.compile(r"(?:/nix/store/)?([0-9a-df-np-sv-z]{32})-(.+)")
_NIX32_52 = re.compile(r"[0-9a-df-np-sv-z]{52}")


def parse_hash(text: str) -> tuple[str, str] | None:
    """(format, value as the index spells it) for a hash another tool printed, or None.

    - Zig: ``name-version-<44 base64url>``, or the legacy ``1220<64 hex>``;
    - Nix NAR hash: SRI ``sha256-<base64>``, ``sha256:<nix32|hex|base64>``, bare nix32 (52);
      stored as SRI;
    - Nix store path of a tree named "source": ``/nix/store/<32>-source`` or ``<32>-source``;
    - git tree id: 40 hex digits, or ``swh:1:dir:<40 hex>`` (a package's SWHID is its tree
      id). A 40-hex *commit* id is not accepted: a commit cannot be checked against a tree;
    - ``archive-sha256:<64 hex>``, the digest of an archive's bytes (found only where
      treeseed recorded it: a tree cannot be checked against it);
    - IPFS: ``ipfs://<cid>`` or a bare CIDv1 ``bafy...``/``bafk...``, stored as base32 CIDv1.
    A bare 64-hex digest is refused as ambiguous (an archive's sha256sum, or a NAR hash).
    """
    from ..hashing.gittree import SWHID_PREFIX
    from ..hashing.nar import SRI_PREFIX, parse_nix_hash, sri
    from ..interop.zig import _HASH, _LEGACY

    s = text.strip()
    if s.startswith(SRI_PREFIX) or s.startswith("sha256:") or _NIX32_52.fullmatch(s):
        try:
            return "nar", sri(parse_nix_hash(s))
        except TreeseedError:
            return None
    if _HASH.fullmatch(s) or _LEGACY.fullmatch(s):
        return "zig", s
    if s.startswith(SWHID_PREFIX) and _HEX40.fullmatch(s[len(SWHID_PREFIX):]):
        return "git", s[len(SWHID_PREFIX):]
    if _HEX40.fullmatch(s):
        return "git", s
    if s.startswith("archive-sha256:") and re.fullmatch(r"[0-9a-f]{64}", s[15:]):
        return "archive-sha256", s[15:]
    store = _STORE_PATH.fullmatch(s)
    if store and store[2] == "source":
        return "nix-store", store[1]
    if s.startswith("ipfs://") or re.fullmatch(r"baf[yk][a-z2-7]{55}", s):
        from ..unixfs import BadBlock, cid_text, parse_cid

        try:
            return "ipfs", cid_text(parse_cid(s.removeprefix("ipfs://").strip("/")))
        except BadBlock:
            return None
    return None
