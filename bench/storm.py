"""Progress storms: ``python -m bench.storm`` prints JSON.

One job reports progress 100 times a second for a few seconds (webhooks to instance A, one
gevent worker), then completes; a WebSocket watcher on instance B counts frames. A listener
in this process counts the bus notices for the job. Run on the PostgreSQL bus and on the
Redis bus, each with coalescing (``progress_interval_ms = 100``) and, as the baseline in the
same run, without (``progress_interval_ms = 0``: one notice per change).

Figures: webhooks sent, bus notices, watcher frames, the most frames in any one second,
whether the last progress frame carried the final progress and how long after the last
progress webhook's ack it came (the trailing notice), and complete-webhook → frame latency
(state changes are never held). Options: BENCH_STORM_RATE (100), BENCH_STORM_SECONDS (4).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import redis

from bench.relay import CONFIG, ENV, Http, iso_at, make_database, ms, register, subscribe_msg, webhook
from bench.wsclient import Swarm, job_of
from gateway.relay.bus_pg import CHANNEL
from tests.servers import Server
from tests.signing import STANDARD_SECRET, standard_headers


def _server(url: str, workdir: Path, name: str, bus: str, interval_ms: int) -> Server:
    cfg = workdir / f"{name}.toml"
    cfg.write_text(CONFIG.replace("[sources.worker]", f'bus = "{bus}"\nprogress_interval_ms = {interval_ms}\n\n[sources.worker]'))
    return Server({**ENV, "GATEWAY_CONFIG": str(cfg), "DATABASE_URL": url}, workers=1, log_path=workdir / f"{name}.log").start()


class NoticeCounter(threading.Thread):
    """Counts bus notices naming ``job_id`` (PostgreSQL LISTEN or Redis SUBSCRIBE)."""

    def __init__(self, bus: str, url: str, job_id: str):
        super().__init__(daemon=True)
        self.bus, self.url, self.job_id = bus, url, job_id
        self.count = 0
        self.ready = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        if self.bus == "postgres":
            with psycopg.connect(self.url.replace("+psycopg", ""), autocommit=True) as conn:
                conn.execute(f"LISTEN {CHANNEL}")
                self.ready.set()
                while not self.stop.is_set():
                    for note in conn.notifies(timeout=0.2):
                        self.count += note.payload.count(self.job_id + ":")
        else:
            from sqlalchemy.engine import make_url

            u = make_url(self.url)
            ps = redis.Redis.from_url("redis://127.0.0.1:6379/0").pubsub(ignore_subscribe_messages=True)
            ps.subscribe(f"gateway_jobs:{u.host or ''}:{u.port or ''}/{u.database or ''}")
            self.ready.set()
            while not self.stop.is_set():
                msg = ps.get_message(timeout=0.2)
                if msg and msg["type"] == "message":
                    self.count += msg["data"].decode().count(self.job_id + ":")
            ps.close()


def storm(bus: str, interval_ms: int, rate: int, seconds: float, workdir: Path) -> dict[str, Any]:
    url, drop = make_database("postgres", workdir)
    a = _server(url, workdir, f"storm-{bus}-{interval_ms}-a", bus, interval_ms)
    b = _server(url, workdir, f"storm-{bus}-{interval_ms}-b", bus, interval_ms)
    try:
        reg = register(a.port)
        ext, job_id = reg["job"]["external_id"], reg["job"]["id"]
        frames: list[tuple[float, dict[str, Any]]] = []
        swarm = Swarm("127.0.0.1", b.port, on_text=lambda c, p, t: frames.append((t, job_of(p) or {})))
        (conn,) = swarm.connect(1)
        swarm.send_text(conn, subscribe_msg(reg))
        assert swarm.run_until(lambda: bool(frames), 10)
        counter = NoticeCounter(bus, url, job_id)
        counter.start()
        assert counter.ready.wait(10)
        total = int(rate * seconds)
        base = time.time()
        prepared = [webhook(ext, k + 1, base + k / 1000) for k in range(total)]
        http = Http(a.port)
        done = threading.Event()
        sent_complete = [0.0]

        last_ack = [0.0]

        def send() -> None:
            start = time.perf_counter()
            for k, (body, headers) in enumerate(prepared):
                delay = start + k / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                assert http.request("POST", "/webhooks/worker", body, headers)[0] == 200
            last_ack[0] = time.perf_counter()
            # the final progress must reach the watcher (the trailing notice) before the state change
            converged.wait(30)
            body = json.dumps({"external_id": ext, "state": "complete", "occurred_at": iso_at(base + total / 1000 + 1)}).encode()
            sent_complete[0] = time.perf_counter()
            assert http.request("POST", "/webhooks/worker", body, standard_headers(STANDARD_SECRET, body))[0] == 200
            done.set()

        converged = threading.Event()
        frames.clear()
        t0 = time.perf_counter()
        th = threading.Thread(target=send)
        th.start()

        def final_seen() -> bool:
            if any((j.get("progress") or {}).get("current") == total for _, j in frames):
                converged.set()
            return converged.is_set()

        assert swarm.run_until(final_seen, seconds * 5 + 30), "the final progress never reached the watcher"
        final_at = next(t for t, j in frames if (j.get("progress") or {}).get("current") == total)
        assert swarm.run_until(lambda: any(j.get("state") == "complete" for _, j in frames), 30)
        th.join()
        elapsed = time.perf_counter() - t0
        swarm.run_until(lambda: False, 0.3)
        counter.stop.set()
        counter.join(2)
        swarm.close()
        progress = [(t, j) for t, j in frames if j.get("state") == "processing"]
        per_second: dict[int, int] = {}
        for t, _ in progress:
            per_second[int(t - t0)] = per_second.get(int(t - t0), 0) + 1
        complete_at = next(t for t, j in frames if j.get("state") == "complete")
        last_progress = progress[-1][1]["progress"]["current"] if progress else None
        return {
            "bus": bus,
            "progress_interval_ms": interval_ms,
            "webhooks": total + 1,
            "achieved_webhooks_per_s": round(total / elapsed, 1),
            "bus_notices_for_the_job": counter.count,
            "watcher_progress_frames": len(progress),
            "max_progress_frames_in_one_second": max(per_second.values()) if per_second else 0,
            "last_progress_frame_is_final": last_progress == total,
            "last_webhook_ack_to_final_progress_frame_ms": ms(final_at - last_ack[0]),
            "complete_webhook_to_frame_ms": ms(complete_at - sent_complete[0]),
        }
    finally:
        a.stop()
        b.stop()
        drop()


def run(workdir: Path) -> dict[str, Any]:
    rate = int(os.environ.get("BENCH_STORM_RATE", "100"))
    seconds = float(os.environ.get("BENCH_STORM_SECONDS", "4"))
    out = []
    for bus in os.environ.get("BENCH_BUSES", "postgres,redis").split(","):
        for interval in (100, 0):
            out.append(storm(bus, interval, rate, seconds, workdir))
    return {"rate_per_s": rate, "seconds": seconds, "runs": out}


def main() -> None:
    print(json.dumps(run(Path(tempfile.mkdtemp(prefix="bench-storm-"))), indent=2))


if __name__ == "__main__":
    main()
