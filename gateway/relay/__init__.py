"""The relay: every committed job change reaches every watching tab, in every process and host.

``install.init_app(app, gw)`` builds this process's ``Relay`` (``relay.py``) and wires the pieces:

- ``hub``: this process's watchers by job id and the latest snapshot of each (``hub.py``);
- a bus that carries (job id, version) notices between processes: PostgreSQL LISTEN/NOTIFY
  (``bus_pg.py``), SQLite's change feed (``bus_sqlite.py``), or this process only (``bus.py``);
- the transports: WebSocket ``/ws`` (``ws.py``), SSE (``sse.py``) and long-poll
  (``Relay.wait_for_change``, called by ``GET /api/jobs/<id>?wait=``); under the gevent worker
  a WebSocket or SSE socket leaves its request once open and the event loop serves it
  (``detached.py``), with one pinger and one heartbeat loop per process;
- token expiry: a subscription ends when its job token expires (``expiry.py``, one loop per
  process);
- a periodic resync that compares every watched job with the database.
"""
