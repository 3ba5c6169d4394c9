"""Database outage: PostgreSQL stopped under load, then started again.

On a private cluster (tests/pgcluster.py; the shared server is never touched): while it is
down, webhooks get 503 with Retry-After (never 500, never a 2xx) and /readyz fails; once it is
back the gateway recovers by itself (no restart), and the provider's re-deliveries of what
was refused are accepted. Nothing acknowledged is lost.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from tests import pgcluster
from tests.conftest import ARTIFACTS, write_config
from tests.loadgen import outage_run

pytestmark = pytest.mark.postgres


@pytest.fixture
def cluster() -> Iterator[pgcluster.PgCluster]:
    """A private PostgreSQL cluster this test may stop and start (see tests/pgcluster.py)."""
    pgcluster.require()
    with pgcluster.PgCluster.create() as pg:
        yield pg


def test_postgres_outage_under_load(cluster: pgcluster.PgCluster, tmp_path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    run = outage_run(cluster, write_config(tmp_path / "gateway.toml"), jobs=150, log_path=ARTIFACTS / f"outage-{os.getpid()}.log")
    result = run.audit
    figures = {"scenario": "postgres outage", **run.figures()}
    print("outage figures:", json.dumps(figures))
    (ARTIFACTS / "outage-figures.json").write_text(json.dumps(figures, indent=2))

    assert run.readyz_down == 503 and run.healthz_down == 200  # alive, not ready
    assert run.probe_down == 503 and (run.probe_retry_after or "").isdigit()
    assert run.bad_503 == [], run.bad_503[:3]  # every 503 had Retry-After and the `unavailable` error
    assert result.statuses.get(503, 0) >= 20
    assert run.acked_at_end > run.acked_at_stop  # accepted again after recovery, without a restart
    assert not run.left, f"{len(run.left)} re-deliveries never accepted"
    assert result.acked == run.planned
    assert result.lost == [] and result.duplicated == [] and result.stored == result.acked
    assert result.fold_mismatches == [], result.fold_mismatches[:3]
    assert set(result.statuses) <= {200, 503}, result.statuses
