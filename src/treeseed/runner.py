"""`treeseed build` end to end: pick the kind of build, configure and fetch, run, watch.

The two kinds of build share one shape: fetch the eager dependencies, configure until no lazy
dependency is missing (a Python ``build.py``: :mod:`treeseed.build`; any command:
:mod:`treeseed.build_command`), then run. ``--fetch`` stops after configuring; ``--list``
configures without fetching anything; ``--watch`` repeats the whole cycle when a file the
build depends on changes.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .build import (
    BUILD_SCRIPT,
    configure_and_fetch,
    declared,
    list_build,
    run_steps,
    select_steps,
)
from .cache import Cache
from .deps import Resolver, find_package
from .manifest import MANIFEST_NAME, Manifest
from .manifest import load as load_manifest
from .manifest import loads as loads_manifest

if TYPE_CHECKING:
    from .config import Settings


@dataclass
class BuildRequest:
    steps: list[str] = field(default_factory=list)
    overrides: dict[str, str] = field(default_factory=dict)
    fetch: str | None = None  # None, "needed" or "all"
    list_only: bool = False
    watch: bool = False
    jobs: int = 2
    offline: bool = False
    quiet: bool = False
    settings: Settings | None = None  # the user's settings, with --torrent applied


def run(cache: Cache, request: BuildRequest, package_dir: Path | None = None) -> int:
    """Run one build (or, with ``watch``, keep building); return the exit status."""
    root = package_dir or _package_root(Path.cwd())
    if request.list_only:
        return _list(root, cache, request)
    if not request.watch:
        build_once(root, cache, request)
        return 0
    from .watch import watch

    if request.settings is not None and request.settings.torrent:
        with _seeding_while_watching(cache, request):
            return watch(root, lambda: build_once(root, cache, request, in_watch=True), request.quiet)

    return watch(root, lambda: build_once(root, cache, request, in_watch=True), request.quiet)


def build_once(root: Path, cache: Cache, request: BuildRequest, in_watch: bool = False) -> None:
    """Fetch, configure, and (unless --fetch) run the requested steps once."""
    from .progress import reporter

    manifest = _manifest(root)
    with reporter(quiet=request.quiet) as (events, summary):
        from .config import fetchers

        resolver = Resolver(cache, offline=request.offline, jobs=min(request.jobs, 8), events=events,
                            settings=request.settings,
                            fetchers=fetchers(manifest.fetchers))
        if manifest.build is not None:
            from .build_command import run_command_build

            run_command_build(root, manifest, cache, resolver, request.overrides, request.steps,
                              fetch_only=request.fetch is not None,
                              fetch_all=request.fetch == "all")
            return
        plan = configure_and_fetch(root, cache, resolver, request.overrides,
                                   fetch_all=request.fetch == "all")
    if request.fetch is not None:
        return
    order = select_steps(plan.build, request.steps)
    run_steps(plan.build, order, request.jobs)
    if not request.quiet:
        print(f"built {', '.join(request.steps or order[-1:])}", file=sys.stderr)


def _list(root: Path, cache: Cache, request: BuildRequest) -> int:
    manifest = _manifest(root)
    if manifest.build is not None:
        from .build_command import describe

        print(f"build command: {manifest.build}")
        print(describe(manifest.options))
        return 0
    b = list_build(root, cache, request.overrides)
    print(declared(b))
    if b.steps:
        print("steps:")
        for step in b.steps.values():
            after = f" (after {', '.join(step.depends_on)})" if step.depends_on else ""
            print(f"  {step.name}{' [default]' if step.default else ''}{after}")
    else:
        print("this build declares no steps")
    return 0


def options_help(cache: Cache) -> str:
    """The declared options of the package here, for an error about the command line."""
    root = _package_root(Path.cwd())
    manifest = _manifest(root)
    if manifest.build is not None:
        from .build_command import describe

        return describe(manifest.options)
    return declared(list_build(root, cache, {}))


def _package_root(start: Path) -> Path:
    """The nearest directory with a treeseed.toml or a build.py."""
    here = start.resolve()
    for candidate in (here, *here.parents):
        if (candidate / MANIFEST_NAME).is_file() or (candidate / BUILD_SCRIPT).is_file():
            return candidate
    return find_package(start)  # raises the usual error


def _manifest(root: Path) -> Manifest:
    path = root / MANIFEST_NAME
    return load_manifest(path) if path.is_file() else loads_manifest("", str(path))


@contextlib.contextmanager
def _seeding_while_watching(cache: Cache, request: BuildRequest) -> Iterator[None]:
    """A watching build with torrenting on seeds while it watches: it runs this cache's seeder
    unless one already runs, and takes over if that one stops (:class:`SeederKeeper`)."""
    from .swarm.seeder import SeederKeeper

    assert request.settings is not None
    log = None if request.quiet else (lambda line: print(f"treeseed: {line}", file=sys.stderr))
    keeper = SeederKeeper(cache, request.settings, log)
    keeper.start()
    try:
        yield
    finally:
        keeper.stop()
