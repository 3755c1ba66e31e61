"""What a package tree is: its entries, the rules for their names, and the normalisation pass.

A package is a set of :class:`Entry` (regular files and symbolic links only) below one root
directory. Directories are implied by paths, so an empty directory can never be part of a
package. Every module that produces or consumes trees (unpacking, hashing, the cache) speaks
in these entries, which is what makes "the hash matches, so the tree matches" checkable.

>>> entries = scan_tree(Path("some/dir"), source="some/dir")   # doctest: +SKIP
>>> [e.path for e in entries]                                   # doctest: +SKIP
['build.py', 'src/main.c']
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal

from .errors import BadPackage
from .record import FrozenRecord

#: Longest path (in UTF-8 bytes) and deepest nesting a package may contain. Real source trees
#: stay far below both; an archive beyond them is hostile or broken.
MAX_PATH_BYTES = 4096
MAX_COMPONENT_BYTES = 255
MAX_DEPTH = 128

EntryKind = Literal["file", "symlink"]

#: Version-control metadata is never part of a package, at any depth, whatever its type and
#: whatever the manifest says: a checkout's hash must not change when ``git status`` rewrites
#: the index, and a package must not carry a repository (hooks, config) along.
VCS_NAMES = frozenset({".git", ".hg", ".svn"})
_VCS_COMPONENT = re.compile(r"(?:^|/)\.(?:git|hg|svn)(?:/|$)")


def is_vcs_path(path: str) -> bool:
    """True when a component of ``path`` is ``.git``, ``.hg`` or ``.svn`` (one regex search:
    this runs for every entry of an archive)."""
    return _VCS_COMPONENT.search(path) is not None


class Entry(FrozenRecord):
    """One member of a package.

    ``path`` is relative, ``/``-separated and already validated (see :func:`check_path`).
    For symlinks ``target`` is the link's text exactly as written on disk; ``size`` is 0.
    ``executable`` is the owner-executable bit, the only mode bit a package keeps.
    """

    __slots__ = ("path", "kind", "size", "executable", "target")

    def __init__(self, path: str, kind: EntryKind, size: int = 0, executable: bool = False,
                 target: str | None = None) -> None:
        _set = object.__setattr__
        _set(self, "path", path)
        _set(self, "kind", kind)
        _set(self, "size", size)
        _set(self, "executable", executable)
        _set(self, "target", target)

    @property
    def is_symlink(self) -> bool:
        return self.kind == "symlink"


def check_path(path: str, source: str) -> str:
    """Return ``path`` when it is a valid package path, else raise :class:`BadPackage`.

    Valid means: relative, no empty, ``.`` or ``..`` component, no backslash (libtorrent and
    Windows read it as a separator), no control character (libtorrent mangles them), valid
    UTF-8 (the caller decodes with ``surrogateescape``; surrogates mark undecodable bytes),
    and within the length and depth limits.
    """
    if not path:
        raise BadPackage(source, path, "empty path")
    if path.startswith("/"):
        raise BadPackage(source, path, "absolute path: entries must be relative to the package")
    parts = path.split("/")
    if len(parts) > MAX_DEPTH:
        raise BadPackage(source, path, f"nested {len(parts)} levels deep (limit {MAX_DEPTH})")
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        raise BadPackage(source, _printable(path), "name is not valid UTF-8") from None
    if len(encoded) > MAX_PATH_BYTES:
        raise BadPackage(source, path[:80] + "...", f"path longer than {MAX_PATH_BYTES} bytes")
    for part in parts:
        if part in ("", ".", ".."):
            raise BadPackage(source, path, f"path component {part!r} is not allowed")
        if len(part) > MAX_COMPONENT_BYTES // 4 and len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise BadPackage(source, path, f"name longer than {MAX_COMPONENT_BYTES} bytes")
    bad = _BAD_CHAR.search(path)
    if bad:
        if bad[0] == "\\":
            raise BadPackage(source, path, "backslash in name")
        raise BadPackage(source, _printable(path), "control character in name")
    return path


# One regex scan instead of a Python loop per character: this runs for every archive entry.
_BAD_CHAR = re.compile(r"[\x00-\x1f\x7f\\]")


def _printable(path: str) -> str:
    """Render a bad name so an error message can show it without breaking the terminal."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def resolve_link(path: str, target: str, source: str) -> list[str]:
    """Resolve a symlink's target to components relative to the package root.

    The target is read relative to the link's own directory and normalised lexically, which is
    how the hash records it (BEP 52 ``symlink path``). A target that is absolute or leaves the
    package is an error: such a link would make the tree depend on the machine it lands on.
    """
    if target.startswith("/"):
        raise BadPackage(source, path, f"symlink to absolute path {target!r} escapes the package")
    if not target:
        raise BadPackage(source, path, "symlink with an empty target")
    if "\\" in target or any(ord(c) < 0x20 or ord(c) == 0x7F for c in target):
        raise BadPackage(source, path, f"symlink target {_printable(target)!r} has a bad character")
    try:
        target.encode("utf-8")
    except UnicodeEncodeError:
        raise BadPackage(source, path, f"symlink target {_printable(target)!r} is not valid UTF-8") from None
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    if joined == ".":
        # BitTorrent clients drop such links (libtorrent does): the hash could not record it.
        raise BadPackage(source, path, f"symlink target {target!r} is the package root itself")
    if joined == ".." or joined.startswith("../"):
        raise BadPackage(source, path, f"symlink target {target!r} escapes the package")
    return joined.split("/")


def check_climbs(entries: Iterable[Entry], links: Iterable[Entry], source: str) -> None:
    """Refuse every link in ``links`` whose target climbs (``..``) out of anything but a real
    directory of the package made of ``entries``.

    :func:`resolve_link` reads a target lexically, but the system resolves it one component at
    a time, following links: with ``a/b/l -> ..``, the target ``a/b/l/../..`` is ``a``
    lexically and the package's parent on disk. When every ``..`` leaves a real directory (a
    parent of some entry; never a symlink, a file or a missing name), the lexical reading is
    the physical one at every ``..``, and what follows a link is plain names that only
    descend, so every link resolves, if at all, where the hash says: inside the package,
    through chains of links and links to links to directories alike. Loops are left alone:
    they resolve nowhere (ELOOP). Cost: nothing unless some target contains ``..``.
    """
    climbing = [link for link in links if ".." in (link.target or "")]
    if not climbing:
        return
    dirs = package_dirs(entries)
    for link in climbing:
        assert link.target is not None
        _check_climb(link.path, link.target, dirs, source)


def package_dirs(entries: Iterable[Entry]) -> set[str]:
    """Every directory the entries' paths imply (their ancestors; no entry is below a link)."""
    dirs: set[str] = set()
    for entry in entries:
        parent = entry.path.rpartition("/")[0]
        while parent and parent not in dirs:
            dirs.add(parent)
            parent = parent.rpartition("/")[0]
    return dirs


def _check_climb(path: str, target: str, dirs: set[str], source: str) -> None:
    """Walk ``target`` from the link's directory as the system would; see :func:`check_climbs`."""
    stack = path.split("/")[:-1]  # the link's own directory: real directories, by construction
    for part in target.split("/"):
        if part == "..":
            here = "/".join(stack)
            if not stack or here not in dirs:
                raise BadPackage(source, path, f"symlink target {target!r} climbs out of {here!r} "
                                 f"with '..', and {here!r} is not a directory of the package (a "
                                 "symlink, a file or nothing), so the link could resolve outside "
                                 "the package; write the target without '..' after a link")
            stack.pop()
        elif part and part != ".":
            stack.append(part)


def scan_tree(
    root: Path, source: str, keep: Callable[[str], bool] | None = None
) -> list[Entry]:
    """List the package entries below ``root``, sorted by path bytes, never following links.

    ``keep`` filters paths (the manifest's rules); excluded entries are skipped whatever their
    type, so an excluded fifo is not an error. Directories contribute nothing themselves.
    ``.git``, ``.hg`` and ``.svn`` (:data:`VCS_NAMES`) are skipped at any depth, unread.
    Links are checked against the kept entries (:func:`check_climbs`): a directory copied or
    checked out from elsewhere obeys the same link rules as an archive.
    """
    entries: list[Entry] = []
    _scan(os.fsencode(root), "", source, keep, entries)
    entries.sort(key=lambda e: e.path.encode("utf-8"))
    check_climbs(entries, [e for e in entries if e.kind == "symlink"], source)
    return entries


def _scan(
    root: bytes, prefix: str, source: str, keep: Callable[[str], bool] | None, out: list[Entry]
) -> None:
    with os.scandir(os.path.join(root, os.fsencode(prefix)) if prefix else root) as it:
        for de in it:
            name = os.fsdecode(de.name)
            if name in VCS_NAMES:
                continue  # never part of a package, never even walked (a .git can be huge)
            path = f"{prefix}/{name}" if prefix else name
            st = de.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                check_path(path, source)
                _scan(root, path, source, keep, out)
                continue
            if keep is not None and not keep(path):
                continue
            check_path(path, source)
            out.append(entry_from_stat(de.path, path, st, source))


def entry_from_stat(fs_path: str | bytes, path: str, st: os.stat_result, source: str) -> Entry:
    """Turn an ``lstat`` result into an :class:`Entry`, rejecting devices, fifos and sockets."""
    if stat.S_ISREG(st.st_mode):
        return Entry(path, "file", st.st_size, bool(st.st_mode & stat.S_IXUSR))
    if stat.S_ISLNK(st.st_mode):
        target = os.fsdecode(os.readlink(fs_path))
        resolve_link(path, target, source)
        return Entry(path, "symlink", 0, False, target)
    kind = {stat.S_IFIFO: "a fifo", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
            stat.S_IFBLK: "a block device"}.get(stat.S_IFMT(st.st_mode), "not a file")
    raise BadPackage(source, path, f"{kind}: packages hold only regular files and symlinks")


def total_size(entries: Iterable[Entry]) -> int:
    return sum(e.size for e in entries)


def apply_rules(
    root: Path,
    entries: list[Entry],
    keep: Callable[[str], bool],
    source: str,
    specials: dict[str, str] | None = None,
) -> list[Entry]:
    """Delete what the package rules exclude, drop emptied directories, check what remains.

    Runs on a freshly unpacked tree that nobody else sees yet. An excluded entry is removed and
    never hashed; a kept device/fifo/socket or a kept symlink that leaves the package, or could
    through another link (:func:`check_climbs`), is an error. Version-control metadata
    (:data:`VCS_NAMES`) is excluded whatever ``keep`` says.
    """
    for path, what in (specials or {}).items():
        if keep(path) and not is_vcs_path(path):
            raise BadPackage(source, path, f"{what}: packages hold only regular files and symlinks")
    kept: list[Entry] = []
    links: list[Entry] = []
    removed_dirs: set[str] = set()
    base = os.fsencode(root)
    for entry in entries:
        if keep(entry.path) and not is_vcs_path(entry.path):
            if entry.is_symlink:
                assert entry.target is not None
                resolve_link(entry.path, entry.target, source)
                links.append(entry)
            kept.append(entry)
            continue
        os.unlink(os.path.join(base, os.fsencode(entry.path)))
        removed_dirs.add(posixpath.dirname(entry.path))
    check_climbs(kept, links, source)
    _remove_empty_dirs(base, removed_dirs)
    return kept


def _remove_empty_dirs(base: bytes, candidates: set[str]) -> None:
    """rmdir each candidate and its ancestors while they are empty (deepest first)."""
    pending = set(candidates)
    for path in sorted(pending, key=lambda p: p.count("/"), reverse=True):
        while path:
            try:
                os.rmdir(os.path.join(base, os.fsencode(path)))
            except OSError:
                break  # not empty (or already gone): its ancestors are not empty either
            path = posixpath.dirname(path)


def prune_tree(root: Path, keep: set[str]) -> None:
    """Delete every entry below ``root`` whose path is not in ``keep``, and every directory left
    empty. Links are removed, never followed."""
    _prune(os.fsencode(root), "", keep)


def _prune(base: bytes, prefix: str, keep: set[str]) -> bool:
    """Prune one directory; return True when it is left empty."""
    empty = True
    with os.scandir(os.path.join(base, os.fsencode(prefix)) if prefix else base) as it:
        children = list(it)
    for de in children:
        name = os.fsdecode(de.name)
        path = f"{prefix}/{name}" if prefix else name
        if de.is_dir(follow_symlinks=False):
            if _prune(base, path, keep):
                os.rmdir(de.path)
            else:
                empty = False
        elif path in keep:
            empty = False
        else:
            os.unlink(de.path)
    return empty
