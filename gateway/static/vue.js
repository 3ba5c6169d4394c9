// vue.js: the browser client as a Vue 3 composable, a thin wrapper on watchJob.
//
//   const {job, phase, text, transport, error, retry} = useJobStatus(() => props.jobId, {token});
//
// Vue is a peer dependency (never bundled). Types: vue.d.ts. Guide: docs/integration.md.

import {computed, getCurrentScope, onScopeDispose, shallowRef, toValue, watch} from "vue";
import {describe, watchJob} from "./jobstatus.js";

/**
 * Watch one job from a component's setup. `jobId` and `options.token` may be refs or getters:
 * a new id (or token) closes the old watcher and starts over; the component's unmount (its
 * effect scope's end) closes every connection. Returns refs {job, phase, text, transport,
 * error} and retry(); options as the React hook's (token, baseUrl, transports, getToken,
 * initial, messages, locale, unit).
 */
export function useJobStatus(jobId, options = {}) {
  const job = shallowRef(null);
  const transport = shallowRef("none");
  const error = shallowRef(null);
  let watcher = null;
  const stop = watch(() => [toValue(jobId), toValue(options.token) || ""], ([id, token]) => {
    if (watcher) watcher.close();
    watcher = null;
    const initial = toValue(options.initial);
    job.value = initial && id && initial.id === id ? initial : null;
    error.value = null;
    transport.value = "none";
    if (!id) return;
    watcher = watchJob(id, {
      token, baseUrl: options.baseUrl, transports: options.transports, initial: job.value, getToken: options.getToken,
      onChange: (j) => { job.value = j; },
      onTransport: (t) => { transport.value = t; },
      onError: (e) => { error.value = e; },
    });
  }, {immediate: true});
  if (getCurrentScope()) onScopeDispose(() => { stop(); if (watcher) watcher.close(); watcher = null; });
  const described = computed(() => describe(job.value, {
    hasId: Boolean(toValue(jobId)), unit: options.unit, messages: options.messages, locale: options.locale,
  }));
  return {
    job, transport, error,
    phase: computed(() => described.value.state),
    text: computed(() => described.value.text),
    retry: () => (watcher ? watcher.retry() : Promise.resolve({ok: false, status: 0, code: "not_watching", message: "No job is being watched."})),
  };
}
