"""services.common.deflate.inflated_size: the exact inflated size of ordinary data fed in
many pieces, an early stop just past the limit for a bomb, and corrupt data refused."""

from __future__ import annotations

import random
import zlib

import pytest

from services.common.deflate import CHUNK, inflated_size


def _deflate(data: bytes, level: int = 6) -> bytes:
    compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def test_the_exact_size_of_data_larger_than_one_input_piece() -> None:
    data = random.Random(0).randbytes(4 * CHUNK)  # incompressible: several input pieces
    deflated = _deflate(data)
    assert len(deflated) > 3 * CHUNK
    assert inflated_size(deflated, 10 * len(data)) == len(data)
    assert inflated_size(memoryview(deflated), 10 * len(data)) == len(data)


def test_a_bomb_is_counted_only_just_past_the_limit() -> None:
    bomb = _deflate(bytes(200_000_000), level=9)
    counted = inflated_size(bomb, 8 * CHUNK)
    assert 8 * CHUNK < counted <= 9 * CHUNK


def test_empty_and_corrupt_input() -> None:
    assert inflated_size(b"", 10) == 0
    with pytest.raises(zlib.error):
        inflated_size(b"\xff" * 64, 1 << 20)
