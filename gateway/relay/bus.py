"""The bus interface and the in-process bus every other bus builds on.

A bus carries committed (job id, version) pairs to the hub of every process that may have
watchers — with the job's JSON when the bus can carry it (``notices``), so that polls are
answered from memory (relay/fresh.py) — and notes of JSON that moved at the same version. The store calls ``publish_in_transaction`` inside the writer's transaction and
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
        self.hub.heard(changes)

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
        """One received notice: a barrier marker, or changes for the hub."""
        if payload.startswith(SYNC_PREFIX):
            self.barrier.received(payload)  # type: ignore[attr-defined]  # every listening bus sets a barrier before it listens
        else:
            self.hub.heard(read_notice(payload))

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


# Payloads: ``job_a:3,job_b:7`` (versions), ``job_a:3+`` (version 3's JSON moved: same_version),
# or ``job_a:3,{...}``: one change with its JSON (a reader that knows only the first form still
# reads job_a:3 from it and skips the rest).


def read_notice(payload: str) -> list[Change]:
    """A payload of ``notices`` read back; malformed parts are skipped."""
    head, brace, body = payload.partition(",{")
    out = []
    for part in head.split(","):
        same = part.endswith("+")
        job_id, _, version = (part[:-1] if same else part).rpartition(":")
        if job_id and version.isdigit():
            out.append(Change(job_id, int(version), same_version=same))
    if brace and len(out) == 1 and not out[0].same_version:
        out[0] = Change(out[0].job_id, out[0].version, snapshot="{" + body)
    return out


def parse_notice(payload: str) -> list[tuple[str, int]]:
    """``job_a:3,job_b:7`` → [(job_a, 3), (job_b, 7)]: the versions a payload announces."""
    return [(c.job_id, c.version) for c in read_notice(payload) if not c.same_version]


def notices(changes: Sequence[Change], limit: int = 7900) -> list[str]:
    """Changes packed into as few payloads as fit under ``limit`` bytes (NOTIFY's is 8000): a
    change with its snapshot alone in its payload when it fits, the rest as ids and versions."""
    payloads: list[str] = []
    current = ""
    for c in changes:
        if c.snapshot is not None and len(c.job_id) + len(c.snapshot) + 12 <= limit:  # ASCII: chars are bytes
            payloads.append(f"{c.job_id}:{c.version},{c.snapshot}")
            continue
        part = f"{c.job_id}:{c.version}{'+' if c.same_version else ''}"
        if current and len(current) + 1 + len(part) > limit:
            payloads.append(current)
            current = part
        else:
            current = f"{current},{part}" if current else part
    if current:
        payloads.append(current)
    return payloads
