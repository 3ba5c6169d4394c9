"""Console sign-in: an API key becomes a signed session cookie naming a ``console_sessions`` row
(so sign-out ends it in every worker), with a per-session CSRF token; wrong keys are slowed
per address with the same token bucket the API limits use."""

from __future__ import annotations

import functools
import hmac
import secrets
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from flask import Blueprint, abort, g, make_response, redirect, render_template, request, url_for
from itsdangerous import BadSignature, URLSafeTimedSerializer

from gateway.auth import fingerprint
from gateway.context import gateway
from gateway.ids import utcnow
from gateway.limits import client_address
from gateway.models import ConsoleSession

bp = Blueprint("console", __name__, url_prefix="/console", template_folder="../templates")

COOKIE = "gw_console"
PRE_CSRF_COOKIE = "gw_console_pre"  # the sign-in form's double-submit token
MAX_TTL = 8 * 3600


def _ttl() -> int:
    return max(60, min(int(gateway().config.console_session_ttl), MAX_TTL))


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(gateway().config.secret_key, salt="gateway.console-session.v1")


def _csrf_of(session_id: str) -> str:
    """The session's CSRF token: derived from its id with the secret key, never stored."""
    return hmac.new(gateway().config.secret_key.encode(), b"console-csrf:" + session_id.encode(), "sha256").hexdigest()


def current() -> dict[str, str] | None:
    """The signed-in session of this request ({id, label, csrf}), or None."""
    if "console_session" in g:
        return g.console_session  # type: ignore[no-any-return]  # flask.g is untyped
    found = None
    raw = request.cookies.get(COOKIE, "")
    if raw and len(raw) < 1024:
        try:
            data = _serializer().loads(raw, max_age=_ttl())
        except BadSignature:
            data = None
        if isinstance(data, dict) and isinstance(data.get("sid"), str):
            with gateway().store.reading() as s:
                row = s.get(ConsoleSession, data["sid"])
                if row is not None and row.revoked_at is None and row.expires_at > utcnow():
                    found = {"id": row.id, "label": row.label, "csrf": _csrf_of(row.id)}
    g.console_session = found
    return found


def signed_in(view: Callable[..., Any]) -> Callable[..., Any]:
    """Pages need a session (else a redirect to sign-in); a POST also needs its CSRF token (else 403)."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        who = current()
        if who is None:
            return redirect(url_for("console.sign_in"))
        if request.method == "POST" and not hmac.compare_digest(request.form.get("csrf", ""), who["csrf"]):
            abort(403, "the form's CSRF token is missing or wrong; reload the page")
        return view(*args, **kwargs)

    return wrapper


def by() -> str:
    """Who acts, for the trace: ``console:`` plus the key's non-secret label."""
    who = current()
    return "console:" + (who["label"] if who else "unknown")


def _form(status: int = 200, message: str | None = None) -> Any:
    token = secrets.token_urlsafe(24)
    response = gateway_response(render_template("console/signin.html", csrf=token, message=message), status)
    response.set_cookie(PRE_CSRF_COOKIE, token, httponly=True, samesite="Strict", secure=request.is_secure, path="/console/")
    return response


def gateway_response(body: str, status: int = 200) -> Any:
    """A console page: never cached (it shows who is signed in and their CSRF token)."""
    response = make_response(body, status)
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/signin")
def sign_in() -> Any:
    """The sign-in form (or the console when already signed in)."""
    if current() is not None:
        return redirect(url_for("console.home"))
    return _form()


@bp.post("/signin")
def sign_in_post() -> Any:
    """An API key in, a session cookie out; a wrong key: the form again, 401; too many: 429."""
    pre = request.cookies.get(PRE_CSRF_COOKIE, "")
    if not pre or not hmac.compare_digest(request.form.get("csrf", ""), pre):
        abort(403, "the form's CSRF token is missing or wrong; reload the page")
    key = request.form.get("key", "")
    gw = gateway()
    if not key or len(key) > 1024 or not gw.auth.is_api_key(key):
        gw.limits.console_wrong_keys.check(client_address(), "signing in to the console")
        return _form(401, "That key did not sign you in.")
    now = utcnow()
    sid = secrets.token_urlsafe(24)
    with gw.store.transaction() as w:
        w.session.add(ConsoleSession(id=sid, label="key:" + fingerprint(key), created_at=now, expires_at=now + timedelta(seconds=_ttl())))
        w.session.flush()
    response = redirect(url_for("console.home"))
    response.set_cookie(COOKIE, _serializer().dumps({"sid": sid}), max_age=_ttl(), httponly=True, samesite="Strict",
                        secure=request.is_secure, path="/console/")
    response.delete_cookie(PRE_CSRF_COOKIE, path="/console/")
    return response


@bp.post("/signout")
@signed_in
def sign_out() -> Any:
    """Ends the session server-side: the old cookie opens nothing after this."""
    who = current()
    assert who is not None
    with gateway().store.transaction() as w:
        row = w.session.get(ConsoleSession, who["id"])
        if row is not None:
            row.revoked_at = utcnow()
            w.session.flush()
    response = redirect(url_for("console.sign_in"))
    response.delete_cookie(COOKIE, path="/console/")
    return response
