"""Property-based fuzzing of the tar and zip readers (hypothesis).

Each example builds an archive from generated entries (files with odd modes, directories,
symlinks relative, absolute and with ``..``, hard links to earlier, later and missing entries and
to themselves, fifos and devices, PAX ``path``/``linkpath``/``size`` records and global headers,
GNU long names, duplicates), sometimes damages its bytes (where :mod:`tarfile` and
:mod:`zipfile` refuse to write nonsense), and unpacks it as a fetch does: unpack, apply the
package's rules, hash. Every example must end in exactly one of

* a verified package: every entry is on disk as listed, re-hashing the tree from disk gives
  the same bt2 hash, and every symlink resolves inside the package (or nowhere);
* a treeseed error (:class:`~treeseed.errors.TreeseedError`) with a one-line message;

and never in another exception type, a hang, or a write outside the destination: each example
runs in its own directory next to a sentinel directory, and both are checked afterwards.
Half the generated archives are clean (no colliding names), so examples get past the name
checks into links, hard links, rules and hashing; ``test_link_graphs`` builds the link shapes
where a lexical check and the system disagree (links resolving shallower than they sit, chains,
'..' after a link), and ``test_metadata_floods`` global PAX headers and repeated headers.

Reproducible: ``derandomize=True`` and no example database, so CI sees the same examples every
run; ``deadline=None`` because a busy machine must not turn slowness into failures (a hang is
caught by the test run's own timeout, not a clock in here).
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from treeseed.errors import TreeseedError
from treeseed.hashing import hash_tree
from treeseed.hashing.bt2 import info_hash
from treeseed.package import apply_rules, scan_tree
from treeseed.rules import rules_for
from treeseed.unpack import Limits, unpack_archive

FUZZ = settings(max_examples=250, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Small limits, so generated archives reach them too.
LIMITS = Limits(max_bytes=64 << 10, max_entries=40, max_meta_bytes=16 << 10)

# Path components: mostly ordinary names (so most examples get deep enough to unpack, link and
# hash), some hostile or special: '.', '..', '', version control, manifests, and one long
# enough to need a GNU long name or a PAX path.
SAFE = ["a", "b", "sub", "lib", "x y", "caf\u00e9"]
RARE = [".", "..", "", ".git", ".hg", "treeseed.toml", "build.zig.zon", "n" * 120]
HOSTILE_NAMES = ["/etc/passwd", "./a", "a/", "../../x", "a/../../y", "a\\b", "a\x01b", "./", "//a"]
HOSTILE_TARGETS = ["..", "../..", ".", "/", "/etc", "a/../..", "sub/../../..", "t" * 5000, "", "a\x00b"]
MODES = [0o644, 0o755, 0o000, 0o777, 0o4755, 0o2644, 0o1777, 0o600, 0o611, 0o7777]


def one_in(n: int, rare: st.SearchStrategy, usual: st.SearchStrategy) -> st.SearchStrategy:
    """``rare`` about once in ``n`` draws, else ``usual``."""
    return st.integers(1, n).flatmap(lambda i: rare if i == 1 else usual)


@dataclass(frozen=True)
class Spec:
    """One generated archive entry."""

    kind: str  # file, dir, symlink, hardlink, fifo, chardev
    name: str
    data: bytes = b""
    mode: int = 0o644
    link: str = ""
    pax: tuple[tuple[str, str], ...] = ()


def paths(hostile: bool) -> st.SearchStrategy[str]:
    """Entry names: ordinary ones, or (in a hostile archive) now and then a special or hostile one."""
    component = one_in(5, st.sampled_from(RARE), st.sampled_from(SAFE)) if hostile else st.sampled_from(SAFE)
    walk = st.lists(component, min_size=1, max_size=3).map("/".join)
    return one_in(6, st.sampled_from(HOSTILE_NAMES), walk) if hostile else walk


def targets(hostile: bool) -> st.SearchStrategy[str]:
    """Link targets: relative walks with '..' and '.' (these alone can escape), or worse."""
    walk = st.lists(st.sampled_from([*SAFE, "..", "..", "..", "."]), min_size=1, max_size=5).map("/".join)
    return one_in(5, st.sampled_from(HOSTILE_TARGETS), walk) if hostile else walk


pax_records = st.lists(st.tuples(
    st.sampled_from(["path", "linkpath", "size", "comment", "GNU.sparse.major", "mtime"]),
    paths(True) | st.sampled_from(["-1", "10", "99999999", "x", "0"])), max_size=2).map(tuple)
KINDS = ["file"] * 4 + ["dir", "symlink", "symlink", "symlink", "hardlink", "hardlink"]
HOSTILE_KINDS = ["fifo", "chardev"]


@st.composite
def specs(draw: st.DrawFn, hostile: bool) -> Spec:
    kind = draw(st.sampled_from(KINDS + HOSTILE_KINDS if hostile else KINDS))
    return Spec(kind, draw(paths(hostile)), draw(st.binary(max_size=600)) if kind == "file" else b"",
                draw(st.sampled_from(MODES)), draw(targets(hostile)) if kind in ("symlink", "hardlink") else "",
                draw(one_in(6, pax_records, st.just(()))) if hostile else ())


@st.composite
def entry_lists(draw: st.DrawFn) -> list[Spec]:
    """Entries, often below one top directory; hard links mostly aimed at earlier names (or
    themselves, or later or missing ones); in a hostile archive, bad names, PAX records and
    duplicates too. Half the archives are hostile: the others get deep enough to link and hash.
    """
    hostile = draw(st.booleans())
    top = draw(st.sampled_from(["", "pkg/"]))
    out: list[Spec] = []
    for spec in draw(st.lists(specs(hostile), min_size=1, max_size=14)):
        spec = Spec(spec.kind, top + spec.name, spec.data, spec.mode, spec.link, spec.pax)
        if not hostile and _collides(spec, out):
            continue  # keep clean archives unpackable, so links and hashing get exercised
        if spec.kind == "hardlink" and out and draw(st.integers(0, 5)):
            aim = draw(st.sampled_from([*(e.name for e in out), spec.name]))  # earlier, or itself
            spec = Spec("hardlink", spec.name, mode=spec.mode, link=aim, pax=spec.pax)
        out.append(spec)
        if hostile and draw(st.integers(0, 8)) == 0:
            out.append(draw(st.sampled_from(out)))  # a duplicate (same or other kind)
    return out or [Spec("file", "f", b"f")]


def _collides(spec: Spec, earlier: list[Spec]) -> bool:
    """Would ``spec`` be a duplicate, lie below a non-directory, or hold one below itself?"""
    for other in earlier:
        if other.name == spec.name and not (other.kind == spec.kind == "dir"):
            return True
        if other.kind != "dir" and spec.name.startswith(other.name + "/"):
            return True
        if spec.kind != "dir" and other.name.startswith(spec.name + "/"):
            return True
    return False


@dataclass(frozen=True)
class Damage:
    """Byte surgery on a built archive: overwrite some bytes, maybe cut it short."""

    writes: tuple[tuple[int, int], ...]  # (offset as a fraction of 10,000 of the length, byte)
    cut: int | None  # keep this many 10,000ths of the archive


damage = st.builds(Damage, st.lists(st.tuples(st.integers(0, 9999), st.integers(0, 255)), max_size=4)
                   .map(tuple), st.none() | st.integers(0, 9999))


def damaged(data: bytes, hurt: Damage | None) -> bytes:
    if hurt is None or not data:
        return data
    raw = bytearray(data)
    for where, value in hurt.writes:
        raw[where * len(raw) // 10_000] = value
    if hurt.cut is not None:
        del raw[hurt.cut * len(raw) // 10_000:]
    return bytes(raw)


# --------------------------------------------------------------------------- building archives


def tar_archive(entries: list[Spec], fmt: int, global_pax: dict[str, str], compress: bool) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, pax_headers=global_pax, encoding="utf-8",
                      errors="surrogateescape") as tf:
        for spec in entries:
            info = tarfile.TarInfo(spec.name)
            info.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
                         "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE,
                         "chardev": tarfile.CHRTYPE}[spec.kind]
            info.mode = spec.mode
            info.size = len(spec.data)
            info.linkname = spec.link
            info.pax_headers = dict(spec.pax)
            try:
                tf.addfile(info, io.BytesIO(spec.data) if spec.data else None)
            except (ValueError, UnicodeError):
                continue  # tarfile refuses this one (a name too long for the format, ...)
    data = buf.getvalue()
    return gzip.compress(data, mtime=0) if compress else data


def zip_archive(entries: list[Spec]) -> bytes:
    kinds = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK, "hardlink": stat.S_IFREG,
             "fifo": stat.S_IFIFO, "chardev": stat.S_IFCHR}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are part of the point
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for spec in entries:
                name = spec.name + ("/" if spec.kind == "dir" and not spec.name.endswith("/") else "")
                info = zipfile.ZipInfo(name or "x", date_time=(2020, 1, 1, 0, 0, 0))
                info.create_system = 3
                info.external_attr = (kinds[spec.kind] | (spec.mode & 0o7777)) << 16
                body = spec.link.encode("utf-8", "surrogateescape") if spec.kind == "symlink" else spec.data
                try:
                    zf.writestr(info, body)
                except (ValueError, UnicodeError):
                    continue
    return buf.getvalue()


# --------------------------------------------------------------------------- the property


def snapshot(top: Path) -> dict[str, tuple[int, int]]:
    """Every path below ``top`` with its type/mode and size (links are not followed)."""
    out: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            st_ = os.lstat(os.path.join(dirpath, name))
            out[os.path.relpath(os.path.join(dirpath, name), top)] = (st_.st_mode, st_.st_size)
    return out


@dataclass
class Sandbox:
    """``base/work`` holds the archive and the destination; ``base/outside`` is a sentinel."""

    base: Path

    @property
    def work(self) -> Path:
        return self.base / "work"

    @property
    def dest(self) -> Path:
        return self.work / "tree"


def sandbox() -> Iterator[Sandbox]:
    with tempfile.TemporaryDirectory(prefix="treeseed-fuzz-") as tmp:
        box = Sandbox(Path(tmp))
        box.work.mkdir()
        (box.base / "outside").mkdir()
        (box.base / "outside" / "sentinel").write_text("untouched")
        yield box


def check_archive(data: bytes, name: str) -> None:
    """Unpack ``data`` as a fetch would and assert the property (see the module docstring)."""
    for box in sandbox():
        archive = box.work / name
        archive.write_bytes(data)
        outside_before = snapshot(box.base / "outside")
        try:
            unpacked = unpack_archive(archive, box.dest, name, LIMITS)
            entries = apply_rules(unpacked.root, unpacked.entries, rules_for(unpacked.root, name), name,
                                  unpacked.specials)
            package_hash = info_hash(entries, unpacked.digests, name)
        except TreeseedError as exc:
            message = str(exc)
            assert message and "\n" not in message and "\r" not in message, repr(message)
            assert name in message, message
            event(f"refused: {_problem(message, name)}")
        else:
            verify_tree(unpacked.root, entries, package_hash, name)
            event(f"unpacked: {'with' if any(e.is_symlink for e in entries) else 'without'} links")
        assert snapshot(box.base / "outside") == outside_before, "written outside the work directory"
        assert sorted(os.listdir(box.work)) in ([name], [name, "tree"]), os.listdir(box.work)
        assert sorted(os.listdir(box.base)) == ["outside", "work"], os.listdir(box.base)


def _problem(message: str, name: str) -> str:
    """The kind of error, for hypothesis's statistics: the message without names and numbers."""
    problem = message.rsplit(": ", 1)[-1] if message.count(": ") > 1 else message
    return "".join(c for c in problem.replace(name, "") if not c.isdigit())[:40]


def verify_tree(root: Path, entries: list, package_hash: str, name: str) -> None:
    """The tree on disk is exactly the entries, hashes the same from disk, and stays inside."""
    on_disk = scan_tree(root, name)
    assert [(e.path, e.kind, e.size, e.executable, e.target) for e in on_disk] == \
        [(e.path, e.kind, e.size, e.executable, e.target) for e in entries]
    assert hash_tree(root, on_disk, ["bt2"], name)["bt2"] == package_hash
    real_root = os.path.realpath(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for child in dirnames + filenames:
            path = os.path.join(dirpath, child)
            if os.path.islink(path):
                resolved = os.path.realpath(path)
                assert os.path.commonpath([real_root, resolved]) == real_root, (path, resolved)
            else:
                mode = stat.S_IMODE(os.lstat(path).st_mode)
                assert mode in ((0o755,) if stat.S_ISDIR(os.lstat(path).st_mode) else (0o644, 0o755)), \
                    (path, oct(mode))


# --------------------------------------------------------------------------- the tests


@FUZZ
@given(entries=entry_lists(),
       fmt=st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT]),
       global_pax=st.dictionaries(st.sampled_from(["path", "linkpath", "size", "comment"]),
                                  st.sampled_from(["pkg/a", "../x", "7", "-3", "c" * 3000]), max_size=2),
       compress=st.booleans(), hurt=one_in(4, damage, st.none()))
def test_tar_archives(entries: list[Spec], fmt: int, global_pax: dict[str, str], compress: bool,
                      hurt: Damage | None) -> None:
    if fmt != tarfile.PAX_FORMAT:
        global_pax = {}
    check_archive(damaged(tar_archive(entries, fmt, global_pax, compress), hurt), "fuzz.tar")


@FUZZ
@given(entries=entry_lists(), hurt=one_in(4, damage, st.none()))
def test_zip_archives(entries: list[Spec], hurt: Damage | None) -> None:
    check_archive(damaged(zip_archive(entries), hurt), "fuzz.zip")


@st.composite
def link_graphs(draw: st.DrawFn) -> list[Spec]:
    """Files at several depths and links of three shapes: "shallow" (deep in the tree, aimed
    near the root), "through" (through another link or entry, then climbing with '..', maybe
    descending again: chains, links to links to directories) and "plain" (climbing first).
    These are the shapes where a lexical check and the system's resolution disagree."""
    dirs = ["", "a", "a/b", "a/b/c", "d", "d/e"]
    homes = draw(st.lists(st.sampled_from(dirs), min_size=1, max_size=4, unique=True))
    out = [Spec("file", f"{d}/f{i}".lstrip("/"), b"%d" % i) for i, d in enumerate(homes)]
    links: list[str] = []
    for i in range(draw(st.integers(1, 6))):
        home = draw(st.sampled_from(dirs))
        to_root = "../" * (home.count("/") + 1) if home else ""
        shape = draw(st.sampled_from(["shallow", "through", "through", "plain"]))
        names = [e.name for e in out] + dirs[1:]
        if shape == "shallow":
            target = to_root + draw(st.sampled_from(["a", "d", "x", *[n for n in names if "/" not in n]]))
        elif shape == "through":
            via = draw(st.sampled_from(links)) if links and draw(st.booleans()) else draw(st.sampled_from(names))
            target = to_root + via + "/.." * draw(st.integers(0, via.count("/") + 2))
            target += draw(st.sampled_from(["", "/x", "/f0", "/d"]))
        else:
            target = "../" * draw(st.integers(0, home.count("/") + 2)) + draw(st.sampled_from(names))
        name = f"{home}/l{i}".lstrip("/")
        links.append(name)
        out.append(Spec("symlink", name, link=target))
    return out


@FUZZ
@given(entries=link_graphs(), fmt=st.sampled_from(["tar", "zip"]))
def test_link_graphs(entries: list[Spec], fmt: str) -> None:
    data = zip_archive(entries) if fmt == "zip" else tar_archive(entries, tarfile.PAX_FORMAT, {}, False)
    check_archive(data, f"links.{fmt}")


@settings(FUZZ, max_examples=60)
@given(count=st.integers(1, 200), records=st.integers(0, 3000), identical=st.booleans())
def test_metadata_floods(count: int, records: int, identical: bool) -> None:
    """A global header of many records and many (identical) tiny members: refused by a limit
    or unpacked; the reader never copies the global records per member (it keeps none)."""
    global_pax = {f"k{i}": "v" for i in range(records)}
    members = [tarfile.TarInfo("pkg/" if identical else f"pkg/d{i}/") for i in range(count)]
    for info in members:
        info.type = tarfile.DIRTYPE
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers=global_pax) as tf:
        for info in members:
            tf.addfile(info)
        file_info = tarfile.TarInfo("pkg/f")
        file_info.size = 1
        tf.addfile(file_info, io.BytesIO(b"f"))
    check_archive(buf.getvalue(), "flood.tar")
