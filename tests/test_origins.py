"""Which browser origins may use the API and the push endpoints."""

from __future__ import annotations

import pytest
import websocket

from tests.conftest import API_KEY, register


def test_preflight_from_an_allowed_origin_is_answered(client):
    r = client.options(
        "/api/jobs/job_x",
        headers={"Origin": "http://localhost", "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization, if-none-match"},
    )
    assert r.status_code == 200
    assert r.headers["Access-Control-Allow-Origin"] == "http://localhost"
    allowed = {h.strip().lower() for h in r.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "if-none-match"} <= allowed


def test_foreign_origin_gets_no_cors_grant(client):
    reg = register(client)
    r = client.get(f"/api/jobs/{reg['job']['id']}", headers={"Origin": "https://evil.example", "Authorization": f"Bearer {API_KEY}"})
    assert "Access-Control-Allow-Origin" not in r.headers


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_gateways_own_origin_may_open_a_websocket(server):
    ws = websocket.create_connection(server.url.replace("http", "ws") + "/ws", origin=server.url, timeout=10)
    ws.send('{"type": "subscribe"}')
    assert '"invalid_message"' in ws.recv()
    ws.close()
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(server.url.replace("http", "ws") + "/ws", origin="https://evil.example", timeout=10)
    assert refused.value.status_code == 403
