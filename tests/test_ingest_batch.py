"""Group commit under real gunicorn (one gevent worker, so concurrent webhooks meet in one
process): every acknowledged webhook is committed even when the whole server is SIGKILLed the
moment the last acknowledgement arrives, and every job is the fold of its events.

Twelve client threads send each job's lifecycle (several events per job, shuffled) to the
auto-registering source, so batches hold new keys, known jobs and the same job more than once.
"""

from __future__ import annotations

import os
import signal

import pytest
from sqlalchemy import func, select

from gateway.db import make_engine
from gateway.models import Event
from tests.conftest import ARTIFACTS, server_env, write_config
from tests.loadgen import Ledger, audit, make_deliveries, send_all
from tests.servers import Server
from tests.test_metrics import samples, value


@pytest.mark.parametrize("window", [1, 2], ids=["window-1ms", "window-2ms"])
def test_every_acknowledged_webhook_survives_a_sigkill_right_after_its_ack(db_url, tmp_path, window):
    extra = f"ingest_batch_window_ms = {window}"
    backend = "pg" if db_url.startswith("postgresql") else "sqlite"
    ARTIFACTS.mkdir(exist_ok=True)
    srv = Server(server_env(db_url, write_config(tmp_path / "gateway.toml", extra)), workers=1,
                 log_path=ARTIFACTS / f"batch-{backend}-{os.getpid()}.log").start()
    deliveries = make_deliveries(40, seed=7)
    ledger = Ledger()
    try:
        left = send_all(f"{srv.url}/webhooks/auto", deliveries, ledger, threads=12)
        scrape = samples(srv.url)
    finally:
        os.killpg(srv.proc.pid, signal.SIGKILL)  # no graceful exit: what was acknowledged must already be on disk
        srv.proc.wait(10)
    assert not left and ledger.acked == {d.event_id for d in deliveries}
    result = audit(db_url, "auto", ledger, {d.external_id for d in deliveries})
    assert result.lost == [], f"acknowledged but not stored: {result.lost[:5]}"
    assert result.duplicated == []
    assert result.fold_mismatches == [], result.fold_mismatches[:3]
    assert set(result.statuses) == {200}, result.statuses
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            stored = conn.scalar(select(func.count()).select_from(Event).where(Event.event_id.in_(ledger.acked)))
    finally:
        engine.dispose()
    assert stored == len(deliveries)
    batches, grouped = value(scrape, "gateway_ingest_batch_size_count"), value(scrape, "gateway_ingest_batch_size_sum")
    assert grouped == len(deliveries), "every webhook went through the group commit"
    if backend == "pg":
        # psycopg yields to the other greenlets while a commit is in flight: they queue and share the next
        assert batches < grouped, f"no batch of more than one webhook formed ({batches} batches)"
