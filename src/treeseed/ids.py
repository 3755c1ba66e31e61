"""What a package hash looks like, in a module light enough for the no-op path to import.

``bt2-`` followed by 64 lowercase hex digits: the BitTorrent v2 info-hash of the package
(:mod:`treeseed.hashing.bt2` computes it).
"""

from __future__ import annotations

import re

PREFIX = "bt2-"
BT2_PATTERN = re.compile(r"bt2-[0-9a-f]{64}")

#: Every tree format, in the order ``treeseed hash --json`` prints them (here, not in
#: :mod:`treeseed.hashing`, so that the command line can name them without importing hashers).
TREE_FORMATS = ("bt2", "zig", "nar", "git", "swhid", "ipfs")
#: What ``--format`` accepts: the tree formats plus the digest of an archive's raw bytes.
ALL_FORMATS = TREE_FORMATS + ("archive-sha256",)


def is_bt2(value: str) -> bool:
    return BT2_PATTERN.fullmatch(value) is not None


def hex_of(package_hash: str) -> str:
    """The 64 hex digits of a ``bt2-`` hash (accepting bare hex too)."""
    return package_hash[len(PREFIX):] if package_hash.startswith(PREFIX) else package_hash
