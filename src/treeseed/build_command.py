"""Builds in any language: ``[package] build = "make -j2"`` and the lazy-dependency protocol.

The command runs in the package directory with the options in its environment. When it asks
``treeseed path NAME`` for a lazy dependency that is not fetched yet, that command appends the
name to the file ``$TREESEED_MISSES`` and exits with status :data:`MISS_STATUS` (75, sysexits'
EX_TEMPFAIL: "try again later"); the script passes the status on (``set -e`` does). The runner
then fetches every recorded miss together and runs the command again, until a run records no
miss. docs/build-protocol.md is the contract for script authors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .build import MAX_PASSES, BuildError, OptionError, format_value, parse_value
from .cache import Cache
from .deps import Request, Resolver, base_url_of
from .manifest import Manifest, OptionSpec

#: ``treeseed path`` exits with this when a lazy dependency is missing (EX_TEMPFAIL).
MISS_STATUS = 75

ENV_MISSES = "TREESEED_MISSES"
ENV_PACKAGE = "TREESEED_PACKAGE_DIR"


def option_values(specs: dict[str, OptionSpec], overrides: dict[str, str]) -> dict[str, Any]:
    """The value of every declared option (defaults, then -D), checking names and types."""
    unknown = sorted(set(overrides) - set(specs))
    if unknown:
        raise OptionError(f"unknown option{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join('-D' + u for u in unknown)}; {describe(specs)}")
    values: dict[str, Any] = {}
    for name, spec in specs.items():
        if name in overrides:
            try:
                values[name] = parse_value(name, spec.type, overrides[name], spec.values)
            except ValueError as exc:
                raise OptionError(f"{exc}; {describe(specs)}") from None
        else:
            values[name] = spec.default
    return values


def describe(specs: dict[str, OptionSpec]) -> str:
    if not specs:
        return "this build declares no options ([options.NAME] tables in treeseed.toml)"
    lines = []
    for spec in specs.values():
        kind = f"enum({'|'.join(spec.values)})" if spec.type == "enum" else spec.type
        default = "none" if spec.default is None else (format_value(spec.default) or "empty")
        lines.append(f"  -D{spec.name}=<{kind}>  {spec.description} (default: {default})")
    return "declared options:\n" + "\n".join(lines)


def option_env(values: dict[str, Any]) -> dict[str, str]:
    """``TREESEED_OPT_<NAME>`` per option (upper case, ``-`` as ``_``) and ``TREESEED_OPTIONS``."""
    env = {f"TREESEED_OPT_{name.upper().replace('-', '_')}": format_value(value)
           for name, value in values.items() if value is not None}
    env["TREESEED_OPTIONS"] = json.dumps(values, sort_keys=True)
    return env


def run_command_build(package_dir: Path, manifest: Manifest, cache: Cache, resolver: Resolver,
                      overrides: dict[str, str], args: Sequence[str] = (), fetch_only: bool = False,
                      fetch_all: bool = False, out=None) -> int:
    """Run the package's build command until it records no missing lazy dependency.

    Returns the number of passes. Raises BuildError when the command fails for another reason.
    """
    assert manifest.build is not None
    values = option_values(manifest.options, overrides)
    base = base_url_of(package_dir)
    resolver.fetch_all(manifest, base, all_lazy=fetch_all)
    command = manifest.build + "".join(f" {_quote(a)}" for a in args)
    env = {**os.environ, **option_env(values), ENV_PACKAGE: str(package_dir),
           "TREESEED_CACHE_DIR": str(cache.root)}
    if fetch_only:
        env["TREESEED_FETCH_ONLY"] = "1"
    if resolver.offline:
        env["TREESEED_OFFLINE"] = "1"
    with tempfile.TemporaryDirectory(prefix="treeseed-bin-") as shim:
        env["PATH"] = _shim(Path(shim)) + os.pathsep + env.get("PATH", "")
        return _passes(command, package_dir, env, manifest, resolver, values, base, out)


def _shim(directory: Path) -> str:
    """A ``treeseed`` on PATH that is this very treeseed, however it was started (a script
    on PATH, ``python -m treeseed``, another virtualenv): the build's ``treeseed path`` must
    talk to the same installation and cache."""
    script = directory / "treeseed"
    script.write_text(f'#!/bin/sh\nexec {_quote(sys.executable)} -m treeseed "$@"\n')
    script.chmod(0o755)
    return str(directory)


def _passes(command: str, package_dir: Path, env: dict[str, str], manifest: Manifest,
            resolver: Resolver, values: dict[str, Any], base: str, out) -> int:
    for attempt in range(1, MAX_PASSES + 1):
        status, misses = _run_once(command, package_dir, env, out or sys.stdout)
        if not misses:
            if status != 0:
                raise BuildError(f"build command {manifest.build!r} failed with exit status {status}")
            return attempt
        wanted = [manifest.dependencies[name] for name in misses if name in manifest.dependencies]
        if resolver.offline:
            raise BuildError("--offline, and the build command asked for dependencies that are "
                             f"not in the cache: {', '.join(misses)} (options: "
                             f"{', '.join(f'{k}={format_value(v)}' for k, v in values.items()) or 'none'})")
        resolver.resolve([Request(dep, base, None, manifest.path) for dep in wanted])
    raise BuildError(f"build command {manifest.build!r} still asks for new lazy dependencies "
                     f"after {MAX_PASSES} passes")


def _run_once(command: str, cwd: Path, env: dict[str, str], out) -> tuple[int, list[str]]:
    with tempfile.NamedTemporaryFile("w+", prefix="treeseed-misses-", suffix=".txt") as misses:
        proc = subprocess.Popen(command, shell=True, cwd=cwd, env={**env, ENV_MISSES: misses.name},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line.decode("utf-8", "replace"))
            out.flush()
        status = proc.wait()
        misses.seek(0)
        names = list(dict.fromkeys(line.strip() for line in misses if line.strip()))
    return status, names


def record_miss(name: str) -> bool:
    """Called by ``treeseed path`` inside a command build: note a missing lazy dependency.

    Returns False outside a build (no ``$TREESEED_MISSES``), where there is nobody to tell.
    """
    target = os.environ.get(ENV_MISSES)
    if not target:
        return False
    with open(target, "a", encoding="utf-8") as f:
        f.write(name + "\n")
    return True


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)
