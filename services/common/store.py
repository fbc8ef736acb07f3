"""The durable report store: reports, their status history and an append-only audit trail.

SQLAlchemy over PostgreSQL in production and SQLite as the embedded default; the schema is
owned by Alembic migrations (``services/common/migrations``), applied by ``Store.migrate``.

Idempotency: a report's ``idempotency_key`` is ``study_id|model_version`` and is unique, so
resubmitting a study finds the existing report; a forced regeneration clears the old
report's key (it stays readable) and takes the key for the new one. Status changes are
conditional updates, so a redelivered task can never move a finished report again.
"""

from __future__ import annotations

import fcntl
import json
import logging
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    delete,
    event,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from services.common.schemas import ReportStatus

MIGRATIONS = Path(__file__).parent / "migrations"
AUDIT_LOG = logging.getLogger("radreport.audit")
MIGRATION_LOCK_ID = 7_270_418_001  # any constant shared by every radreport process
FINISHED = (ReportStatus.completed.value, ReportStatus.failed.value)
# why a report failed: its input was refused (the client's to fix), or a stage kept failing
Failure = Literal["refused", "error"]


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_report_id() -> str:
    return f"RPT-{secrets.token_hex(16)}"


class Base(DeclarativeBase):
    pass


class Report(Base):
    __tablename__ = "reports"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    study_id: Mapped[str] = mapped_column(String(128), index=True)
    model_version: Mapped[str] = mapped_column(String(128))
    idempotency_key: Mapped[str | None] = mapped_column(String(300), unique=True)
    status: Mapped[str] = mapped_column(String(32), index=True)
    status_reason: Mapped[str | None] = mapped_column(Text)
    request: Mapped[dict[str, Any]] = mapped_column(JSON)  # what the client asked, no pixels
    source: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # input blob, format, UIDs
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    processing_time_ms: Mapped[int | None] = mapped_column(Integer)
    attempts: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)  # per stage
    # Bumped by each re-drive; a stage message of an older generation is stale and ignored.
    generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    timings: Mapped[dict[str, float] | None] = mapped_column(JSON)  # ms per finished stage
    review_status: Mapped[str] = mapped_column(String(16), default="draft")  # |signed|amended
    reviewed_text: Mapped[dict[str, str] | None] = mapped_column(JSON)  # findings, impression
    signed_by: Mapped[str | None] = mapped_column(String(128))
    signed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    edit_distance: Mapped[float | None] = mapped_column(Float)  # vs the AI draft, 0..1
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class StatusChange(Base):
    __tablename__ = "report_status_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    report_id: Mapped[str] = mapped_column(ForeignKey("reports.id"), index=True)
    status: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AuditEvent(Base):
    """Who did what to which resource, when, from where, and how it ended. Never updated."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32))  # create | read | update | sign | export
    resource_type: Mapped[str] = mapped_column(String(32))
    resource_id: Mapped[str | None] = mapped_column(String(128), index=True)
    outcome: Mapped[str] = mapped_column(String(32))  # success | denied | not_found | error
    client: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)


def _study_key(study_id: str, model_version: str) -> str:
    """The idempotency key: one current report per study and model version."""
    return f"{study_id}|{model_version}"


def _rowcount(result: Any) -> int:
    """Rows an UPDATE matched (a CursorResult's count; typed loosely by SQLAlchemy)."""
    return int(result.rowcount)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL and a busy timeout: the gateway and every worker write the same file."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def migrate(self) -> None:
        """Bring the schema to the newest migration (idempotent; safe on every start).

        Services start together, so migrations take a lock first: an advisory lock on
        PostgreSQL, a lock file beside the database on SQLite.
        """
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        with self._migration_lock(), self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_ID})")
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    @contextmanager
    def _migration_lock(self) -> Iterator[None]:
        path = self.url.removeprefix("sqlite:///") if self.url.startswith("sqlite") else ""
        if not path or path == ":memory:":
            yield
            return
        with open(f"{path}.migrate.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")

    # --- reports --------------------------------------------------------------------

    def create_or_get(self, study_id: str, model_version: str, request: dict[str, Any],
                      force: bool = False, report_id: str | None = None,
                      source: dict[str, Any] | None = None) -> tuple[Report, bool]:
        """The study's current report for this model, or a new queued one; (report, created).

        A new report may be given its id and source, so that a row never exists without the
        input it names (the caller writes the input under that id first)."""
        key = _study_key(study_id, model_version)
        for _ in range(3):  # a concurrent create of the same study wins; we then read it
            try:
                with self.session() as session:
                    existing = session.scalars(
                        select(Report).where(Report.idempotency_key == key)).first()
                    if existing is not None and not force:
                        return existing, False
                    if existing is not None:
                        existing.idempotency_key = None
                        session.flush()
                    now = utcnow()
                    report = Report(id=report_id or new_report_id(), study_id=study_id,
                                    model_version=model_version, idempotency_key=key,
                                    status=ReportStatus.queued.value, request=request,
                                    source=source or {}, attempts={}, created_at=now,
                                    updated_at=now)
                    session.add(report)
                    session.add(StatusChange(report_id=report.id, status=report.status, at=now))
                    return report, True
            except IntegrityError:
                continue
        raise RuntimeError("could not create or find the study's report")

    def find(self, study_id: str, model_version: str) -> Report | None:
        """The study's current report for this model, if it has one."""
        with self.session() as session:
            return session.scalars(select(Report).where(
                Report.idempotency_key == _study_key(study_id, model_version))).first()

    def get(self, report_id: str) -> Report | None:
        with self.session() as session:
            return session.get(Report, report_id)

    def list_for_study(self, study_id: str) -> list[Report]:
        with self.session() as session:
            return list(session.scalars(select(Report).where(Report.study_id == study_id)
                                        .order_by(Report.created_at)))

    def set_source(self, report_id: str, source: dict[str, Any]) -> None:
        with self.session() as session:
            session.execute(update(Report).where(Report.id == report_id)
                            .values(source=source, updated_at=utcnow()))

    def set_status(self, report_id: str, status: ReportStatus, reason: str | None = None,
                   failure: Failure | None = None) -> bool:
        """Move an unfinished report to ``status``; False if it was already finished.

        A failed report records whether its input was refused or the pipeline gave up.
        """
        values: dict[str, Any] = {"status": status.value, "status_reason": reason,
                                  "updated_at": utcnow()}
        if failure is not None:
            values["result"] = {"failure": failure}
        if status.finished:
            values["completed_at"] = values["updated_at"]
        with self.session() as session:
            changed = _rowcount(session.execute(
                update(Report).where(Report.id == report_id, Report.status.not_in(FINISHED))
                .values(**values)))
            if changed:
                session.add(StatusChange(report_id=report_id, status=status.value,
                                         reason=reason, at=values["updated_at"]))
            return bool(changed)

    def complete(self, report_id: str, result: dict[str, Any], processing_time_ms: int) -> bool:
        """Store the finished report once; a second completion (redelivery) changes nothing."""
        now = utcnow()
        with self.session() as session:
            changed = _rowcount(session.execute(
                update(Report).where(Report.id == report_id, Report.status.not_in(FINISHED))
                .values(status=ReportStatus.completed.value, status_reason=None, result=result,
                        processing_time_ms=processing_time_ms, updated_at=now,
                        completed_at=now)))
            if changed:
                session.add(StatusChange(report_id=report_id,
                                         status=ReportStatus.completed.value, at=now))
            return bool(changed)

    def count_attempt(self, report_id: str, stage: str, step: int = 1) -> int:
        """One more attempt at ``stage`` (deliveries, including after a lost worker); a
        step of -1 gives back one that a dependency's outage spent."""
        with self.session() as session:
            report = session.get(Report, report_id, with_for_update=True)
            if report is None:
                raise KeyError(report_id)
            attempts = dict(report.attempts or {})
            attempts[stage] = max(0, attempts.get(stage, 0) + step)
            report.attempts = attempts
            return attempts[stage]

    def save_review(self, report_id: str, text: dict[str, str], signer: str | None,
                    edit_distance: float,
                    before_commit: Callable[[Report], None] | None = None) -> Report | None:
        """Store a radiologist's text; signing makes it signed, a later change amended.

        ``before_commit`` sees the report as it will be, inside the transaction (the row
        locked): what it writes elsewhere (the FHIR bundle) happens only if it returns, and
        if it raises nothing is stored."""
        now = utcnow()
        with self.session() as session:
            report = session.get(Report, report_id, with_for_update=True)
            if report is None or report.status != ReportStatus.completed.value:
                return None
            was_signed = report.review_status in ("signed", "amended")
            changed = text != (report.reviewed_text or {})
            report.reviewed_text = text
            report.edit_distance = edit_distance
            if signer is not None:
                report.review_status = "amended" if was_signed and changed else (
                    report.review_status if was_signed else "signed")
                report.signed_by, report.signed_at = signer, now
            elif was_signed and changed:
                report.review_status = "amended"
            report.updated_at = now
            session.add(StatusChange(report_id=report_id, status=f"review:{report.review_status}",
                                     reason=None, at=now))
            if before_commit is not None:
                before_commit(report)
            return report

    def idle_unfinished(self, older_than_s: float) -> list[Report]:
        """Unfinished reports that have not moved for ``older_than_s``: candidates for the
        re-driver, which then asks the broker whether their next message still exists."""
        cutoff = utcnow().timestamp() - older_than_s
        with self.session() as session:
            unfinished = session.scalars(select(Report).where(Report.status.not_in(FINISHED)))
            return [r for r in unfinished
                    if r.updated_at.replace(tzinfo=r.updated_at.tzinfo or UTC).timestamp()
                    < cutoff]

    def next_generation(self, report_id: str, generation: int) -> bool:
        """Claim the re-drive of one generation; False if another re-driver got there."""
        with self.session() as session:
            return bool(_rowcount(session.execute(
                update(Report).where(Report.id == report_id, Report.generation == generation,
                                     Report.status.not_in(FINISHED))
                .values(generation=generation + 1, updated_at=utcnow()))))

    def discard_unqueued(self, report_id: str) -> None:
        """Remove a report created a moment ago whose chain could not be queued, so that
        nothing accepted is left that nothing will process (its history goes with it)."""
        with self.session() as session:
            session.execute(delete(StatusChange).where(StatusChange.report_id == report_id))
            session.execute(delete(Report).where(Report.id == report_id,
                                                 Report.status == ReportStatus.queued.value))

    def worklist(self, limit: int = 200) -> list[Report]:
        with self.session() as session:
            return list(session.scalars(select(Report).where(Report.idempotency_key.is_not(None))
                                        .order_by(Report.created_at.desc()).limit(limit)))

    def record_timing(self, report_id: str, stage: str, milliseconds: float) -> None:
        with self.session() as session:
            report = session.get(Report, report_id, with_for_update=True)
            if report is not None:
                report.timings = {**(report.timings or {}), stage: round(milliseconds, 1)}
                if report.status not in FINISHED:  # progress, for the re-driver's idle clock;
                    report.updated_at = utcnow()  # products drawn after completion are not

    def history(self, report_id: str) -> list[StatusChange]:
        with self.session() as session:
            return list(session.scalars(select(StatusChange)
                                        .where(StatusChange.report_id == report_id)
                                        .order_by(StatusChange.id)))

    # --- audit ----------------------------------------------------------------------

    def audit(self, actor: str, action: str, resource_type: str, resource_id: str | None,
              outcome: str, client: str | None = None, detail: str | None = None) -> None:
        """Append to the audit table, and to the ``radreport.audit`` log (syslog if set)."""
        at = utcnow()
        with self.session() as session:
            session.add(AuditEvent(actor=actor, action=action, resource_type=resource_type,
                                   resource_id=resource_id, outcome=outcome, client=client,
                                   detail=detail, at=at))
        AUDIT_LOG.info(json.dumps({"at": at.isoformat(), "actor": actor, "action": action,
                                   "resource_type": resource_type, "resource_id": resource_id,
                                   "outcome": outcome, "client": client}))

    def audit_events(self, resource_id: str | None = None, limit: int = 100) -> list[AuditEvent]:
        with self.session() as session:
            query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
            if resource_id is not None:
                query = query.where(AuditEvent.resource_id == resource_id)
            return list(session.scalars(query))
