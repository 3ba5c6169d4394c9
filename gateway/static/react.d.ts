// Types for react.js.
import type { ReactElement } from "react";
import type { GetToken, Job, Messages, Phase, RetryOutcome, Transport, TransportName, WatchError } from "./jobstatus.js";

export interface UseJobStatusOptions {
  token?: string;
  baseUrl?: string;
  transports?: readonly TransportName[];
  getToken?: GetToken | null;
  /** The job JSON the page already has: the first render shows it. */
  initial?: Job | null;
  messages?: Messages | null;
  locale?: string;
  unit?: string;
}

export interface JobStatusResult {
  job: Job | null;
  phase: Phase;
  text: string;
  transport: Transport;
  error: WatchError | null;
  retry: () => Promise<RetryOutcome>;
}

export function useJobStatus(jobId: string | null | undefined, options?: UseJobStatusOptions): JobStatusResult;

export interface JobStatusProps extends UseJobStatusOptions {
  jobId: string | null | undefined;
  supportEmail?: string;
  className?: string;
}

export function JobStatus(props: JobStatusProps): ReactElement;
