"""``gateway send <source> <event-type>``: a provider-shaped test event, signed with the source's
configured secret exactly as the provider signs it, posted to the gateway — like ``stripe trigger``.

With an API key (``GATEWAY_API_KEYS``) the job is registered first (``POST /api/jobs``, the
integrator's call; repeating it is harmless) and read back after the webhook, so the answer
shows the job's new state. ``--list`` shows a source's events and the state each maps to.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import click
import requests

if TYPE_CHECKING:
    from adapters.samples import Sample

DEFAULT_URL = "http://127.0.0.1:8000"


def sample_table(adapter: str) -> list[list[str]]:
    """Rows of (name, provider event type, state) for ``--list`` and docs/sources.md."""
    from adapters.samples import samples

    return [[s.name, s.event_type, s.state or "(no state: ignored)"] for s in samples(adapter)]


@click.command()
@click.argument("source")
@click.argument("event_type", required=False)
@click.option("--list", "list_only", is_flag=True, help="show the source's (or a built-in adapter's) event types and the state each maps to")
@click.option("--external-id", default=None, help="the provider's id of the thing (default: a fresh one); reuse it to move one job on")
@click.option("--to", "to_url", default=None, help=f"the gateway's base URL (default: GATEWAY_URL, else {DEFAULT_URL})")
@click.option("--no-register", is_flag=True, help="do not register the job first (as when the provider reports a job your backend never registered)")
@click.option("--json", "as_json", is_flag=True, help="print the answers as JSON")
def send(source: str, event_type: str | None, list_only: bool, external_id: str | None, to_url: str | None,
         no_register: bool, as_json: bool) -> None:
    """Send a signed, provider-shaped test event to a configured source, e.g.
    `gateway send stripe payment_intent.succeeded`."""
    from gateway.cli.common import _config, _table

    config = _config(strict=False)
    sc = config.sources.get(source)
    if sc is None and list_only and sample_table(source):  # an adapter's name: its events, no source needed
        click.echo(_table(sample_table(source), ["EVENT", "PROVIDER TYPE", "STATE"]))
        return
    if sc is None:
        from gateway.config import did_you_mean

        known = ", ".join(sorted(config.sources)) or "none"
        raise click.ClickException(f"no source {source!r}{did_you_mean(source, config.sources)} (configured: {known})")
    if list_only or not event_type:
        rows = sample_table(sc.adapter)
        if not rows:
            raise click.ClickException(f"adapter {sc.adapter!r} of source {source!r} has no sample events")
        click.echo(_table(rows, ["EVENT", "PROVIDER TYPE", "STATE"]))
        if not list_only:
            click.echo(f"\nsend one with: gateway send {source} <event>")
        return
    from adapters.samples import find_sample

    try:
        sample = find_sample(sc.adapter, event_type)
    except KeyError as exc:
        raise click.ClickException(str(exc.args[0])) from None
    if not sc.secrets:
        raise click.ClickException(f"sources.{source}.secrets_env: {sc.secrets_env or sc.secrets_file} is not set "
                                   "in this shell, so the event cannot be signed with the source's secret")
    base = (to_url or os.environ.get("GATEWAY_URL") or DEFAULT_URL).rstrip("/")
    result = deliver(base, source, sample, sc.secrets[0], external_id=external_id, public_url=sc.public_url,
                     api_key=None if no_register else next(iter(config.api_keys), None))
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        _print(result)
    if result["webhook"]["status"] != 200:
        raise click.ClickException(f"the gateway refused the event: {result['webhook']['status']} {json.dumps(result['webhook']['body'])}")


def deliver(base: str, source: str, sample: Sample, secret: str, *, external_id: str | None = None,
            public_url: str | None = None, api_key: str | None = None) -> dict[str, Any]:
    """Register the job (with an API key), post the signed sample, read the job back; every answer."""
    from adapters.samples import build

    external_id = external_id or build(sample, secret).external_id  # fixed before registering
    out: dict[str, Any] = {"source": source, "event": sample.name, "event_type": sample.event_type,
                           "maps_to": sample.state, "external_id": external_id, "job": None}
    auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    job_id = None
    try:
        if api_key:
            r = requests.post(f"{base}/api/jobs", json={"source": source, "external_id": external_id,
                                                        "label": f"gateway send {source} {sample.name}"}, headers=auth, timeout=10)
            if r.status_code in (200, 201):
                job_id = r.json()["job"]["id"]
            else:
                out["register"] = {"status": r.status_code, "body": _body(r)}
        delivery = build(sample, secret, external_id=external_id, url=public_url or f"{base}/webhooks/{source}")
        r = requests.post(f"{base}/webhooks/{source}", data=delivery.body, headers=delivery.headers, timeout=10)
        out["webhook"] = {"status": r.status_code, "body": _body(r)}
        if job_id:
            r = requests.get(f"{base}/api/jobs/{job_id}", headers=auth, timeout=10)
            out["job"] = r.json() if r.status_code == 200 else {"id": job_id, "status": r.status_code}
    except requests.RequestException as exc:
        raise click.ClickException(f"no gateway answering at {base} ({type(exc).__name__}); start one with "
                                   "`gateway serve` (or `make serve`), or pass --to URL") from None
    return out


def _body(r: requests.Response) -> Any:
    try:
        return r.json()
    except ValueError:
        return r.text[:300]


def _print(result: dict[str, Any]) -> None:
    hook = result["webhook"]
    click.echo(f"sent {result['event_type']} ({result['event']}, maps to {result['maps_to'] or 'no state'}) "
               f"for {result['source']}/{result['external_id']}")
    if "register" in result:
        click.echo(f"registering the job failed: {result['register']['status']} {json.dumps(result['register']['body'])}")
    click.echo(f"gateway answered {hook['status']} {json.dumps(hook['body'])}")
    job = result["job"]
    if job and "state" in job:
        extra = f", progress {job['progress']}" if job.get("progress") else ""
        extra += f", error {job['error'].get('code')}" if job.get("error") else ""
        click.echo(f"job {job['id']} is now {job['state']} (version {job['version']}{extra})")
    elif job:
        click.echo(f"job {job['id']}: reading it back answered {job['status']}")
    else:
        click.echo("(no API key in GATEWAY_API_KEYS, so the job was neither registered nor read back)")
