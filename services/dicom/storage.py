"""Instances on disk before success: atomic, fsynced, named by sanitized UIDs only.

``<root>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm``. A UID is accepted only if it is a
valid DICOM UID (PS3.5 9.1: digits and dots, at most 64 characters), so no header text can
choose a path. A second copy of an instance finds its file and is not written again.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from services.common.blobs import write_atomic

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


class BadUidError(ValueError):
    pass


class OutOfSpaceError(OSError):
    pass


def sanitized_uid(value: object) -> str:
    uid = str(value or "").strip().rstrip("\0")
    if len(uid) > 64 or not _UID.match(uid):
        raise BadUidError("not a valid DICOM UID")
    return uid


def instance_path(root: Path, study_uid: str, series_uid: str, sop_uid: str) -> Path:
    return (root / sanitized_uid(study_uid) / sanitized_uid(series_uid)
            / f"{sanitized_uid(sop_uid)}.dcm")


def write_instance(path: Path, data: bytes, min_free_bytes: int) -> bool:
    """Write ``data`` to ``path`` durably; False if the instance was already stored."""
    if path.is_file():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    if shutil.disk_usage(path.parent).free - len(data) < min_free_bytes:
        raise OutOfSpaceError("storage is below its free-space floor")
    write_atomic(path, data, sync_directory=True)
    return True
