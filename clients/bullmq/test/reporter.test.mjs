// node --test: the Reporter's promises that need no Redis — a job's reports arrive in the order
// they were made with strictly increasing times, even when the caller's times collide or go back.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { Reporter } from "../index.js";

async function receiver(delayFirstMs) {
  const bodies = [];
  let first = true;
  let arrived;
  const firstArrived = new Promise((resolve) => { arrived = resolve; });
  const server = createServer((req, res) => {
    arrived();
    let data = "";
    req.on("data", (c) => { data += c; });
    req.on("end", () => {
      const wait = first ? delayFirstMs : 0;
      first = false;
      setTimeout(() => { bodies.push(JSON.parse(data)); res.writeHead(202).end(); }, wait);
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { bodies, firstArrived, url: `http://127.0.0.1:${server.address().port}`, close: () => server.close() };
}

test("a job's reports arrive in order, with strictly increasing times", async () => {
  const rx = await receiver(100);  // the first report is slow to answer: later ones must wait for it
  const reporter = new Reporter({ url: rx.url, source: "worker", secret: "whsec_" + Buffer.from("k".repeat(32)).toString("base64") });
  const at = 1_700_000_000_000;
  reporter.report("ext-1", "failed", { error: { code: "retrying" } }, at);
  reporter.report("ext-1", "queued", {}, at);
  reporter.report("ext-1", "processing", {}, at - 5);  // BullMQ's processedOn can precede the failure
  reporter.report("ext-1", "complete", {}, at);
  await reporter.flush();
  rx.close();
  assert.deepEqual(rx.bodies.map((b) => b.state), ["failed", "queued", "processing", "complete"]);
  const times = rx.bodies.map((b) => Date.parse(b.occurred_at));
  assert.deepEqual(times, [at, at + 1, at + 2, at + 3]);
});

test("another job's reports do not wait for a slow one", async () => {
  const rx = await receiver(300);
  const reporter = new Reporter({ url: rx.url, source: "worker", secret: "whsec_" + Buffer.from("k".repeat(32)).toString("base64") });
  reporter.report("slow", "processing");
  await rx.firstArrived;  // "slow" is at the receiver, unanswered
  await reporter.report("fast", "processing");
  assert.deepEqual(rx.bodies.map((b) => b.external_id), ["fast"]);
  await reporter.flush();
  rx.close();
});
