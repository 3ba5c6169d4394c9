"""Transactions and their retries: ``Store`` hands out one ``Writer`` per webhook or API call,
runs it again from the start on a transient conflict, and tells the bus about its changes with
the commit, never before. Webhooks arriving together may share one (``Store.group``, batch.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from gateway.db import READ_ONLY
from gateway.models import Job
from gateway.store.batch import GroupCommit
from gateway.store.unit import Bus, Change, NullBus, RetryTransaction, is_transient
from gateway.store.writer import Writer

T = TypeVar("T")


class Store:
    """Owns the session factory; hands out one transaction per webhook or API call."""

    def __init__(self, engine: Engine, bus: Bus | None = None, *, group_window_ms: int = 0, prepare_statements: bool = True):
        self.engine = engine
        self.prepare_statements = prepare_statements  # PostgreSQL: server-side prepared statements (fastpath.py)
        self.bus: Bus = bus or NullBus()
        self.sessions = sessionmaker(engine, expire_on_commit=False)
        self.postgres = engine.dialect.name == "postgresql"
        # called in every transaction once its changes are final, before the commit: what the
        # changes owe (forwarded messages, gateway.forward) is written in the same transaction
        self.owing: list[Callable[[Writer, Sequence[Change]], None]] = []
        # webhooks that arrive together share a transaction (batch.py); off when the window is 0.
        # SQLite admits one writer at a time: more transactions at once would only queue for it
        self.group = GroupCommit(self, group_window_ms, **({} if self.postgres else {"max_in_flight": 1}))

    @contextmanager
    def transaction(self) -> Iterator[Writer]:
        """One database transaction; changes reach the bus with the commit, never before."""
        with self.engine.connect() as conn:
            writer = Writer(conn, self.sessions, self.postgres, prepare=self.prepare_statements)
            writer.owing = self.owing
            try:
                with conn.begin():
                    yield writer
                    writer.close(self.bus)
            finally:
                writer.release()  # after the commit or the rollback
        if notices := writer.notices:
            self.bus.published(notices)
        for fn in writer.committed:
            fn()

    def write(self, fn: Callable[[Writer], T], attempts: int = 3) -> tuple[T, list[Change]]:
        """Run ``fn`` in one transaction, again from the start if PostgreSQL reports a transient
        conflict (deadlock, serialization failure) or the pooled connection turned out dead;
        returns its result and the changes. Nothing of a failed attempt was committed."""
        for attempt in range(attempts):
            try:
                with self.transaction() as writer:
                    result = fn(writer)
                return result, writer.changes
            except (RetryTransaction, DBAPIError) as exc:
                if attempt + 1 < attempts and is_transient(exc):
                    continue
                raise
        raise AssertionError("unreachable")

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A short read-only session (on SQLite it never takes the write lock)."""
        with self.sessions() as session:
            session.connection(execution_options={READ_ONLY: True})
            yield session

    def get_job(self, job_id: str) -> Job | None:
        """The job's row as committed, or None."""
        with self.reading() as session:
            return session.get(Job, job_id)
