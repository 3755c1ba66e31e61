"""The one-pass info dict encoder writes exactly what the generic bencoder writes for the
reference :func:`treeseed.hashing.bt2.info_dict` (the package hash depends on every byte)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from treeseed.hashing.bencode import bencode
from treeseed.hashing.bt2 import (
    BLOCK_SIZE,
    hash_bytes,
    hash_of_info,
    info_bytes,
    info_dict,
    info_hash,
    torrent_bytes,
)
from treeseed.package import Entry
from treeseed.swarm.torrents import _leaves_bytes

_NAMES = st.sampled_from(["a", "b", "a.txt", "a-b", "Z", "é", "0", "ab", "a b", "\u00e9t\u00e9", "é.x"])
_SIZES = st.sampled_from([0, 1, BLOCK_SIZE, BLOCK_SIZE + 1, 3 * BLOCK_SIZE + 7])


@st.composite
def trees(draw: st.DrawFn) -> tuple[list[Entry], dict]:
    """Paths that never put a file where another path needs a directory, and a few symlinks
    to other paths of the tree (relative to the link's own directory)."""
    paths = draw(st.lists(st.lists(_NAMES, min_size=1, max_size=4).map("/".join),
                          max_size=25, unique=True))
    paths = [p for p in paths if not any(q.startswith(p + "/") for q in paths)]
    entries, digests = [], {}
    for i, path in enumerate(paths):
        if i % 5 == 4 and i > 0:
            target = "../" * path.count("/") + paths[0]
            entries.append(Entry(path, "symlink", target=target))
            continue
        size = draw(_SIZES)
        entries.append(Entry(path, "file", size, draw(st.booleans())))
        digests[path] = hash_bytes(bytes([i % 251]) * size)
    return draw(st.permutations(entries)), digests


@settings(max_examples=300, deadline=None)
@given(trees())
def test_info_bytes_equal_the_generic_encoding(tree: tuple[list[Entry], dict]) -> None:
    entries, digests = tree
    expected = bencode(info_dict(entries, digests, "src"))
    info = info_bytes(entries, digests, "src")
    assert info == expected
    assert hash_of_info(info) == info_hash(entries, digests, "src")
    layers = {d.root: d.piece_layer for d in digests.values() if d.piece_layer and d.root}
    whole = bencode({"info": info_dict(entries, digests, "src"), "piece layers": layers})
    assert torrent_bytes(entries, digests, "src") == whole
    assert torrent_bytes(entries, digests, "src", info) == whole
    leaves = {d.root: d.leaves for d in digests.values() if d.root and d.leaves}
    assert _leaves_bytes(digests) == bencode(leaves)


def test_empty_tree() -> None:
    assert info_bytes([], {}) == bencode(info_dict([], {}))
