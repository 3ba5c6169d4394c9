"""Crash safety: workers SIGKILLed at random under a steady webhook load lose no acknowledged delivery.

A real gunicorn (2 gevent workers) on PostgreSQL and on the SQLite default (WAL, synchronous=FULL).
Six client threads send unique signed standard-webhook events while a killer thread SIGKILLs
random worker processes; gunicorn's master respawns them. Whatever was not acknowledged is
delivered again afterwards, as a provider would. Then the database is read directly: every
acknowledged event id is stored exactly once, every job equals the fold of its events, and no
answer was a 500. Bounded: a few hundred deliveries, well under a minute per backend.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from tests.conftest import ARTIFACTS, server_env, write_config
from tests.loadgen import Killer, Ledger, audit, make_deliveries, redeliver, send_all
from tests.servers import Server

JOBS = int(os.environ.get("TRUST_CRASH_JOBS", "150"))
KILLS = int(os.environ.get("TRUST_CRASH_KILLS", "4"))


@pytest.fixture(params=["sqlite", "postgres"])
def crash_db(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "postgres":
        return request.getfixturevalue("pg_url")
    from gateway.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'crash.db'}"
    upgrade(url)
    return url


def test_sigkilled_workers_lose_no_acknowledged_delivery(crash_db: str, tmp_path) -> None:
    backend = "pg" if crash_db.startswith("postgresql") else "sqlite"
    ARTIFACTS.mkdir(exist_ok=True)
    log = ARTIFACTS / f"crash-{backend}-{os.getpid()}.log"
    srv = Server(server_env(crash_db, write_config(tmp_path / "gateway.toml")), log_path=log).start()
    url = f"{srv.url}/webhooks/auto"
    deliveries = make_deliveries(JOBS)
    ledger = Ledger()
    killer = Killer(srv.worker_pids, times=KILLS, interval=0.4)
    try:
        started = time.monotonic()
        killer.start()
        unacked = send_all(url, deliveries, ledger, threads=6, deadline=started + 40)
        # keep the load on until every planned kill has happened, re-sending what was refused
        while killer.is_alive() and time.monotonic() < started + 40:
            unacked = send_all(url, unacked, ledger, threads=6) if unacked else unacked
            killer.join(0.2)
        killer.stop_event.set()
        killer.join()
        left = redeliver(url, unacked, ledger, deadline=time.monotonic() + 15)
    finally:
        srv.stop()

    result = audit(crash_db, "auto", ledger, {d.external_id for d in deliveries})
    figures = {"backend": backend, "kills": len(killer.killed), **result.figures()}
    print("crash-safety figures:", json.dumps(figures))
    (ARTIFACTS / f"crash-{backend}-figures.json").write_text(json.dumps(figures, indent=2))

    assert len(killer.killed) == KILLS, "the killer must have struck during the load"
    assert not left, f"{len(left)} deliveries never acknowledged after re-delivery"
    assert result.acked == len(deliveries)
    assert result.lost == [], f"acknowledged but not stored: {result.lost[:5]}"
    assert result.duplicated == [], f"stored more than once: {result.duplicated[:5]}"
    assert result.stored == result.acked
    assert result.fold_mismatches == [], result.fold_mismatches[:3]
    assert 500 not in result.statuses, result.statuses
    assert all(s in (200, 503) for s in result.statuses), result.statuses
