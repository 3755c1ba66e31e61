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
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from swarmkit import Peer, random_package, wait_for

pytest.importorskip("libtorrent", reason="pip install libtorrent (the swarm's BitTorrent engine)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: "
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

    def call(self, method: str, timeout: float = 30.0, **params: object) -> dict:
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
        target = self.call("Target.createTarget", url=url, timeout=60)["targetId"]
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
                            timeout=30)
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
                            and cells(p, alpha)["uploaded"] != "0 B" and p, timeout=30)
        finally:
            browser.close()

    assert page["marker"] == "not reloaded"
    assert page["refreshes"] > before
    assert cells(page, alpha)["peers served"] == "1"
    assert float(cells(page, alpha)["copies"]) >= 1.0
    assert cells(page, hashes["beta"])["uploaded"] == "0 B"
    assert all(h not in page["text"] and n not in page["text"] for h, n in hidden.items())
