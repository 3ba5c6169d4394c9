// A typed integration using every exported type of the packed client; `tsc --noEmit` must pass.
import {
  describe, ICONS, JobStatusElement, message, MESSAGES, present, reconnectDelay, safeUrl, tokenExpiry, watchJob,
  MAX_RECONNECTS, POLL_SCHEDULE, RECONNECT_CEILING,
} from "@job-gateway/client";
import type {
  ChangeInfo, DescribeOptions, Description, GetToken, Job, JobChangeDetail, JobChangeEvent, JobError, JobProgress,
  JobQueue, JobResult, JobState, JobStatusElementEventMap, JobWatcher, Message, MessageKey, Messages, MessageValues,
  Phase, Presentation, PresentOptions, ProgressView, RetryOutcome, TokenGrant, Transport, TransportName, WatchError,
  WatchOptions, WordOptions,
} from "@job-gateway/client";
import { JobStatus, useJobStatus } from "@job-gateway/client/react";
import type { JobStatusProps, JobStatusResult, UseJobStatusOptions } from "@job-gateway/client/react";
import { useJobStatus as useJobStatusVue } from "@job-gateway/client/vue";
import type { JobStatusRefs, UseJobStatusOptions as VueOptions } from "@job-gateway/client/vue";
import { ref } from "vue";

const queue: JobQueue = { name: "imports", position: 4, total: 12 };
const progress: JobProgress = { current: 1240, total: 4000, step: "importing rows" };
const failure: JobError = { code: "bad_row", message: "Row 1,241: missing email", retryable: true };
const result: JobResult = { url: "https://app.example.com/imports/42" };
const state: JobState = "processing";
const job: Job = {
  id: "job_1", state, version: 7, attempt: 1, source: "worker", external_id: "import-42", label: "Import",
  queue, progress, error: failure, result, created_at: "", updated_at: "", state_changed_at: null,
};
const grant: TokenGrant = { token: "t", expires_at: 1795878595 };
const getToken: GetToken = async () => grant;
const names: TransportName[] = ["websocket", "sse", "poll"];
const messages: Messages = { queuedPositionOf: "En file — {position} sur {total}", complete: (v: MessageValues) => `Fini ${v.id ?? ""}` };
const key: MessageKey = "processingOfStep";
const template: Message = MESSAGES[key];
const words: WordOptions = { messages, locale: "fr-FR" };
const options: WatchOptions = {
  token: "t", transports: names, baseUrl: "https://gw.example.com", since: 3, initial: job, getToken, tokenExpiresAt: 1,
  onChange: (j: Job | null, info: ChangeInfo) => console.log(j?.version, info.transport),
  onTransport: (t: Transport) => console.log(t),
  onError: (e: WatchError) => console.log(e.code, e.message),
};
const watcher: JobWatcher = watchJob("job_1", options);
watcher.retry().then((outcome: RetryOutcome) => console.log(outcome.ok, outcome.status, watcher.job, watcher.transport));
watcher.close();
const describeOptions: DescribeOptions = { hasId: true, unit: "file", ...words };
const described: Description = describe(job, describeOptions);
const phase: Phase = described.state;
const presentOptions: PresentOptions = { jobId: "job_1", supportEmail: "help@example.com", notice: "expired", ...words };
const view: Presentation = present(job, presentOptions);
const bar: ProgressView | null = view.progress;
console.log(phase, ICONS[phase], bar?.value, message(key, { current: 1 }, words), template, safeUrl(result.url),
            tokenExpiry("t"), reconnectDelay(2), POLL_SCHEDULE[0], RECONNECT_CEILING + MAX_RECONNECTS);

const el: JobStatusElement = document.createElement("job-status");
el.messages = messages;
el.initial = job;
el.getToken = getToken;
el.addEventListener("job-change", (event: JobChangeEvent) => {
  const detail: JobChangeDetail = event.detail;
  console.log(detail.state, detail.job?.id, el.job, el.transport);
});
type ChangeEventFromMap = JobStatusElementEventMap["job-change"];
const listener = (e: ChangeEventFromMap) => e.detail.state;
console.log(listener, el instanceof JobStatusElement);

export function ReactExample({ jobId }: { jobId: string | null }) {
  const hookOptions: UseJobStatusOptions = { token: "t", getToken, initial: job, messages, locale: "de-DE" };
  const status: JobStatusResult = useJobStatus(jobId, hookOptions);
  const props: JobStatusProps = { jobId, token: "t", supportEmail: "help@example.com", className: "status" };
  return (
    <div>
      <p>{status.phase}: {status.text} via {status.transport} {status.error?.code}</p>
      <button onClick={() => void status.retry()}>Retry</button>
      <JobStatus {...props} />
    </div>
  );
}

export function vueExample(): JobStatusRefs {
  const id = ref<string | null>("job_1");
  const vueOptions: VueOptions = { token: () => "t", getToken, initial: job };
  const refs = useJobStatusVue(id, vueOptions);
  const p: Phase = refs.phase.value;
  console.log(p, refs.job.value?.version, refs.text.value, refs.transport.value, refs.error.value);
  return refs;
}
