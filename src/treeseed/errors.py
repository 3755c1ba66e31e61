"""Every error treeseed raises on purpose.

The CLI prints ``treeseed: error: <message>`` and exits 1 for any :class:`TreeseedError`, so each
message must stand alone: it names what failed (the source, the entry, the file) and, where the
user can do something, what to do. A Python traceback reaching the user is a bug.
"""

from __future__ import annotations


class TreeseedError(Exception):
    """Base class: a failure the user can understand from its message alone."""


class BadPackage(TreeseedError):
    """A tree or archive entry breaks the package rules (docs/package-format.md).

    ``source`` is where the tree came from (an URL, an archive, a directory), ``entry`` the
    offending path as the source spelled it, ``problem`` what is wrong with it.
    """

    def __init__(self, source: str, entry: str, problem: str) -> None:
        self.source = source
        self.entry = entry
        self.problem = problem
        where = f"{source}: entry {entry!r}" if entry else source
        super().__init__(f"{where}: {problem}")


class UnpackError(BadPackage):
    """An archive cannot be unpacked safely: corrupt, truncated, or hostile."""


class ManifestError(TreeseedError):
    """A manifest (treeseed.toml or build.zig.zon) is malformed.

    The message names the file, the line when known, and the key.
    """

    def __init__(self, path: str, problem: str, line: int | None = None, key: str | None = None):
        self.path = path
        self.line = line
        self.key = key
        where = f"{path}:{line}" if line else path
        what = f" (key {key!r})" if key else ""
        super().__init__(f"{where}{what}: {problem}")


class HashMismatch(TreeseedError):
    """The fetched tree does not have the hash the caller asked for; nothing was cached."""

    def __init__(self, source: str, expected: str, actual: str) -> None:
        self.source = source
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"{source}: hash mismatch: expected {expected}, got {actual}; "
            "the cache is unchanged (if the source changed on purpose, use the new hash)"
        )


class FetchError(TreeseedError):
    """A source could not deliver its bytes (network, HTTP status, missing file, ...)."""


class AliasMismatch(FetchError):
    """A hint (a mirror's ``/alias`` or a DHT item) named a package that does not have the
    other format's hash the user asked for; it was caught before the install."""

    def __init__(self, package_hash: str, fmt: str, wanted: str, actual: str | None) -> None:
        self.package_hash = package_hash
        self.fmt = fmt
        self.wanted = wanted
        self.actual = actual
        super().__init__(f"{package_hash} has {fmt} hash {actual}, not {wanted}; "
                         "nothing was installed")


class CacheError(TreeseedError):
    """The cache directory or its index is unusable, or a cache operation failed."""
