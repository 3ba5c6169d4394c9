// The demo page: start simulated jobs and show each with <job-status>.
import "./jobstatus.js";

const list = document.getElementById("jobs");
const emptyList = document.getElementById("empty-list");
const message = document.getElementById("message");
const supportEmail = document.body.dataset.supportEmail || "support@example.com";
const tick = Number(new URLSearchParams(location.search).get("tick")) || null;   // seconds between updates

function addCard() {
  const item = document.createElement("li");
  item.className = "card";
  const status = document.createElement("job-status");
  status.setAttribute("support-email", supportEmail);
  const meta = document.createElement("p");
  meta.className = "meta";
  const id = document.createElement("code");
  id.textContent = "no id yet";
  const via = document.createElement("span");
  via.className = "via";
  const open = document.createElement("a");
  open.target = "_blank";
  open.rel = "noopener";
  open.textContent = "watch in new tab";
  open.hidden = true;
  meta.append(id, via, open);
  item.append(status, meta);
  new MutationObserver(() => {
    const t = status.getAttribute("transport");
    via.textContent = t && t !== "none" ? `via ${t}` : "";
  }).observe(status, {attributes: true, attributeFilter: ["transport"]});
  return {
    item, status,
    watch(jobId, token) {
      status.setAttribute("token", token);
      status.setAttribute("job-id", jobId);
      id.textContent = jobId;
      open.href = `/#job=${encodeURIComponent(jobId)}&token=${encodeURIComponent(token)}`;
      open.hidden = false;
    },
  };
}

async function start(count, button) {
  button.disabled = true;
  message.textContent = "";
  const cards = Array.from({length: count}, () => addCard());   // "Starting job…" until the ids arrive
  list.prepend(...cards.map((c) => c.item));
  emptyList.hidden = true;
  try {
    const res = await fetch("/demo/jobs", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify(tick ? {count, tick} : {count}),
    });
    const body = await res.json().catch(() => ({}));
    if (!res.ok) throw new Error((body.error && body.error.message) || `HTTP ${res.status}`);
    body.jobs.forEach(({job, token}, i) => cards[i].watch(job.id, token));
  } catch (err) {
    for (const c of cards) c.item.remove();
    emptyList.hidden = list.children.length > 0;
    message.textContent = `Could not start jobs: ${err.message}`;
  } finally {
    button.disabled = false;
  }
}

for (const button of document.querySelectorAll("[data-count]")) {
  button.addEventListener("click", () => start(Number(button.dataset.count), button));
}

document.getElementById("clear").addEventListener("click", () => {
  for (const status of list.querySelectorAll("job-status[state=complete]")) status.closest("li").remove();
  emptyList.hidden = list.children.length > 0;
});

// "watch in new tab": /#job=…&token=… watches one job started elsewhere.
const shared = new URLSearchParams(location.hash.slice(1));
if (shared.get("job") && shared.get("token")) {
  const card = addCard();
  list.prepend(card.item);
  emptyList.hidden = true;
  card.watch(shared.get("job"), shared.get("token"));
} else {
  // A first look already shows jobs moving: a small batch starts with the page (?start=0: none).
  const first = Number(new URLSearchParams(location.search).get("start") ?? list.dataset.autostart ?? 0);
  const button = document.getElementById("start-batch");
  if (first > 0 && !button.disabled) start(Math.min(first, 12), button);
}
