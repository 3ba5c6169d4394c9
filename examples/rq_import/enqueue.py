"""Start an import: register the job with the gateway, then hand the work to RQ.

    GATEWAY_URL=http://127.0.0.1:8000 GATEWAY_API_KEY=… python -m examples.rq_import.enqueue customers.csv

The browser gets the job id and token at once and watches with ``<job-status>``; the RQ worker
(``rq worker -w gateway.integrations.rq.GatewayWorker imports``) runs ``tasks.import_customers``
and reports as it goes.
"""

from __future__ import annotations

import csv
import os
import sys
import uuid
from typing import Any

import requests
from redis import Redis
from rq import Queue

from examples.rq_import.tasks import import_customers
from gateway.integrations.rq import enqueue


def start_import(path: str) -> dict[str, Any]:
    """Register the job (external id = ours), enqueue the task; the gateway's {job, token}."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    external_id = f"import-{uuid.uuid4().hex[:12]}"
    r = requests.post(
        os.environ["GATEWAY_URL"] + "/api/jobs",
        json={"source": os.environ.get("GATEWAY_SOURCE", "worker"), "external_id": external_id, "label": f"Import {os.path.basename(path)}", "queue": "imports"},
        headers={"Authorization": f"Bearer {os.environ['GATEWAY_API_KEY']}"},
        timeout=10,
    )
    r.raise_for_status()
    queue = Queue("imports", connection=Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")))
    enqueue(queue, import_customers, rows, gateway_job=external_id)  # reports queued: "Position 3 of 5"
    return r.json()


if __name__ == "__main__":
    print(start_import(sys.argv[1]))
