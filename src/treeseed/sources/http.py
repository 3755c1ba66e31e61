"""HTTP(S) archive downloads, streamed to disk and hashed as they arrive.

urllib3 does the connections (pooling, TLS, chunked bodies); redirects are followed here, one
hop at a time, so a loop is reported with the whole chain the server sent. A body that is an
HTML page (an error or login page served with status 200) is caught from its Content-Type and
its first bytes, and the error quotes what the server said.

A server that stops sending costs one *stall budget* (``TREESEED_STALL_TIMEOUT`` seconds, default
60) counted from the last byte received, not a per-read timeout times retries: the socket's
read timeout is that budget, a silent read is never retried, and bytes are counted as they
arrive (not per megabyte read), so the error says how much came before the silence. While it
waits, the last byte count is repeated to ``progress`` every few seconds, so whoever watches
hears of a quiet server before the budget runs out.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urljoin

from ..env import env_seconds
from ..errors import FetchError
from . import AnnounceFn, Fetched, ProgressFn

MAX_REDIRECTS = 10
CHUNK = 1 << 20
USER_AGENT = "treeseed/0.1"
CONNECT_TIMEOUT = 10.0  # seconds to set up a TCP connection: a live host answers in far less
STALL_VARIABLE = "TREESEED_STALL_TIMEOUT"
DEFAULT_STALL = 60.0  # seconds without a byte before a download is given up
HEARTBEAT = 5.0  # at most this many seconds between progress reports while waiting
_pool = None


def stall_budget() -> float:
    """Seconds a download may go without receiving a byte: ``TREESEED_STALL_TIMEOUT``."""
    budget = env_seconds(STALL_VARIABLE, DEFAULT_STALL)
    if budget <= 0:
        raise FetchError(f"{STALL_VARIABLE}={budget:g}: give a number of seconds above 0 (how long "
                         "a download may receive nothing before it is given up)")
    return budget


def pool():
    """One shared connection pool per process (created on first use: urllib3 imports slowly)."""
    global _pool
    if _pool is None:
        import urllib3

        _pool = urllib3.PoolManager(
            num_pools=16,
            maxsize=8,
            headers={"User-Agent": USER_AGENT},
            timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=stall_budget()),
            retries=_retry_class()(total=3, connect=3, read=2, redirect=0, status=0,
                                   backoff_factor=0.2, raise_on_redirect=False),
        )
    return _pool


def _retry_class() -> type:
    """urllib3's Retry, except that a read timeout is not retried: it already cost the whole
    stall budget, and three of them were six silent minutes. A connection reset before the
    answer (a stale pooled connection) is still retried."""
    import urllib3

    class NoSilentRetry(urllib3.Retry):
        def increment(self, method=None, url=None, response=None, error=None,  # type: ignore[no-untyped-def]
                      _pool=None, _stacktrace=None):
            if isinstance(error, urllib3.exceptions.ReadTimeoutError):
                raise error
            return super().increment(method, url, response, error, _pool, _stacktrace)

    return NoSilentRetry


class Heartbeat:
    """Passes byte counts on to ``progress``, and from a thread repeats the last one every
    ``interval`` seconds while nothing new arrives: a silent server then shows as a count that
    stops growing (the cache side says so), rather than as no news at all."""

    def __init__(self, progress: ProgressFn | None, interval: float) -> None:
        self._progress = progress
        self._interval = interval
        self._last: tuple[int, int | None] = (0, None)
        self._lock = threading.Lock()  # one line at a time on the fetcher's stdout
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="treeseed-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        if self._progress is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def __call__(self, done: int, total: int | None) -> None:
        if self._progress is None:
            return
        with self._lock:
            self._last = (done, total)
            self._progress(done, total)

    def _beat(self) -> None:
        report: Callable[[int, int | None], None] = self._progress  # type: ignore[assignment]
        while not self._stop.wait(self._interval):
            with self._lock:
                report(*self._last)


class HttpSource:
    def __init__(self, url: str) -> None:
        self.url = url
        self.canonical = url

    def fetch(self, work: Path, progress: ProgressFn | None = None,
              announce: AnnounceFn | None = None) -> Fetched:
        early = digest_from_url(self.url)
        if early and announce:  # a content-addressed mirror URL names its digest
            announce("archive-sha256", early)
        with Heartbeat(progress, min(HEARTBEAT, stall_budget() / 4)) as heartbeat:
            response = open_url(self.url)
            stated = digest_from_headers(response.headers)
            if stated and announce and stated != early:  # Repr-Digest / Digest: before the body
                announce("archive-sha256", stated)
            try:
                target = work / "download"
                digest, size = _save(response, target, self.url, heartbeat)
            finally:
                response.release_conn()
        if stated and stated != digest:
            raise FetchError(f"{self.url}: the server stated SHA-256 {stated} for the body but sent "
                             f"bytes hashing to {digest}; the download is corrupt or the server "
                             "misconfigured")
        return Fetched("archive", target, archive_sha256=digest, bytes_transferred=size)


_CA_URL = re.compile(r"/sha256/([0-9a-f]{64})(?:[/?#]|$)")
_DIGEST_FIELD = re.compile(r"(?:^|,)\s*sha-256\s*=\s*:?([A-Za-z0-9+/=]+):?", re.I)


def digest_from_url(url: str) -> str | None:
    """The SHA-256 a content-addressed mirror URL names (``.../sha256/<64 hex>``), if any."""
    match = _CA_URL.search(url)
    return match[1] if match else None


def digest_from_headers(headers) -> str | None:
    """SHA-256 of the body as the server states it up front: RFC 9530 ``Repr-Digest:
    sha-256=:<base64>:`` or the older RFC 3230 ``Digest: SHA-256=<base64>``. Only a hint: the
    bytes are still hashed as they arrive, and the cache trusts nothing else."""
    import base64
    import binascii

    for name in ("Repr-Digest", "Digest"):
        value = headers.get(name)
        match = _DIGEST_FIELD.search(value or "")
        if match:
            try:
                raw = base64.b64decode(match[1], validate=True)
            except (binascii.Error, ValueError):
                continue
            if len(raw) == 32:
                return raw.hex()
    return None


def open_url(url: str):
    """GET ``url`` following redirects; return a streaming response with status 200."""
    response, current = _follow(url, {})
    if response.status != 200:
        body = _snippet(response)
        response.release_conn()
        said = f"; the server said: {body}" if body else ""
        raise FetchError(f"{current}: HTTP {response.status} {response.reason or ''}".rstrip()
                         + said)
    _reject_html(response, current)
    return response


def _follow(url: str, headers: dict[str, str]):
    """GET ``url`` with ``headers``, following redirects one hop at a time (each hop gets the
    same headers); return the first answer that is not a redirect, body unread, and its URL."""
    import urllib3

    chain = [url]
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        asked = time.monotonic()
        try:
            response = pool().request("GET", current, headers=headers or None,
                                      preload_content=False, redirect=False)
        except urllib3.exceptions.ReadTimeoutError:
            raise _stalled(current, 0, None, asked) from None
        except urllib3.exceptions.HTTPError as exc:
            raise FetchError(f"{current}: {_describe(exc)}") from None
        if response.status not in (301, 302, 303, 307, 308):
            return response, current
        location = response.headers.get("Location")
        response.drain_conn()
        response.release_conn()
        if not location:
            raise FetchError(f"{current}: HTTP {response.status} redirect without a Location")
        current = urljoin(current, location)
        if current in chain:
            raise FetchError(f"{url}: redirect loop: {' -> '.join(chain + [current])}")
        chain.append(current)
    raise FetchError(f"{url}: more than {MAX_REDIRECTS} redirects: {' -> '.join(chain)}")


class Probe:
    """What one (maybe conditional) GET said about a URL, its body never read.

    ``treeseed update`` asks with the validators the server gave last time; the answer is
    untrusted input, so :attr:`not_modified` holds only for a 304 to a request that really was
    conditional, and whose ETag, if the 304 carries one, is the one asked with.
    """

    def __init__(self, url: str, status: int, etag: str | None, last_modified: str | None,
                 digest: str | None, asked_etag: str | None, asked_since: str | None) -> None:
        self.url = url
        self.status = status
        self.etag = etag
        self.last_modified = last_modified
        self.digest = digest  # the body's SHA-256 as the server states it (Repr-Digest)
        self.asked_etag = asked_etag
        self.asked_since = asked_since

    @property
    def conditional(self) -> bool:
        return self.asked_etag is not None or self.asked_since is not None

    @property
    def not_modified(self) -> bool:
        if self.status != 304 or not self.conditional:
            return False
        return self.etag is None or self.asked_etag is None or _same_etag(self.etag, self.asked_etag)

    def __repr__(self) -> str:
        return (f"Probe({self.url!r}, {self.status}, etag={self.etag!r}, "
                f"last_modified={self.last_modified!r}, digest={self.digest!r})")


def _same_etag(a: str, b: str) -> bool:
    """RFC 9110's weak comparison, as If-None-Match uses: ``W/"x"`` equals ``"x"``."""
    return a.strip().removeprefix("W/") == b.strip().removeprefix("W/")


def probe(url: str, etag: str | None = None, last_modified: str | None = None) -> Probe:
    """One GET of ``url`` that reads the answer's headers and never its body.

    With ``etag`` / ``last_modified`` (what the server said last time) the request is
    conditional (``If-None-Match`` / ``If-Modified-Since``), so an unchanged resource costs a
    304 and no body. A 200 is hung up on after its headers: whoever needs the body fetches it
    through the pipeline, which hashes it as it arrives.
    """
    headers = {}
    if etag is not None:
        headers["If-None-Match"] = etag
    if last_modified is not None:
        headers["If-Modified-Since"] = last_modified
    response, _ = _follow(url, headers)
    try:
        return Probe(url, response.status, _header(response, "ETag"),
                     _header(response, "Last-Modified"),
                     digest_from_headers(response.headers) if response.status == 200 else None,
                     etag, last_modified)
    finally:
        if response.status == 304:
            response.release_conn()  # no body: the connection is reusable
        else:
            response.close()  # a body may be on its way: drop the connection, never read it
            response.release_conn()


def _header(response, name: str) -> str | None:
    """A header as a validator to send back: bounded and printable, else ignored."""
    value = response.headers.get(name)
    if value is None or len(value) > 512 or not value.isprintable():
        return None
    return value


def _reject_html(response, url: str) -> None:
    ctype = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if ctype in ("text/html", "application/xhtml+xml"):
        body = _snippet(response)
        response.release_conn()
        raise FetchError(f"{url}: the server sent an HTML page (Content-Type {ctype}), not an "
                         f"archive: {body or 'empty page'}; check the URL (a login or error page?)")


def _snippet(response, limit: int = 200) -> str:
    """A short, single-line rendering of an error body: its <title> if HTML, else its start."""
    try:
        raw = response.read(4096, decode_content=True) or b""
    except Exception:
        return ""
    text = raw.decode("utf-8", "replace")
    title = re.search(r"<title[^>]*>(.*?)</title>", text, re.I | re.S)
    if title:
        text = title[1]
    text = re.sub(r"<[^>]+>", " ", text)
    text = " ".join(text.split())
    return text[:limit] + ("..." if len(text) > limit else "")


def _save(response, target: Path, url: str, progress: ProgressFn | None) -> tuple[str, int]:
    """Stream the body to ``target`` computing its SHA-256; check the announced length.

    ``read1`` hands over whatever has arrived (up to a megabyte) instead of waiting to fill a
    megabyte, so ``done`` counts every byte received when the server goes quiet.
    """
    import urllib3

    total = response.headers.get("Content-Length")
    expected = int(total) if total and total.isdigit() else None
    h = hashlib.sha256()
    done = 0
    last_byte = time.monotonic()
    try:
        with open(target, "wb") as out:
            while chunk := response.read1(CHUNK, decode_content=False):
                last_byte = time.monotonic()
                h.update(chunk)
                out.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, expected)
    except urllib3.exceptions.ReadTimeoutError:
        raise _stalled(url, done, expected, last_byte) from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        # A connection that ends before Content-Length bytes arrived surfaces as urllib3's
        # ProtocolError (around IncompleteRead): it is the short body reported just below.
        cut_short = isinstance(exc, urllib3.exceptions.ProtocolError) and done < (expected or 0)
        if not cut_short:
            raise FetchError(f"{url}: download failed after {done} bytes: {_describe(exc)}") from None
    if expected is not None and done != expected:
        missing = f", {expected - done} bytes missing" if done < expected else ""
        raise FetchError(f"{url}: the server announced {expected} bytes but sent {done}{missing} "
                         "(connection cut?); try again")
    return h.hexdigest(), done


def _stalled(url: str, done: int, expected: int | None, since: float) -> FetchError:
    """The error for a server gone quiet: how much came, how long it was silent, what to do."""
    of = f" of {expected}" if expected is not None else ""
    return FetchError(f"{url}: stalled: nothing received for {time.monotonic() - since:.1f} s "
                      f"after {done}{of} bytes; try again later, or allow longer silences with "
                      f"{STALL_VARIABLE}=<seconds> (now {stall_budget():g})")


def _describe(exc: BaseException) -> str:
    """Turn urllib3's nested exceptions into the reason a person needs."""
    import urllib3

    reason = getattr(exc, "reason", None) or exc
    text = str(reason)
    if "Connection refused" in text:
        return "connection refused (is the server running, and is the port right?)"
    if "Name or service not known" in text or "nodename nor servname" in text:
        return "unknown host name (check the URL, or your DNS)"
    if isinstance(reason, urllib3.exceptions.ConnectTimeoutError):
        return (f"no connection within {CONNECT_TIMEOUT:g} s (is the host up and reachable, or "
                "is a firewall dropping the connection?)")
    if "timed out" in text.lower():
        return "timed out"
    return text
