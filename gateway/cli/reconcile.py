"""``gateway reconcile``: ask a provider's API where a job stands (gateway/reconcile.py).

The command owes the reads in the database's outbox; the running server makes them (within
``outbox_interval``) and records the answers, which ``gateway trace <job>`` then shows as
events read from the provider's API."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import click

from gateway.cli.common import _config, _database_errors, _echo_json, _store

if TYPE_CHECKING:
    from gateway.services import Source


def _sources() -> tuple[dict[str, Source], dict[str, str]]:
    from adapters.registry import load_registry
    from gateway.services import build_sources

    config = _config(strict=False)
    return dict(build_sources(config, load_registry())), dict(config.env)


@click.command()
@click.argument("job_id", required=False)
@click.option("--source", default=None, help="every queued or processing job of this source (after an outage)")
@click.option("--since", default=None, help="with --source: jobs updated since, e.g. 6h, 2d (a duration) or an ISO 8601 time")
@click.option("--json", "as_json", is_flag=True, help="print as JSON")
@_database_errors
def reconcile(job_id: str | None, source: str | None, since: str | None, as_json: bool) -> None:
    """Read a job's status from its provider's API now, or (--source S --since T) every live
    job of a source, spread out to ``reconcile_per_minute`` reads a minute."""
    from gateway import reconcile as rc
    from gateway.cli import _since
    from gateway.errors import GatewayError

    if bool(job_id) == bool(source):
        raise click.UsageError("give a job id, or --source S --since T")
    config = _config(strict=False)
    sources, env = _sources()
    try:
        if job_id:
            item = rc.ask_now(_store(), job_id.strip(), by="cli", sources=sources, env=env)
            out: dict[str, object] = {"job_id": item.job_id, "source": item.source, "external_id": item.payload.get("external_id")}
            message = f"read of {item.job_id} ({item.source} {item.payload.get('external_id')}) queued; see `gateway trace {item.job_id}`"
        else:
            if not since:
                raise click.UsageError("--source needs --since (e.g. --since 6h)")
            start = _parse_since(since, _since)
            asked = rc.ask_source(_store(), str(source), start, by="cli", sources=sources, env=env,
                                  per_minute=config.reconcile_per_minute)
            out = {"source": source, "since": start.isoformat(), "jobs": asked, "per_minute": config.reconcile_per_minute}
            message = (f"{len(asked)} read(s) of {source} queued, {config.reconcile_per_minute} a minute at most"
                       f" (about {len(asked) * 60 // max(config.reconcile_per_minute, 1)} s)")
    except GatewayError as exc:
        raise click.ClickException(exc.message) from None
    if as_json:
        _echo_json(out)
    else:
        click.echo(message)


def _parse_since(value: str, durations: object) -> datetime:
    from datetime import UTC

    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except ValueError:
        result = durations(value)  # type: ignore[operator]
        assert isinstance(result, datetime)
        return result
