"""Drive ``wrk`` (closed loop: every connection sends its next request when the last is answered)
with a Lua script, and read back one JSON line of requests/s, p50/p99 latency and errors.

Two request sources: a pool of pre-made raw requests (``pool``: each a complete HTTP request,
cycled through by each wrk thread over its own interleaved share, so no two threads send the
same event), or one static request (``method``/``path``/``headers``).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

WRK = "/usr/bin/wrk"

_COMMON = r"""
local threads = {}
function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end
bad = 0
sent = 0
function response(status, headers, body)
  if status ~= EXPECT then bad = bad + 1 end
end
function done(summary, latency, requests)
  local b, s, wrapped = 0, 0, 0
  for _, t in ipairs(threads) do
    b = b + t:get("bad")
    s = s + t:get("sent")
    wrapped = wrapped + t:get("wrapped")
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"unexpected_status":%d,"socket_errors":%d,"timeouts":%d,"sent":%d,"wrapped":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, b, e.connect + e.read + e.write, e.timeout, s, wrapped))
end
"""

_POOL = r"""
local reqs = {}
local i = 0
wrapped = 0
function init(args)
  local n = tonumber(args[2])
  local k = 0
  local f = assert(io.open(args[1], "rb"))
  local data = f:read("*a")
  f:close()
  -- requests are separated by a NUL byte; this thread keeps every n-th, from its own offset
  for req in string.gmatch(data, "([^%z]+)%z") do
    if k % n == tid then table.insert(reqs, req) end
    k = k + 1
  end
end
function request()
  i = i + 1
  sent = sent + 1
  if i > #reqs then i = 1; wrapped = wrapped + 1 end
  return reqs[i]
end
"""

_STATIC = r"""
wrapped = 0
function init(args) end
function request()
  sent = sent + 1
  return REQ
end
"""


def raw_request(method: str, path: str, headers: Mapping[str, str], body: bytes = b"") -> bytes:
    """One HTTP/1.1 request as bytes (keep-alive, Host set)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _lua_string(data: bytes) -> str:
    return '"' + "".join(f"\\{b:03d}" for b in data) + '"'


def run(
    port: int, *, seconds: float, connections: int, threads: int = 2, expect: int = 200,
    pool: Sequence[bytes] | None = None, request: bytes | None = None, workdir: Path | None = None,
) -> dict[str, Any]:
    """One wrk run against 127.0.0.1:``port``; the figures as a dict (latencies in ms)."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="bench-wrk-"))
    script = workdir / f"wrk-{port}-{expect}.lua"
    args: list[str] = []
    if pool is not None:
        data = workdir / f"pool-{port}.bin"
        data.write_bytes(b"".join(r + b"\0" for r in pool))
        script.write_text(_COMMON.replace("EXPECT", str(expect)) + _POOL)
        args = [str(data), str(threads)]
    else:
        assert request is not None
        script.write_text(_COMMON.replace("EXPECT", str(expect)) + _STATIC.replace("REQ", _lua_string(request)))
    out = subprocess.run(
        [WRK, "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s", "--timeout", "10s", "-s", str(script),
         f"http://127.0.0.1:{port}/", "--", *args],
        capture_output=True, text=True, timeout=seconds + 120,
    )
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result: {out.stdout[-2000:]} {out.stderr[-2000:]}")
    raw = json.loads(line[len("WRKJSON "):])
    seconds_run = raw["duration_us"] / 1e6
    return {
        "requests_per_s": round(raw["requests"] / seconds_run, 1),
        "requests": raw["requests"],
        "p50_ms": round(raw["p50_us"] / 1000, 2),
        "p90_ms": round(raw["p90_us"] / 1000, 2),
        "p99_ms": round(raw["p99_us"] / 1000, 2),
        "max_ms": round(raw["max_us"] / 1000, 2),
        "errors": raw["unexpected_status"] + raw["socket_errors"] + raw["timeouts"],
        "unexpected_status": raw["unexpected_status"],
        "socket_errors": raw["socket_errors"],
        "timeouts": raw["timeouts"],
        "pool_wrapped": raw["wrapped"],
    }
