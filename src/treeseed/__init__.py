"""treeseed: fetch source packages by content hash.

The library is the product; the ``treeseed`` command is a thin layer over it. Start with
:func:`treeseed.fetch.fetch` (the pipeline), :class:`treeseed.cache.Cache` (the global cache)
and :func:`treeseed.hashing.hash_tree` (every tree hash format).
"""

__version__ = "0.1.0"


def __getattr__(name: str):  # `treeseed.Build` without importing the runner on every start
    if name == "Build":
        from .build import Build

        return Build
    raise AttributeError(f"module 'treeseed' has no attribute {name!r}")
