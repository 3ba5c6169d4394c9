"""The version cache and the barrier behind polls answered from memory (gateway/relay/fresh.py)."""

from __future__ import annotations

import threading
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.relay.fresh import Barrier, VersionCache


@given(st.lists(st.tuples(st.sampled_from(["job_a", "job_b", "job_c"]), st.integers(0, 50)), max_size=60))
def test_the_cache_keeps_the_highest_version_seen(notices: list[tuple[str, int]]) -> None:
    cache = VersionCache()
    cache.reset(live=True)
    for job_id, version in notices:
        cache.saw(job_id, version)
    for job_id in ("job_a", "job_b", "job_c"):
        versions = [v for j, v in notices if j == job_id]
        assert cache.get(job_id) == (max(versions) if versions else None)


def test_the_cache_forgets_on_disconnect_and_ignores_reads_from_an_older_epoch() -> None:
    cache = VersionCache()
    cache.saw("job_a", 3)
    assert cache.get("job_a") is None  # not listening yet: nothing is known
    cache.reset(live=True)
    epoch = cache.epoch
    cache.saw("job_a", 3, epoch)
    assert cache.get("job_a") == 3
    cache.reset(live=False)  # the subscriber dropped: notices may be lost from now on
    assert cache.get("job_a") is None
    cache.reset(live=True)
    cache.saw("job_a", 2, epoch)  # a read that began before the reconnect
    assert cache.get("job_a") is None


def test_the_cache_is_bounded() -> None:
    cache = VersionCache(size=3)
    cache.reset(live=True)
    for i in range(5):
        cache.saw(f"job_{i}", 1)
    assert [cache.get(f"job_{i}") for i in range(5)] == [None, None, 1, 1, 1]


def test_a_late_copy_of_a_version_never_replaces_json_that_moved_since() -> None:
    """The writer hands its commit's JSON to its own process after the commit; a notice that the
    JSON moved at that version (``same_version``) may come first. The late copy is not taken."""
    cache = VersionCache()
    cache.reset(live=True)
    cache.before_read("job_a")  # the job was polled here
    cache.saw("job_a", 2)
    cache.heard("job_a", 2, "{old}", False)  # version 2 with its JSON
    assert cache.body_at("job_a", 2) == "{old}"
    cache.heard("job_a", 2, None, True)  # updated_at moved at version 2
    assert cache.body_at("job_a", 2) is None
    cache.heard("job_a", 2, "{old}", False)  # the late copy of version 2
    assert cache.body_at("job_a", 2) is None
    cache.heard("job_a", 3, "{new}", False)
    assert cache.body_at("job_a", 3) == "{new}" and cache.body_at("job_a", 2) is None


def test_a_read_overtaken_by_a_notice_is_not_kept() -> None:
    cache = VersionCache()
    cache.reset(live=True)
    cache.saw("job_a", 2)
    token = cache.before_read("job_a")
    cache.heard("job_a", 2, None, True)  # the JSON moved while the read ran (it may have seen either)
    cache.read("job_a", 2, "{before the move}", token)
    assert cache.body_at("job_a", 2) is None
    cache.read("job_a", 2, "{after the move}", cache.before_read("job_a"))  # the next read is kept
    assert cache.body_at("job_a", 2) == "{after the move}"
    cache.reset(live=True)  # a reconnect forgets everything, and reads that began before it
    token = cache.before_read("job_a")
    cache.reset(live=True)
    cache.read("job_a", 2, "{x}", token)
    assert cache.body_at("job_a", 2) is None


@settings(max_examples=200)
@given(st.data())
def test_held_json_is_never_stale_once_every_committed_notice_arrived(data: st.DataObject) -> None:
    """One job, commits of a new version or of JSON moved at the same version; notices arrive in
    commit order (with the JSON or without), late copies of a commit's JSON come any time after
    it (the writer's own hand-over), database reads overlap all of it. Whenever every committed
    notice has arrived (what the barrier proves), the JSON held for the current version is the
    database's, or nothing (read the database)."""
    cache = VersionCache(bodies=4)
    cache.reset(live=True)
    db: list[tuple[int, str]] = []  # each commit's (version, JSON)
    delivered = 0
    late: list[int] = []  # commits whose late copy may still arrive
    reads: list[tuple[tuple[int, int], tuple[int, str] | None]] = []  # (token, what the read found)
    cache.before_read("job_a")
    for _ in range(data.draw(st.integers(1, 40))):
        step = data.draw(st.sampled_from(["commit", "same", "deliver", "late", "read", "read_db", "read_end"]))
        if step in ("commit", "same"):
            version = (db[-1][0] if db else 0) + (step == "commit" or not db)
            db.append((version, f"{{v{version}.{len(db)}}}"))
            if step == "commit":
                late.append(len(db) - 1)
        elif step == "deliver" and delivered < len(db):
            version, text = db[delivered]
            same = delivered > 0 and db[delivered - 1][0] == version
            carried = not same and data.draw(st.booleans())
            cache.heard("job_a", version, text if carried else None, same)
            cache.saw("job_a", version)
            delivered += 1
        elif step == "late" and late:
            i = late.pop(data.draw(st.integers(0, len(late) - 1)))
            cache.heard("job_a", db[i][0], db[i][1], False)
        elif step == "read":
            reads.append((cache.before_read("job_a"), None))
        elif step == "read_db" and reads and db:
            i = data.draw(st.integers(0, len(reads) - 1))
            reads[i] = (reads[i][0], db[-1])
        elif step == "read_end" and reads:
            token, found = reads.pop(0)
            if found is not None:
                cache.read("job_a", found[0], found[1], token)
        if delivered == len(db) and db:
            version = cache.get("job_a")
            held = cache.body_at("job_a", version) if version is not None else None
            assert held in (None, db[-1][1]), (held, db)


class Loopback:
    """A bus stand-in that delivers each marker back after ``delay`` (or drops it)."""

    def __init__(self, delay: float = 0.01, drop: bool = False):
        self.delay, self.drop, self.sent = delay, drop, []
        self.barrier = Barrier(self.send, timeout=0.5)

    def send(self, marker: str) -> None:
        self.sent.append(marker)
        if not self.drop:
            threading.Timer(self.delay, self.barrier.received, args=(marker,)).start()


def test_one_marker_serves_every_poll_waiting_for_it() -> None:
    bus = Loopback(delay=0.05)
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(bus.barrier.wait())) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert results == [True] * 20
    assert 1 <= len(bus.sent) <= 3  # not one marker per poll


def test_a_marker_sent_before_the_wait_does_not_count() -> None:
    bus = Loopback(delay=0.2)
    first = threading.Thread(target=bus.barrier.wait)
    first.start()
    deadline = time.monotonic() + 5
    while not bus.sent and time.monotonic() < deadline:  # until the first marker is in flight
        time.sleep(0.001)
    assert bus.sent
    assert bus.barrier.wait()
    assert len(bus.sent) == 2  # the second waiter needed a marker sent after it arrived
    first.join(5)


def test_a_lost_marker_means_read_the_database() -> None:
    bus = Loopback(drop=True)
    assert bus.barrier.wait(timeout=0.3) is False
    assert not bus.barrier.received("sync:someone-else:1")  # another process's marker


def test_a_late_marker_does_not_release_a_later_round() -> None:
    """A marker that comes back after its round timed out proves nothing about the round after."""
    bus = Loopback(drop=True)
    bus.barrier.timeout = 0.2
    assert bus.barrier.wait(timeout=0.2) is False  # round 1: its marker is lost for now
    results: list[bool] = []
    second = threading.Thread(target=lambda: results.append(bus.barrier.wait(timeout=5)))
    second.start()
    deadline = time.monotonic() + 5
    while len(bus.sent) < 2 and time.monotonic() < deadline:  # round 2's marker is on its way
        time.sleep(0.001)
    first, latest = bus.sent[0], bus.sent[-1]
    bus.barrier.received(first)  # round 1's marker, late
    second.join(0.1)
    assert second.is_alive() and results == []
    bus.barrier.received(latest)
    second.join(5)
    assert results == [True]


def test_postgres_markers_follow_every_earlier_notice_and_reach_only_their_process(pg_url: str) -> None:
    """A barrier marker travels on its process's own channel: it still comes back after every
    notice committed before it (PostgreSQL has one notification queue for all channels), and
    no other process's listener receives it."""
    import psycopg

    from gateway.db import make_engine
    from gateway.relay.bus_pg import CHANNEL, PostgresBus, libpq_dsn
    from gateway.relay.hub import Hub

    engine = make_engine(pg_url)
    buses = [PostgresBus(Hub(load=lambda ids: {}, versions=lambda ids: {}), engine) for _ in range(2)]
    a, b = buses
    heard_by_b: list[str] = []
    deliver_b = b._deliver
    b._deliver = lambda payload: (heard_by_b.append(payload), deliver_b(payload))  # type: ignore[method-assign]
    try:
        for bus in buses:
            bus.start()
            assert bus.connected.wait(10)
        with psycopg.connect(libpq_dsn(engine), autocommit=True) as conn:
            for version in range(1, 51):
                conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"job_marker_order:{version}"))
        assert a.barrier.wait(timeout=10)
        assert a.hub.seen.get("job_marker_order") == 50  # every notice sent before the marker is in
        assert b.barrier.wait(timeout=10)
        assert heard_by_b and not [p for p in heard_by_b if p.startswith(a.barrier.token)]
        assert [p for p in heard_by_b if p.startswith(b.barrier.token)]
    finally:
        for bus in buses:
            bus.stop()
        engine.dispose()


# -- the progress coalescer (gateway/relay/coalesce.py) ----------------------------------------------------


def test_progress_is_coalesced_state_changes_are_not_and_the_last_progress_follows() -> None:
    from gateway.relay.coalesce import Coalescer
    from gateway.store import Change

    flushed: list[Change] = []
    co = Coalescer(flushed.extend, interval=0.2)
    assert co.split([Change("job_a", 2, progress_only=True)]) == [Change("job_a", 2, True)]  # leading edge
    assert co.split([Change("job_a", 3, True)]) == []
    assert co.split([Change("job_a", 4, True), Change("job_b", 7, True)]) == [Change("job_b", 7, True)]
    assert co.is_held(Change("job_a", 4, True)) and co.held == 2
    deadline = time.monotonic() + 5
    while not flushed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert flushed == [Change("job_a", 4, True)]  # only the newest held version, once
    assert co.split([Change("job_a", 5, True)]) == []  # still inside the interval of the trailing one
    assert co.split([Change("job_a", 6, False)]) == [Change("job_a", 6, False)]  # a state change: at once
    assert not co.is_held(Change("job_a", 5, True))  # covered by the announcement of version 6
