"""The seeder's status page on 127.0.0.1: packages, peers, rates, popularity, cache size.

``GET /`` is one self-contained HTML page (no external assets: it must work on an offline
LAN) whose script polls ``GET /status.json`` every second and redraws, so it refreshes itself
without reloading. It binds to loopback by default: it names every package this cache seeds.

Binding to loopback is not enough on its own: with DNS rebinding, a web page on
``attacker.example`` can make the browser send its requests to 127.0.0.1 and read the answers
(pid, paths, package names), since to the browser they are same-origin. Such a request still
says ``Host: attacker.example``, so the page answers only requests whose ``Host`` is a loopback
name or address (:func:`host_allowed`), and ``421`` to anything else.
"""

from __future__ import annotations

import ipaddress
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .seeder import Seeder

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>treeseed seeder</title>
<style>
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}td,th{padding:.25em .8em;text-align:right}
td:first-child,th:first-child,td:nth-child(2),th:nth-child(2){text-align:left}
tr:nth-child(even){background:#f4f4f4}code{font-size:12px}
#summary span{margin-right:1.5em}
</style></head><body>
<h1>treeseed seeder</h1>
<div id="summary">loading…</div>
<table id="packages"><thead><tr><th>package</th><th>name</th><th>size</th><th>peers</th>
<th>upload rate</th><th>uploaded</th><th>peers served</th><th>copies served</th></tr></thead>
<tbody></tbody></table>
<p id="updated"></p>
<script>
function human(n){const u=["B","kB","MB","GB","TB"];let i=0;while(n>=1000&&i<u.length-1){n/=1000;i++}
  return (i?n.toFixed(1):n)+" "+u[i]}
function cell(row,text){const td=document.createElement("td");td.textContent=text;row.appendChild(td)}
let refreshes=0;
async function refresh(){
  try{
    const s=await (await fetch("status.json",{cache:"no-store"})).json();
    refreshes++;
    document.getElementById("summary").innerHTML="";
    for(const [k,v] of [["packages",s.seeding],["peers",s.peers],["DHT nodes",s.dht_nodes],
        ["upload",human(s.upload_rate)+"/s"],["download",human(s.download_rate)+"/s"],
        ["cache",human(s.cache_bytes)],["announcing",s.announcing?"yes":"not yet"]]){
      const e=document.createElement("span");e.textContent=k+": "+v;
      e.className="stat";e.dataset.key=k;document.getElementById("summary").appendChild(e)}
    const body=document.querySelector("#packages tbody");body.innerHTML="";
    for(const p of s.packages){const r=document.createElement("tr");r.className="package";
      r.dataset.hash=p.hash;const c=document.createElement("td");const code=document.createElement("code");
      code.textContent=p.hash;c.appendChild(code);r.appendChild(c);cell(r,p.name||"");
      cell(r,human(p.size));cell(r,p.peers);cell(r,human(p.upload_rate)+"/s");cell(r,human(p.uploaded));
      cell(r,p.peers_served);cell(r,p.copies.toFixed(2));body.appendChild(r)}
    const u=document.getElementById("updated");u.dataset.refreshes=refreshes;
    u.textContent="updated "+new Date().toLocaleTimeString()+" (refresh "+refreshes+")";
  }catch(e){document.getElementById("updated").textContent="seeder not answering: "+e}
}
refresh();setInterval(refresh,1000);
</script></body></html>
"""


_HOST = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9.-]+))(?::[0-9]{1,5})?")


def host_allowed(host: str | None, also: frozenset[str] = frozenset()) -> bool:
    """Whether a ``Host`` header names this machine's loopback: ``localhost``, an IPv4 address
    in 127.0.0.0/8 in dotted-quad form, or ``[::1]``, each with or without a port; or one of
    ``also`` (the address the page was bound to, when that is a specific non-loopback one).

    Nothing else: not ``*.localhost`` (not every resolver keeps those on the machine), not
    ``127.1`` or ``0x7f000001`` (other spellings a browser may send to 127.0.0.1 but no
    rebinding needs), and not a missing Host. An attacker's DNS name never matches."""
    m = _HOST.fullmatch(host.strip()) if host else None
    if m is None:
        return False
    if m["v6"] is not None:
        try:
            address = ipaddress.IPv6Address(m["v6"])
        except ValueError:
            return False
        return address.is_loopback or str(address) in also
    name = m["name"].lower()
    if name == "localhost" or name in also:
        return True
    try:
        return ipaddress.IPv4Address(name).is_loopback
    except ValueError:
        return False


def _bound_names(host: str) -> frozenset[str]:
    """The bound address, when it is a specific one a LAN client would name in its Host."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return frozenset()
    return frozenset() if address.is_unspecified else frozenset({str(address)})


def serve_status(seeder: Seeder, bind: str) -> tuple[ThreadingHTTPServer, str]:
    """Start the status page on ``bind`` (host:port; port 0 picks one); return server and URL."""
    host, _, port = bind.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    also = _bound_names(host)

    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # a loopback page: a client that stalls this long is gone or hostile

        def do_GET(self) -> None:
            if not self._host_ok():
                return
            if self.path in ("/", "/index.html"):
                self._send(200, "text/html; charset=utf-8", PAGE.encode())
            elif self.path == "/status.json":
                self._send(200, "application/json", json.dumps(seeder.status()).encode())
            else:
                self._send(404, "text/plain", b"not found\n")

        def _host_ok(self) -> bool:
            """Refuse, in one line, any request not addressed to a loopback name (above)."""
            hosts = self.headers.get_all("Host") or []
            if len(hosts) == 1 and host_allowed(hosts[0], also):
                return True
            self._send(421, "text/plain; charset=utf-8",
                       b"421 misdirected request: this page answers only to Host: localhost or a "
                       b"loopback address; open the URL 'treeseed seed status' prints\n")
            return False

        def _send(self, code: int, kind: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # the page polls every second: logging each poll would drown the seeder's log

    server = ThreadingHTTPServer((host, int(port or 0)), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="treeseed-status", daemon=True).start()
    actual_host, actual_port = server.server_address[:2]
    return server, f"http://{actual_host}:{actual_port}/"
