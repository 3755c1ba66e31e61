"""The swarm: packages fetched from and seeded to BitTorrent peers by their bt2 hash.

* :mod:`.torrents`  the .torrent and block hashes kept in the cache for each package
* :mod:`.session`   one libtorrent session configured from the settings: seed, download
* :mod:`.fetch`     fetch by hash (through the running seeder, or a short-lived session);
                    the race between the swarm and the origin
* :mod:`.seeder`    the long-running seeder, one per cache, shared over a local socket
* :mod:`.stats`     upload counts per package: the popularity figure
* :mod:`.status`    the seeder's status page on 127.0.0.1

libtorrent is imported only when a session starts: most commands never need it.
"""
