"""The bus interface and the in-process bus every other bus builds on.

A bus carries committed (job id, version) pairs to the hub of every process that may have
watchers. The store calls ``publish_in_transaction`` inside the writer's transaction and
``published`` after commit; ``published`` delivers to this process's hub at once, so the
writer's own watchers never wait for the round trip through the database. The hub drops a
notice it has already seen, so the same change arriving twice costs a dict lookup.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from sqlalchemy.orm import Session

from gateway.relay.hub import Hub
from gateway.store import Change


class RelayBus(Protocol):
    """What the relay needs from a bus (the store's ``Bus`` plus a per-process start)."""

    name: str

    def publish_in_transaction(self, session: Session, changes: Sequence[Change]) -> None: ...

    def published(self, changes: Sequence[Change]) -> None: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class LocalBus:
    """Changes reach only this process's watchers: a single-process deployment, or the base
    of a cross-process bus."""

    name = "local"

    def __init__(self, hub: Hub):
        self.hub = hub

    def publish_in_transaction(self, session: Session, changes: Sequence[Change]) -> None:
        pass

    def published(self, changes: Sequence[Change]) -> None:
        """After commit: tell this process's hub at once."""
        self.hub.notify((c.job_id, c.version) for c in changes)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


def parse_notice(payload: str) -> list[tuple[str, int]]:
    """``job_a:3,job_b:7`` → [(job_a, 3), (job_b, 7)]; malformed parts are skipped."""
    out = []
    for part in payload.split(","):
        job_id, _, version = part.rpartition(":")
        if job_id and version.isdigit():
            out.append((job_id, int(version)))
    return out


def notices(changes: Sequence[Change], limit: int = 7900) -> list[str]:
    """Changes packed into as few payloads as fit under ``limit`` bytes (NOTIFY's is 8000)."""
    payloads: list[str] = []
    current = ""
    for c in changes:
        part = f"{c.job_id}:{c.version}"
        if current and len(current) + 1 + len(part) > limit:
            payloads.append(current)
            current = part
        else:
            current = f"{current},{part}" if current else part
    if current:
        payloads.append(current)
    return payloads
