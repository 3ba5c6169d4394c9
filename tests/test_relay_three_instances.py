"""Past one host: three gateway instances (gunicorn, 2 gevent workers each) on one PostgreSQL
database and the Redis bus. Webhooks go to every instance in turn, watchers sit on every
instance over WebSocket and one over SSE: each watcher ends on every job's final version, sees
a job's versions only rising, and each instance's poll answers what the database holds."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ARTIFACTS, register, server_env, write_config
from tests.relay_helpers import SSEReader, Watcher, job_frame, post_webhook
from tests.servers import Server

pytestmark = pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
STEPS = 6  # progress reports per job before it completes


@pytest.fixture
def three(db_url: str, redis_url: str, tmp_path: Any) -> Iterator[list[Server]]:
    cfg = write_config(tmp_path / "gateway.toml", extra_gateway=f'bus = "redis"\nredis_url = "{redis_url}"\n')
    ARTIFACTS.mkdir(exist_ok=True)
    servers = [Server(server_env(db_url, cfg), log_path=ARTIFACTS / f"three-{n}-{os.getpid()}.log") for n in "abc"]
    with ThreadPoolExecutor(3) as pool:  # started and stopped side by side: each waits on its own
        try:
            list(pool.map(Server.start, servers))
            yield servers
        finally:
            list(pool.map(Server.stop, servers))


def relay_reads(servers: list[Server]) -> float:
    """``gateway_relay_reads_total`` summed over every worker of every instance."""
    total = 0.0
    for s in servers:
        for family in text_string_to_metric_families(requests.get(f"{s.url}/metrics", timeout=10).text):
            total += sum(x.value for x in family.samples if x.name == "gateway_relay_reads_total")
    return total


def test_three_instances_on_the_redis_bus_agree_on_every_job(three: list[Server]) -> None:
    regs = [register(three[n % 3].url) for n in range(4)]
    watchers = [Watcher(s.url) for s in three]
    try:
        for w in watchers:
            for reg in regs:
                w.subscribe(reg["job"]["id"], reg["token"])
        sse = SSEReader(three[2].url, regs[0]["job"]["id"], regs[0]["token"])
        for w in watchers:  # every process holding watchers has read each job once to start
            w.wait_for_all(*(job_frame(reg["job"]["id"], version=reg["job"]["version"]) for reg in regs), timeout=30)
        sse.wait_for(lambda e: e["json"]["version"] == regs[0]["job"]["version"], timeout=30)
        reads_before = relay_reads(three)
        # each report goes to the next instance: the changes of one job come from all three
        n = 0
        for step in range(1, STEPS + 1):
            for reg in regs:
                post_webhook(three[n % 3].url, reg["job"]["external_id"], "processing", offset_ms=step, progress={"current": step, "total": STEPS})
                n += 1
        for reg in regs:
            post_webhook(three[n % 3].url, reg["job"]["external_id"], "complete", offset_ms=STEPS + 1, result={"rows": STEPS})
            n += 1

        final = {}
        for reg in regs:
            job_id = reg["job"]["id"]
            polled = [requests.get(f"{s.url}/api/jobs/{job_id}", params={"token": reg["token"]}, timeout=10).json() for s in three]
            assert all(p == polled[0] for p in polled), "the instances answer different JSON for one job"
            assert polled[0]["state"] == "complete" and polled[0]["result"] == {"rows": STEPS}
            final[job_id] = polled[0]
        for w in watchers:
            ends = w.wait_for_all(*(job_frame(job_id, version=job["version"]) for job_id, job in final.items()), timeout=30)
            assert [e["job"] for e in ends] == list(final.values())
            for job_id in final:
                versions = [f["job"]["version"] for f in w.seen if f.get("job", {}).get("id") == job_id]
                assert versions == sorted(set(versions)), f"versions out of order or repeated on one watcher: {versions}"
        first = regs[0]["job"]["id"]
        event = sse.wait_for(lambda e: e["json"]["version"] == final[first]["version"], timeout=30)
        assert event["json"] == final[first]
        sse.close()
        # every change reached every watcher with its JSON on the bus: no instance read a job for it
        assert relay_reads(three) == reads_before, "a change was read from the database to reach watchers"
    finally:
        for w in watchers:
            w.close()
