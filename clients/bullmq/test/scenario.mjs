// Driven by tests/integrations/test_bullmq.py: a real BullMQ Queue and Worker on Redis, bridged to
// a real gateway. JOBS (JSON) lists {ext, kind, go}: "ok" reports progress and returns, "fail" throws,
// "retry" throws on its first attempt only, "wait" runs until the Redis key `go` is set (the test
// decides when the worker is free again). The worker takes one job at a time. Exits once every
// job has finished for good.
import { Queue, Worker } from "bullmq";
import { Reporter, bridge } from "../index.js";

const url = new URL(process.env.REDIS_URL);
const connection = { host: url.hostname, port: Number(url.port || 6379), db: Number(url.pathname.slice(1) || 0), maxRetriesPerRequest: null };
const name = process.env.QUEUE;
const jobs = JSON.parse(process.env.JOBS);
const reporter = new Reporter({ url: process.env.GATEWAY_URL, source: "worker", secret: process.env.WORKER_WEBHOOK_SECRET, backoffMs: 50, retries: 3 });

const queue = new Queue(name, { connection });
let left = jobs.length;
let finish;
const finished = new Promise((resolve) => { finish = resolve; });
const worker = new Worker(name, async (job) => {
  const { kind, go } = job.data;
  if (kind === "wait") {
    const client = await queue.client;
    while (!(await client.get(go))) await new Promise((resolve) => setTimeout(resolve, 20));
    return { imported: 1 };
  }
  if (kind === "fail") {
    await job.updateProgress({ current: 1, total: 5, step: "importing rows" });
    throw new TypeError("Row 2: missing email");
  }
  if (kind === "retry" && job.attemptsMade === 0) throw new Error("upstream timed out");
  await job.updateProgress({ current: 1, total: 3, step: "importing rows" });
  await job.updateProgress({ current: 3, total: 3, step: "importing rows" });
  return kind === "retry" ? "ok on retry" : { imported: 3 };
}, { connection, autorun: false });
bridge({ queue, worker, reporter });
const done = () => { if (--left === 0) finish(); };
worker.on("completed", done);
worker.on("failed", (job) => { if (job.attemptsMade >= (job.opts.attempts ?? 1)) done(); });

for (const { ext, kind, go } of jobs) {
  await queue.add(kind, { gatewayJob: ext, kind, go }, kind === "retry" ? { attempts: 2 } : {});
}
await reporter.flush();  // the queued reports are in before the worker starts
worker.run();
await finished;
await reporter.flush();
await worker.close();
await queue.obliterate({ force: true });
await queue.close();
