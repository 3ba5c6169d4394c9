"""What one WebSocket may cost a worker, attacked without credentials: a flood of empty
continuation frames is cut off after MAX_FRAGMENTS frames (each frame counted with its header),
a loop of messages is cut off by the per-connection budget, and JSON nested deeper than the
parser's stack is an error frame, not a crash. Through real gunicorn and real sockets."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import requests
import websocket
from websocket import ABNF

from gateway.relay.ws import MAX_FRAGMENTS, READ_BURST, READ_RATE
from tests.conftest import ARTIFACTS, register, server_env, write_config
from tests.relay_helpers import Watcher, ws_url
from tests.servers import Server


@pytest.fixture
def one_worker(pg_url: str, tmp_path: Any) -> Any:
    """A gunicorn with one gevent worker: the flood and /healthz share it."""
    ARTIFACTS.mkdir(exist_ok=True)
    srv = Server(server_env(pg_url, write_config(tmp_path / "gw.toml")), workers=1, log_path=ARTIFACTS / "ws-limits.log").start()
    yield srv
    srv.stop()


def close_code(ws: websocket.WebSocket, timeout: float = 10) -> int | None:
    """Read until the server's close frame; its status code (None if the socket just ended)."""
    ws.settimeout(timeout)
    while True:
        try:
            frame = ws.recv_frame()
        except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError):
            return None
        if frame.opcode == ABNF.OPCODE_CLOSE:
            return int.from_bytes(frame.data[:2], "big") if len(frame.data) >= 2 else None


def test_an_empty_fragment_flood_is_cut_off_and_the_worker_keeps_serving(one_worker):
    ws = websocket.create_connection(ws_url(one_worker.url), timeout=10, suppress_origin=True)
    healthz: list[int] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            healthz.append(requests.get(one_worker.url + "/healthz", timeout=10).status_code)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    frames = 0
    try:
        ws.send_frame(ABNF(fin=0, opcode=ABNF.OPCODE_TEXT, data=b""))
        for _ in range(20_000):  # far more than the server may accept
            ws.send_frame(ABNF(fin=0, opcode=ABNF.OPCODE_CONT, data=b""))
            frames += 1
    except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError):
        pass  # the server closed the socket under the flood: the point of the test
    code = close_code(ws) if ws.connected else None
    stop.set()
    prober.join(15)
    assert code in (1009, None)
    assert frames < 20_000 or code == 1009, "the flood was read to its end"
    assert healthz and set(healthz) == {200}
    assert requests.get(one_worker.url + "/healthz", timeout=5).status_code == 200


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_message_split_into_too_many_fragments_is_refused_with_1009(server):
    ws = websocket.create_connection(ws_url(server.url), timeout=10, suppress_origin=True)
    ws.send_frame(ABNF(fin=0, opcode=ABNF.OPCODE_TEXT, data=b"{"))
    for _ in range(MAX_FRAGMENTS):
        ws.send_frame(ABNF(fin=0, opcode=ABNF.OPCODE_CONT, data=b" "))
    assert close_code(ws) == 1009


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_message_in_a_few_fragments_is_still_read(server):
    reg = register(server.url)
    ws = websocket.create_connection(ws_url(server.url), timeout=10, suppress_origin=True)
    text = json.dumps({"type": "subscribe", "job": reg["job"]["id"], "token": reg["token"]}).encode()
    parts = [text[i:i + 10] for i in range(0, len(text), 10)]
    ws.send_frame(ABNF(fin=0, opcode=ABNF.OPCODE_TEXT, data=parts[0]))
    for part in parts[1:-1]:
        ws.send_frame(ABNF(fin=0, opcode=ABNF.OPCODE_CONT, data=part))
    ws.send_frame(ABNF(fin=1, opcode=ABNF.OPCODE_CONT, data=parts[-1]))
    assert json.loads(ws.recv())["job"]["id"] == reg["job"]["id"]


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_subscribe_loop_spends_the_connection_budget(server):
    """~890 snapshot reads/s from one socket before; now the socket closes with 1008 once its
    frame budget is spent, and the reads it got stay within the budget."""
    reg = register(server.url)
    ws = websocket.create_connection(ws_url(server.url), timeout=10, suppress_origin=True)
    sub = json.dumps({"type": "subscribe", "job": reg["job"]["id"], "token": reg["token"]})
    unsub = json.dumps({"type": "unsubscribe", "job": reg["job"]["id"]})
    sent, started = 0, time.monotonic()
    try:
        for _ in range(5 * READ_BURST):
            ws.send(sub)
            ws.send(unsub)
            sent += 2
    except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError):
        pass
    snapshots, code = 0, None
    ws.settimeout(10)
    while True:
        try:
            frame = ws.recv_frame()
        except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError):
            break
        if frame.opcode == ABNF.OPCODE_CLOSE:
            code = int.from_bytes(frame.data[:2], "big")
            break
        if frame.opcode == ABNF.OPCODE_TEXT and json.loads(frame.data).get("type") == "job":
            snapshots += 1
    elapsed = time.monotonic() - started
    assert code == 1008
    assert snapshots <= READ_BURST + READ_RATE * elapsed + 1  # the bucket's bound: burst plus refill


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_json_nested_deeper_than_the_parser_is_an_error_frame(server):
    reg = register(server.url)
    w = Watcher(server.url)
    w.send("[" * 4000 + "]" * 4000)
    assert w.wait_for(lambda f: f.get("type") == "error") == {"type": "error", "job": None, "code": "invalid_message"}
    w.subscribe(reg["job"]["id"], reg["token"])  # the connection is still good
    assert w.wait_for(lambda f: f.get("type") == "job")["job"]["id"] == reg["job"]["id"]
