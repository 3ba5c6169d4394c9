"""Issue 13, finding 1: does an empty-fragment WebSocket flood still slow the worker it lands on?
Prints JSON.

    .venv/bin/python -m bench.ws_flood

One gunicorn with one gevent worker (the flood and the probe share it) on SQLite. A probe times
sequential ``GET /healthz`` on one keep-alive connection: first alone (the baseline), then while
two attackers each open a WebSocket, send a text frame's first empty fragment and then empty
continuation frames (the attack sent 150,000 of them) and open another as soon as the gateway
closes the last one. Before the fix one such socket held the worker for 23.5 s and /healthz
went from 2 ms to a median of 911 ms (max 4.4 s).
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests
import websocket
from websocket import ABNF

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ops import _stats, _timed_get  # noqa: E402
from tests.conftest import server_env, write_config  # noqa: E402
from tests.servers import Server  # noqa: E402

FLOOD_FRAMES = 150_000
ATTACKERS = 2
PROBES = 1_000


def _attack(url: str, stop: threading.Event, tally: dict[str, int], lock: threading.Lock) -> None:
    """Flood, reconnect, flood again until ``stop``; counts sockets, frames sent and how each ended."""
    while not stop.is_set():
        sent, how = 0, "read_to_end"
        try:
            ws = websocket.create_connection(url, timeout=10, suppress_origin=True)
        except websocket.WebSocketBadStatusException as exc:
            how = f"refused_{exc.status_code}"
            ws = None
        except OSError:
            how = "refused_connect"
            ws = None
        if ws is not None:
            try:
                ws.send_frame(ABNF(fin=0, opcode=ABNF.OPCODE_TEXT, data=b""))
                for _ in range(FLOOD_FRAMES):
                    if stop.is_set():
                        how = "stopped_by_the_bench"
                        break
                    ws.send_frame(ABNF(fin=0, opcode=ABNF.OPCODE_CONT, data=b""))
                    sent += 1
            except (websocket.WebSocketException, OSError):
                how = "cut_off"
            finally:
                ws.close()
        with lock:
            tally["sockets"] += 1
            tally["frames_sent"] += sent
            tally[how] = tally.get(how, 0) + 1
        if how.startswith("refused"):
            time.sleep(0.05)  # a refused attacker comes back, as a real one would, a little later


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-flood-"))
    db_url = f"sqlite:///{tmp / 'gateway.db'}"
    from gateway.migrate import upgrade

    upgrade(db_url)
    srv = Server(server_env(db_url, write_config(tmp / "gateway.toml")), workers=1).start()
    results: dict[str, Any] = {"bench": "ws_flood", "workers": 1, "attackers": ATTACKERS, "flood_frames_per_socket": FLOOD_FRAMES}
    try:
        s = requests.Session()
        _timed_get(s, srv.url + "/healthz", 100)
        results["healthz_alone"] = _stats(_timed_get(s, srv.url + "/healthz", PROBES))
        stop, lock = threading.Event(), threading.Lock()
        tally: dict[str, int] = {"sockets": 0, "frames_sent": 0}
        ws_url = srv.url.replace("http://", "ws://") + "/ws"
        attackers = [threading.Thread(target=_attack, args=(ws_url, stop, tally, lock), daemon=True) for _ in range(ATTACKERS)]
        for a in attackers:
            a.start()
        started = time.monotonic()
        try:
            results["healthz_under_flood"] = _stats(_timed_get(s, srv.url + "/healthz", PROBES))
        finally:
            stop.set()
            for a in attackers:
                a.join(30)
        results["flood"] = {**tally, "seconds": round(time.monotonic() - started, 2)}
        alone, flood = results["healthz_alone"], results["healthz_under_flood"]
        results["p99_under_flood_to_alone"] = round(flood["p99_ms"] / alone["p99_ms"], 2)
    finally:
        srv.stop()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
