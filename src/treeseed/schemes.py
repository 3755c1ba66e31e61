"""Every URL scheme treeseed knows, in one table: what it is, and which source reads it.

In the manner of Nix's ``InputScheme``: a scheme says once whether it reaches the network or
this machine, and which module of :mod:`treeseed.sources` brings its bytes. Everything else
asks here: ``--offline`` (network schemes are refused), the manifest trust rule (a manifest
that came from the network may name only network URLs), the fetcher dispatch and the
sharing rule (packages from local sources are not published by default).

>>> scheme_of("git+https://example.org/r.git#v1").network
True
>>> scheme_of("../zlib-1.3.tar.gz").name
'path'

The built-in fetcher imports this module before its first announcement, so it stays plain:
no dataclasses, no typing at run time.
"""

from __future__ import annotations

import os

from .errors import FetchError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .sources import Source


class Scheme:
    """One URL scheme: its name, whether it reaches the network, and the module of
    :mod:`treeseed.sources` that reads it."""

    __slots__ = ("name", "network", "module")

    def __init__(self, name: str, network: bool, module: str) -> None:
        self.name = name
        self.network = network
        self.module = module

    def __repr__(self) -> str:
        return f"Scheme({self.name!r}, network={self.network})"


#: Every scheme, by the text before ``://`` (``path``: a plain path, no ``://``).
SCHEMES: dict[str, Scheme] = {s.name: s for s in (
    Scheme("https", True, "http"),
    Scheme("http", True, "http"),
    Scheme("git+https", True, "git"),
    Scheme("git+http", True, "git"),
    Scheme("ipfs", True, "ipfs"),
    Scheme("file", False, "local"),
    Scheme("git+file", False, "git"),
    Scheme("path", False, "local"),
)}

#: What error messages list as supported.
SUPPORTED = ("http://, https://, git+https://, git+http://, ipfs://, file://, git+file:// and "
             "local paths")


def scheme_name(url: str) -> str:
    """The text before ``://``, lowercased; ``path`` for a plain path. Configured fetchers
    (``[fetchers]``) are keyed by this name."""
    return url.split("://", 1)[0].lower() if "://" in url else "path"


def scheme_of(url: str) -> Scheme:
    """The scheme of ``url``; an unknown one is an error that lists the known ones."""
    name = scheme_name(url)
    if name in SCHEMES:
        return SCHEMES[name]
    if name.startswith("git+"):
        raise FetchError(f"{url}: unsupported git transport {name[4:]!r}; treeseed fetches "
                         "git+https://, git+http:// and git+file:// URLs")
    raise FetchError(f"{url}: unsupported URL scheme {scheme_name(url)!r}; treeseed fetches "
                     f"{SUPPORTED}, and runs a configured fetcher for any other scheme "
                     "([fetchers], docs/fetcher-protocol.md)")


def is_network(url: str) -> bool:
    """Does ``url`` reach the network? Unknown schemes count as network: whatever a configured
    fetcher does with them, ``--offline`` and the manifest trust rule must not assume less."""
    known = SCHEMES.get(scheme_name(url))
    return known.network if known is not None else True


def is_http(url: str) -> bool:
    """An ``http(s)://`` URL: what a mirror, a web seed or a tracker must be."""
    return scheme_name(url) in ("http", "https")


def absolute(url: str) -> str:
    """A plain path made absolute (``~`` expanded); URLs unchanged. Fetchers run in their
    own work directories, so a relative path must not reach them."""
    if "://" in url:
        return url
    return os.path.abspath(os.path.expanduser(url))


def open_source(url: str) -> Source:
    """The source object that reads ``url`` (imports only that source's module: a plain
    ``import``, which ``python -X importtime`` and the start-up tests can see)."""
    module = scheme_of(url).module
    if module == "http":
        from .sources.http import HttpSource

        return HttpSource(url)
    if module == "git":
        from .sources.git import GitSource

        return GitSource(url)
    if module == "ipfs":
        from .sources.ipfs import IpfsSource

        return IpfsSource(url)
    from .sources.local import LocalSource

    return LocalSource(url)
