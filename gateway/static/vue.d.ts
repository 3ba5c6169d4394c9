// Types for vue.js.
import type { ComputedRef, MaybeRefOrGetter, ShallowRef } from "vue";
import type { GetToken, Job, Messages, Phase, RetryOutcome, Transport, TransportName, WatchError } from "./jobstatus.js";

export interface UseJobStatusOptions {
  token?: MaybeRefOrGetter<string | null | undefined>;
  baseUrl?: string;
  transports?: readonly TransportName[];
  getToken?: GetToken | null;
  initial?: MaybeRefOrGetter<Job | null | undefined>;
  messages?: Messages | null;
  locale?: string;
  unit?: string;
}

export interface JobStatusRefs {
  job: ShallowRef<Job | null>;
  phase: ComputedRef<Phase>;
  text: ComputedRef<string>;
  transport: ShallowRef<Transport>;
  error: ShallowRef<WatchError | null>;
  retry: () => Promise<RetryOutcome>;
}

export function useJobStatus(jobId: MaybeRefOrGetter<string | null | undefined>, options?: UseJobStatusOptions): JobStatusRefs;
