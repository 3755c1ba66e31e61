"""Git repositories: ``git+https://``, ``git+http://`` and ``git+file://`` URLs, ``#ref`` optional.

The real ``git`` binary does the work, in two steps that stay separate on purpose:

1. **Resolve** the ref to a commit id without downloading any object: ``git ls-remote`` for a
   name (an exact tag, peeled if annotated, wins over a branch of the same name, as in git's own
   rules; ``refs/...`` names any ref; no ref means the remote's ``HEAD``). A full commit id is a
   commit already and needs no negotiation.
2. **Fetch** that one commit with ``--depth 1`` into a fresh repository in the work directory,
   check it out, add its submodules (``--depth 1`` too), then delete every ``.git`` so the tree
   holds tracked files only. A server that refuses to hand out a bare commit id (protocol v0
   without ``allow*SHA1InWant``) gets the named ref instead, or for a commit no ref points at,
   a full fetch of its branches and tags.

git runs in a clean environment: no system or user configuration (so nobody's ``autocrlf``,
filters, credential helpers, URL rewrites or hooks change the tree), ``HOME`` inside the work
directory, never a prompt, English messages, and a time limit per command. Every failure is a
:class:`FetchError` naming the URL, the git step and git's own words.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from pathlib import Path
from urllib.parse import unquote

from ..errors import FetchError
from . import AnnounceFn, Fetched, ProgressFn

#: Seconds any one git command may run.
TIMEOUT = 600

TRANSPORTS = ("https", "http", "file")

#: Configuration for every git command; nothing else is read (see _env).
CONFIG = {
    # Files as committed; the repository's own .gitattributes still applies, as in git archive.
    "core.autocrlf": "false",
    "core.symlinks": "true",
    "core.hooksPath": os.devnull,  # no hooks, whatever a template installed
    "core.fsmonitor": "false",
    "protocol.version": "2",  # ref filtering in ls-remote; any commit id may be fetched
    # Only these transports, whatever a .gitmodules names (ssh, ext::, ...). file:// is added
    # for a repository on this machine only (see GitSource._run): a remote repository's
    # submodules must never read this machine's repositories (docs/security.md).
    "protocol.allow": "never",
    "protocol.https.allow": "always",
    "protocol.http.allow": "always",
    "transfer.unpackLimit": "1",  # keep received packs whole: their size is what was transferred
    "credential.helper": "",
    "gc.auto": "0",
    "maintenance.auto": "false",
    "fetch.writeCommitGraph": "false",
    "submodule.recurse": "false",
    "init.defaultBranch": "main",  # silences git init's hint
    "advice.detachedHead": "false",
    "checkout.workers": "0",  # parallel checkout, one worker per core
}

#: Variables passed through to git: finding programs and the network (proxies, CA bundles).
PASSED_ENV = ("PATH", "SYSTEMROOT", "TMPDIR", "TEMP", "TMP", "http_proxy", "https_proxy",
              "no_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY",
              "SSL_CERT_FILE", "SSL_CERT_DIR", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO", "GIT_SSL_CAPATH")

_COMMIT_ID = re.compile(r"[0-9a-fA-F]{40}|[0-9a-fA-F]{64}")  # SHA-1 or SHA-256 repositories
_BAD_REF = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|^[-/.]|/\.|[/.]$|\.lock(/|$)")
_RECEIVING = re.compile(r"Receiving objects:\s+\d+% \(\d+/\d+\), ([\d.]+) (bytes|KiB|MiB|GiB)")
_UNITS = {"bytes": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


class Resolved:
    """What a ref names on the remote: a commit id, and the full ref to fetch if by name.

    This module's classes are plain ones: the fetcher imports it before its first announcement,
    and dataclasses (with inspect) would cost that start-up more than the rest of its imports.
    """

    __slots__ = ("commit", "ref")

    def __init__(self, commit: str, ref: str | None) -> None:
        self.commit = commit
        self.ref = ref  # e.g. refs/tags/v1.0; None for a bare commit id

    def __repr__(self) -> str:
        return f"Resolved(commit={self.commit!r}, ref={self.ref!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Resolved) and (self.commit, self.ref) == (other.commit, other.ref)

    def __hash__(self) -> int:
        return hash((self.commit, self.ref))


class GitSource:
    """A commit of a git repository, checked out without history and without ``.git``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.canonical = url
        self.remote, self.ref = split_url(url)
        #: A repository on this machine: its submodules may be local too (the user named it).
        self.local = self.remote.lower().startswith("file://")
        self._home: Path | None = None
        self._progress: ProgressFn | None = None
        self._received = 0  # bytes of earlier fetches, for progress across several commands
        self._discarded = 0  # bytes of packs received, then dropped to start over
        self._shown = 0

    # ------------------------------------------------------------------ the two steps

    def fetch(self, work: Path, progress: ProgressFn | None = None,
              announce: AnnounceFn | None = None) -> Fetched:
        self._home = work / "git-home"
        self._home.mkdir(exist_ok=True)
        self._progress = progress
        resolved = self.resolve()
        if announce:  # before a single object is downloaded: the cache may know this commit
            announce("git-commit", resolved.commit)
        tree = work / "checkout"
        self._checkout(tree, resolved)
        transferred = _pack_bytes(tree / ".git") + self._discarded
        _remove_git_dirs(tree)
        return Fetched("tree", tree, bytes_transferred=transferred, revision=resolved.commit)

    def resolve(self) -> Resolved:
        """The commit the URL's ref names, asking the remote only for that ref (no objects)."""
        ref = self.ref
        if ref is not None and _COMMIT_ID.fullmatch(ref):
            return Resolved(ref.lower(), None)
        if ref is None or ref == "HEAD":
            wanted = ["HEAD"]
        elif ref.startswith("refs/"):
            wanted = [ref]
        else:
            wanted = [f"refs/tags/{ref}", f"refs/heads/{ref}"]
        patterns = [p for name in wanted for p in (name, name + "^{}")]
        listing = _parse_ls_remote(self._git("ls-remote", ["ls-remote", self.remote, *patterns]))
        for name in wanted:
            commit = listing.get(name + "^{}") or listing.get(name)
            if commit:
                return Resolved(commit, name)
        raise FetchError(self._missing_ref_message())

    # ------------------------------------------------------------------ fetch and check out

    def _checkout(self, tree: Path, resolved: Resolved) -> None:
        self._git("init", ["init", "--quiet", "--template=", str(tree)])
        self._git("remote add", ["-C", str(tree), "remote", "add", "origin", self.remote])
        self._fetch_commit(tree, resolved)
        self._git("checkout", ["-C", str(tree), "checkout", "--quiet", "--detach", resolved.commit])
        if (tree / ".gitmodules").is_file():
            if not self.local:
                self._check_submodule_urls(tree)
            self._submodules(tree)

    def _check_submodule_urls(self, tree: Path) -> None:
        """A remote repository's submodules may live only on the network (http, https) or
        beside it (a relative URL): refuse the rest by name before git sees them, so the error
        points at the line to blame rather than at a transport git refused."""
        listing = self._git("config", ["config", "--file", str(tree / ".gitmodules"),
                                       "--get-regexp", r"^submodule\..*\.url$"])
        for line in listing.splitlines():
            key, _, url = line.partition(" ")
            if url.startswith(("./", "../")) or url.lower().startswith(("https://", "http://")):
                continue
            name = key[len("submodule."):-len(".url")]
            raise FetchError(f"{self.url}: .gitmodules: submodule {name!r} has url {url!r}; a "
                             "repository fetched from the network may name only http(s):// "
                             "submodule URLs or URLs relative to it, never file://, a local "
                             "path or another transport; nothing was fetched")

    def _fetch_commit(self, tree: Path, resolved: Resolved) -> None:
        c = ["-C", str(tree)]
        shallow = ["fetch", *self._progress_flag(), "--depth", "1", "--no-tags",
                   "--no-recurse-submodules"]
        try:
            self._git("fetch", [*c, *shallow, "origin", resolved.commit], progress=True)
            return
        except FetchError as exc:
            if not _refused_commit_id(exc):
                raise
        if resolved.ref is not None:
            # The server only hands out what its refs point at: ask for the ref by name.
            self._git("fetch", [*c, *shallow, "origin", resolved.ref], progress=True)
            got = self._git("rev-parse", [*c, "rev-parse", "--verify", "FETCH_HEAD^{commit}"]).strip()
            if got != resolved.commit:
                raise FetchError(f"{self.url}: {resolved.ref} moved from {resolved.commit} to {got} "
                                 "while fetching; try again")
            return
        # A commit id no ref points at, from a server that will not fetch it directly: take the
        # branches and tags whole and look for it there.
        self._git("fetch (full, the server refuses commit ids)",
                  [*c, "fetch", *self._progress_flag(), "--tags", "--no-recurse-submodules",
                   "origin"], progress=True)
        probe = self._run([*c, "cat-file", "-e", resolved.commit + "^{commit}"])
        if probe.returncode != 0:
            raise FetchError(f"{self.url}: commit {resolved.commit} was not found: the server would "
                             "not send it by id, and no branch or tag contains it; check the commit "
                             "id, or name a branch or tag")

    def _submodules(self, tree: Path) -> None:
        c = ["-C", str(tree)]
        update = ["submodule", "update", "--init", "--recursive", "--jobs", "4",
                  *self._progress_flag()]
        try:
            self._git("submodule update", [*c, *update, "--depth", "1"], progress=True)
            return
        except FetchError as exc:
            first = exc
        # Shallow submodules need servers that hand out any commit by id. Start over, whole.
        self._run([*c, "submodule", "deinit", "--all", "--force", "--quiet"])
        self._discarded += _pack_bytes(tree / ".git" / "modules")
        import shutil

        shutil.rmtree(tree / ".git" / "modules", ignore_errors=True)
        try:
            self._git("submodule update", [*c, *update], progress=True)
        except FetchError:
            raise first from None

    def _progress_flag(self) -> list[str]:
        """``--progress`` to read git's byte counts as they come, else ``--quiet``."""
        return ["--progress"] if self._progress else ["--quiet"]

    # ------------------------------------------------------------------ running git

    def _git(self, step: str, args: list[str], progress: bool = False) -> str:
        """Run git; return its stdout, or raise FetchError with git's reason."""
        proc = self._run(args, progress=progress)
        if proc.returncode != 0:
            raise FetchError(self._failure(step, proc))
        return proc.stdout

    def _run(self, args: list[str], progress: bool = False) -> _Result:
        cmd = ["git"]
        for key, value in CONFIG.items():
            cmd += ["-c", f"{key}={value}"]
        if self.local:
            cmd += ["-c", "protocol.file.allow=always"]
        cmd += args
        report = self._report if progress and self._progress else None
        try:
            return _run(cmd, _env(self._home), TIMEOUT, report)
        except FileNotFoundError:
            raise FetchError(f"{self.url}: git is not installed (or not on PATH); "
                             "install git to fetch git+ URLs") from None
        except OSError as exc:
            raise FetchError(f"{self.url}: cannot run git: {exc.strerror or exc}") from None

    def _report(self, line: str) -> None:
        """Turn git's ``Receiving objects: ..., 1.20 MiB | ...`` lines into bytes so far (never
        decreasing, also when parallel submodule clones interleave their lines)."""
        m = _RECEIVING.search(line)
        if m and self._progress:
            done = int(float(m[1]) * _UNITS[m[2]])
            now = self._received + done
            if line.rstrip().endswith("done."):
                self._received += done
            self._shown = max(self._shown, now)
            self._progress(self._shown, None)

    def _failure(self, step: str, proc: _Result) -> str:
        if proc.timed_out:
            return (f"{self.url}: git {step} did not finish within {TIMEOUT} s; "
                    "check the network and try again")
        reason = _reason(proc.stderr) or f"exit status {proc.returncode}"
        return f"{self.url}: git {step} failed: {reason}; {_advice(proc.stderr)}"

    def _missing_ref_message(self) -> str:
        what = f"no branch or tag {self.ref!r}" if self.ref not in (None, "HEAD") else "no HEAD"
        if self.ref and self.ref.startswith("refs/"):
            what = f"no ref {self.ref!r}"
        known = self._known_refs()
        hint = ""
        if self.ref and re.fullmatch(r"[0-9a-fA-F]{4,39}", self.ref):
            hint = "; an abbreviated commit id cannot be fetched: give all 40 hex digits"
        elif self.ref is None or self.ref == "HEAD":
            hint = "; is the repository empty? name a branch or tag with #ref"
        return f"{self.url}: the repository has {what} (it has {known}){hint}"

    def _known_refs(self, show: int = 5) -> str:
        proc = self._run(["ls-remote", "--heads", "--tags", self.remote])
        if proc.returncode != 0:
            return "refs that could not be listed"
        names = [n for n in _parse_ls_remote(proc.stdout) if not n.endswith("^{}")]
        parts = []
        for prefix, label in (("refs/heads/", "branches"), ("refs/tags/", "tags")):
            found = [n[len(prefix):] for n in names if n.startswith(prefix)]
            if found:
                more = f" and {len(found) - show} more" if len(found) > show else ""
                parts.append(f"{label} {', '.join(found[:show])}{more}")
        return "; ".join(parts) if parts else "no branches or tags"


# --------------------------------------------------------------------------- helpers


def split_url(url: str) -> tuple[str, str | None]:
    """``git+https://host/repo.git#v1.0`` -> (``https://host/repo.git``, ``v1.0``)."""
    base, _, fragment = url.partition("#")
    remote = base[4:] if base[:4].lower() == "git+" else base
    scheme = remote.split("://", 1)[0].lower() if "://" in remote else ""
    if scheme not in TRANSPORTS:
        raise FetchError(f"{url}: unsupported git transport {scheme or remote!r}; treeseed fetches "
                         "git+https://, git+http:// and git+file:// URLs")
    rest = remote.split("://", 1)[1]
    if not rest.strip("/") or (scheme == "file" and not rest.startswith("/")):
        raise FetchError(f"{url}: not a repository URL (git+file:// URLs need an absolute path, "
                         "git+file:///srv/repo.git)")
    ref = unquote(fragment) if fragment else None
    if ref is not None and ref != "HEAD" and _BAD_REF.search(ref):
        raise FetchError(f"{url}: {ref!r} is not a valid git ref; after # give a branch, a tag "
                         "or a full commit id")
    return remote, ref


def _env(home: Path | None) -> dict[str, str]:
    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    env.setdefault("PATH", os.defpath)
    home_s = str(home) if home is not None else os.devnull
    env.update({
        "HOME": home_s, "XDG_CONFIG_HOME": home_s,
        "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "LC_ALL": "C", "LANG": "C", "LANGUAGE": "C",
    })
    return env


class _Result:
    def __init__(self, returncode: int, stdout: str, stderr: str, timed_out: bool = False) -> None:
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.timed_out = timed_out


#: Process groups of git commands now running (see :func:`_run`).
ACTIVE_GROUPS: set[int] = set()


def kill_active() -> None:
    """Kill every git command this process started and that is still running."""
    for pgid in list(ACTIVE_GROUPS):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass


def _run(cmd: list[str], env: dict[str, str], timeout: float, report=None) -> _Result:
    """Run ``cmd`` in its own process group, killed whole after ``timeout`` seconds. stderr is
    read as it arrives (``report`` sees each progress line); both outputs are kept.

    The group is registered in :data:`ACTIVE_GROUPS` while it runs, so the fetcher program can
    kill it when the cache stops the fetcher (:func:`kill_active`): no git may outlive the
    fetcher and keep writing into a work directory that is being removed.
    """
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, start_new_session=True)
    ACTIVE_GROUPS.add(proc.pid)
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass

    timer = threading.Timer(timeout, kill)
    timer.daemon = True
    out: list[bytes] = []
    stdout, stderr = proc.stdout, proc.stderr
    assert stdout is not None and stderr is not None
    reader = threading.Thread(target=lambda: out.append(stdout.read()), daemon=True)
    timer.start()
    reader.start()
    err = bytearray()
    try:
        pending = b""
        while chunk := stderr.read1(65536):
            err += chunk
            if len(err) > 1 << 20:
                del err[: len(err) - (1 << 19)]  # keep the end: that is where git's reason is
            if report is not None:
                *lines, pending = re.split(rb"[\r\n]", pending + chunk)
                for line in lines:
                    report(line.decode("utf-8", "replace"))
        reader.join()
        code = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            kill()
            proc.wait()
        ACTIVE_GROUPS.discard(proc.pid)
        stdout.close()
        stderr.close()
    return _Result(code, (out[0] if out else b"").decode("utf-8", "replace"),
                   err.decode("utf-8", "replace"), timed_out.is_set())


def _parse_ls_remote(text: str) -> dict[str, str]:
    """``<id>\\t<name>`` lines -> {name: id}; ``ref: ...`` symref lines are skipped."""
    refs: dict[str, str] = {}
    for line in text.splitlines():
        oid, _, name = line.partition("\t")
        if name and _COMMIT_ID.fullmatch(oid):
            refs[name] = oid
    return refs


_NOISE = re.compile(r"^(remote: )?(Counting|Compressing|Enumerating|Receiving|Resolving|Total|"
                    r"Updating files|Cloning into|From |Submodule |hint:|\s*\*|\s*$)")


def _reason(stderr: str, keep: int = 2) -> str:
    """git's own explanation, on one line: its last ``fatal:``/``error:`` lines, else its last
    lines."""
    lines = [ln.strip() for ln in re.split(r"[\r\n]+", stderr) if ln.strip() and not _NOISE.match(ln)]
    flagged = [ln for ln in lines if re.match(r"(fatal|error):", ln)]
    chosen = (flagged or lines)[-keep:]
    out: list[str] = []
    for ln in chosen:
        ln = re.sub(r"^(fatal|error): ", "", ln).rstrip(".")
        if ln not in out:
            out.append(ln)
    return "; ".join(out)


def _advice(stderr: str) -> str:
    text = stderr.lower()
    if "could not resolve host" in text:
        return "check the host name and your network"
    if any(s in text for s in ("couldn't connect", "failed to connect", "connection refused",
                               "timed out", "network is unreachable")):
        return "is the server up and reachable? check the URL and your network"
    if any(s in text for s in ("terminal prompts disabled", "authentication failed",
                               "could not read username", "could not read password")):
        return ("the server asks for credentials, which treeseed never prompts for; "
                "check the URL (a private repository?)")
    if "ssl" in text or "certificate" in text:
        return "the server's TLS certificate is not trusted; check the URL or your CA certificates"
    if any(s in text for s in ("not found", "does not appear to be a git repository",
                               "not a git repository", "no such file")):
        return "check the repository URL"
    if "unadvertised object" in text or "not our ref" in text:
        return "the server does not hand out that commit; name a branch or tag instead"
    return "check the URL and try again"


def _refused_commit_id(exc: FetchError) -> bool:
    """Did the fetch fail because the server will not serve a commit by id (rather than the
    network failing)? Then asking by ref name may still work."""
    text = str(exc).lower()
    return "unadvertised object" in text or "not our ref" in text


def _pack_bytes(git_dir: Path) -> int:
    """Bytes of the packs git received (the top repository's and its submodules')."""
    total = 0
    for dirpath, _dirs, files in os.walk(git_dir):
        if os.path.basename(dirpath) == "pack":
            total += sum(os.path.getsize(os.path.join(dirpath, f))
                         for f in files if f.endswith(".pack"))
    return total


def _remove_git_dirs(tree: Path) -> None:
    """Delete every ``.git`` (the repository, and submodules' ``.git`` files) below ``tree``.

    git never checks out a tracked entry named ``.git``, so every one found is git's own.
    """
    import shutil  # here, not at the top: the ref lookup before the first announcement needs none

    has_submodules = (tree / ".gitmodules").is_file()
    shutil.rmtree(tree / ".git")
    if not has_submodules:
        return
    for dirpath, dirs, files in os.walk(tree):
        path = os.path.join(dirpath, ".git")
        if ".git" in dirs:
            dirs.remove(".git")
            shutil.rmtree(path) if not os.path.islink(path) else os.unlink(path)
        elif ".git" in files:
            os.unlink(path)
