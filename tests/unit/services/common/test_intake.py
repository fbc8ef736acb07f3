"""Accepting a study never leaves half of it behind: a store that fails while the report
row is written (a SQLite trigger aborting the insert, as a dying database would) leaves
neither a row nor the image written for it."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from services.common.blobs import BlobStore
from services.common.intake import accept_study
from services.common.store import Store


def test_a_failed_insert_leaves_no_image_and_no_row(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'reports.db'}")
    store.migrate()
    with store.session() as session:
        session.execute(text("CREATE TRIGGER gone BEFORE INSERT ON reports "
                             "BEGIN SELECT RAISE(ABORT, 'the disk went away'); END"))
    blobs = BlobStore(tmp_path / "blobs")
    with pytest.raises(Exception, match=r"could not create|disk went away"):
        accept_study(store, blobs, study_id="S-1", model_version="m:1", request={},
                     image=b"\x89PNG", image_format="png", metadata={}, source="api")
    assert store.list_for_study("S-1") == []
    reports = tmp_path / "blobs" / "reports"
    assert not reports.exists() or not any(reports.iterdir())
