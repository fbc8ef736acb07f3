"""How far deflated data inflates, without holding the result: the guard against bombs.

Deflated Explicit VR Little Endian (PS3.5 A.5) is raw deflate. pydicom and pynetdicom
inflate it whole and without a bound, so a few MB can become many GB; both the DICOM
service (on receipt) and preprocessing (before pydicom reads a file) count first.
"""

from __future__ import annotations

import zlib

CHUNK = 1 << 20


def inflated_size(deflated: bytes | memoryview, limit: int) -> int:
    """Bytes ``deflated`` inflates to, counted in 1 MiB chunks that are dropped; once past
    ``limit`` counting stops and the count (> limit) is returned. zlib.error if corrupt.

    The input goes in 1 MiB pieces too: zlib copies whatever input is left unconsumed at
    each call, so handing it all at once copied the whole rest of it for every MiB out."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    data, size = memoryview(deflated), 0
    for start in range(0, len(data), CHUNK):
        pending: bytes | memoryview = data[start : start + CHUNK]
        while pending and size <= limit:
            size += len(inflater.decompress(pending, CHUNK))
            pending = inflater.unconsumed_tail
        if size > limit:
            return size
    return size + len(inflater.flush(CHUNK))
