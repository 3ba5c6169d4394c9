"""The schema, in SQLAlchemy 2.0 typed style. Alembic migrations create it; nothing else does."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, LargeBinary, String, Text, TypeDecorator, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out; stored naive UTC so SQLite and PostgreSQL agree."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


BigIntId = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements INTEGER only


#: indexes migration 0007_search makes on PostgreSQL only (pg_trgm GIN for ``ILIKE '%text%'``,
#: a pattern index for id prefixes); not in the metadata, since SQLite has no counterpart
POSTGRES_SEARCH_INDEXES = ("ix_jobs_external_id_trgm", "ix_jobs_label_trgm", "ix_jobs_id_prefix")


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class Job(Base):
    """The derived state of one job: a cache of the fold over its events, plus identity."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    source: Mapped[str] = mapped_column(String(64))
    external_id: Mapped[str] = mapped_column(String(255))
    label: Mapped[str | None] = mapped_column(Text)
    queue_name: Mapped[str] = mapped_column(String(128), default="default")  # the queue it counts in now
    #: the queue given at registration: the job's queue whenever no applied `queued` event names one
    registered_queue: Mapped[str | None] = mapped_column(String(128))
    registered_label: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), index=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    progress: Mapped[dict[str, Any] | None]
    queue: Mapped[dict[str, Any] | None]  # {name, position, total} as shown
    error: Mapped[dict[str, Any] | None]
    result: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    state_changed_at: Mapped[datetime]
    queued_since: Mapped[datetime]
    fold: Mapped[dict[str, Any]] = mapped_column(JSON)  # the fold's bookkeeping (see states.JobView)

    __table_args__ = (Index("ix_jobs_queue", "queue_name", "state", "queued_since"), Index("ix_jobs_external_id", "external_id"))


class JobKey(Base):
    """(source, external_id) pairs that drive a job: the registration's and each linked attempt's."""

    __tablename__ = "job_keys"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(64))
    external_id: Mapped[str] = mapped_column(String(255))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    linked_at: Mapped[datetime | None]  # None: the registration's own key

    __table_args__ = (UniqueConstraint("source", "external_id", name="uq_job_keys_source_external"),
                      Index("ix_job_keys_external_id", "external_id"))


class Event(Base):
    """Every verified event, unique on (source, provider event id); the fold's input."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(64))
    event_id: Mapped[str] = mapped_column(String(255))
    external_id: Mapped[str | None] = mapped_column(String(255))
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    type: Mapped[str | None] = mapped_column(String(255))
    state: Mapped[str | None] = mapped_column(String(16))
    occurred_at: Mapped[datetime]
    received_at: Mapped[datetime]
    data: Mapped[dict[str, Any] | None]  # progress / queue / error / result / label as given
    #: for providers whose event id is not signed (``Adapter.event_id_signed``): a digest of the
    #: signed content, unique per source, so a signed body replayed under a new id is a duplicate
    digest: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        UniqueConstraint("source", "event_id", name="uq_events_source_event"),
        Index("ix_events_key", "source", "external_id"),
        Index("uq_events_source_digest", "source", "digest", unique=True),
        Index("ix_events_event_id", "event_id"),  # a provider event id pasted without its source
    )


class Delivery(Base):
    """One HTTP delivery to a webhook endpoint, accepted or not (one row per event it carried).

    A verified delivery keeps its raw body and request headers (``gateway.recording.stored_headers``:
    no credentials, no hop-by-hop headers) for replay and forwarding (CONTRACT §9, §10) until
    ``gateway prune`` clears them after ``delivery_retention_days``; a rejected one never has them."""

    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    received_at: Mapped[datetime] = mapped_column(index=True)
    source: Mapped[str] = mapped_column(String(64))
    status: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(32))  # accepted / duplicate / ignored / rejected / invalid
    reason: Mapped[str | None] = mapped_column(Text)
    event_id: Mapped[str | None] = mapped_column(String(255))
    event_type: Mapped[str | None] = mapped_column(String(255))
    external_id: Mapped[str | None] = mapped_column(String(255))
    job_id: Mapped[str | None] = mapped_column(String(64), index=True)
    decision: Mapped[str | None] = mapped_column(String(16))
    state_before: Mapped[str | None] = mapped_column(String(16))
    state_after: Mapped[str | None] = mapped_column(String(16))
    version: Mapped[int | None] = mapped_column(Integer)
    size: Mapped[int] = mapped_column(Integer, default=0)
    remote_addr: Mapped[str | None] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(64))
    # deferred: listings and the trace never load them (read on access, by replay and forwarding)
    body: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)  # the exact bytes received, verified ones only
    headers: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), deferred=True)  # as received, minus credentials and hop-by-hop

    __table_args__ = (Index("ix_deliveries_key", "source", "external_id"), Index("ix_deliveries_request_id", "request_id"))


class TraceEntry(Base):
    """Job-level happenings that are not deliveries: registration, retries, links, callbacks."""

    __tablename__ = "trace"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(64), index=True)
    at: Mapped[datetime]
    what: Mapped[str] = mapped_column(String(32))
    detail: Mapped[dict[str, Any] | None]


class OutboxItem(Base):
    """One outbound call the gateway owes someone (a retry callback, a details fetch), kept until
    it succeeds or gives up, so it survives restarts; see gateway.outbox."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(255))  # idempotency key; the callback's webhook-id
    kind: Mapped[str] = mapped_column(String(16))  # callback / details
    job_id: Mapped[str | None] = mapped_column(String(64), index=True)
    source: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(Text)  # the URL, when known at enqueue time
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending / delivered / dead
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]  # due time; a claimed row's lease runs until then
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    delivered_at: Mapped[datetime | None]

    __table_args__ = (UniqueConstraint("key", name="uq_outbox_key"), Index("ix_outbox_due", "status", "next_attempt_at"))


class ChangeFeed(Base):
    """SQLite's cross-process change feed (gateway.relay.bus_sqlite): one row per committed job
    change, in commit order. PostgreSQL carries the same pairs over LISTEN/NOTIFY instead."""

    __tablename__ = "changes"

    seq: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime]

    __table_args__ = {"sqlite_autoincrement": True}  # a pruned seq is never reused


class ConsoleSession(Base):
    """A support-console sign-in (section 11): the cookie names the id; a row revoked or past its
    expiry opens no page, in every worker."""

    __tablename__ = "console_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    label: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class EndpointState(Base):
    """A forwarding endpoint's operator-visible state (CONTRACT §9): disabled when it answered
    ``410 Gone``, until an operator enables it again. No row means enabled; every process reads
    the same row, so they all stop, and after a restart still agree."""

    __tablename__ = "endpoint_states"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    reason: Mapped[str | None] = mapped_column(Text)
    changed_by: Mapped[str | None] = mapped_column(String(64))
    changed_at: Mapped[datetime]
