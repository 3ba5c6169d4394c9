"""The ``gateway`` command line: serve, migrate, trace, find, deliveries, replay, sources, token,
adapters, prune, outbox. Every command reads the same configuration as the server (GATEWAY_CONFIG and
the environment); listings print aligned text for people and ``--json`` for scripts."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import click

from gateway.cli.common import _config, _database_errors, _echo_json, _Main, _resolution, _since, _store, _table
from gateway.cli.reconcile import reconcile
from gateway.cli.send import send

if TYPE_CHECKING:
    from gateway.support import Found


@click.group(cls=_Main)
@click.option("--config", "config_path", default=None, metavar="PATH", help="the TOML file (else GATEWAY_CONFIG, else ./gateway.toml or above)")
@click.option("--database-url", default=None, metavar="URL", help="the database (else DATABASE_URL, else gateway.db)")
@click.option("--verbose", "-v", is_flag=True, help="print which configuration and database were resolved, and why")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, database_url: str | None, verbose: bool) -> None:
    """Webhook gateway: verified provider webhooks in, live job states out.

    Configuration and database are found as the server finds them: flags, then the environment
    (GATEWAY_CONFIG, DATABASE_URL), then a project file gateway.toml here or in a folder above,
    then defaults (docs/operations.md)."""
    ctx.obj = {"config": config_path, "database_url": database_url}
    # `serve` hands these to gunicorn's workers, which resolve them from the environment
    if config_path:
        os.environ["GATEWAY_CONFIG"] = os.path.abspath(config_path)
        ctx.obj["config"] = os.environ["GATEWAY_CONFIG"]
    if database_url:
        os.environ["DATABASE_URL"] = database_url
    if verbose:
        click.echo(_resolution().describe(), err=True)


@main.command()
@_database_errors
def migrate() -> None:
    """Bring the database schema up to date (Alembic) and say which migrations were applied."""
    from gateway.db import safe_url
    from gateway.migrate import upgrade

    config = _config(strict=False)
    applied = upgrade(config.database_url)
    where = safe_url(config.database_url)
    if applied:
        click.echo(f"applied {len(applied)} migration(s) to {where}:", err=True)
        for line in applied:
            click.echo(f"  {line}", err=True)
    else:
        click.echo(f"database at {where} was already up to date", err=True)


@main.command()
def check() -> None:
    """Check everything `serve` needs: configuration, adapters and options, secrets, database migrated."""
    from gateway.check import run_checks

    checks, _ = run_checks(os.environ, _resolution())
    for c in checks:
        click.echo(f"{'ok' if c.ok else 'FAILED':<7} {c.name:<14} {c.detail}")
    failed = [c for c in checks if not c.ok]
    if failed:
        raise click.ClickException(failed[0].detail)
    click.echo("ready to serve")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=int)
@click.option("--worker-connections", default=20000, show_default=True, type=int, help="gevent connections per worker")
@click.option("--timeout", default=30, show_default=True, type=int)
@click.option("--access-log/--no-access-log", default=None, help="gunicorn access log on stderr, query strings dropped (default: GATEWAY_ACCESS_LOG)")
def serve(host: str, port: int, workers: int, worker_connections: int, timeout: int, access_log: bool | None) -> None:
    """Run the gateway under gunicorn's gevent worker (config: gateway/gunicorn_conf.py)."""
    from gateway.check import run_checks

    found = _resolution()
    failed = [c for c in run_checks(os.environ, found)[0] if not c.ok]
    if failed:  # here, with the key named, before gunicorn forks a worker or anything says "listening"
        raise click.ClickException(f"cannot serve: {failed[0].detail}")
    from gateway.migrate import ROOT

    args = [
        sys.executable, "-m", "gunicorn", "wsgi:app",
        "--config", str(Path(__file__).parent.parent / "gunicorn_conf.py"),
        "--worker-class", "gevent",
        "--workers", str(workers),
        "--worker-connections", str(worker_connections),
        "--bind", f"{host}:{port}",
        "--timeout", str(timeout),
        "--graceful-timeout", "10",
        "--no-control-socket",
    ]
    os.chdir(os.environ.get("GATEWAY_WORKDIR", os.getcwd()))
    env = dict(os.environ)
    if access_log is not None:
        env["GATEWAY_ACCESS_LOG"] = "1" if access_log else ""
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if found.config_path:  # the workers open exactly what was checked, wherever they start
        env["GATEWAY_CONFIG"] = os.path.abspath(found.config_path)
    env["DATABASE_URL"] = found.database_url
    click.echo(f"{found.describe()}", err=True)
    click.echo(f"gateway listening on http://{host}:{port}/ ({workers} workers)", err=True)
    os.execvpe(args[0], args, env)


@main.command()
@click.argument("job_id")
@click.option("--scope", "scopes", multiple=True, default=("read", "retry"), show_default=True, type=click.Choice(["read", "retry"]))
@click.option("--ttl", type=int, default=None, help="seconds (default: the configured token_ttl)")
def token(job_id: str, scopes: tuple[str, ...], ttl: int | None) -> None:
    """Issue a browser token for a job, registered or not yet."""
    from gateway.auth import Auth
    from gateway.ids import JOB_ID_RE

    if not JOB_ID_RE.match(job_id):
        raise click.ClickException("a job id is job_ followed by 1-60 of [A-Za-z0-9_-]")
    config = _config()
    tok, _ = Auth(config.secret_key, config.api_keys, config.token_ttl).issue(job_id, scopes, ttl)
    click.echo(tok)


@main.command()
@click.option("--markdown", is_flag=True, help="print each adapter's event → state table (docs/sources.md holds them)")
def adapters(markdown: bool) -> None:
    """List installed adapters, and plugins that failed to load."""
    from adapters.registry import load_registry

    registry = load_registry()
    if markdown:
        from adapters.tables import state_tables_markdown

        click.echo(state_tables_markdown(registry))
        return
    for name in sorted(registry.adapters):
        click.echo(f"{name:<16} {registry.origins[name]}")
    for name, why in sorted(registry.broken.items()):
        click.echo(f"{name:<16} BROKEN: {why}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="print as JSON")
def sources(as_json: bool) -> None:
    """List configured sources and whether their secrets are set (never the secrets)."""
    config = _config(strict=False)
    reconciled = _reconciled(config)
    rows = [
        {"name": name, "adapter": sc.adapter, "secrets_env": sc.secrets_env, "secrets_set": len(sc.secrets),
         "callback_url": sc.callback_url, "auto_register": sc.auto_register, "reconcile": reconciled.get(name, "no: adapter not loaded")}
        for name, sc in sorted(config.sources.items())
    ]
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        found = _resolution()
        hint = "" if found.config_path else (" — point GATEWAY_CONFIG or --config at the server's file, or create gateway.toml here "
                                              "(docs/sources.md; for `make serve`'s demo: set -a; . config/demo.env; set +a)")
        click.echo(f"no sources configured ({found.describe()}){hint}")
        return
    click.echo(_table(
        [[str(r["name"]), str(r["adapter"]), str(r["secrets_env"]), f"{r['secrets_set']} set" if r["secrets_set"] else "NOT SET",
          f"/webhooks/{r['name']}", str(r["reconcile"])] for r in rows],
        ["SOURCE", "ADAPTER", "SECRETS FROM", "SECRETS", "ENDPOINT", "RECONCILE"],
    ))


def _reconciled(config: Any) -> dict[str, str]:
    """Per source, whether its jobs are read from the provider's API, and why not (gateway/reconcile.py)."""
    from adapters.registry import load_registry
    from gateway.errors import ConfigError
    from gateway.reconcile import describe
    from gateway.services import build_sources

    try:
        return describe(list(build_sources(config, load_registry()).values()), config.env)
    except ConfigError:
        return {}


@main.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="print the trace as JSON")
@click.option("--all", "show_all", is_flag=True, help="every row, no folding of progress runs")
@_database_errors
def trace(job_id: str, as_json: bool, show_all: bool) -> None:
    """Print everything that happened to a job, in time order."""
    from gateway.support import resolve_job
    from gateway.trace import build_trace, render_trace

    store = _store()
    data = build_trace(store, job_id.strip())
    resolved, hints = None, cast("list[Found]", [])
    if data is None:  # the ticket had the external id or a provider event id: that may name one job
        found_id, resolved, hints = resolve_job(store, job_id)
        data = build_trace(store, found_id) if found_id else None
    if data is None:
        if as_json:
            _echo_json({"error": {"code": "job_not_found", "message": f"no job {job_id}"}, "suggestions": [h.as_dict() for h in hints]})
            sys.exit(1)
        lines = [f"no job {job_id}"]
        if hints:
            lines.append("closest matches:")
            lines += [f"  {h.job_id}  {h.source}/{h.external_id}  {h.state}  ({h.matched})" for h in hints]
        else:
            lines.append("no job has a similar id, external id or label (try `gateway find <text>`)")
        raise click.ClickException("\n".join(lines))
    if resolved is not None:
        click.echo(f"({job_id} is the {resolved.matched} of {resolved.job_id})", err=True)
    click.echo(json.dumps(data, indent=2) if as_json else render_trace(data, show_all=show_all))


@main.command()
@click.argument("text")
@click.option("--json", "as_json", is_flag=True, help="print as JSON")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 500))
@_database_errors
def find(text: str, as_json: bool, limit: int) -> None:
    """Find jobs by job id prefix, external id, provider event id or label."""
    from gateway.support import find_jobs

    hits = find_jobs(_store(), text, limit)
    if as_json:
        _echo_json([h.as_dict() for h in hits])
        return
    if not hits:
        raise click.ClickException(f"no job matches {text!r} (by id prefix, external id, event id or label)")
    click.echo(_table(
        [[h.job_id, h.state, f"{h.source}/{h.external_id}", (h.label or "")[:40], h.updated_at or "", h.matched] for h in hits],
        ["JOB", "STATE", "SOURCE/EXTERNAL ID", "LABEL", "UPDATED", "MATCHED"],
    ))


@main.command()
@click.option("--rejected", is_flag=True, help="only deliveries answered 4xx: bad signature, unknown source, too large, unreadable")
@click.option("--source", default=None, help="only this source")
@click.option("--job", "job_id", default=None, help="only deliveries for this job (its id, external id or an event id)")
@click.option("--since", default=None, help="only newer than this, e.g. 30m, 6h, 2d")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10000))
@click.option("--json", "as_json", is_flag=True, help="print as JSON")
@_database_errors
def deliveries(rejected: bool, source: str | None, job_id: str | None, since: str | None, limit: int, as_json: bool) -> None:
    """List recent webhook deliveries, newest first, with the ids `gateway replay` takes (bodies are never shown)."""
    from gateway.support import list_deliveries, resolve_job

    store = _store()
    if job_id:
        found_id, resolved, _ = resolve_job(store, job_id)
        if found_id is None:
            raise click.ClickException(f"no job {job_id} (by job id, external id or event id; try `gateway find`)")
        if resolved is not None:
            click.echo(f"({job_id} is the {resolved.matched} of {found_id})", err=True)
        job_id = found_id
    rows = list_deliveries(store, rejected=rejected, source=source, job_id=job_id, since=_since(since), limit=limit)
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        click.echo("no rejected deliveries" if rejected else "no deliveries")
        return
    if rejected:
        table = [[r["received_at"], r["source"], str(r["status"]), (r["reason"] or "")[:60], str(r["size"]),
                  r["remote_addr"] or "", r["request_id"] or ""] for r in rows]
        click.echo(_table(table, ["RECEIVED", "SOURCE", "STATUS", "REASON", "BYTES", "FROM", "REQUEST ID"]))
        return
    table = [[str(r["id"]), r["received_at"], r["source"], str(r["status"]), r["decision"] or r["outcome"], (r["event_id"] or "")[:32],
              r["job_id"] or (r["reason"] or "")[:40]] for r in rows]
    click.echo(_table(table, ["ID", "RECEIVED", "SOURCE", "STATUS", "DECISION", "EVENT", "JOB / REASON"]))


@main.command()
@click.option("--days", type=click.IntRange(1, None), default=None, help="retention in days (default: gateway.retention_days)")
@click.option("--body-days", type=click.IntRange(1, None), default=None,
              help="keep deliveries' raw bodies and headers this many days (default: gateway.delivery_retention_days)")
@click.option("--dry-run", is_flag=True, help="count what would go, delete nothing")
@click.option("--json", "as_json", is_flag=True, help="print the counts as JSON")
@_database_errors
def prune(days: int | None, body_days: int | None, dry_run: bool, as_json: bool) -> None:
    """Delete deliveries, trace rows and events older than the retention; never a job's state.
    Clear the raw bodies and headers kept for replay from deliveries older than
    delivery_retention_days (such a delivery can no longer be replayed).

    See gateway/support.py for the exact rule."""
    from gateway.support import prune as do_prune

    config = _config(strict=False)
    report = do_prune(_store(), days or config.retention_days, body_days=body_days or config.delivery_retention_days, dry_run=dry_run)
    if as_json:
        _echo_json({**report.as_dict(), "dry_run": dry_run})
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} history older than {report.cutoff}: {report.deliveries} deliveries, {report.trace} trace rows, "
               f"{report.held_events} held events, {report.job_events} events of {report.jobs_thinned} complete jobs")
    click.echo(f"{'would clear' if dry_run else 'cleared'} the raw body and headers of {report.bodies} deliveries older than {report.bodies_cutoff}")
    if report.jobs_kept_whole:
        click.echo(f"kept every event of {report.jobs_kept_whole} complete job(s) whose history could not be thinned safely, "
                   f"e.g. {', '.join(report.kept_whole_sample[:3])}")


@main.command()
@click.argument("delivery_id")
@click.option("--json", "as_json", is_flag=True, help="print the answer as JSON")
@_database_errors
def replay(delivery_id: str, as_json: bool) -> None:
    """Run a stored delivery (its id, or dlv_<id>) through its source's adapter again, as
    configured now: parsed again, not verified again. New events are recorded and folded, the
    rest are duplicates; the jobs' traces say so, by "cli". The delivery is not forwarded again;
    the job versions it causes are (by a running server). Rejected and pruned deliveries have no
    body to replay (`gateway deliveries` lists ids)."""
    from gateway.app import create_app
    from gateway.errors import GatewayError
    from gateway.replay import delivery_id_of
    from gateway.replay import replay as do_replay

    app = create_app(_config(strict=False), background=False)  # the server's sources, bus and forwarding
    try:
        answer = do_replay(app.extensions["gateway"], delivery_id_of(delivery_id), by="cli")
    except GatewayError as exc:
        raise click.ClickException(exc.message) from None
    if as_json:
        _echo_json(answer)
        return
    click.echo(f"{answer['status']}: {len(answer['events'])} event(s)")
    for event in answer["events"]:
        click.echo(f"  {event['event_id']}  {event['decision']}")


@main.command()
@click.option("--requeue", "requeue_id", type=int, default=None, help="give a dead row a fresh set of tries")
@_database_errors
def outbox(requeue_id: int | None) -> None:
    """List outbound calls not delivered yet (retry callbacks, details fetches), or requeue a dead one."""
    from gateway.errors import GatewayError
    from gateway.jobjson import iso
    from gateway.outbox import owed, requeue

    store = _store()
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


@main.group(invoke_without_command=True)
@click.pass_context
@_database_errors
def endpoints(ctx: click.Context) -> None:
    """Forwarding endpoints (credentials removed from URLs): enabled, messages pending and dead, last success and failure."""
    if ctx.invoked_subcommand is not None:
        return
    from gateway.messages import endpoint_status

    rows = endpoint_status(_store(), _config(strict=False).endpoints)
    if not rows:
        click.echo("no endpoints configured ([endpoints.<name>] in the configuration file)")
        return
    click.echo(_table([[r["name"], r["url"], "yes" if r["enabled"] else "NO (410 Gone)", str(r["pending"]), str(r["dead"]),
                        r["last_success_at"] or "-", r["last_failure_at"] or "-"] for r in rows],
                      ["endpoint", "url", "enabled", "pending", "dead", "last success", "last failure"]))


@endpoints.command("enable")
@click.argument("name")
@_database_errors
def endpoints_enable(name: str) -> None:
    """Enable an endpoint a 410 Gone disabled: its pending messages flow again, in order (a running
    server picks them up within its outbox interval)."""
    from gateway.errors import GatewayError
    from gateway.messages import enable_endpoint

    try:
        row = enable_endpoint(_store(), _config(strict=False).endpoints, name, by="cli")
    except GatewayError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"endpoint {row['name']} is enabled; {row['pending']} pending message(s) will be sent")


@main.command()
@click.option("--endpoint", default=None, help="only this endpoint's messages")
@click.option("--dead", is_flag=True, help="only messages that ran out of tries")
@_database_errors
def messages(endpoint: str | None, dead: bool) -> None:
    """Forwarded messages not delivered yet (or only the dead ones), oldest first."""
    from gateway.messages import list_messages

    rows = list_messages(_store(), endpoint=endpoint, dead_only=dead)
    if not rows:
        click.echo("nothing owed: every forwarded message was delivered")
        return
    click.echo(_table([[str(r["id"]), r["endpoint"], r["status"], r["type"], r["webhook_id"], str(r["tries"]),
                        r["last_error"] or ""] for r in rows],
                      ["id", "endpoint", "status", "type", "webhook-id", "tries", "last error"]))


@main.command()
@click.argument("message_id", type=int)
@_database_errors
def resend(message_id: int) -> None:
    """Send a forwarded message again (a running server sends it within its outbox interval)."""
    from gateway.errors import GatewayError
    from gateway.messages import resend as resend_message

    try:
        row = resend_message(_store(), message_id, by="cli")
    except GatewayError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"message {row['id']} ({row['webhook_id']} to {row['endpoint']}) is pending again")


main.add_command(send)
main.add_command(reconcile)

if __name__ == "__main__":
    main()
