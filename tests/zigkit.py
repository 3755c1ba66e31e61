"""Zig for the tests: the real ``zig`` 0.15.2 (the PyPI package ``ziglang``), the hash its own
``zig fetch`` prints, and the build.zig.zon pieces the Zig tests write."""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from pathlib import Path

ZIG_TIMEOUT = 600


def fingerprint(name: str, fid: int = 0x5EED0001) -> int:
    return zlib.crc32(name.encode()) << 32 | fid


def manifest(name: str, paths: str = '""', deps: str = "", name_literal: str | None = None) -> bytes:
    spelled = name_literal or f".{name}"
    return (f".{{\n    .name = {spelled},\n    .version = \"0.1.0\",\n"
            f"    .fingerprint = 0x{fingerprint(name):x},\n"
            f"    .dependencies = .{{\n{deps}    }},\n"
            f"    .paths = .{{ {paths} }},\n}}\n").encode()


def dep_entry(name: str, url: str, hash_: str | None, lazy: bool = False) -> str:
    fields = [f'.url = "{url}"']
    if hash_ is not None:
        fields.append(f'.hash = "{hash_}"')
    if lazy:
        fields.append(".lazy = true")
    return f"        .{name} = .{{\n" + "".join(f"            {f},\n" for f in fields) + "        },\n"


def zig(*args: str, cwd: Path, env: dict[str, str] | None = None, exe: list[str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(exe or [sys.executable, "-m", "ziglang"]), *args], check=False,
                          cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True,
                          text=True, timeout=ZIG_TIMEOUT)


def zig_fetch_hash(tmp_path: Path, archive: bytes, name: str) -> str:
    """The hash the real ``zig fetch`` prints for ``archive``, in a scratch Zig cache."""
    path = tmp_path / "oracle" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(archive)
    proc = zig("fetch", str(path), cwd=path.parent,
               env={"ZIG_GLOBAL_CACHE_DIR": str(tmp_path / "oracle-cache")})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


GAMMA_BUILD = b'const std = @import("std");\npub fn build(b: *std.Build) void { _ = b; }\n'
