// react.js: the browser client as a React hook and component, thin wrappers on watchJob.
//
//   const {job, phase, text, transport, error, retry} = useJobStatus(jobId, {token});
//   <JobStatus jobId={jobId} token={token} supportEmail="help@example.com" />
//
// React is a peer dependency (never bundled); no JSX, so the file needs no build step.
// Types: react.d.ts. Guide: docs/integration.md.

import {createElement as h, useCallback, useEffect, useRef, useState} from "react";
import {ICONS, describe, message, present, watchJob} from "./jobstatus.js";

const NO_WATCHER = {ok: false, status: 0, code: "not_watching", message: "No job is being watched."};

function snapshotFor(initial, jobId) {
  return initial && jobId && initial.id === jobId && Number.isInteger(initial.version) ? initial : null;
}

/**
 * Watch one job from a React component. Returns {job, phase, text, transport, error, retry}:
 * `phase` is one of "empty" (no job id), "loading", "queued", "processing", "complete",
 * "failed"; `text` the words the element would show; `error` {code, message} once the token
 * was refused. A new job id starts over (never showing the previous job); unmounting closes
 * every connection. Safe under StrictMode's double effects: each effect closes its own watcher.
 *
 * options: token, baseUrl, transports, getToken, initial (the job JSON the page already has:
 * the first render shows it), messages, locale, unit.
 */
export function useJobStatus(jobId, options = {}) {
  const {token = "", baseUrl = "", transports, initial = null, getToken, messages, locale, unit} = options;
  const [seen, setSeen] = useState({id: null, job: null, transport: "none", error: null});
  const watcher = useRef(null);
  const getTokenRef = useRef(getToken);
  getTokenRef.current = getToken;
  const start = snapshotFor(initial, jobId);
  const startRef = useRef(start);
  startRef.current = start;
  const order = transports ? transports.join(",") : "";

  useEffect(() => {
    if (!jobId) return undefined;
    const w = watchJob(jobId, {
      token, baseUrl,
      transports: order ? order.split(",") : undefined,
      initial: startRef.current,
      getToken: getTokenRef.current ? () => getTokenRef.current() : null,
      onChange: (job) => setSeen((s) => ({...s, id: jobId, job})),
      onTransport: (transport) => setSeen((s) => ({...s, id: jobId, transport})),
      onError: (error) => setSeen((s) => ({...s, id: jobId, error})),
    });
    watcher.current = w;
    setSeen({id: jobId, job: startRef.current, transport: w.transport, error: null});
    return () => {
      w.close();
      if (watcher.current === w) watcher.current = null;
    };
  }, [jobId, token, baseUrl, order]);

  const retry = useCallback(() => (watcher.current ? watcher.current.retry() : Promise.resolve(NO_WATCHER)), []);
  // Until the effect has run for this job id, show what is true for it: the page's snapshot or nothing.
  const mine = seen.id === jobId && jobId;
  const job = mine ? seen.job : start;
  const {state: phase, text} = describe(job, {hasId: Boolean(jobId), unit, messages, locale});
  return {job, phase, text, transport: mine ? seen.transport : "none", error: mine ? seen.error : null, retry};
}

/**
 * The six states as the <job-status> element shows them (same words, parts and data-state),
 * rendered by React: props jobId, token, baseUrl, transports, getToken, initial, messages,
 * locale, unit, supportEmail, className.
 */
export function JobStatus(props) {
  const {jobId, supportEmail, className, messages, locale, unit} = props;
  const status = useJobStatus(jobId, props);
  const [notice, setNotice] = useState("");
  const [busy, setBusy] = useState(false);
  useEffect(() => setNotice(""), [jobId, status.job]);
  const onRetry = async () => {
    setBusy(true);
    const outcome = await status.retry();
    setBusy(false);
    if (!outcome.ok) setNotice(outcome.status === 409 ? "retryRefused" : message("retryFailed", {message: outcome.message}, {messages, locale}));
  };
  const denied = status.error ? (status.error.code === "token_expired" ? "expired" : "denied") : "";
  const words = {messages, locale};
  const view = present(status.job, {jobId: jobId || "", denied: Boolean(denied), notice: notice || denied, unit, supportEmail, ...words});
  const say = (key) => message(key, {}, words);
  const p = view.progress;
  return h("div", {className, "data-part": "box", "data-state": view.state, "data-transport": status.transport},
    view.label ? h("p", {"data-part": "label"}, view.label) : null,
    h("p", {"data-part": "text", role: "status", "aria-live": "polite", "aria-atomic": "true"},
      h("span", {"data-part": "icon", "aria-hidden": "true"}, ICONS[view.state]), " ",
      h("span", {"data-part": "message"}, view.text)),
    p ? h("div", {"data-part": "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": p.max,
                  "aria-valuenow": p.value, "aria-valuetext": p.text, "aria-label": p.label},
          h("div", {"data-part": "bar", style: {width: `${(100 * p.value) / p.max}%`}})) : null,
    view.detail ? h("p", {"data-part": "detail", role: view.alert ? "alert" : "note"}, view.detail) : null,
    view.resultUrl || view.retryable || view.supportHref ? h("div", {"data-part": "actions"},
      view.resultUrl ? h("a", {"data-part": "result", href: view.resultUrl}, say("viewResult")) : null,
      view.retryable ? h("button", {"data-part": "retry", type: "button", disabled: busy, "aria-busy": busy || undefined, onClick: onRetry}, say("retry")) : null,
      view.supportHref ? h("a", {"data-part": "support", href: view.supportHref}, say("contactSupport")) : null) : null);
}
