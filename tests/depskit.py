"""Helpers for tests of dependencies (test_deps.py, test_trust.py): packages built as real
.tar.gz archives and hashed by the real ``treeseed hash``, served by a :class:`httpserver.Server`,
a root package depending on them, ``treeseed fetch`` run in it, and its error output.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from helpers import run_cli, tar_gz
from httpserver import Reply, Server


def dep_toml(name: str, url: str, hash: str | None = None, mirrors: list[str] | None = None,
             lazy: bool = False) -> str:
    """One ``[dependencies.NAME]`` table as a person would write it."""
    lines = [f"[dependencies.{name}]", f'url = "{url}"']
    if mirrors:
        lines.append("mirrors = [" + ", ".join(f'"{m}"' for m in mirrors) + "]")
    if hash:
        lines.append(f'hash = "{hash}"')
    if lazy:
        lines.append("lazy = true")
    return "\n".join(lines) + "\n"


def manifest(name: str, *deps: str) -> str:
    head = f'# the {name} package\n[package]\nname = "{name}"\nversion = "1.0.0"\n'
    return head + "".join("\n" + d for d in deps)


class Packages:
    """Builds packages as archives under ``tmp/archives`` and hashes them with ``treeseed hash``
    (in a cache of its own, so the cache under test starts empty)."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "archives"
        self.dir.mkdir()
        self.hash_cache = tmp / "hash-cache"

    def build(self, name: str, *deps: str, extra: bytes = b"") -> tuple[bytes, str]:
        files = {"treeseed.toml": manifest(name, *deps).encode(),
                 f"src/{name}.c": f"int {name}(void) {{ return 1; }}\n".encode() + extra}
        body = tar_gz(files, f"{name}-1.0")
        archive = self.dir / f"{name}-{len(os.listdir(self.dir))}.tar.gz"
        archive.write_bytes(body)
        return body, run_cli("hash", str(archive), cache=self.hash_cache).stdout.strip()


def serve(srv: Server, path: str, body: bytes, **kw: object) -> str:
    srv.routes[path] = Reply(200, body, {"Content-Type": "application/gzip"}, **kw)  # type: ignore[arg-type]
    return srv.url(path)


def make_root(tmp: Path, *deps: str, name: str = "app") -> Path:
    root = tmp / name
    root.mkdir()
    (root / "src").mkdir()
    (root / "src" / "main.c").write_bytes(b"int main(void) { return 0; }\n")
    (root / "treeseed.toml").write_text(manifest(name, *deps))
    return root


def deps_fetch(cache: Path, root: Path, *args: str, check: bool = False,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli("-C", str(root), "fetch", *args, cache=cache, check=check, env=env)


def cached(cache: Path) -> set[str]:
    p = cache / "p"
    return set(os.listdir(p)) if p.exists() else set()


def error_lines(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "treeseed: error: " in proc.stderr, proc.stderr
    return proc.stderr


def line_no(text: str, needle: str) -> int:
    """1-based number of the first line of ``text`` that starts with ``needle``."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if line.startswith(needle))


def declared_at(root: Path, name: str) -> tuple[str, str]:
    """The two acceptable ``file:line`` spellings for where dependency ``name`` is declared:
    its ``[dependencies.NAME]`` header or its ``url =`` line."""
    path = root.resolve() / "treeseed.toml"
    text = path.read_text()
    header = line_no(text, f"[dependencies.{name}]")
    url = header + next(i for i, line in enumerate(text.splitlines()[header:], 1)
                        if line.startswith("url"))
    return f"{path}:{header}", f"{path}:{url}"


def assert_declared(stderr: str, root: Path, name: str) -> None:
    header, url = declared_at(root, name)
    assert header in stderr or url in stderr, f"neither {header} nor {url} in:\n{stderr}"
