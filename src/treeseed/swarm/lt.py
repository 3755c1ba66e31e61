"""The one place treeseed imports libtorrent.

libtorrent is a dependency of treeseed (pyproject.toml), but it is a native module: a platform
with no wheel for it still installs and runs treeseed. Everything but the swarm keeps working
there; whatever needs the swarm calls :func:`libtorrent` and gets :class:`SwarmUnavailable`,
one line that says what is missing and what to do, instead of a traceback.
"""

from __future__ import annotations

from types import ModuleType

from ..errors import TreeseedError


class SwarmUnavailable(TreeseedError):
    """libtorrent cannot be imported on this platform, so the BitTorrent swarm cannot run."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(
            "the BitTorrent swarm needs the libtorrent Python package, which is not available "
            f"for this platform ({reason}); install it (pip install libtorrent) or run without "
            "--torrent")


def libtorrent() -> ModuleType:
    """The libtorrent module (imported on first use: most commands never touch the swarm), or
    :class:`SwarmUnavailable` when this platform has none that imports."""
    try:
        import libtorrent as lt
    except (ImportError, OSError) as exc:  # no wheel, or one whose native library will not load
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise SwarmUnavailable(reason) from None
    return lt
