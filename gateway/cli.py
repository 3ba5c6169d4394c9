"""The ``gateway`` command line: serve, migrate, token, adapters, sources, trace, outbox."""

from __future__ import annotations

import json
import os
import sys

import click

from gateway.errors import ConfigError


def _config(strict: bool = True):  # type: ignore[no-untyped-def]
    from gateway.config import load_config

    try:
        return load_config(strict=strict)
    except ConfigError as exc:
        raise click.ClickException(f"configuration: {exc}") from None


@click.group()
def main() -> None:
    """Webhook gateway: verified provider webhooks in, live job states out."""


@main.command()
def migrate() -> None:
    """Bring the database schema up to date (Alembic)."""
    from gateway.migrate import upgrade

    config = _config(strict=False)
    upgrade(config.database_url)
    click.echo(f"database at {config.database_url.split('@')[-1]} is up to date", err=True)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=int)
@click.option("--worker-connections", default=20000, show_default=True, type=int, help="gevent connections per worker")
@click.option("--timeout", default=30, show_default=True, type=int)
def serve(host: str, port: int, workers: int, worker_connections: int, timeout: int) -> None:
    """Run the gateway under gunicorn's gevent worker."""
    _config()  # fail here, with the key named, before gunicorn forks
    args = [
        sys.executable, "-m", "gunicorn", "wsgi:app",
        "--worker-class", "gevent",
        "--workers", str(workers),
        "--worker-connections", str(worker_connections),
        "--bind", f"{host}:{port}",
        "--timeout", str(timeout),
        "--graceful-timeout", "10",
        "--no-control-socket",
        "--access-logfile", "-" if os.environ.get("GATEWAY_ACCESS_LOG") else "/dev/null",
    ]
    from gateway.migrate import ROOT

    os.chdir(os.environ.get("GATEWAY_WORKDIR", os.getcwd()))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    click.echo(f"gateway listening on http://{host}:{port}/ ({workers} workers)", err=True)
    os.execvpe(args[0], args, env)


@main.command()
@click.argument("job_id")
@click.option("--scope", "scopes", multiple=True, default=("read", "retry"), show_default=True, type=click.Choice(["read", "retry"]))
@click.option("--ttl", type=int, default=None, help="seconds (default: the configured token_ttl)")
def token(job_id: str, scopes: tuple[str, ...], ttl: int | None) -> None:
    """Issue a browser token for a job, registered or not yet."""
    from gateway.auth import Auth
    from gateway.store import JOB_ID_RE

    if not JOB_ID_RE.match(job_id):
        raise click.ClickException("a job id is job_ followed by 1-60 of [A-Za-z0-9_-]")
    config = _config()
    tok, _ = Auth(config.secret_key, config.api_keys, config.token_ttl).issue(job_id, scopes, ttl)
    click.echo(tok)


@main.command()
def adapters() -> None:
    """List installed adapters, and plugins that failed to load."""
    from adapters.registry import load_registry

    registry = load_registry()
    for name in sorted(registry.adapters):
        click.echo(f"{name:<16} {registry.origins[name]}")
    for name, why in sorted(registry.broken.items()):
        click.echo(f"{name:<16} BROKEN: {why}")


@main.command()
def sources() -> None:
    """List configured sources and whether their secrets are set (never the secrets)."""
    config = _config(strict=False)
    if not config.sources:
        click.echo("no sources configured (GATEWAY_CONFIG)")
    for name, sc in sorted(config.sources.items()):
        state = f"{len(sc.secrets)} secret(s) set" if sc.secrets else "SECRETS NOT SET"
        click.echo(f"{name:<16} adapter={sc.adapter:<10} {sc.secrets_env}: {state}")


@main.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="print the trace as JSON")
def trace(job_id: str, as_json: bool) -> None:
    """Print everything that happened to a job, in time order."""
    from gateway.db import make_engine
    from gateway.store import Store
    from gateway.trace import build_trace, render_trace

    config = _config(strict=False)
    data = build_trace(Store(make_engine(config.database_url)), job_id)
    if data is None:
        raise click.ClickException(f"no job {job_id}")
    click.echo(json.dumps(data, indent=2) if as_json else render_trace(data))


@main.command()
@click.option("--requeue", "requeue_id", type=int, default=None, help="give a dead row a fresh set of tries")
def outbox(requeue_id: int | None) -> None:
    """List outbound calls not delivered yet (retry callbacks, details fetches), or requeue a dead one."""
    from gateway.db import make_engine
    from gateway.errors import GatewayError
    from gateway.jobjson import iso
    from gateway.outbox import owed, requeue
    from gateway.store import Store

    store = Store(make_engine(_config(strict=False).database_url))
    if requeue_id is not None:
        try:
            row = requeue(store, requeue_id, by="cli")
        except GatewayError as exc:
            raise click.ClickException(exc.message) from None
        click.echo(f"row {row.id} ({row.kind} for {row.job_id or '-'}) is pending again")
        return
    rows = owed(store)
    if not rows:
        click.echo("nothing owed: every outbound call was delivered")
    for r in rows:
        due = iso(r.next_attempt_at) if r.status == "pending" else "-"
        click.echo(f"{r.id:<6} {r.status:<8} {r.kind:<9} {r.job_id or '-':<32} tries={r.attempts:<3} next={due}  {r.last_error or ''}".rstrip())


if __name__ == "__main__":
    main()
