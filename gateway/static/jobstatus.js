// jobstatus.js: watch a job on the webhook gateway and show it honestly.
//
// One ES module, no build step, no framework. Two things in it:
//
//   watchJob(id, {token, onChange})  tries WebSocket, then SSE, then polling, and calls
//                                    onChange(job) with every newer version of the job
//                                    (and onChange(null) while the job is not known yet).
//   <job-status job-id token>        a custom element that renders exactly one of the six
//                                    states: empty, loading, queued, processing, complete, failed.
//
// The interface is section 5 of the gateway's contract (docs/contract.md); the integration
// guide is docs/integration.md. The same file is the npm package's main module (package.json
// beside it; types in jobstatus.d.ts; React and Vue wrappers in react.js and vue.js).

/** Polling delays in ms: 1 s → 2 s → 4 s → 8 s → 10 s ceiling; back to 1 s on a state change. */
export const POLL_SCHEDULE = Object.freeze([1000, 2000, 4000, 8000, 10000]);
/** Push-transport reconnect backoff: base doubles from 1 s to this ceiling, with jitter. */
export const RECONNECT_CEILING = 10000;
/** A push transport that keeps failing to come back after a drop gives way to the next one. */
export const MAX_RECONNECTS = 5;
/** A connection that lived at least this long resets the reconnect backoff when it drops. */
const HEALTHY_MS = 10000;
const REQUEST_TIMEOUT_MS = 15000;
const MAX_TIMER_MS = 2 ** 31 - 1;   // setTimeout's ceiling (about 24.8 days)
const TRANSPORTS = ["websocket", "sse", "poll"];

/** The delay before reconnect attempt `n` (1-based): half fixed, half random ("equal jitter"). */
export function reconnectDelay(n, random = Math.random) {
  const base = Math.min(1000 * 2 ** Math.max(0, n - 1), RECONNECT_CEILING);
  return base / 2 + random() * (base / 2);
}

function supported(name) {
  if (name === "websocket") return typeof globalThis.WebSocket === "function";
  if (name === "sse") return typeof globalThis.EventSource === "function";
  return name === "poll" && typeof globalThis.fetch === "function";
}

function isJob(value, id) {
  return value !== null && typeof value === "object" && value.id === id && Number.isInteger(value.version)
    && typeof value.state === "string";
}

/**
 * Watch one job. Returns a handle: `close()` ends every connection and timer it started,
 * `retry()` asks the gateway to retry a failed job, `job` and `transport` tell where it is.
 *
 * options:
 *   token       the job's browser token (read scope; retry scope for retry())
 *   onChange    (job | null, info) → called with every newer version; null = not known yet
 *   onTransport (name) → "websocket" | "sse" | "poll" | "none" whenever the transport changes
 *   onError     ({code, message}) → the token was refused; watching has stopped
 *   transports  the order to try, default ["websocket", "sse", "poll"]
 *   baseUrl     the gateway's origin when it is not the page's own (default: same origin)
 *   since       a version already shown; anything not newer is ignored
 *   initial     a job JSON the page already has: shown at once, and only newer versions follow
 *   getToken    async () → token | {token, expires_at}: called before the token expires and
 *               when the gateway says `token_expired`; watching goes on from the last version
 *   tokenExpiresAt  the token's expiry (unix seconds) if it cannot be read from the token
 */
export function watchJob(id, options = {}) {
  return new JobWatcher(id, options);
}

/**
 * A job token's expiry (unix seconds), read from its payload (the gateway's tokens are
 * `base64url(JSON).signature` with the expiry in `x`); null when it cannot be read.
 */
export function tokenExpiry(token) {
  const payload = typeof token === "string" ? token.split(".")[0] : "";
  try {
    const x = JSON.parse(atob(payload.replace(/-/g, "+").replace(/_/g, "/"))).x;
    return Number.isInteger(x) ? x : null;
  } catch {
    return null;
  }
}

class JobWatcher {
  #id; #token; #base; #onChange; #onTransport; #onError;
  #getToken; #expiresAt = null; #renewing = null; #renewTimer = 0;
  #order; #index = 0;
  #job = null; #version; #pendingSent = false;
  #closed = false; #stopped = false;
  #current = null;          // {name, stop()} of the running transport
  #timers = new Set();
  #worked = new Set();      // transports that connected at least once
  #reconnects = 0; #connectedAt = 0;
  #pollStep = 0; #pollEtag = null; #pollAbort = null;
  #reported = "none";

  constructor(id, {token = "", onChange = () => {}, onTransport = () => {}, onError = () => {},
                   transports = TRANSPORTS, baseUrl = "", since = 0, initial = null, getToken = null,
                   tokenExpiresAt = null} = {}) {
    if (typeof id !== "string" || !id) throw new TypeError("watchJob needs a job id");
    this.#id = id;
    this.#base = String(baseUrl || "").replace(/\/+$/, "");
    this.#onChange = onChange;
    this.#onTransport = onTransport;
    this.#onError = onError;
    this.#getToken = typeof getToken === "function" ? getToken : null;
    this.#version = Number.isInteger(since) ? since : 0;
    if (isJob(initial, id) && initial.version > this.#version) {
      this.#job = initial;         // the page's own snapshot: no callback, it is already shown
      this.#version = initial.version;
    }
    this.#order = transports.filter((t) => TRANSPORTS.includes(t) && supported(t));
    if (!this.#order.length && supported("poll")) this.#order = ["poll"];
    this.#setToken(token, tokenExpiresAt);
    if (this.#job && this.#job.state === "complete") { this.#stopAll(); return; }
    this.#startTransport();
  }

  /** The newest job seen, or null. */
  get job() { return this.#job; }

  /** The transport in use: "websocket", "sse", "poll", or "none" once stopped. */
  get transport() { return this.#stopped || !this.#current ? "none" : this.#current.name; }

  /** End everything this watcher started; no callback fires afterwards. */
  close() {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#renewTimer);
    this.#stopAll();
  }

  /**
   * Ask the gateway to retry the failed job (needs a token with the retry scope).
   * Resolves to {ok, status, code, message}; on success the queued job is shown at once.
   */
  async retry() {
    // Polling waits at `failed` with no renewal running: a token that ran out meanwhile is renewed first.
    if (this.#getToken && this.#expiresAt && Date.now() >= this.#expiresAt * 1000) await this.#renew();
    let res;
    try {
      res = await fetch(this.#url(`/api/jobs/${encodeURIComponent(this.#id)}/retry`), {
        method: "POST", headers: this.#auth(), cache: "no-store",
      });
    } catch (err) {
      return {ok: false, status: 0, code: "network", message: "The gateway could not be reached."};
    }
    let body = null;
    try { body = await res.json(); } catch { /* an empty or non-JSON answer */ }
    if (res.ok && isJob(body, this.#id)) {
      this.#accept(body);
      if (this.#stopped && !this.#closed && body.state !== "complete") this.#resume();
      return {ok: true, status: res.status, code: null, message: null};
    }
    const error = (body && body.error) || {};
    if (res.status === 409) this.#refreshOnce();
    return {ok: false, status: res.status, code: error.code || "error", message: error.message || `HTTP ${res.status}`};
  }

  // -- what every transport reports -----------------------------------------------------------

  /** Show `job` if it is newer than anything shown; true when it was. */
  #accept(job) {
    if (this.#closed || !isJob(job, this.#id) || job.version <= this.#version) return false;
    const changed = !this.#job || this.#job.state !== job.state;
    this.#job = job;
    this.#version = job.version;
    if (changed) this.#pollStep = 0;
    this.#emit(job);
    if (job.state === "complete") this.#stopAll();
    return true;
  }

  #pending() {
    if (this.#closed || this.#job || this.#pendingSent) return;
    this.#pendingSent = true;
    this.#emit(null);
  }

  #emit(job) {
    try {
      this.#onChange(job, {transport: this.transport});
    } catch (err) {
      console.error("jobstatus: onChange threw", err);
    }
  }

  #denied(code, message) {
    if (this.#closed) return;
    this.#stopAll();
    try { this.#onError({code, message}); } catch (err) { console.error("jobstatus: onError threw", err); }
  }

  /** The transport delivered something: it works here. */
  #connected(name) {
    if (!this.#worked.has(name)) this.#worked.add(name);
    if (!this.#connectedAt) this.#connectedAt = Date.now();
  }

  // -- tokens that expire ----------------------------------------------------------------------

  #setToken(token, expiresAt) {
    this.#token = token || "";
    this.#expiresAt = Number.isFinite(expiresAt) ? expiresAt : tokenExpiry(this.#token);
    clearTimeout(this.#renewTimer);
    if (!this.#getToken || !this.#expiresAt || this.#closed) return;
    // Renew a fifth of the remaining time (at most a minute) before the expiry.
    const left = this.#expiresAt * 1000 - Date.now();
    const wait = Math.max(0, left - Math.min(60000, left / 5));
    if (wait < MAX_TIMER_MS) this.#renewTimer = setTimeout(() => this.#renewSoon(1), wait);  // longer would fire at once
  }

  /** A new token from getToken(); true once it is in use. One call at a time. */
  #renew() {
    if (!this.#renewing) {
      this.#renewing = (async () => {
        let got = null;
        try { got = await this.#getToken(); } catch (err) { console.error("jobstatus: getToken threw", err); }
        const token = typeof got === "string" ? got : got && got.token;
        if (this.#closed || typeof token !== "string" || !token) return false;
        this.#setToken(token, got.expires_at ?? got.expiresAt);
        return true;
      })().finally(() => { this.#renewing = null; });
    }
    return this.#renewing;
  }

  /** Before the expiry: the running transport carries on with the new token. */
  async #renewSoon(attempt) {
    const ok = await this.#renew();
    if (this.#closed || this.#stopped) return;
    if (!ok) {
      const wait = reconnectDelay(attempt);
      if (Date.now() + wait < this.#expiresAt * 1000) this.#renewTimer = setTimeout(() => this.#renewSoon(attempt + 1), wait);
      return;                     // past the expiry the gateway says token_expired
    }
    const current = this.#current;
    if (current && current.renewed) current.renewed();
    else if (current) { current.stop(); this.#startTransport(); }
  }

  /** The gateway ended the subscription: the token expired. Renew and resume from the last version. */
  async #expired(name) {
    const message = "This status link has expired.";
    if (!this.#getToken) return this.#denied("token_expired", message);
    const current = this.#current;
    if (current && current.name === name) current.stop();
    if (!(await this.#renew())) return this.#denied("token_expired", message);
    if (!this.#closed && !this.#stopped && this.#current === current) this.#startTransport();
  }

  /** The transport ended without being asked to. */
  #lost(name) {
    if (this.#closed || this.#stopped || !this.#current || this.#current.name !== name) return;
    this.#current.stop();
    if (!this.#worked.has(name)) {
      this.#index += 1;           // never connected here: skip to the next transport
      this.#startTransport();
      return;
    }
    if (this.#connectedAt && Date.now() - this.#connectedAt >= HEALTHY_MS) this.#reconnects = 0;
    this.#connectedAt = 0;
    this.#reconnects += 1;
    if (this.#reconnects > MAX_RECONNECTS) {
      this.#reconnects = 0;
      this.#index += 1;
      this.#startTransport();
      return;
    }
    this.#later(reconnectDelay(this.#reconnects), () => this.#startTransport());
  }

  // -- transports --------------------------------------------------------------------------------

  #startTransport() {
    if (this.#closed || this.#stopped) return;
    const name = this.#order[Math.min(this.#index, this.#order.length - 1)];
    if (!name) { this.#setCurrent(null); return; }
    const open = {websocket: () => this.#openWebSocket(), sse: () => this.#openEventSource(), poll: () => this.#startPolling()}[name];
    this.#current = open();
    this.#report();
  }

  #setCurrent(transport) {
    this.#current = transport;
    this.#report();
  }

  /** Tell onTransport when the transport in use (or "none") differs from what it last heard. */
  #report() {
    const now = this.transport;
    if (now === this.#reported) return;
    this.#reported = now;
    try { this.#onTransport(now); } catch (err) { console.error("jobstatus: onTransport threw", err); }
  }

  #openWebSocket() {
    const name = "websocket";
    let ws;
    try {
      ws = new WebSocket(this.#url("/ws").replace(/^http/, "ws"));
    } catch {
      queueMicrotask(() => this.#lost(name));
      return {name, stop() {}};
    }
    let stopped = false;
    const subscribe = () => ws.send(JSON.stringify({type: "subscribe", job: this.#id, token: this.#token, since: this.#version}));
    ws.onopen = subscribe;
    ws.onmessage = (event) => {
      let msg;
      try { msg = JSON.parse(event.data); } catch { return; }
      if (!msg || typeof msg !== "object") return;
      if (msg.type === "job" && isJob(msg.job, this.#id)) {
        this.#connected(name);
        this.#accept(msg.job);
      } else if (msg.type === "pending" && msg.job === this.#id) {
        this.#connected(name);
        this.#pending();
      } else if (msg.type === "error" && (msg.job === this.#id || msg.job === null)) {
        if (msg.code === "token_expired") {
          this.#expired(name);
        } else if (msg.code === "forbidden" || msg.code === "unauthorized" || msg.code === "invalid_token" || msg.code === "invalid_api_key") {
          this.#denied(msg.code, msg.message || "This status link is not valid for this job.");
        } else if (msg.code === "too_many_subscriptions") {
          this.#lost(name);       // this connection cannot take us: try the next transport
        }
      }
    };
    ws.onclose = () => { if (!stopped) this.#lost(name); };
    ws.onerror = () => { /* a close event always follows */ };
    return {
      name,
      renewed() { if (ws.readyState === WebSocket.OPEN) subscribe(); },   // same socket, new token
      stop() {
        stopped = true;
        ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
        try { ws.close(1000); } catch { /* already closed */ }
      },
    };
  }

  #openEventSource() {
    const name = "sse";
    const url = this.#url(`/api/jobs/${encodeURIComponent(this.#id)}/stream?token=${encodeURIComponent(this.#token)}`);
    let es;
    try {
      es = new EventSource(url);
    } catch {
      queueMicrotask(() => this.#lost(name));
      return {name, stop() {}};
    }
    let opened = false;
    es.onopen = () => { opened = true; this.#connected(name); };
    es.addEventListener("job", (event) => {
      let job;
      try { job = JSON.parse(event.data); } catch { return; }
      this.#accept(job);
    });
    es.addEventListener("pending", () => this.#pending());
    es.addEventListener("token_expired", () => this.#expired(name));
    es.onerror = () => {
      // CONNECTING after an open stream: the browser reconnects by itself and sends
      // Last-Event-ID. CLOSED, or an error before the stream ever opened: ours to handle.
      if (opened && es.readyState === EventSource.CONNECTING) return;
      this.#lost(name);
    };
    return {
      name,
      stop() {
        es.onopen = es.onerror = null;
        es.close();
      },
    };
  }

  #startPolling() {
    const name = "poll";
    let stopped = false;
    const poll = async () => {
      if (stopped || this.#closed) return;
      const abort = new AbortController();
      this.#pollAbort = abort;
      const timeout = setTimeout(() => abort.abort(), REQUEST_TIMEOUT_MS);
      const headers = this.#auth();
      if (this.#pollEtag) headers["If-None-Match"] = this.#pollEtag;
      let res = null;
      let body = null;
      try {
        res = await fetch(this.#url(`/api/jobs/${encodeURIComponent(this.#id)}`), {headers, cache: "no-store", signal: abort.signal});
        if (res.status === 200) body = await res.json();
      } catch {
        res = null;               // network error or timeout: try again on the schedule
      } finally {
        clearTimeout(timeout);
        if (this.#pollAbort === abort) this.#pollAbort = null;
      }
      if (stopped || this.#closed) return;
      let extra = 0;
      if (res && res.status === 200) {
        this.#connected(name);
        const etag = res.headers.get("ETag");
        if (this.#accept(body) && etag) this.#pollEtag = etag;   // a stale answer keeps the newer tag
      } else if (res && res.status === 404) {
        this.#connected(name);
        this.#pending();          // not known yet: loading, not an error
      } else if (res && (res.status === 401 || res.status === 403)) {
        let error = {};
        try { error = (await res.json()).error || {}; } catch { /* no body */ }
        if (error.code === "token_expired" && this.#getToken && await this.#renew()) {
          if (!stopped && !this.#closed) queueMicrotask(poll);
          return;
        }
        this.#denied(error.code || String(res.status), error.message || "This status link is not valid for this job.");
        return;
      } else if (res && (res.status === 429 || res.status === 503)) {
        extra = Math.min(60, Number(res.headers.get("Retry-After")) || 0) * 1000;
      }
      const state = this.#job && this.#job.state;
      if (state === "complete" || state === "failed") {
        // complete is terminal; failed waits for the page to retry (retry() resumes).
        this.#stopAll();
        return;
      }
      const delay = POLL_SCHEDULE[Math.min(this.#pollStep, POLL_SCHEDULE.length - 1)];
      this.#pollStep += 1;
      this.#later(Math.max(delay, extra), poll);
    };
    queueMicrotask(poll);
    return {
      name,
      renewed() { /* the next request carries the new token */ },
      stop: () => {
        stopped = true;
        if (this.#pollAbort) this.#pollAbort.abort();
      },
    };
  }

  /** One GET outside the schedule, to learn the real state after a refused retry. */
  async #refreshOnce() {
    try {
      const res = await fetch(this.#url(`/api/jobs/${encodeURIComponent(this.#id)}`), {headers: this.#auth(), cache: "no-store"});
      if (res.status === 200) this.#accept(await res.json());
    } catch { /* the next update will tell */ }
  }

  /** Restart after polling stopped at `failed` and the page retried. */
  #resume() {
    this.#stopped = false;
    this.#pollStep = 0;
    this.#setToken(this.#token, this.#expiresAt);
    this.#startTransport();
  }

  #stopAll() {
    this.#stopped = true;
    clearTimeout(this.#renewTimer);
    for (const t of this.#timers) clearTimeout(t);
    this.#timers.clear();
    if (this.#current) this.#current.stop();
    this.#setCurrent(null);
  }

  #later(ms, fn) {
    const t = setTimeout(() => { this.#timers.delete(t); fn(); }, ms);
    this.#timers.add(t);
  }

  #url(path) {
    const base = this.#base || globalThis.location.origin;
    return base + path;
  }

  #auth() {
    return this.#token ? {Authorization: `Bearer ${this.#token}`} : {};
  }
}

// -- presentation ----------------------------------------------------------------------------------

/**
 * Every message the element (and the React component) shows, in English. Replace any of them
 * with the `messages` property (or option): a string with {placeholders}, or a function of the
 * same values. Numbers arrive already formatted with Intl for the page's language.
 */
export const MESSAGES = Object.freeze({
  empty: "Starting job…",
  loading: "Checking status…",
  unavailable: "Status unavailable",
  queued: "Queued",
  queuedPosition: "Queued — position {position}",
  queuedPositionOf: "Queued — position {position} of {total}",
  processing: "Processing…",
  processingStep: "Processing — {step}",
  processingCount: "Processing {unit} {current}…",
  processingCountStep: "Processing {unit} {current} — {step}",
  processingOf: "Processing {unit} {current} of {total}…",
  processingOfStep: "Processing {unit} {current} of {total} — {step}",
  complete: "Complete",
  failed: "Failed — {message}",
  failedUnknown: "the job did not finish",
  retryHint: "You can retry it, or contact support with the job id {id}.",
  noRetryHint: "This failure cannot be retried; contact support with the job id {id}.",
  expired: "Live updates stopped: this status link has expired. Reload the page to get a new one.",
  denied: "Live updates stopped: this page's status link is not valid for this job.",
  retryRefused: "This job can no longer be retried.",
  retryFailed: "Retry did not go through: {message}",
  retry: "Retry",
  viewResult: "View result",
  contactSupport: "Contact support",
  progress: "Progress",
  progressStep: "Progress: {step}",
  progressValue: "{current} of {total}",
  supportSubject: "Job {id} failed",
  unit: "row",
});

const known = (n) => typeof n === "number" && Number.isFinite(n);
const formats = new Map();

/** `key`'s message (see MESSAGES) with its {placeholders} filled; numbers formatted for `locale`. */
export function message(key, values = {}, {messages, locale} = {}) {
  const template = (messages && messages[key] != null ? messages[key] : MESSAGES[key]);
  const cacheKey = locale || "";
  if (!formats.has(cacheKey)) {
    let f;
    try { f = new Intl.NumberFormat(locale || undefined); } catch { f = new Intl.NumberFormat(); }
    formats.set(cacheKey, f);
  }
  const number = formats.get(cacheKey);
  const shown = {};
  for (const [k, v] of Object.entries(values)) shown[k] = known(v) ? number.format(v) : v;
  if (typeof template === "function") return String(template(shown));
  return String(template).replace(/\{(\w+)\}/g, (m, k) => (k in shown ? String(shown[k]) : m));
}

/**
 * The one line of text a person reads for a job (null = not known yet), and the view state:
 * one of "empty", "loading", "queued", "processing", "complete", "failed".
 * Options: hasId, unit, messages (see MESSAGES), locale (default: the browser's).
 */
export function describe(job, {hasId = true, unit, messages, locale} = {}) {
  const o = {messages, locale};
  if (!hasId) return {state: "empty", text: message("empty", {}, o)};
  if (!job) return {state: "loading", text: message("loading", {}, o)};
  switch (job.state) {
    case "queued": {
      const q = job.queue || {};
      if (!known(q.position)) return {state: "queued", text: message("queued", {}, o)};
      const of = known(q.total) && q.total >= q.position;
      return {state: "queued", text: message(of ? "queuedPositionOf" : "queuedPosition", {position: q.position, total: q.total}, o)};
    }
    case "processing": {
      const p = job.progress || {};
      const step = typeof p.step === "string" && p.step ? p.step : null;
      let key = "processing";
      if (known(p.current) && known(p.total) && p.total > 0) key = "processingOf";
      else if (known(p.current)) key = "processingCount";
      if (step) key = key === "processing" ? "processingStep" : key + "Step";
      const values = {unit: unit || message("unit", {}, o), current: p.current, total: p.total, step};
      return {state: "processing", text: message(key, values, o)};
    }
    case "complete":
      return {state: "complete", text: message("complete", {}, o)};
    case "failed": {
      const e = job.error || {};
      return {state: "failed", text: message("failed", {message: e.message || message("failedUnknown", {}, o)}, o)};
    }
    default:
      return {state: "loading", text: message("loading", {}, o)};
  }
}

/** Only http(s) links from job results reach the page (a provider could send javascript:). */
export function safeUrl(raw) {
  if (typeof raw !== "string" || !raw) return null;
  try {
    const url = new URL(raw, globalThis.location.href);
    return url.protocol === "https:" || url.protocol === "http:" ? url.href : null;
  } catch {
    return null;
  }
}

/**
 * Everything the element shows for a job, as data (the React component renders the same):
 * {state, text, label, progress: {value, max, text, label} | null, detail, alert, retryable,
 * resultUrl, supportHref}. `notice` (a message key or text) replaces the detail line, as an alert.
 */
export function present(job, {jobId = "", denied = false, notice = "", supportEmail = "support@example.com",
                              unit, messages, locale} = {}) {
  const o = {messages, locale};
  const described = describe(job, {hasId: Boolean(jobId), unit, messages, locale});
  const {state} = described;
  const text = state === "loading" && denied ? message("unavailable", {}, o) : described.text;
  const p = state === "processing" ? job.progress || {} : {};
  let progress = null;
  if (known(p.current) && known(p.total) && p.total > 0) {
    const value = Math.min(p.current, p.total);
    progress = {value, max: p.total, text: message("progressValue", {current: value, total: p.total}, o),
                label: p.step ? message("progressStep", {step: p.step}, o) : message("progress", {}, o)};
  }
  const error = state === "failed" ? job.error || {} : null;
  const retryable = Boolean(error) && error.retryable !== false;
  let detail = notice ? (notice in MESSAGES ? message(notice, {}, o) : notice) : "";
  if (!detail && error) detail = message(retryable ? "retryHint" : "noRetryHint", {id: jobId}, o);
  let supportHref = null;
  if (state === "failed") {
    const subject = message("supportSubject", {id: jobId}, o);
    const body = `Job id: ${jobId}\nError: ${error.code || "unknown"}: ${error.message || ""}\nAttempt: ${job.attempt}\n`;
    supportHref = `mailto:${encodeURIComponent(supportEmail).replace(/%40/g, "@")}?subject=${encodeURIComponent(subject)}&body=${encodeURIComponent(body)}`;
  }
  return {
    state, text, label: job && job.label ? String(job.label) : "", progress, detail, alert: Boolean(notice),
    retryable, resultUrl: state === "complete" && job.result ? safeUrl(job.result.url) : null, supportHref,
  };
}

const STYLE = `
:host {
  display: block;
  font: var(--job-status-font, 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif);
  color: var(--job-status-fg, #1f2328);
}
:host([hidden]) { display: none; }
[part~="box"] {
  box-sizing: border-box;
  min-height: 3.25em;
  padding: var(--job-status-padding, 0.75em 1em);
  background: var(--job-status-bg, #ffffff);
  border: 1px solid var(--job-status-border, #d0d7de);
  border-left: 4px solid var(--job-status-state-color, var(--job-status-muted, #59636e));
  border-radius: var(--job-status-radius, 8px);
}
[data-state="queued"]     { --job-status-state-color: var(--job-status-queued, #9a6700); }
[data-state="processing"] { --job-status-state-color: var(--job-status-accent, #0969da); }
[data-state="complete"]   { --job-status-state-color: var(--job-status-complete, #1a7f37); }
[data-state="failed"]     { --job-status-state-color: var(--job-status-failed, #cf222e); }
[part~="label"] { margin: 0 0 0.2em; font-weight: 600; }
[part~="text"] { margin: 0; display: flex; gap: 0.5em; align-items: baseline; }
[part~="icon"] { color: var(--job-status-state-color); font-weight: 700; min-width: 1em; text-align: center; }
[part~="detail"] { margin: 0.25em 0 0; color: var(--job-status-muted, #59636e); font-size: 0.9em; }
[part~="progress"] {
  margin-top: 0.5em; height: var(--job-status-bar-height, 8px); overflow: hidden;
  background: var(--job-status-track, #eaeef2); border-radius: 999px;
}
[part~="bar"] {
  height: 100%; width: 0; background: var(--job-status-accent, #0969da);
  border-radius: inherit; transition: width 0.3s ease;
}
[part~="actions"] { margin-top: 0.6em; display: flex; gap: 0.75em; align-items: center; flex-wrap: wrap; }
[part~="retry"] {
  font: inherit; cursor: pointer; padding: 0.3em 0.9em;
  color: var(--job-status-button-fg, #ffffff); background: var(--job-status-button-bg, var(--job-status-accent, #0969da));
  border: 1px solid transparent; border-radius: var(--job-status-button-radius, 6px);
}
[part~="retry"]:disabled { opacity: 0.6; cursor: progress; }
[part~="retry"]:focus-visible, a:focus-visible { outline: 2px solid var(--job-status-accent, #0969da); outline-offset: 2px; }
a { color: var(--job-status-link, var(--job-status-accent, #0969da)); }
[hidden] { display: none !important; }
@media (prefers-reduced-motion: reduce) { [part~="bar"] { transition: none; } }
`;

export const ICONS = Object.freeze({empty: "…", loading: "…", queued: "◔", processing: "▶", complete: "✓", failed: "✕"});

/**
 * <job-status job-id="job_…" token="…" support-email="help@example.com">
 *
 * Attributes: job-id, token (browser token; retry scope for the Retry button), support-email,
 * base-url (the gateway when not same-origin), transports ("websocket,sse,poll"), unit ("row").
 * Properties: `messages` (replace any of MESSAGES), `initial` (the job JSON the page already
 * has; also read from a child <script type="application/json">), `getToken` (see watchJob).
 * Numbers are formatted for the nearest `lang` attribute. Reflects `state` ("empty" |
 * "loading" | "queued" | "processing" | "complete" | "failed") and `transport` on itself, and
 * fires a `job-change` event {detail: {state, job}} on every change.
 * Style with CSS custom properties (--job-status-*) and ::part(box | label | text | icon |
 * detail | progress | bar | actions | retry | support | result).
 */
export class JobStatusElement extends (globalThis.HTMLElement || class {}) {   // importable where there is no DOM (SSR)
  static observedAttributes = ["job-id", "token", "base-url", "transports", "support-email", "unit"];

  #watcher = null;
  #job = null;
  #parts = {};
  #restartQueued = false;
  #notice = "";
  #denied = false;                 // the gateway refused the token: nothing is being checked any more
  #lastAnnounced = "";
  #messages = null;
  #initial = null;
  #getToken = null;

  constructor() {
    super();
    const root = this.attachShadow({mode: "open"});
    root.innerHTML = `
      <style>${STYLE}</style>
      <div part="box" data-state="empty">
        <p part="label" hidden></p>
        <p part="text" role="status" aria-live="polite" aria-atomic="true"><span part="icon" aria-hidden="true"></span><span part="message"></span></p>
        <div part="progress" role="progressbar" aria-valuemin="0" hidden><div part="bar"></div></div>
        <p part="detail" hidden></p>
        <div part="actions" hidden>
          <a part="result" hidden></a>
          <button part="retry" type="button" hidden></button>
          <a part="support" hidden></a>
        </div>
      </div>`;
    for (const el of root.querySelectorAll("[part]")) this.#parts[el.getAttribute("part")] = el;
    this.#parts.retry.addEventListener("click", () => this.#retry());
    for (const name of ["messages", "initial", "getToken"]) {   // set on the element before it was defined
      if (Object.prototype.hasOwnProperty.call(this, name)) {
        const value = this[name];
        delete this[name];
        this[name] = value;
      }
    }
  }

  /** The job as last seen (null before the first answer). */
  get job() { return this.#job; }

  /** The watcher's transport: "websocket" | "sse" | "poll" | "none". */
  get transport() { return this.#watcher ? this.#watcher.transport : "none"; }

  /** Replacements for any of MESSAGES' keys (strings with {placeholders}, or functions). */
  get messages() { return this.#messages; }
  set messages(value) { this.#messages = value && typeof value === "object" ? value : null; this.#render(); }

  /** The job JSON the page already has, shown on the first frame (only newer versions follow). */
  get initial() { return this.#initial; }
  set initial(job) { this.#initial = job || null; if (this.isConnected) this.#scheduleRestart(); }

  /** async () → token | {token, expires_at}: renews the token before it expires (see watchJob). */
  get getToken() { return this.#getToken; }
  set getToken(fn) { this.#getToken = typeof fn === "function" ? fn : null; }

  connectedCallback() { this.#scheduleRestart(); }

  disconnectedCallback() {
    if (this.#watcher) this.#watcher.close();
    this.#watcher = null;
  }

  attributeChangedCallback(name, before, after) {
    if (before === after || !this.isConnected) return;
    if (name === "support-email" || name === "unit") this.#render();
    else this.#scheduleRestart();
  }

  #scheduleRestart() {
    // job-id and token usually change together: restart once, after both.
    if (this.#restartQueued) return;
    this.#restartQueued = true;
    queueMicrotask(() => { this.#restartQueued = false; this.#restart(); });
  }

  /** The snapshot handed over by the page for this job id: the `initial` property or inline JSON. */
  #snapshot(id) {
    let job = this.#initial;
    const inline = this.querySelector(":scope > script[type='application/json']");
    if (!job && inline) {
      try { job = JSON.parse(inline.textContent); } catch { job = null; }
    }
    return job && job.id === id && Number.isInteger(job.version) ? job : null;
  }

  #restart() {
    if (this.#watcher) this.#watcher.close();
    this.#watcher = null;
    const id = this.getAttribute("job-id");
    this.#job = id ? this.#snapshot(id) : null;   // never show a previous job's state
    this.#notice = "";
    this.#denied = false;
    this.#render();
    if (!id || !this.isConnected) return;
    const transports = (this.getAttribute("transports") || "").split(",").map((s) => s.trim()).filter(Boolean);
    this.#watcher = watchJob(id, {
      token: this.getAttribute("token") || "",
      baseUrl: this.getAttribute("base-url") || "",
      transports: transports.length ? transports : undefined,
      initial: this.#job,
      getToken: this.#getToken ? () => this.#getToken() : null,
      onChange: (job) => { this.#job = job; this.#notice = ""; this.#render(); },
      onTransport: (name) => this.setAttribute("transport", name),
      onError: ({code}) => {
        this.#denied = true;
        this.#notice = code === "token_expired" ? "expired" : "denied";
        this.#render();
      },
    });
    this.setAttribute("transport", this.#watcher.transport);
  }

  async #retry() {
    if (!this.#watcher) return;
    const button = this.#parts.retry;
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    this.#notice = "";
    const outcome = await this.#watcher.retry();
    button.disabled = false;
    button.removeAttribute("aria-busy");
    if (!outcome.ok) {
      this.#notice = outcome.status === 409 ? "retryRefused" : message("retryFailed", {message: outcome.message}, this.#words());
    }
    this.#render();
  }

  #words() {
    const lang = this.closest("[lang]");
    return {messages: this.#messages, locale: (lang && lang.getAttribute("lang")) || undefined};
  }

  #render() {
    const p = this.#parts;
    const id = this.getAttribute("job-id") || "";
    const job = this.#job;
    const words = this.#words();
    const view = present(job, {
      jobId: id, denied: this.#denied, notice: this.#notice, unit: this.getAttribute("unit") || undefined,
      supportEmail: this.getAttribute("support-email") || undefined, ...words,
    });
    const {state} = view;
    p.box.dataset.state = state;
    p.icon.textContent = ICONS[state];
    if (p.message.textContent !== view.text) p.message.textContent = view.text;

    p.label.textContent = view.label;
    p.label.hidden = !view.label;

    const progress = view.progress;
    p.progress.hidden = !progress;
    if (progress) {
      p.progress.setAttribute("aria-valuemax", String(progress.max));
      p.progress.setAttribute("aria-valuenow", String(progress.value));
      p.progress.setAttribute("aria-valuetext", progress.text);
      p.progress.setAttribute("aria-label", progress.label);
      p.bar.style.width = `${(100 * progress.value) / progress.max}%`;
    } else {
      for (const a of ["aria-valuemax", "aria-valuenow", "aria-valuetext"]) p.progress.removeAttribute(a);
    }

    p.detail.textContent = view.detail;
    p.detail.hidden = !view.detail;
    p.detail.setAttribute("role", view.alert ? "alert" : "note");

    p.result.textContent = message("viewResult", {}, words);
    p.retry.textContent = message("retry", {}, words);
    p.support.textContent = message("contactSupport", {}, words);
    p.result.hidden = !view.resultUrl;
    if (view.resultUrl) p.result.href = view.resultUrl; else p.result.removeAttribute("href");
    p.retry.hidden = !view.retryable;
    p.support.hidden = !view.supportHref;
    if (view.supportHref) p.support.href = view.supportHref; else p.support.removeAttribute("href");
    p.actions.hidden = p.result.hidden && p.retry.hidden && p.support.hidden;

    if (this.getAttribute("state") !== state) this.setAttribute("state", state);
    const signature = `${state}|${job ? job.version : ""}`;
    if (signature !== this.#lastAnnounced) {
      this.#lastAnnounced = signature;
      this.dispatchEvent(new CustomEvent("job-change", {detail: {state, job}, bubbles: true, composed: true}));
    }
  }
}

if (globalThis.customElements && !customElements.get("job-status")) {
  customElements.define("job-status", JobStatusElement);
}
