"""The build runner: a build script decides at run time which dependencies it needs.

A package's ``build.py`` defines ``def build(b):`` and talks to a :class:`Build`. Running it is
the *configure pass*: options are read, dependency paths handed out, steps declared, and every
``lazy_dependency`` not yet in the cache recorded as a :class:`Miss` (the pass goes on, the call
returns None). :func:`configure_and_fetch` repeats the pass, fetching all misses of a pass
together, until a pass misses nothing; only then do steps run. So a dependency is fetched
exactly when the configuration in force asks for it, and the script author never lists
categories of dependencies up front.

A package can also build with any command (``[package] build = "make -j2"``): see
:mod:`treeseed.build_command` and docs/build-protocol.md.
"""

from __future__ import annotations

import builtins
import enum
import inspect
import os
import runpy
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cache import Cache
from .deps import Request, Resolver, absolute_url, base_url_of
from .errors import TreeseedError
from .manifest import MANIFEST_NAME, Manifest
from .manifest import load as load_manifest
from .manifest import loads as loads_manifest

BUILD_SCRIPT = "build.py"
MAX_PASSES = 16  # each pass must fetch something new; a script that keeps asking is a bug


class BuildError(TreeseedError):
    """A build script, an option or a step failed; the message says which and why."""


# ----------------------------------------------------------------------------- options


@dataclass
class Option:
    """A declared option, with its value for this build."""

    name: str
    kind: str  # bool, int, str, enum, list
    description: str
    default: Any
    value: Any
    choices: tuple[str, ...] = ()

    def describe(self) -> str:
        kind = f"enum({'|'.join(self.choices)})" if self.kind == "enum" else self.kind
        default = "none" if self.default is None else (format_value(self.default) or "empty")
        return f"-D{self.name}=<{kind}>  {self.description} (default: {default})"


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def option_kind(type_: Any) -> tuple[str, tuple[str, ...]]:
    """Map what a script passes as ``type`` to a kind: bool, int, str, list[str], an Enum."""
    if type_ is bool:
        return "bool", ()
    if type_ is int:
        return "int", ()
    if type_ is str:
        return "str", ()
    if type_ is list or getattr(type_, "__origin__", None) is list:
        return "list", ()
    if isinstance(type_, type) and issubclass(type_, enum.Enum):
        return "enum", tuple(str(m.value) for m in type_)
    if isinstance(type_, (tuple, list)) and all(isinstance(v, str) for v in type_):
        return "enum", tuple(type_)
    raise BuildError(f"option type {type_!r} is not supported: use bool, int, str, list[str], "
                     "an Enum class, or a tuple of choices")


def parse_value(name: str, kind: str, text: str, choices: tuple[str, ...] = ()) -> Any:
    """Parse ``-Dname=text`` for an option of ``kind``; raise ValueError with the reason."""
    if kind == "bool":
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(f"-D{name}={text}: expected true or false")
    if kind == "int":
        for base in (0, 10):  # 0x10, 0o7, 0b1 as Python reads them; 010 as a person means it
            try:
                return int(text, base)
            except ValueError:
                continue
        raise ValueError(f"-D{name}={text}: expected an integer")
    if kind == "enum":
        if text not in choices:
            raise ValueError(f"-D{name}={text}: expected one of {', '.join(choices)}")
        return text
    if kind == "list":
        return [item for item in (part.strip() for part in text.split(",")) if item]
    return text


def format_value(value: Any) -> str:
    """An option value as the command line and the environment spell it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, list):
        return ",".join(value)
    return str(value)


# ----------------------------------------------------------------------------- steps and misses


@dataclass
class Step:
    name: str
    action: Sequence[str] | str | Callable[[], Any]
    depends_on: list[str]
    cwd: Path
    env: dict[str, str]
    default: bool = False


@dataclass
class Miss:
    """A lazy dependency the configure pass asked for and the cache did not have."""

    request: Request
    package: str  # which package's script asked (the root, or a dependency being built)
    where: str  # build.py:LINE of the request
    options: list[str]  # options read before the request, name=value

    def describe(self) -> str:
        why = f" (options read before it: {', '.join(self.options)})" if self.options else ""
        return f"{self.request.dep.name} of {self.package}, asked for at {self.where}{why}"


# ----------------------------------------------------------------------------- the script API


class Build:
    """What a build script's ``build(b)`` receives. Created by the runner, one per pass."""

    def __init__(self, package_dir: Path, manifest: Manifest, cache: Cache, base_url: str,
                 overrides: dict[str, str] | None = None, listing: bool = False,
                 prefix: str = "", label: str = "") -> None:
        self.package_dir = package_dir
        self.manifest = manifest
        self.cache = cache
        self.base_url = base_url
        self.overrides = dict(overrides or {})
        self.listing = listing  # --list: hand out paths without requiring anything fetched
        self.prefix = prefix  # "zlib:" for the steps of a dependency built by this package
        self.label = label or (manifest.name or package_dir.name)
        self.options: dict[str, Option] = {}
        self.steps: dict[str, Step] = {}
        self.misses: list[Miss] = []
        self.option_errors: list[str] = []
        self._read: list[str] = []

    # ---- options

    def option(self, name: str, type: Any, description: str = "", default: Any = None) -> Any:
        """Declare an option; return its value for this build (``-Dname=value`` or default)."""
        if name in self.options:
            raise BuildError(f"{self._where()}: option {name!r} declared twice")
        kind, choices = option_kind(type)
        value = default
        if name in self.overrides:
            try:
                value = parse_value(name, kind, self.overrides[name], choices)
            except ValueError as exc:
                # Keep the default and finish the pass, so the error can list every option.
                self.option_errors.append(str(exc))
            else:
                if kind == "enum" and isinstance(type, builtins.type):  # an Enum: its member
                    value = next(m for m in type if str(m.value) == value)
        self.options[name] = Option(name, kind, description, default, value, choices)
        self._read.append(f"{name}={format_value(value) if value is not None else 'none'}")
        return value

    # ---- dependencies

    def dependency(self, name: str) -> Path:
        """The path of dependency ``name``; it must be in the cache (eager ones are fetched first)."""
        dep = self._declared(name)
        if not dep.hash:
            raise BuildError(f"{self._where()}: dependency {name!r} has no hash in "
                             f"{self.manifest.path}; run 'treeseed update' to pin it")
        path = self.cache.path(dep.hash)
        if self.listing or self.cache.has(dep.hash):
            return path
        if dep.lazy:
            raise BuildError(f"{self._where()}: {name!r} is a lazy dependency: ask for it with "
                             f"b.lazy_dependency({name!r}), which may return None")
        raise BuildError(f"{self._where()}: dependency {name!r} ({dep.hash}) is not in the cache; "
                         "run 'treeseed fetch' (or 'treeseed build', which fetches first)")

    def lazy_dependency(self, name: str) -> Path | None:
        """The path of lazy dependency ``name``, or None when it is not fetched yet: the runner
        records the miss, fetches every miss of this pass together, and runs the script again."""
        dep = self._declared(name)
        if dep.hash and self.cache.has(dep.hash):
            return self.cache.path(dep.hash)
        if not self.listing:
            request = Request(dep, self.base_url, None if not self.prefix else self.label,
                              self.manifest.path)
            self.misses.append(Miss(request, self.label, self._where(), list(self._read)))
        return None

    def build_dependency(self, name: str, **options: Any) -> Path:
        """Configure dependency ``name``'s own build.py with ``options`` as a sub-build: its
        steps join this build as ``name:step``, and its lazy dependencies follow the same rules
        (a miss is fetched, then everything is configured again). Returns its path."""
        path = self.dependency(name)
        if self.listing and not path.is_dir():
            return path
        manifest = _manifest_at(path)
        dep = self._declared(name)
        where = f"{self.manifest.path}:{dep.line}" if dep.line else self.manifest.path
        sub = Build(path, manifest, self.cache, absolute_url(dep.url, self.base_url, where),
                    {k: format_value(v) for k, v in options.items()}, self.listing,
                    f"{self.prefix}{name}:", f"{self.label}/{name}")
        run_script(sub)
        if sub.option_errors:
            raise OptionError(f"{self._where()}: {name}: {'; '.join(sub.option_errors)}; "
                              f"{declared(sub)}")
        unknown = set(sub.overrides) - set(sub.options)
        if unknown:
            raise OptionError(f"{self._where()}: {name}'s build.py has no option "
                              f"{', '.join(sorted(unknown))}; it declares: "
                              f"{', '.join(sorted(sub.options)) or 'none'}")
        self.steps.update(sub.steps)
        self.misses.extend(sub.misses)
        return path

    # ---- steps

    def step(self, name: str, action: Sequence[str] | str | Callable[[], Any],
             depends_on: Sequence[str] = (), cwd: str | os.PathLike[str] | None = None,
             env: dict[str, str] | None = None, default: bool = False) -> str:
        """Declare a step: a command (list: run directly; str: through the shell) or a Python
        callable. Returns the step's full name, for ``depends_on`` of other steps."""
        full = f"{self.prefix}{name}"
        if full in self.steps:
            raise BuildError(f"{self._where()}: step {name!r} declared twice")
        if not (callable(action) or isinstance(action, str) or
                (isinstance(action, (list, tuple)) and all(isinstance(a, (str, os.PathLike)) for a in action))):
            raise BuildError(f"{self._where()}: step {name!r}: the action must be a command "
                             "(list of strings, or a shell string) or a callable")
        if isinstance(action, (list, tuple)):
            action = [os.fspath(a) for a in action]
        deps = [d if ":" in d or not self.prefix else f"{self.prefix}{d}" for d in depends_on]
        workdir = self.package_dir / cwd if cwd is not None else self.package_dir
        self.steps[full] = Step(full, action, deps, Path(workdir), dict(env or {}), default)
        return full

    # ---- helpers

    def _declared(self, name: str):  # -> Dependency
        dep = self.manifest.dependencies.get(name)
        if dep is None:
            raise BuildError(f"{self._where()}: {name!r} is not a dependency in "
                             f"{self.manifest.path}; it declares "
                             f"{', '.join(sorted(self.manifest.dependencies)) or 'none'}")
        return dep

    def _where(self) -> str:
        """build.py:LINE of the script line calling into this object."""
        script = str(self.package_dir / BUILD_SCRIPT)
        for frame in inspect.stack()[2:]:
            if frame.filename == script:
                return f"{script}:{frame.lineno}"
        return script


class OptionError(BuildError):
    """A -D option is unknown or has a value of the wrong type."""


# ----------------------------------------------------------------------------- running scripts


def run_script(b: Build) -> None:
    """Run ``b.package_dir/build.py``'s ``build(b)`` once (one configure pass)."""
    script = b.package_dir / BUILD_SCRIPT
    if not script.is_file():
        raise BuildError(f"{b.package_dir}: no {BUILD_SCRIPT}, and no [package] build command "
                         f"in {MANIFEST_NAME}")
    try:
        namespace = runpy.run_path(str(script), run_name="treeseed_build")
    except TreeseedError:
        raise
    except BaseException as exc:
        raise BuildError(_script_failure(script, exc)) from None
    entry = namespace.get("build")
    if not callable(entry):
        raise BuildError(f"{script} defines no build(b) function")
    try:
        entry(b)
    except TreeseedError:
        raise
    except Exception as exc:
        raise BuildError(_script_failure(script, exc)) from None


def _script_failure(script: Path, exc: BaseException) -> str:
    """The script author's own frames only: our runner's frames are noise to them."""
    if isinstance(exc, SyntaxError) and exc.filename == str(script):
        return f"{script}:{exc.lineno}: SyntaxError: {exc.msg}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(script)]
    where = f"{script}:{frames[-1].lineno}" if frames else str(script)
    trace = "".join(traceback.format_list(frames)).rstrip()
    return f"{where}: {type(exc).__name__}: {exc}" + (f"\n{trace}" if trace else "")


def _manifest_at(package_dir: Path) -> Manifest:
    path = package_dir / MANIFEST_NAME
    return load_manifest(path) if path.is_file() else loads_manifest("", str(path))


def check_overrides(b: Build) -> None:
    """Every -D must name a declared option with a value of its type: a typo must not
    silently build the default."""
    if b.option_errors:
        raise OptionError(f"{'; '.join(b.option_errors)}; {declared(b)}")
    unknown = sorted(set(b.overrides) - set(b.options))
    if unknown:
        raise OptionError(f"unknown option{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join('-D' + u for u in unknown)}; {declared(b)}")


def declared(b: Build, extra: tuple | None = None) -> str:
    """The declared options, one per line, for error messages (``extra``: one being declared)."""
    options = list(b.options.values())
    if extra is not None:
        name, kind, description, default, choices = extra
        options.append(Option(name, kind, description, default, default, choices))
    if not options:
        return "this build declares no options"
    return "declared options:\n" + "\n".join(f"  {o.describe()}" for o in options)


# ----------------------------------------------------------------------------- the runner


@dataclass
class BuildPlan:
    """A finished configuration: its options, steps, and what was fetched to get there."""

    build: Build
    fetched: list[Any] = field(default_factory=list)
    passes: int = 0


def configure_and_fetch(package_dir: Path, cache: Cache, resolver: Resolver,
                        overrides: dict[str, str], fetch_all: bool = False) -> BuildPlan:
    """Fetch the eager dependencies, then configure until no lazy dependency is missing."""
    manifest = _manifest_at(package_dir)
    base = base_url_of(package_dir)
    plan = BuildPlan(Build(package_dir, manifest, cache, base, overrides))
    plan.fetched += resolver.fetch_all(manifest, base, all_lazy=fetch_all)
    for attempt in range(1, MAX_PASSES + 1):
        b = Build(package_dir, manifest, cache, base, overrides, label=manifest.name or "")
        run_script(b)
        check_overrides(b)
        plan.build, plan.passes = b, attempt
        if not b.misses:
            return plan
        if resolver.offline:
            raise BuildError("--offline, and this configuration needs dependencies that are not "
                             "in the cache:\n" + "\n".join(f"  {m.describe()}" for m in b.misses))
        plan.fetched += resolver.resolve([m.request for m in _unique(b.misses)])
    raise BuildError(f"{package_dir / BUILD_SCRIPT}: still asking for new lazy dependencies after "
                     f"{MAX_PASSES} passes: " + ", ".join(m.request.dep.name for m in b.misses))


def _unique(misses: list[Miss]) -> list[Miss]:
    seen: set[tuple[str, str]] = set()
    out = []
    for miss in misses:
        key = (miss.request.manifest_path, miss.request.dep.name)
        if key not in seen:
            seen.add(key)
            out.append(miss)
    return out


def list_build(package_dir: Path, cache: Cache, overrides: dict[str, str]) -> Build:
    """Configure without fetching anything: ``--list`` must work on a fresh checkout."""
    manifest = _manifest_at(package_dir)
    b = Build(package_dir, manifest, cache, base_url_of(package_dir), overrides, listing=True)
    run_script(b)
    return b


# ----------------------------------------------------------------------------- steps


def select_steps(b: Build, requested: Sequence[str]) -> list[str]:
    """The steps to run with everything they depend on, in an order that respects it."""
    if requested:
        unknown = [s for s in requested if s not in b.steps]
        if unknown:
            raise BuildError(f"no step {', '.join(repr(s) for s in unknown)}; steps: "
                             f"{', '.join(b.steps) or 'none'}")
        targets = list(requested)
    else:
        defaults = [s.name for s in b.steps.values() if s.default]
        if not defaults and len(b.steps) == 1:
            defaults = list(b.steps)
        if not defaults:
            raise BuildError("no step given and no default step; steps: "
                             f"{', '.join(b.steps) or 'none'} (mark one with default=True)")
        targets = defaults
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, chain: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            raise BuildError(f"steps depend on each other in a cycle: {' -> '.join(chain + [name])}")
        step = b.steps.get(name)
        if step is None:
            raise BuildError(f"step {chain[-1]!r} depends on {name!r}, which is not a step")
        state[name] = "visiting"
        for dep in step.depends_on:
            visit(dep, chain + [name])
        state[name] = "done"
        order.append(name)

    for target in targets:
        visit(target, [])
    return order


def run_steps(b: Build, order: list[str], jobs: int, out=None) -> None:
    """Run steps in dependency order, independent ones in parallel, streaming output.

    Output lines are prefixed with the step name when more than one step may run at once.
    The first failure stops new steps from starting and is the error.
    """
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    out = out or sys.stdout
    prefix = len(order) > 1
    done: set[str] = set()
    failed: list[BaseException] = []
    lock = threading.Lock()
    pending = list(order)
    with ThreadPoolExecutor(max(1, jobs), thread_name_prefix="treeseed-step") as pool:
        running: dict[Any, str] = {}
        while pending or running:
            if not failed:
                for name in list(pending):
                    if all(d in done for d in b.steps[name].depends_on):
                        pending.remove(name)
                        running[pool.submit(_run_step, b.steps[name], prefix, out, lock)] = name
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                name = running.pop(future)
                try:
                    future.result()
                    done.add(name)
                except BaseException as exc:  # the step's own error, raised below
                    failed.append(exc)
            if failed:
                pending.clear()
    if failed:
        raise failed[0]


def _run_step(step: Step, prefix: bool, out, lock: threading.Lock) -> None:
    label = f"[{step.name}] " if prefix else ""
    if callable(step.action):
        try:
            step.action()
        except Exception as exc:
            raise BuildError(f"step {step.name!r} failed: {type(exc).__name__}: {exc}") from None
        return
    shell = isinstance(step.action, str)
    env = {**os.environ, **step.env}
    try:
        proc = subprocess.Popen(step.action, shell=shell, cwd=step.cwd, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise BuildError(f"step {step.name!r} could not start {step.action!r}: {exc.strerror}") from None
    assert proc.stdout is not None
    for line in proc.stdout:
        with lock:
            out.write(label + line.decode("utf-8", "replace"))
            out.flush()
    status = proc.wait()
    if status != 0:
        raise BuildError(f"step {step.name!r} failed with exit status {status}")
