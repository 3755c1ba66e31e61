"""A package (or a kept archive) as a NAR that is never built: a length, and any byte range on demand.

``treeseed serve`` answers Nix's binary-cache protocol (:mod:`treeseed.interop.nixcache`), whose
NARs are the package trees themselves in Nix's serialisation. Writing NAR files next to the
cache would double its size; instead :class:`NarLayout` walks the framing
(:func:`treeseed.hashing.nar.nar_pieces`) from the package's entries alone, so the exact length
is known before a byte is sent (``NarSize`` in the narinfo, ``Content-Length``) and a range maps
onto framing bytes, made when needed, and :class:`~treeseed.tarstream.FileSlice` references the
server copies from disk with ``sendfile``, as it does for the tar (:mod:`treeseed.tarstream`).

A range is found by walking the framing from the start and skipping what lies before it (no
file before the range is opened): a walk costs a few microseconds per entry, and Nix asks for a
NAR in one request and resumes rarely, so no offsets are kept (the tar keeps two per entry).

>>> layout = NarLayout.for_tree(Path("p/bt2-..."), entries)  # doctest: +SKIP
>>> layout.size, b"".join(read(p) for p in layout.pieces(0, 100))  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from .hashing.nar import flat_nar_pieces, nar_pieces
from .package import Entry
from .tarstream import FileSlice


class NarLayout:
    """Where each byte of a NAR comes from: framing bytes, or a slice of a file below ``root``."""

    def __init__(self, root: Path, walk: Callable[[], Iterator[bytes | Entry]]) -> None:
        self.root = os.fsencode(root)
        self._walk = walk
        self.size = sum(len(p) if isinstance(p, bytes) else p.size for p in walk())

    @classmethod
    def for_tree(cls, root: Path, entries: Sequence[Entry], source: str = "") -> NarLayout:
        """The NAR of the package whose ``entries`` lie below ``root``: what Nix's
        ``nix-store --dump`` prints for the same tree in the store."""
        return cls(root, lambda: nar_pieces(entries, source))

    @classmethod
    def for_file(cls, path: Path, size: int, executable: bool = False) -> NarLayout:
        """The NAR of one regular file of ``size`` bytes: a flat fixed-output store path."""
        entry = Entry(path.name, "file", size, executable)
        return cls(path.parent, lambda: flat_nar_pieces(entry))

    def pieces(self, start: int = 0, stop: int | None = None) -> Iterator[bytes | FileSlice]:
        """The bytes ``[start, stop)`` of the NAR, in order, as bytes and file slices. A file's
        slice carries the size it was listed with, so the copier refuses a file that changed."""
        stop = self.size if stop is None else stop
        if not 0 <= start <= stop <= self.size:
            raise ValueError(f"range {start}-{stop} is outside the NAR's {self.size} bytes")
        pos = 0
        for piece in self._walk():
            if pos >= stop:
                return
            length = len(piece) if isinstance(piece, bytes) else piece.size
            end = pos + length
            if end > start:
                a, b = max(start, pos) - pos, min(stop, end) - pos
                if isinstance(piece, bytes):
                    yield piece[a:b]
                elif b > a:
                    path = os.path.join(self.root, os.fsencode(piece.path))
                    yield FileSlice(path, piece.size, a, b - a)
            pos = end
