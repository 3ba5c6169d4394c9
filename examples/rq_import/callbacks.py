"""Receive the gateway's retry requests and re-enqueue the work.

When a person presses Retry, the gateway opens the job's next attempt in ``queued`` and POSTs
a Standard Webhooks–signed ``job.retry_requested`` (the job JSON in ``data``) to the source's
``callback_url``, retrying with backoff until this endpoint answers 2xx. Verify it, dedupe on
``webhook-id`` (a retry of the callback carries the same one), re-enqueue, answer 200.

    [sources.worker]
    adapter = "standard"
    secrets_env = "WORKER_WEBHOOK_SECRETS"
    callback_url = "https://app.example.com/hooks/gateway"
    callback_secret_env = "GATEWAY_CALLBACK_SECRET"   # else the source's first webhook secret signs
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, request
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

app = Flask(__name__)
_seen: set[str] = set()  # use your database (a unique column) in production


def rerun(job: dict[str, Any]) -> None:
    """Re-enqueue the import for this job (look its rows up by job["external_id"])."""


@app.post("/hooks/gateway")
def gateway_callback() -> Any:
    try:
        event = Webhook(os.environ["GATEWAY_CALLBACK_SECRET"]).verify(request.get_data(), dict(request.headers))
    except WebhookVerificationError:
        return {"error": "bad signature"}, 401
    message_id = request.headers["webhook-id"]
    if event.get("type") == "job.retry_requested" and message_id not in _seen:
        _seen.add(message_id)
        rerun(event["data"])
    return {"ok": True}
