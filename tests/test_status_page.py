"""The seeder's status page, in a real browser: headless Chromium (Debian's ``chromium``).

The page is served by ``treeseed seed`` on 127.0.0.1 and redraws itself from ``status.json``
every second. Chromium is driven over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: JSON messages on file descriptors 3 and 4, each ending in a NUL
byte), so no driver, websocket library or browser download is needed. The test reads the page
only by evaluating JavaScript in it, never reloading it: a marker set on ``window`` before a
download is still there after, so what changed was redrawn by the page's own polling.
"""

from __future__ import annotations

import fcntl
import http.client
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from swarmkit import Peer, random_package
from waiting import wait_for

from treeseed.swarm.status import host_allowed

pytest.importorskip("libtorrent", reason="pip install libtorrent (the swarm's BitTorrent engine)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: "
                                    "apt-get install chromium)")


class Chromium:
    """Headless Chromium with one page, driven over the DevTools protocol on a pipe."""

    def __init__(self, work: Path) -> None:
        to_child, self._out = os.pipe()  # we write commands; Chromium reads them on fd 3
        self._in, from_child = os.pipe()  # Chromium writes replies on fd 4; we read them

        def wire() -> None:  # in the child, before exec: the pipe ends where Chromium wants them
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_child, from_child)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.log = open(work / "chromium.log", "wb")
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--metrics-recording-only", "--mute-audio", f"--user-data-dir={work / 'profile'}",
             "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, preexec_fn=wire,
            pass_fds=(3, 4), env={**os.environ, "HOME": str(work)})
        os.close(to_child)
        os.close(from_child)
        self._buffer = b""
        self._next_id = 0
        self.session: str | None = None

    def call(self, method: str, timeout: float = 120.0, **params: object) -> dict:
        """Send one command (to the attached page, once there is one) and return its result."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if self.session is not None and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline - time.monotonic(), method)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply["result"]

    def _read(self, timeout: float, method: str) -> dict:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._in], [], [], max(timeout, 0))
            chunk = os.read(self._in, 1 << 16) if ready else b""
            if not chunk:
                raise AssertionError(f"Chromium did not answer {method} "
                                     f"({'exited' if ready else 'timed out'})")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def open(self, url: str) -> None:
        target = self.call("Target.createTarget", url=url, timeout=120)["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def eval(self, expression: str) -> object:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (AssertionError, OSError):
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        os.close(self._out)
        os.close(self._in)
        self.log.close()


#: What the page shows, read from its DOM: each package row's cells, the refresh counter, and
#: whether our marker survived (it would not survive a reload).
READ_PAGE = """(() => {
  const updated = document.getElementById("updated");
  if (!updated) return null;  // still loading
  const rows = {};
  for (const r of document.querySelectorAll("tr.package"))
    rows[r.dataset.hash] = [...r.cells].map(c => c.textContent);
  return {rows, text: document.body.innerText, marker: window.treeseedTestMarker || null,
          refreshes: Number(updated.dataset.refreshes || 0)};
})()"""
COLUMNS = ["package", "name", "size", "peers", "upload rate", "uploaded", "peers served", "copies"]


def cells(page: dict, package_hash: str) -> dict[str, str]:
    return dict(zip(COLUMNS, page["rows"][package_hash], strict=True))


@needs_chromium
def test_status_page_refreshes_itself_in_chromium(tmp_path: Path) -> None:
    hidden_name = "secret-by-setting"
    seeder = Peer(tmp_path / "seeder", private=[hidden_name])
    hashes = {}
    for i, (name, private) in enumerate([("alpha", False), ("beta", False),
                                         ("secret-by-manifest", True), (hidden_name, False)]):
        tree = random_package(tmp_path / name, name, {"blob.bin": (i + 1) * 300_000}, seed=i,
                              private=private)
        hashes[name] = seeder.add_shared(tree)
    public = {hashes["alpha"]: "alpha", hashes["beta"]: "beta"}
    hidden = {hashes["secret-by-manifest"]: "secret-by-manifest", hashes[hidden_name]: hidden_name}

    with seeder.seeding():
        url = seeder.status()["status_url"]
        assert url.startswith("http://127.0.0.1:")
        browser = Chromium(tmp_path)
        try:
            browser.open(url)
            page = wait_for("the page to draw the seeded packages",
                            lambda: (p := browser.eval(READ_PAGE)) and len(p["rows"]) == 2 and p,
                            timeout=120)
            assert set(page["rows"]) == set(public)
            for package_hash, name in public.items():
                assert cells(page, package_hash)["name"] == name
                assert cells(page, package_hash)["uploaded"] == "0 B"
            for package_hash, name in hidden.items():
                assert package_hash not in page["text"] and name not in page["text"]

            # Another cache downloads alpha from this seeder while the page stays open.
            browser.eval("window.treeseedTestMarker = 'not reloaded'")
            before = page["refreshes"]
            other = Peer(tmp_path / "other", peers=[seeder.address])
            other.cli("fetch", hashes["alpha"], "--torrent")
            assert other.packages() == {hashes["alpha"]}
            alpha = hashes["alpha"]
            page = wait_for("the page to show alpha's upload without a reload",
                            lambda: (p := browser.eval(READ_PAGE)) and alpha in p["rows"]
                            and cells(p, alpha)["uploaded"] != "0 B" and p, timeout=120)
        finally:
            browser.close()

    assert page["marker"] == "not reloaded"
    assert page["refreshes"] > before
    assert cells(page, alpha)["peers served"] == "1"
    assert float(cells(page, alpha)["copies"]) >= 1.0
    assert cells(page, hashes["beta"])["uploaded"] == "0 B"
    assert all(h not in page["text"] and n not in page["text"] for h, n in hidden.items())


# --------------------------------------------------------------------------- DNS rebinding

#: Host headers a DNS-rebinding page (or anything but a loopback client) would send.
HOSTILE_HOSTS = ["attacker.example", "attacker.example:{port}", "127.0.0.1.attacker.example",
                 "localhost.attacker.example", "localhost.attacker.example:{port}",
                 "evil.localhost", "127.1", "0x7f000001", "2130706433", "[::ffff:127.0.0.1]",
                 "192.168.1.5:{port}", "localhost:{port}@attacker.example", ""]
LOOPBACK_HOSTS = ["127.0.0.1:{port}", "127.0.0.1", "localhost:{port}", "LocalHost",
                  "127.8.9.10:{port}", "[::1]:{port}", "[::1]"]


def raw_exchange(port: int, head: bytes) -> tuple[int, bytes]:
    """Send a request head exactly as given (any Host header, or none, or two); the status
    and body of the answer."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head_part, _, body = data.partition(b"\r\n\r\n")
    return int(head_part.split(b" ", 2)[1]), body


def test_status_page_answers_only_loopback_host_names(tmp_path: Path) -> None:
    """DNS rebinding: a page on attacker.example whose name now points at 127.0.0.1 must not
    read the status page. Every request naming another host (or none, or two) gets a one-line
    421 that tells nothing about the seeder; loopback names get the page and its JSON."""
    seeder = Peer(tmp_path / "seeder")
    with seeder.seeding() as status:
        port = int(status["status_url"].rsplit(":", 1)[1].strip("/"))
        secrets = [str(status["pid"]), str(tmp_path)]
        for template in HOSTILE_HOSTS:
            host = template.format(port=port)
            for path in ("/", "/status.json", "/nothing"):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                try:
                    conn.request("GET", path, headers={"Host": host})
                    reply = conn.getresponse()
                    body = reply.read().decode()
                finally:
                    conn.close()
                assert reply.status == 421, (host, path, reply.status)
                assert body.endswith("\n") and body.count("\n") == 1, body
                assert not any(secret in body for secret in secrets), body
        for head in (b"GET /status.json HTTP/1.1\r\nConnection: close\r\n\r\n",  # no Host
                     b"GET /status.json HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: attacker.example"
                     b"\r\nConnection: close\r\n\r\n",
                     b"GET /status.json HTTP/1.0\r\n\r\n"):
            code, body = raw_exchange(port, head)
            assert code == 421 and str(status["pid"]).encode() not in body, head
        for template in LOOPBACK_HOSTS:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                conn.request("GET", "/status.json", headers={"Host": template.format(port=port)})
                reply = conn.getresponse()
                answer = reply.read()
            finally:
                conn.close()
            assert reply.status == 200, template
            assert json.loads(answer)["pid"] == status["pid"]


@pytest.mark.parametrize(("host", "allowed"), [
    ("localhost", True), ("LOCALHOST:8080", True), ("127.0.0.1", True), ("127.255.0.1:1", True),
    ("[::1]", True), ("[::1]:80", True),
    ("attacker.example", False), ("127.0.0.1.attacker.example", False),
    ("localhost.attacker.example", False), ("a.localhost", False), ("127.1", False),
    ("[::ffff:127.0.0.1]", False), ("localhost:", False), ("localhost:1:2", False),
    ("", False), (None, False), ("10.0.0.1", False),
])
def test_host_allowed(host: str | None, allowed: bool) -> None:
    assert host_allowed(host) is allowed


def test_host_allowed_names_the_specific_bound_address() -> None:
    """Bound to a LAN address on purpose (--status-bind 192.168.1.5:8080), that address is
    allowed too; an attacker's name still is not."""
    also = frozenset({"192.168.1.5"})
    assert host_allowed("192.168.1.5:8080", also) and not host_allowed("attacker.example", also)
