// Report BullMQ jobs to the job webhook gateway: one line per Queue and Worker.
//
//   import { Reporter, bridge } from "@job-gateway/bullmq";
//   const reporter = new Reporter({ url: process.env.GATEWAY_URL, source: "worker",
//                                   secret: process.env.WORKER_WEBHOOK_SECRET });
//   bridge({ queue, worker, reporter });             // either may be omitted
//   await queue.add("import", { gatewayJob: externalId, rows });
//   // inside the processor: await job.updateProgress({ current, total, step });
//
// | BullMQ event           | report                                                           |
// |------------------------|------------------------------------------------------------------|
// | Queue "waiting"        | queued in the queue's name                                       |
// | Worker "active"        | processing                                                       |
// | Worker "progress"      | processing with progress ({current, total, step} or a number %)  |
// | Worker "completed"     | complete with the return value (an object as it is, else {value}) |
// | Worker "failed", tries left | failed ("retrying"), then queued: the job's next attempt    |
// | Worker "failed", no try left | failed with the error's name and message                   |
//
// A job names its gateway job in job.data.gatewayJob (or the option `jobKey`); others are
// untouched. Reports are signed with Standard Webhooks (the `standardwebhooks` package), sent
// in the background one job at a time (a job's reports reach the gateway in the order they were
// made; other jobs' reports do not wait for them), retried on network errors, 429 and 5xx with backoff and the same
// webhook-id, and never throw into BullMQ's handlers: one that cannot get through is dropped
// with a console.warn naming the job.

import { randomUUID } from "node:crypto";
import { Webhook } from "standardwebhooks";

const RETRY = new Set([429, 500, 502, 503, 504]);

export class Reporter {
  #webhook; #times = new Map(); #pending = new Set(); #chains = new Map();

  constructor({ url, source, secret, retries = 5, backoffMs = 500, maxBackoffMs = 30000, timeoutMs = 10000, log = console }) {
    if (!url || !source || !secret) throw new Error("Reporter needs url, source and secret");
    this.url = `${url.replace(/\/+$/, "")}/webhooks/${encodeURIComponent(source)}`;
    this.#webhook = new Webhook(secret);
    Object.assign(this, { retries, backoffMs, maxBackoffMs, timeoutMs, log });
  }

  /** Queue one report; resolves when it was sent or dropped, never rejects. `atMs`: when it
   *  happened (BullMQ's own timestamps), else now; never before the job's previous report. */
  report(externalId, state, fields = {}, atMs = undefined) {
    const id = "evt_" + randomUUID().replace(/-/g, "");
    const occurredAt = this.#time(externalId, atMs);
    const body = JSON.stringify({ external_id: externalId, state, occurred_at: occurredAt, ...clean(fields) });
    // after this job's previous report (sent or dropped: #send never rejects), so a retried job's
    // "failed" is folded before its next attempt's "processing" and "complete"
    const previous = this.#chains.get(externalId) ?? Promise.resolve();
    const sending = previous.then(() => this.#send(id, body, externalId)).finally(() => {
      this.#pending.delete(sending);
      if (this.#chains.get(externalId) === sending) this.#chains.delete(externalId);
    });
    this.#chains.set(externalId, sending);
    this.#pending.add(sending);
    return sending;
  }

  /** Wait for every report queued so far (e.g. before a process exits). */
  async flush() { await Promise.all([...this.#pending]); }

  // A job's reports get strictly increasing times in the order they are made, never earlier than
  // `atMs`: BullMQ may pick a retried job up again within the millisecond it failed (its next
  // attempt's processedOn, even finishedOn, can equal or precede the failure's clock), and the
  // gateway folds a job's events by time. Bounded: the oldest job's clock is forgotten first.
  #time(externalId, atMs) {
    const floor = (this.#times.get(externalId) ?? 0) + 1;
    const at = Math.max(atMs ?? Date.now(), floor);
    this.#times.delete(externalId);
    this.#times.set(externalId, at);
    if (this.#times.size > 10000) this.#times.delete(this.#times.keys().next().value);
    return new Date(at).toISOString();
  }

  async #send(id, body, externalId) {
    let last = "no try";
    for (let attempt = 0; attempt <= this.retries; attempt++) {
      if (attempt) await sleep(this.#delay(attempt));
      const now = new Date();
      const headers = {
        "content-type": "application/json", "webhook-id": id,
        "webhook-timestamp": String(Math.floor(now.getTime() / 1000)),
        "webhook-signature": this.#webhook.sign(id, now, body),
      };
      try {
        const r = await fetch(this.url, { method: "POST", headers, body, signal: AbortSignal.timeout(this.timeoutMs) });
        if (r.ok) return;
        last = `HTTP ${r.status}`;
        if (!RETRY.has(r.status)) break;
      } catch (err) {
        last = err?.name || "network error";
      }
    }
    this.log.warn(`gateway report dropped for ${externalId}: ${last}`);
  }

  #delay(attempt) {
    const ceiling = Math.min(this.maxBackoffMs, this.backoffMs * 2 ** (attempt - 1));
    return ceiling / 2 + Math.random() * ceiling / 2;
  }
}

/** Bridge a Queue's and/or a Worker's events to the gateway through `reporter`. */
export function bridge({ queue, worker, reporter, jobKey = "gatewayJob" }) {
  const gatewayJob = (job) => job?.data?.[jobKey];
  if (queue) {
    queue.on("waiting", (job) => {
      const ext = gatewayJob(job);
      if (ext && !job.attemptsMade) reporter.report(ext, "queued", { queue: { name: queue.name } });
    });
  }
  if (worker) {
    // each report carries the time BullMQ itself recorded (processedOn, finishedOn), so a report
    // sent late still sorts where it happened
    worker.on("active", (job) => {
      const ext = gatewayJob(job);
      if (ext) reporter.report(ext, "processing", {}, job.processedOn);
    });
    worker.on("progress", (job, progress) => {
      const ext = gatewayJob(job);
      if (ext) reporter.report(ext, "processing", { progress: asProgress(progress) });
    });
    worker.on("completed", (job, result) => {
      const ext = gatewayJob(job);
      if (ext) reporter.report(ext, "complete", { result: summary(result) }, job.finishedOn);
    });
    worker.on("failed", (job, err) => {
      const ext = gatewayJob(job);
      if (!ext) return;
      const attempts = job.opts?.attempts ?? 1;
      const at = job.finishedOn ?? Date.now();
      if (job.attemptsMade < attempts) {  // BullMQ will run it again: the next attempt
        reporter.report(ext, "failed", { error: { code: "retrying", message: `Attempt ${job.attemptsMade} of ${attempts} failed`, retryable: true } }, at);
        reporter.report(ext, "queued", { queue: { name: worker.name } }, at);
      } else {
        reporter.report(ext, "failed", { error: { code: err?.name || "Error", message: String(err?.message || err).slice(0, 500), retryable: true } }, at);
      }
    });
  }
}

function asProgress(progress) {
  if (typeof progress === "number") return { current: progress, total: 100 };
  if (progress && typeof progress === "object") return clean({ current: progress.current, total: progress.total, step: progress.step });
  return undefined;
}

function summary(result) {
  if (result === undefined || result === null) return undefined;
  if (typeof result === "object" && !Array.isArray(result)) return result;
  return { value: typeof result === "string" ? result.slice(0, 500) : result };
}

function clean(fields) {
  return Object.fromEntries(Object.entries(fields).filter(([, v]) => v !== undefined && v !== null));
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
