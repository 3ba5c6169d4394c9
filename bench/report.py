"""Markdown tables from a ``make bench`` result: ``python -m bench.report [bench/results/latest.json]``.

docs/performance.md pastes this output, so the tables there are one run's, unedited."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

DEFAULT = Path(__file__).resolve().parent / "results" / "latest.json"


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def render(r: dict[str, Any]) -> str:
    out = [f"Run: {r['date']} · `{r['command']}` · {r['machine']['cpus']} cores ({r['machine']['cpu_model']}), "
           f"Python {r['machine']['python']}, PostgreSQL {r['machine']['postgres']}, "
           f"load average at start {r['machine']['load_average_at_start']} · {r['seconds']['total']} s in all"]
    ing = r.get("ingest")
    if ing:
        names = {"gateway": "gateway (verify, dedup, fold, commit, NOTIFY)", "naive_sdk_insert_commit": "naive: SDK verify, INSERT, COMMIT",
                 "noop_flask": "no-op Flask endpoint"}
        variants = {k: f"gateway, variant: {k.removeprefix('gateway_').replace('_', ' ')}" for k, v in ing.items() if k.startswith("gateway_") and isinstance(v, dict)}
        names = {"gateway": names["gateway"], **variants, **{k: v for k, v in names.items() if k != "gateway"}}
        out += ["", "### Ingest (webhooks/s, PostgreSQL)", "", ing["setup"], "",
                table(["server", "req/s (median)", "rounds", "p50 ms", "p99 ms", "worker CPU ms / request", "PostgreSQL CPU ms / request", "errors"],
                      [[names[k], ing[k]["requests_per_s"], ing[k]["rounds_requests_per_s"], ing[k]["p50_ms"], ing[k]["p99_ms"], ing[k].get("worker_cpu_ms_per_request"),
                        ing[k].get("database_cpu_ms_per_request"), ing[k]["errors"]] for k in names]),
                "", f"gateway / naive = **{ing['ratio_gateway_to_naive']}** (aim ≥ 1.0); gateway / no-op = **{ing['ratio_gateway_to_noop']}** (aim ≥ 0.35); "
                f"naive's worker CPU per webhook / the gateway's = {ing.get('cpu_ratio_naive_to_gateway')}. PostgreSQL's CPU counts its processes "
                "that lived through a run: a pool's short-lived overflow connections are missed (the naive handler's 0.0)"]
    poll = r.get("polling")
    if poll:
        names = {"gateway_304": "gateway, conditional GET → 304", "gateway_200": "gateway, GET → 200 from memory",
                 "gateway_200_database": "gateway, GET → 200 read from the database (poll_memory_jobs = 0)", "noop_flask_get": "no-op Flask GET"}
        names = {k: v for k, v in names.items() if k in poll}
        out += ["", "### Polling", "", poll["setup"], "",
                table(["server", "req/s (median)", "rounds", "p50 ms", "p99 ms", "worker CPU ms / request", "errors"],
                      [[names[k], poll[k]["requests_per_s"], poll[k]["rounds_requests_per_s"], poll[k]["p50_ms"], poll[k]["p99_ms"], poll[k].get("worker_cpu_ms_per_request"), poll[k]["errors"]] for k in names]),
                "", f"304 / no-op = **{poll['ratio_304_to_noop']}** (aim ≥ 0.9); 200 / no-op = **{poll['ratio_200_to_noop']}** (aim ≥ 0.5); "
                f"200 from the database / no-op = {poll.get('ratio_200_database_to_noop')}; from memory / from the database = {poll.get('ratio_200_memory_to_database')}"]
    st = r.get("storm")
    if st:
        out += ["", f"### Progress storm (one job, {st['rate_per_s']} progress webhooks/s for {st['seconds']} s, then complete)", "",
                table(["bus", "coalescing", "webhooks", "bus notices", "watcher frames", "max frames/s", "final progress delivered", "last ack → final frame ms", "complete → frame ms"],
                      [[x["bus"], f"{x['progress_interval_ms']} ms" if x["progress_interval_ms"] else "off (baseline)", x["webhooks"], x["bus_notices_for_the_job"],
                        x["watcher_progress_frames"], x["max_progress_frames_in_one_second"], x["last_progress_frame_is_final"],
                        x["last_webhook_ack_to_final_progress_frame_ms"], x["complete_webhook_to_frame_ms"]] for x in st["runs"]])]
    rel = r.get("relay")
    if rel:
        out += ["", "### Relay: webhook → WebSocket watcher on another instance (1 gevent worker each)", "",
                table(["bus", "target/s", "achieved/s", "errors", "p50 ms", "p99 ms", "ack p50 ms (baseline)", "frame − ack p50 / p99 ms"],
                      [[x["bus"], x["target_rate_per_s"], x["achieved_rate_per_s"], x["webhook_errors"],
                        (x["webhook_to_ws_ms"] or {}).get("p50"), (x["webhook_to_ws_ms"] or {}).get("p99"),
                        (x["baseline_webhook_ack_ms"] or {}).get("p50"),
                        f"{(x['ws_frame_minus_ack_ms'] or {}).get('p50')} / {(x['ws_frame_minus_ack_ms'] or {}).get('p99')}"] for x in rel["latency"]])]
        g, n = rel.get("idle_gateway_two_workers"), rel.get("idle_naive_two_workers")
        if g and n:
            out += ["", "### Idle watchers, one instance with two gevent workers", "",
                    table(["server", "asked", "alive after idle", "per worker", "RSS before → after MB", "KB per watcher", "connect + subscribe s"],
                          [[name, x["watchers"], x["alive_after_idle"], x["connections_per_worker"], f"{x['rss_before_mb']} → {x['rss_after_mb']}",
                            x["kb_per_watcher"], x["connect_and_subscribe_s"]] for name, x in (("gateway (subscribed)", g), ("naive flask-sock", n))])]
        fg, fo, fn = (rel.get(k) for k in ("fanout_gateway_webhook_to_same_worker", "fanout_gateway_webhook_to_other_instance", "fanout_baseline_naive_flask_sock"))
        if fg and fn:
            out += ["", f"### Fan-out of one change to {fg['watchers']} watchers ({fg['rounds']} rounds)", "",
                    table(["", "server send loop ms (mean)", "trigger → last frame p50 ms", "first → last frame p50 ms"],
                          [[name, x["server_send_loop_mean_ms"], x["trigger_to_last_ms"]["p50"], x["first_to_last_ms"]["p50"]]
                           for name, x in (("gateway, webhook to the watchers' worker", fg), ("gateway, webhook to another instance", fo),
                                           ("naive loop of ws.send", fn)) if x])]
    out += sse_tables(rel.get("sse") if rel else None)
    out += pipeline_table(r.get("pipeline"))
    aims = r.get("summary", {}).get("aims", {})
    if aims:
        out += ["", "### Aims", "", table(["figure", "value", "aim", "met"],
                                            [[k, v["value"], ("≥ " if v["kind"] == "min" else "≤ ") + str(v["aim"]), "yes" if v["met"] else "**no**"] for k, v in aims.items()])]
    return "\n".join(out) + "\n"


def sse_tables(s: dict[str, Any] | None) -> list[str]:
    """bench.sse's figures: latency, idle streams on one worker, fan-out."""
    if not s or "error" in s:
        return ["", f"### SSE: not measured ({s['error']})"] if s else []
    out: list[str] = []
    x = s.get("latency")
    if x:
        lat, base, after = x.get("webhook_to_sse_ms") or {}, x.get("baseline_webhook_ack_ms") or {}, x.get("sse_event_minus_ack_ms") or {}
        out += ["", "### Relay: webhook → SSE stream on another instance (1 gevent worker each)", "",
                table(["bus", "target/s", "achieved/s", "errors", "p50 ms", "p99 ms", "ack p50 ms (baseline)", "event − ack p50 / p99 ms"],
                      [[x["bus"], x["target_rate_per_s"], x["achieved_rate_per_s"], x["webhook_errors"], lat.get("p50"), lat.get("p99"),
                        base.get("p50"), f"{after.get('p50')} / {after.get('p99')}"]])]
    g, n = s.get("idle_gateway"), s.get("idle_baseline_naive")
    if g and n:
        out += ["", "### Idle SSE streams, one gevent worker", "",
                table(["server", "asked", "alive after idle", "RSS before → after MB", "KB per stream", "connect s"],
                      [[name, y["streams"], y["alive_after_idle"], f"{y['rss_before_mb']} → {y['rss_after_mb']}", y["kb_per_stream"],
                        y["connect_and_subscribe_s"]] for name, y in (("gateway (subscribed)", g), ("naive: generator per stream, queue each", n))])]
    fg, fn = s.get("fanout_gateway"), s.get("fanout_baseline_naive")
    if fg and fn:
        out += ["", f"### SSE fan-out of one change to {fg['watchers']} streams ({fg['rounds']} rounds)", "",
                table(["", "server loop ms (mean)", "trigger → last event p50 ms", "first → last event p50 ms"],
                      [[name, y["server_send_loop_mean_ms"], y["trigger_to_last_ms"]["p50"], y["first_to_last_ms"]["p50"]]
                       for name, y in (("gateway, webhook to the streams' worker", fg), ("naive loop of queue puts", fn))])]
    return out


def pipeline_table(p: dict[str, Any] | None) -> list[str]:
    """bench.pipeline: webhook → frame on one instance with many watchers per job, beside the naive pipeline."""
    if not p or "error" in p:
        return ["", f"### Pipeline: not measured ({p['error']})"] if p else []
    names = (("gateway (1 instance, 2 gevent workers)", "gateway"), ("naive: SDK verify, INSERT, COMMIT, loop of ws.send (1 worker)", "naive_pipeline"))
    rows = []
    for name, key in names:
        x = p.get(key)
        if not x:
            continue
        lat, ack = x.get("webhook_to_frame_ms") or {}, x.get("webhook_ack_ms") or {}
        rows.append([name, x["target_rate_per_s"], x["achieved_rate_per_s"], x["webhook_errors"], ack.get("p50"), ack.get("p99"),
                     lat.get("p50"), lat.get("p90"), lat.get("p99"), lat.get("max"), f"{x['frames_matched']} / {x['frames_expected']}"])
    return ["", f"### Pipeline: webhook → WebSocket frame, same instance, {p['watchers']} watchers over {p['jobs']} jobs", "", p["setup"], "",
            table(["server", "target/s", "achieved/s", "errors", "ack p50 ms", "ack p99 ms", "frame p50 ms", "p90 ms", "p99 ms", "max ms",
                   "frames matched / expected"], rows),
            "", f"gateway / naive: p50 = **{p.get('ratio_gateway_to_naive_p50')}**, p99 = **{p.get('ratio_gateway_to_naive_p99')}** (aim ≤ 1); "
            "gateway aims: p50 ≤ 10 ms, p99 ≤ 40 ms"]


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    print(render(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
