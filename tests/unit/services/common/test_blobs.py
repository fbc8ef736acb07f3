"""Blob paths come only from our report ids; writes are atomic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.common.blobs import BlobStore
from services.common.store import new_report_id


def test_round_trips_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    report_id = new_report_id()
    blobs.put_json(report_id, "draft.json", {"a": [1, 2]})
    blobs.put_array(report_id, "model_input.npy", np.arange(6, dtype=np.float32).reshape(2, 3))
    blobs.put_bytes(report_id, "overlays/sentence-00.png", b"png")
    assert blobs.get_json(report_id, "draft.json") == {"a": [1, 2]}
    assert blobs.get_array(report_id, "model_input.npy").tolist() == [[0, 1, 2], [3, 4, 5]]
    files = sorted(p.name for p in blobs.folder(report_id).rglob("*") if p.is_file())
    assert files == ["draft.json", "model_input.npy", "sentence-00.png"]


@pytest.mark.parametrize("report_id", ["../etc", "RPT-../../x", "RPT-abc", ""])
def test_only_our_report_ids_make_paths(tmp_path: Path, report_id: str) -> None:
    with pytest.raises(ValueError):
        BlobStore(tmp_path).folder(report_id)


@pytest.mark.parametrize("name", ["../x.json", "a/b.json", ".hidden"])
def test_blob_names_stay_in_the_report_folder(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError):
        BlobStore(tmp_path).path(new_report_id(), name)
