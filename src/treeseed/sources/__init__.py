"""Where package bytes come from: one module per URL scheme, one small interface.

A :class:`Source` knows how to bring its bytes into a private work directory and says what it
brought: an archive file (with its SHA-256 when it was computed on the way) or a directory.
The fetch pipeline (:mod:`treeseed.fetch`) does everything after that: unpack, rules, hash,
verify, install. New schemes register in :data:`treeseed.schemes.SCHEMES` without touching the pipeline.

>>> src = open_source("https://example.org/zlib-1.3.1.tar.gz")  # doctest: +SKIP
>>> got = src.fetch(workdir, progress=None)                       # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

# The built-in fetcher imports this module on its way to a git ref lookup, which decides
# whether `treeseed update` has anything to do: no typing or dataclasses (with inspect) here,
# they would be a third of that start-up. TYPE_CHECKING is typing's, without importing typing.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Literal, Protocol

#: Called with (bytes so far, total bytes or None) while a source transfers data.
ProgressFn = Callable[[int, "int | None"], None]
#: Called with (format, value) the moment a source knows a hash of what it is fetching, e.g.
#: ("git-commit", sha) after resolving a ref, before any object is downloaded.
AnnounceFn = Callable[[str, str], None]


class Fetched:
    """What a source delivered.

    ``archive``: an archive file (in the work directory, or a local file read in place).
    ``dir``: a directory that is not ours (a local path): the pipeline copies what it keeps.
    ``tree``: a directory inside the work directory that the pipeline may take over and trim in
    place (a git checkout with ``.git`` already removed).
    ``revision`` is what the source resolved its reference to (a git commit id), if anything.
    """

    def __init__(self, kind: Literal["archive", "dir", "tree"], path: Path,
                 archive_sha256: str | None = None, bytes_transferred: int = 0,
                 revision: str | None = None) -> None:
        self.kind = kind
        self.path = path
        self.archive_sha256 = archive_sha256
        self.bytes_transferred = bytes_transferred
        self.revision = revision

    def __repr__(self) -> str:
        return (f"Fetched({self.kind!r}, {self.path!r}, archive_sha256={self.archive_sha256!r}, "
                f"bytes_transferred={self.bytes_transferred!r}, revision={self.revision!r})")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Fetched) and vars(self) == vars(other)


if TYPE_CHECKING:

    class Source(Protocol):
        url: str
        #: The URL as recorded in the index: absolute, so it still means something elsewhere.
        canonical: str

        def fetch(self, work: Path, progress: ProgressFn | None = None,
                  announce: AnnounceFn | None = None) -> Fetched: ...


def open_source(url: str) -> Source:
    """Pick the source for ``url`` from the scheme registry (:mod:`treeseed.schemes`)."""
    from ..schemes import open_source as from_registry

    return from_registry(url)
