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
    ``limit`` counting stops and the count (> limit) is returned. zlib.error if corrupt."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    size, pending = 0, bytes(deflated)
    while pending and size <= limit:
        size += len(inflater.decompress(pending, CHUNK))
        pending = inflater.unconsumed_tail
    if size <= limit:
        size += len(inflater.flush(CHUNK))
    return size
