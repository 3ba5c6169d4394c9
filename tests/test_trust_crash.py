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

import pytest

from tests.conftest import ARTIFACTS, write_config
from tests.loadgen import crash_run

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
    run = crash_run(crash_db, write_config(tmp_path / "gateway.toml"), jobs=JOBS, kills=KILLS,
                    log_path=ARTIFACTS / f"crash-{backend}-{os.getpid()}.log")
    result = run.audit
    figures = {"backend": backend, **run.figures()}
    print("crash-safety figures:", json.dumps(figures))
    (ARTIFACTS / f"crash-{backend}-figures.json").write_text(json.dumps(figures, indent=2))

    assert run.kills == KILLS, "the killer must have struck during the load"
    assert not run.left, f"{len(run.left)} deliveries never acknowledged after re-delivery"
    assert result.acked == run.planned, "every delivery is acknowledged in the end"
    assert result.lost == [], f"acknowledged but not stored: {result.lost[:5]}"
    assert result.duplicated == [], f"stored more than once: {result.duplicated[:5]}"
    assert result.stored == result.acked
    assert result.fold_mismatches == [], result.fold_mismatches[:3]
    assert result.jobs == JOBS
    assert 500 not in result.statuses, result.statuses
    assert all(s in (200, 503) for s in result.statuses), result.statuses
