"""The blob store: a report's images and products as files under one root.

Paths are built from report ids we generate (never from client or header text), and every
write is atomic (temporary file, fsync, rename), so a reader or a redelivered task never
sees half a file.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

_REPORT_ID = re.compile(r"^RPT-[0-9a-f]{32}$")


def write_atomic(path: Path, data: bytes, sync_directory: bool = False) -> Path:
    """Temporary file, fsync, rename; ``sync_directory`` also makes the rename itself
    survive a power cut (for data we acknowledge to a peer, like a C-STORE)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if sync_directory:
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    return path


class BlobStore:
    """``<root>/reports/<report_id>/...``: one folder per report."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def folder(self, report_id: str) -> Path:
        if not _REPORT_ID.match(report_id):
            raise ValueError("not a report id")
        return self.root / "reports" / report_id

    def path(self, report_id: str, name: str) -> Path:
        if "/" in name.replace("overlays/", "", 1) or name.startswith("."):
            raise ValueError(f"bad blob name {name!r}")
        return self.folder(report_id) / name

    def remove(self, report_id: str) -> None:
        """Delete a report's folder (a report discarded before it was queued)."""
        shutil.rmtree(self.folder(report_id), ignore_errors=True)

    def put_bytes(self, report_id: str, name: str, data: bytes) -> Path:
        return write_atomic(self.path(report_id, name), data)

    def put_json(self, report_id: str, name: str, value: Any) -> Path:
        return self.put_bytes(report_id, name, json.dumps(value).encode())

    def get_json(self, report_id: str, name: str) -> Any:
        return json.loads(self.path(report_id, name).read_bytes())

    def put_array(self, report_id: str, name: str, array: np.ndarray) -> Path:
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        return self.put_bytes(report_id, name, buffer.getvalue())

    def get_array(self, report_id: str, name: str) -> np.ndarray:
        return np.asarray(np.load(self.path(report_id, name), allow_pickle=False))

    def put_unit_image(self, report_id: str, name: str, image: np.ndarray) -> Path:
        """An image in [0, 1], kept in 16 bits (a quarter of float64, no visible loss)."""
        return self.put_array(report_id, name,
                              np.round(np.clip(image, 0, 1) * 65535).astype(np.uint16))

    def get_unit_image(self, report_id: str, name: str) -> np.ndarray:
        return self.get_array(report_id, name).astype(np.float32) / 65535.0

    def exists(self, report_id: str, name: str) -> bool:
        return self.path(report_id, name).is_file()
