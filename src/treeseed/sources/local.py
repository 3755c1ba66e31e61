"""Local sources: ``file://`` URLs and plain paths, to an archive or a directory."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..errors import FetchError
from . import AnnounceFn, Fetched, ProgressFn


class LocalSource:
    """A file or directory on this machine; nothing is copied until the pipeline needs it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = local_path(url)
        self.canonical = self.path.absolute().as_uri()

    def fetch(self, work: Path, progress: ProgressFn | None = None,
              announce: AnnounceFn | None = None) -> Fetched:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            raise FetchError(f"{self.url}: no such file or directory") from None
        except OSError as exc:
            raise FetchError(f"{self.url}: cannot read ({exc.strerror})") from None
        if self.path.is_dir():
            return Fetched("dir", self.path)
        if not os.access(self.path, os.R_OK):
            raise FetchError(f"{self.url}: permission denied")
        return Fetched("archive", self.path, bytes_transferred=st.st_size)


def local_path(url: str) -> Path:
    """The filesystem path of a ``file://`` URL (percent-decoded) or a plain path."""
    if url.lower().startswith("file://"):
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise FetchError(f"{url}: file:// URLs must name a local path (no host)")
        return Path(unquote(parts.path))
    return Path(url).expanduser()
