"""The store: the one writer path and its transactions.

| module | holds |
|---|---|
| ``transaction.py`` | ``Store``: a transaction per call, retried on transient conflicts |
| ``unit.py`` | one transaction's changes, versions, trace lines, deliveries and closing writes |
| ``writer.py`` | ``Writer``: recording events, registration, retries, attempts |
| ``queues.py`` | queue locks and positions, and the rule the fast path mirrors |
| ``rows.py`` | job rows and stored events to and from the pure fold (gateway.states) |
| ``statements.py`` | every write statement, once, from the SQLAlchemy tables |
| ``fastpath.py`` | PostgreSQL: a known job's webhook in two round trips of psycopg |
| ``batch.py`` | group commit: webhooks arriving together in one transaction and one commit |
"""

from gateway.store.rows import event_of, links_of, view_of
from gateway.store.transaction import Store
from gateway.store.unit import Bus, Change, NullBus, RetryTransaction, Unit
from gateway.store.writer import API_SOURCE, GATEWAY_SOURCE, Outcome, Writer

__all__ = [
    "API_SOURCE",
    "GATEWAY_SOURCE",
    "Bus",
    "Change",
    "NullBus",
    "Outcome",
    "RetryTransaction",
    "Store",
    "Unit",
    "Writer",
    "event_of",
    "links_of",
    "view_of",
]
