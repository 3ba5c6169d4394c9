"""Database outage: PostgreSQL stopped under load, then started again.

On a private cluster (tests/pgcluster.py; the shared server is never touched): while it is
down, webhooks get 503 with Retry-After (never 500, never a 2xx) and /readyz fails; once it is
back the gateway recovers by itself (no restart), and the provider's re-deliveries of what
was refused are accepted. Nothing acknowledged is lost.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from tests import pgcluster
from tests.conftest import ARTIFACTS, server_env, write_config
from tests.loadgen import Ledger, audit, make_deliveries, post, redeliver, send_all
from tests.servers import Server

pytestmark = pytest.mark.postgres


@pytest.fixture
def cluster() -> Iterator[pgcluster.PgCluster]:
    why = pgcluster.available()
    if why:
        if os.environ.get("GATEWAY_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"a private PostgreSQL cluster is required: {why}")
        pytest.skip(why)
    with pgcluster.PgCluster.create() as pg:
        yield pg


def wait_for(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def status_of(url: str) -> int | None:
    try:
        return requests.get(url, timeout=5).status_code
    except requests.RequestException:
        return None


def test_postgres_outage_under_load(cluster: pgcluster.PgCluster, tmp_path) -> None:
    db = cluster.database("gw")
    ARTIFACTS.mkdir(exist_ok=True)
    srv = Server(server_env(db, write_config(tmp_path / "gateway.toml")), log_path=ARTIFACTS / f"outage-{os.getpid()}.log").start()
    url = f"{srv.url}/webhooks/auto"
    deliveries = make_deliveries(150)
    ledger = Ledger()
    bad_503: list[str] = []

    def check(d, r) -> None:  # type: ignore[no-untyped-def]
        if r.status_code == 503 and not (r.headers.get("Retry-After", "").isdigit() and r.json()["error"]["code"] == "unavailable"):
            bad_503.append(f"{d.event_id}: {r.headers} {r.text}")

    unacked: list = []
    load = threading.Thread(target=lambda: unacked.extend(send_all(url, deliveries, ledger, threads=4, deadline=time.monotonic() + 40, on_response=check)))
    try:
        load.start()
        wait_for(lambda: len(ledger.acked) >= 50, 20, "load to be acknowledged before the outage")
        cluster.stop(mode="immediate")
        acked_at_stop = len(ledger.acked)
        wait_for(lambda: ledger.statuses[503] >= 20, 20, "webhooks answered 503 during the outage")
        assert status_of(srv.url + "/readyz") == 503
        assert status_of(srv.url + "/healthz") == 200  # alive, just not ready
        # a fresh delivery while down: 503 + Retry-After, and it is not stored
        probe = make_deliveries(1, prefix="probe-" + os.urandom(3).hex())[0]
        r = post(requests.Session(), url, probe)
        assert r.status_code == 503 and r.headers["Retry-After"].isdigit()
        assert r.json()["error"]["code"] == "unavailable"

        cluster.start()
        wait_for(lambda: status_of(srv.url + "/readyz") == 200, 20, "the gateway to become ready again by itself")
        load.join(45)
        assert not load.is_alive()
        left = redeliver(url, unacked + [probe], ledger, deadline=time.monotonic() + 20)
        assert len(ledger.acked) > acked_at_stop
    finally:
        srv.stop()

    result = audit(db, "auto", ledger, {d.external_id for d in deliveries} | {probe.external_id})
    figures = {"scenario": "postgres outage", **result.figures()}
    print("outage figures:", json.dumps(figures))
    (ARTIFACTS / "outage-figures.json").write_text(json.dumps(figures, indent=2))
    assert not left, f"{len(left)} re-deliveries never accepted"
    assert bad_503 == [], bad_503[:3]
    assert result.acked == len(deliveries) + 1
    assert result.lost == [] and result.duplicated == [] and result.stored == result.acked
    assert result.fold_mismatches == [], result.fold_mismatches[:3]
    assert set(result.statuses) <= {200, 503}, result.statuses
