"""The per-process hub: which local watchers (WebSocket subscriptions, SSE streams, long-polls)
watch which job, and the latest snapshot of each watched job.

A change notice (job id, version) from any bus lands in ``notify``; one dispatcher thread
(a greenlet under gevent) coalesces the notices, reads every changed job in one query, encodes
each snapshot once and hands the same bytes to every watcher of that job. A notice that carries
the job's JSON (``heard``: the writer's own commit, Redis, PostgreSQL under 8,000 bytes) costs
no read at all. Watchers hold no database session; a notice for a job nobody here watches
costs one dict lookup.
"""

from __future__ import annotations

import json
import logging
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

from gateway.jobjson import encode
from gateway.relay.fresh import VersionCache
from gateway.store import Change

log = logging.getLogger("gateway.relay")

#: reads the current JSON of the given jobs (absent ids are not known yet): one query
Loader = Callable[[Sequence[str]], dict[str, dict[str, Any]]]
#: reads the current versions of the given jobs: one query, for the resync
VersionReader = Callable[[Sequence[str]], dict[str, int]]


def ws_text_frame(payload: bytes) -> bytes:
    """One unmasked, final, uncompressed WebSocket text frame (RFC 6455 §5.2), as a server sends it.

    Valid with or without permessage-deflate: a message without RSV1 is simply not compressed."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x81, n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x81, 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 127, n)
    return header + payload


def http_chunk(data: bytes) -> bytes:
    """``data`` in HTTP/1.1 chunked transfer coding (RFC 9112 §7.1); an empty chunk ends the body."""
    return b"%X\r\n%s\r\n" % (len(data), data)


@dataclass(frozen=True)
class Snapshot:
    """One version of one job, with each transport's encoding computed at most once."""

    job: dict[str, Any]

    @classmethod
    def of_text(cls, text: str) -> Snapshot:
        """The snapshot of a job's JSON as encoded (``jobjson.encode``), kept as it came."""
        snap = cls(json.loads(text))
        snap.__dict__["text"] = text  # the cached ``text``: the bytes the writer encoded, not encoded again
        return snap

    @property
    def job_id(self) -> str:
        return str(self.job["id"])

    @property
    def version(self) -> int:
        return int(self.job["version"])

    @property
    def terminal(self) -> bool:
        return bool(self.job["state"] == "complete")

    @cached_property
    def text(self) -> str:
        """The job JSON, encoded once for every transport (as a poll answers it)."""
        return encode(self.job)

    @cached_property
    def ws_message(self) -> str:
        return '{"type":"job","job":' + self.text + "}"

    @cached_property
    def ws_frame(self) -> bytes:
        return ws_text_frame(self.ws_message.encode())

    @cached_property
    def sse_event(self) -> bytes:
        return f"id: {self.version}\nevent: job\ndata: {self.text}\n\n".encode()

    @cached_property
    def sse_chunk(self) -> bytes:
        """The SSE event as one HTTP/1.1 chunk, for streams written without the server's help."""
        return http_chunk(self.sse_event)


class Watcher(Protocol):
    """Anything that wants each new snapshot of a job; ``deliver`` must not block."""

    def deliver(self, snapshot: Snapshot) -> None: ...


class Mailbox:
    """A watcher for one request (SSE stream, long-poll): keeps the newest snapshot, wakes the waiter."""

    def __init__(self) -> None:
        self.latest: Snapshot | None = None
        self._event = threading.Event()

    def deliver(self, snapshot: Snapshot) -> None:
        if self.latest is None or snapshot.version > self.latest.version:
            self.latest = snapshot
            self._event.set()

    def wait(self, timeout: float) -> Snapshot | None:
        """The newest snapshot delivered since the last call, or None after ``timeout`` seconds."""
        if self._event.wait(timeout):
            self._event.clear()
            return self.latest
        return None


class _Read:
    """One snapshot read in flight; later askers wait for it instead of reading again."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.snap: Snapshot | None = None
        self.error: Exception | None = None


@dataclass
class Hub:
    """Local watchers by job id, the known version of each watched job, and the dispatcher."""

    load: Loader
    versions: VersionReader
    on_fanout: Callable[[float], None] | None = None
    seen: VersionCache = field(default_factory=VersionCache)  # every job's latest version the bus told us
    watchers: dict[str, set[Watcher]] = field(default_factory=dict)
    snapshots: dict[str, Snapshot] = field(default_factory=dict)
    _pending: dict[str, int] = field(default_factory=dict)
    _carried: dict[str, tuple[int, str]] = field(default_factory=dict)  # watched job -> (version, JSON) a notice carried
    _reads: dict[str, _Read] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _wake: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _stopped: bool = False
    on_notice: list[Callable[[], None]] = field(default_factory=list)  # told of every notice (wakes the forwarding senders)

    # -- watchers ------------------------------------------------------------------------------

    def watch(self, job_id: str, watcher: Watcher) -> None:
        """Start telling ``watcher`` about every new version of ``job_id`` seen by this process."""
        self._ensure_started()
        with self._lock:
            self.watchers.setdefault(job_id, set()).add(watcher)

    def unwatch(self, job_id: str, watcher: Watcher) -> None:
        """Forget ``watcher``; the job's snapshot goes with its last watcher."""
        with self._lock:
            group = self.watchers.get(job_id)
            if group is None:
                return
            group.discard(watcher)
            if not group:
                del self.watchers[job_id]
                self.snapshots.pop(job_id, None)

    def current(self, job_id: str) -> Snapshot | None:
        """The job's snapshot: the hub's own while the job is watched here (kept fresh by the bus
        and the resync), else read from the database once however many ask at the same moment,
        and published to this job's watchers (who drop it if they have it). None while the job
        is not known yet."""
        snap = self.snapshots.get(job_id)
        if snap is not None:
            return snap
        with self._lock:
            read = self._reads.get(job_id)
            leader = read is None
            if read is None:
                read = self._reads[job_id] = _Read()
        if not leader:
            if not read.done.wait(30) or read.error is not None:
                raise read.error or TimeoutError("snapshot read did not finish")
            return read.snap
        try:
            found = self.load([job_id]).get(job_id)
            if found is not None:
                read.snap = Snapshot(found)
                self.publish(read.snap)
                read.snap = self.snapshots.get(job_id) or read.snap
            return read.snap
        except Exception as exc:
            read.error = exc
            raise
        finally:
            with self._lock:
                self._reads.pop(job_id, None)
            read.done.set()

    # -- change notices --------------------------------------------------------------------------

    def heard(self, changes: Sequence[Change]) -> None:
        """Changes from a bus, with what they carry: first the JSON of the jobs polled here
        (``seen.heard``), then the versions (``notify``)."""
        for c in changes:
            self.seen.heard(c.job_id, c.version, c.snapshot, c.same_version)
            if c.snapshot is not None and c.job_id in self.watchers:
                with self._lock:
                    if self._carried.get(c.job_id, (-1, ""))[0] < c.version:
                        self._carried[c.job_id] = (c.version, c.snapshot)
        self.notify((c.job_id, c.version) for c in changes)

    def notify(self, changes: Iterable[tuple[str, int]]) -> None:
        """Change notices from any bus; only newer versions of watched jobs are queued; every
        ``on_notice`` hook is told that something committed."""
        woke = noticed = False
        for job_id, version in changes:
            noticed = True
            self.seen.saw(job_id, version)
            if job_id not in self.watchers:
                continue
            held = self.snapshots.get(job_id)
            if held is not None and held.version >= version:
                continue  # already delivered (our own commit, seen again through the bus)
            with self._lock:
                if self._pending.get(job_id, -1) < version:
                    self._pending[job_id] = version
                    woke = True
        if woke:
            self._wake.set()
        if noticed:
            for fn in self.on_notice:
                fn()

    def resync(self) -> int:
        """Compare every watched job with the database (one query per 500 ids) and queue what the
        bus missed: a dropped listener connection, a pruned feed. Returns how many were behind."""
        ids = list(self.watchers)
        behind = []
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            for job_id, version in self.versions(chunk).items():
                held = self.snapshots.get(job_id)
                if held is None or held.version < version:
                    behind.append((job_id, version))
        if behind:
            log.info("resync found %d job(s) behind", len(behind))
            self.notify(behind)
        return len(behind)

    # -- dispatcher ----------------------------------------------------------------------------------

    def _ensure_started(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stopped = False
            self._thread = threading.Thread(target=self._run, name="gateway-relay-hub", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Let the dispatcher end (tests, shutdown)."""
        self._stopped = True
        self._wake.set()

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                batch, self._pending = self._pending, {}
                carried, self._carried = self._carried, {}
            if not batch:
                continue
            try:
                self.dispatch(batch, carried)
            except Exception:  # a failed read (database restarting) is caught up by the resync
                log.exception("relay dispatch failed; the resync will catch up")

    def dispatch(self, batch: dict[str, int], carried: dict[str, tuple[int, str]] | None = None) -> None:
        """Hand each job's snapshot to its watchers: the JSON its notice carried when that is the
        version asked for, else read (the rest of the batch in one query)."""
        ids = []
        for job_id, version in batch.items():
            if job_id not in self.watchers:
                continue
            got = (carried or {}).get(job_id)
            if got is not None and got[0] >= version:
                self.publish(Snapshot.of_text(got[1]))
            else:
                ids.append(job_id)
        if ids:
            for data in self.load(ids).values():
                self.publish(Snapshot(data))

    def publish(self, snap: Snapshot) -> None:
        """Deliver one snapshot to every local watcher of its job, if it is newer than the last."""
        started = time.perf_counter()
        with self._lock:
            group = self.watchers.get(snap.job_id)
            held = self.snapshots.get(snap.job_id)
            if group is None or (held is not None and held.version >= snap.version):
                return
            self.snapshots[snap.job_id] = snap
            targets = list(group)
        for watcher in targets:
            try:
                watcher.deliver(snap)
            except Exception:  # one broken watcher never stops the others
                log.exception("watcher failed", extra={"job_id": snap.job_id})
        if self.on_fanout is not None:
            self.on_fanout(time.perf_counter() - started)
