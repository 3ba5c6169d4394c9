"""Cost of verify + parse per delivery for each built-in adapter, against a baseline measured in
the same run: one HMAC-SHA256 over the body plus ``json.loads`` — the least any signed-JSON
adapter must do. Prints JSON.

    .venv/bin/python -m bench.adapters [--seconds 0.5]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from urllib.parse import urlencode

from adapters.base import WebhookRequest
from adapters.fixtures import load
from adapters.github import GitHubAdapter
from adapters.mux import MuxAdapter
from adapters.render import RenderAdapter
from adapters.replicate import ReplicateAdapter
from adapters.standard import StandardAdapter
from adapters.stripe import StripeAdapter
from adapters.twilio import TwilioAdapter
from tests import signing


def _per_call(fn: Callable[[], object], seconds: float) -> float:
    """Microseconds per call, best of three runs of about ``seconds`` each."""
    best = float("inf")
    for _ in range(3):
        n, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            for _ in range(50):
                fn()
            n += 50
        best = min(best, elapsed / n * 1e6)
    return best


def _cases() -> dict[str, tuple[object, WebhookRequest, list[str]]]:
    def js(provider: str, name: str) -> bytes:
        return json.dumps(load(provider)[name]["body"]).encode()

    rep = js("replicate", "processing")
    gh = js("github", "workflow_job_in_progress")
    mux = js("mux", "asset_ready")
    rnd = js("render", "deploy_ended_succeeded")
    stp = js("stripe", "payment_intent_succeeded")
    std = js("standard", "processing")
    tw = load("twilio")["message_delivered"]["body"]
    return {
        "standard": (StandardAdapter(), WebhookRequest(std, signing.standard_headers(signing.STANDARD_SECRET, std.decode())), [signing.STANDARD_SECRET]),
        "stripe": (StripeAdapter(), WebhookRequest(stp, signing.stripe_headers(signing.STRIPE_SECRET, stp.decode())), [signing.STRIPE_SECRET]),
        "replicate": (ReplicateAdapter(), WebhookRequest(rep, signing.standard_headers(signing.REPLICATE_SECRET, rep.decode())), [signing.REPLICATE_SECRET]),
        "github": (GitHubAdapter(), WebhookRequest(gh, signing.github_headers(signing.GITHUB_SECRET, gh, "workflow_job")), [signing.GITHUB_SECRET]),
        "twilio": (TwilioAdapter(), WebhookRequest(urlencode(tw).encode(), signing.twilio_headers(signing.TWILIO_TOKEN, signing.TWILIO_PUBLIC_URL, tw), url=signing.TWILIO_PUBLIC_URL), [signing.TWILIO_TOKEN]),
        "mux": (MuxAdapter(), WebhookRequest(mux, signing.mux_headers(signing.MUX_SECRET, mux)), [signing.MUX_SECRET]),
        "render": (RenderAdapter(), WebhookRequest(rnd, signing.standard_headers(signing.RENDER_SECRET, rnd.decode())), [signing.RENDER_SECRET]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5)
    args = parser.parse_args()
    body = json.dumps(load("github")["workflow_job_in_progress"]["body"]).encode()
    key = signing.GITHUB_SECRET.encode()
    baseline = _per_call(lambda: (hmac.compare_digest(hmac.new(key, body, hashlib.sha256).hexdigest(), "0" * 64), json.loads(body)), args.seconds)
    results = {}
    for name, (adapter, req, secrets) in _cases().items():
        adapter.verify(req, secrets)  # type: ignore[attr-defined]
        us = _per_call(lambda: (adapter.verify(req, secrets), adapter.parse(req)), args.seconds)  # type: ignore[attr-defined]
        results[name] = {"us_per_delivery": round(us, 1), "x_baseline": round(us / baseline, 2), "body_bytes": len(req.body)}
    print(json.dumps({"baseline_hmac_sha256_plus_json_loads_us": round(baseline, 2), "adapters": results}, indent=2))


if __name__ == "__main__":
    main()
