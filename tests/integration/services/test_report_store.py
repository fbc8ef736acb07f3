"""The report store on both databases it runs on: SQLite (embedded default) and a real
PostgreSQL server (production). Migrations, idempotency, conditional status changes and
the append-only audit trail are enforced by the database, so they are tested on each."""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy.exc import DBAPIError, OperationalError

from services.common.schemas import ReportStatus
from services.common.store import Store

pytestmark = pytest.mark.integration
POSTGRES_ADMIN = os.environ.get("RADREPORT_TEST_POSTGRES_URL",
                                "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'reports.db'}"
        yield _migrated(url)
        return
    admin = sqlalchemy.create_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
    name = f"radreport_test_{secrets.token_hex(4)}"
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"CREATE DATABASE {name}")
    except OperationalError as err:
        pytest.skip(f"no PostgreSQL server at {POSTGRES_ADMIN} ({type(err).__name__}); "
                    "set RADREPORT_TEST_POSTGRES_URL")
    store = _migrated(POSTGRES_ADMIN.rsplit("/", 1)[0] + f"/{name}")
    yield store
    store.engine.dispose()
    with admin.connect() as connection:
        connection.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")
    admin.dispose()


def _migrated(url: str) -> Store:
    store = Store(url)
    store.migrate()
    store.migrate()  # every service start runs it: must be a no-op the second time
    return store


def test_a_study_is_reported_once_per_model_unless_forced(store: Store) -> None:
    first, created = store.create_or_get("S-1", "m:1", {"clinical_indication": "cough"})
    again, created_again = store.create_or_get("S-1", "m:1", {})
    assert created and not created_again and again.id == first.id
    other_model, created_other = store.create_or_get("S-1", "m:2", {})
    assert created_other and other_model.id != first.id
    forced, created_forced = store.create_or_get("S-1", "m:1", {}, force=True)
    assert created_forced and forced.id != first.id
    assert [r.id for r in store.list_for_study("S-1")] == [first.id, other_model.id, forced.id]
    assert store.create_or_get("S-1", "m:1", {})[0].id == forced.id


def test_concurrent_submissions_of_one_study_create_one_report(store: Store) -> None:
    ids: list[str] = []
    created: list[bool] = []

    def submit() -> None:
        report, was_created = store.create_or_get("S-RACE", "m:1", {})
        ids.append(report.id)
        created.append(was_created)

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == 1 and created.count(True) == 1


def test_a_finished_report_never_changes_again(store: Store) -> None:
    report, _ = store.create_or_get("S-2", "m:1", {})
    assert store.set_status(report.id, ReportStatus.inferring)
    assert store.complete(report.id, {"findings": "x"}, 1234)
    assert not store.complete(report.id, {"findings": "y"}, 1)  # a redelivered last stage
    assert not store.set_status(report.id, ReportStatus.failed, "late failure")
    stored = store.get(report.id)
    assert stored is not None and stored.status == "completed"
    assert stored.result == {"findings": "x"} and stored.processing_time_ms == 1234
    assert [c.status for c in store.history(report.id)] == ["queued", "inferring", "completed"]


def test_attempts_are_counted_per_stage(store: Store) -> None:
    report, _ = store.create_or_get("S-3", "m:1", {})
    assert [store.count_attempt(report.id, "infer") for _ in range(3)] == [1, 2, 3]
    assert store.count_attempt(report.id, "format") == 1


def test_the_audit_trail_is_append_only_in_the_database(store: Store) -> None:
    store.audit("radiologist-1", "read", "report", "RPT-1", "success", "10.0.0.1")
    (event,) = store.audit_events("RPT-1")
    assert (event.actor, event.action, event.outcome, event.client) == (
        "radiologist-1", "read", "success", "10.0.0.1")
    for statement in ("UPDATE audit_events SET actor = 'someone else'",
                      "DELETE FROM audit_events"):
        with pytest.raises(DBAPIError, match="append-only"), store.engine.begin() as connection:
            connection.exec_driver_sql(statement)
    assert len(store.audit_events("RPT-1")) == 1
