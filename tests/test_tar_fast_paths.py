"""The unpacker's fast paths compute exactly what the plain code they replace computes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from treeseed.hashing.bt2 import BLOCK_SIZE, MerkleHasher, digest_block
from treeseed.tar import _byte_sum


@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=512, max_size=512) | st.sampled_from([bytes(512), b"\xff" * 512, b"\x80" * 512]))
def test_header_byte_sum_is_exact(block: bytes) -> None:
    assert _byte_sum(block) == sum(block)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=BLOCK_SIZE) | st.sampled_from([b"", b"x" * BLOCK_SIZE]))
def test_one_block_digest_equals_the_streaming_hasher(data: bytes) -> None:
    hasher = MerkleHasher()
    hasher.update(data)
    assert digest_block(data) == hasher.finish()
