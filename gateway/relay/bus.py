"""The bus interface and the in-process bus every other bus builds on.

A bus carries committed (job id, version) pairs to the hub of every process that may have
watchers. The store calls ``publish_in_transaction`` inside the writer's transaction and
``published`` after commit; ``published`` delivers to this process's hub at once, so the
writer's own watchers never wait for the round trip through the database. The hub drops a
notice it has already seen, so the same change arriving twice costs a dict lookup.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Protocol

from gateway.relay.fresh import SYNC_PREFIX
from gateway.relay.hub import Hub
from gateway.store import Change, Unit

log = logging.getLogger("gateway.relay")


class RelayBus(Protocol):
    """What the relay needs from a bus (the store's ``Bus`` plus a per-process start)."""

    name: str

    def publish_in_transaction(self, writer: Unit, changes: Sequence[Change]) -> None: ...

    def published(self, changes: Sequence[Change]) -> None: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class LocalBus:
    """Changes reach only this process's watchers: a single-process deployment, or the base
    of a cross-process bus."""

    name = "local"

    def __init__(self, hub: Hub):
        self.hub = hub

    def publish_in_transaction(self, writer: Unit, changes: Sequence[Change]) -> None:
        pass

    def published(self, changes: Sequence[Change]) -> None:
        """After commit: tell this process's hub at once."""
        self.hub.notify((c.job_id, c.version) for c in changes)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class ListeningBus(LocalBus):
    """A bus with one listener thread per process that keeps itself connected: on any error it
    marks the bus disconnected (so nothing is answered from memory) and reconnects with
    exponential backoff; each subclass's ``_listen`` resyncs the hub once it is connected."""

    thread_name = "gateway-relay-listen"
    what = "listener"

    def __init__(self, hub: Hub, *, max_backoff: float = 10.0):
        super().__init__(hub)
        self.max_backoff = max_backoff
        self.connected = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start this process's listener (once)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopped.clear()
        self._thread = threading.Thread(target=self._listen_forever, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Let the listener end after its current wait."""
        self._stopped.set()

    def _listen(self) -> None:
        """Connect, subscribe, resync, then deliver notices until stopped or disconnected."""
        raise NotImplementedError

    def _deliver(self, payload: str) -> None:
        """One received notice: a barrier marker, or (job id, version) pairs for the hub."""
        if payload.startswith(SYNC_PREFIX):
            self.barrier.received(payload)  # type: ignore[attr-defined]  # every listening bus sets a barrier before it listens
        else:
            self.hub.notify(parse_notice(payload))

    def _listen_forever(self) -> None:
        backoff = 0.25
        while not self._stopped.is_set():
            try:
                self._listen()
                backoff = 0.25
            except Exception as exc:  # the server restarted, or our connection was killed
                self.connected.clear()
                self.hub.seen.reset(live=False)
                log.warning("relay %s lost its connection; reconnecting in %.2fs", self.what, backoff, extra={"error": type(exc).__name__})
                self._stopped.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff)


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
