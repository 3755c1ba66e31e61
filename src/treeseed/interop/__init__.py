"""treeseed as the fetcher for other ecosystems' package managers, without changing them.

* :mod:`.zig`: ``treeseed zig fetch`` reads a ``build.zig.zon``, fetches every dependency
  through treeseed (cache, mirrors, swarm, origin), checks it against its Zig hash and puts it
  where that Zig version looks, so ``zig build`` then needs no network.
* :mod:`.nix`: ``treeseed nix prefetch`` prints what ``nix-prefetch-url [--unpack]`` prints,
  fetching through treeseed.

Both only read what they need from the fetch pipeline (:func:`treeseed.fetch.fetch`) and the
hash formats (:mod:`treeseed.hashing`); nothing here changes how the cache works.
"""
