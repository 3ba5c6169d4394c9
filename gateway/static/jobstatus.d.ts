// Types for jobstatus.js (hand-written; the module itself needs no build step).

/** The four states the gateway stores. */
export type JobState = "queued" | "processing" | "complete" | "failed";
/** The six states a page shows: no job id yet, first answer not in, and the four above. */
export type Phase = "empty" | "loading" | JobState;
/** How a watcher is connected; "none" once it stopped (complete, refused, closed). */
export type Transport = "websocket" | "sse" | "poll" | "none";
export type TransportName = Exclude<Transport, "none">;

export interface JobQueue { name?: string | null; position?: number | null; total?: number | null; }
export interface JobProgress { current?: number | null; total?: number | null; step?: string | null; }
export interface JobError { code?: string; message?: string; retryable?: boolean; }
export interface JobResult { url?: string | null; [key: string]: unknown; }

/** The job JSON (contract §1): every key present; queue/progress/error/result only in their state. */
export interface Job {
  id: string;
  state: JobState;
  version: number;
  attempt: number;
  source: string;
  external_id: string;
  label: string | null;
  queue: JobQueue | null;
  progress: JobProgress | null;
  error: JobError | null;
  result: JobResult | null;
  created_at: string;
  updated_at: string;
  state_changed_at: string | null;
}

/** Why watching stopped: the token was refused ("forbidden", "invalid_token", "token_expired", …). */
export interface WatchError { code: string; message: string; }
export interface ChangeInfo { transport: Transport; }
/** What getToken resolves to: the token, or the token with its expiry (unix seconds). */
export type TokenGrant = string | { token: string; expires_at?: number; expiresAt?: number };
export type GetToken = () => TokenGrant | null | Promise<TokenGrant | null>;

export interface WatchOptions {
  /** The job's browser token (read scope; retry scope for retry()). */
  token?: string;
  /** Called with every newer version; null while the job is not known yet. */
  onChange?: (job: Job | null, info: ChangeInfo) => void;
  onTransport?: (transport: Transport) => void;
  onError?: (error: WatchError) => void;
  /** The order to try; default ["websocket", "sse", "poll"]. */
  transports?: readonly TransportName[];
  /** The gateway's origin when it is not the page's own. */
  baseUrl?: string;
  /** A version already shown: anything not newer is ignored. */
  since?: number;
  /** The job JSON the page already has: no onChange for it, only newer versions follow. */
  initial?: Job | null;
  /** Called before the token expires and on `token_expired`; watching resumes from the last version. */
  getToken?: GetToken | null;
  /** The token's expiry (unix seconds) when it cannot be read from the token itself. */
  tokenExpiresAt?: number | null;
}

export interface RetryOutcome { ok: boolean; status: number; code: string | null; message: string | null; }

/** The handle watchJob returns. */
export interface JobWatcher {
  readonly job: Job | null;
  readonly transport: Transport;
  close(): void;
  retry(): Promise<RetryOutcome>;
}

export function watchJob(id: string, options?: WatchOptions): JobWatcher;
export function reconnectDelay(attempt: number, random?: () => number): number;
export function tokenExpiry(token: string): number | null;
export const POLL_SCHEDULE: readonly number[];
export const RECONNECT_CEILING: number;
export const MAX_RECONNECTS: number;

/** Every message key; values are strings with {placeholders} or functions of those values. */
export type MessageKey =
  | "empty" | "loading" | "unavailable" | "queued" | "queuedPosition" | "queuedPositionOf"
  | "processing" | "processingStep" | "processingCount" | "processingCountStep" | "processingOf"
  | "processingOfStep" | "complete" | "failed" | "failedUnknown" | "retryHint" | "noRetryHint"
  | "expired" | "denied" | "retryRefused" | "retryFailed" | "retry" | "viewResult"
  | "contactSupport" | "progress" | "progressStep" | "progressValue" | "supportSubject" | "unit";
export type MessageValues = Record<string, string | number | null | undefined>;
export type Message = string | ((values: MessageValues) => string);
export type Messages = Partial<Record<MessageKey, Message>>;
export const MESSAGES: Readonly<Record<MessageKey, string>>;

export interface WordOptions {
  /** Replacements for any message. */
  messages?: Messages | null;
  /** A BCP 47 language tag for Intl number formatting; default: the browser's. */
  locale?: string;
}
export interface DescribeOptions extends WordOptions { hasId?: boolean; unit?: string; }
export interface Description { state: Phase; text: string; }
export function describe(job: Job | null, options?: DescribeOptions): Description;
export function message(key: MessageKey, values?: MessageValues, options?: WordOptions): string;
export function safeUrl(raw: unknown): string | null;

export interface PresentOptions extends WordOptions {
  jobId?: string;
  denied?: boolean;
  /** A message key or text shown as an alert instead of the detail line. */
  notice?: string;
  supportEmail?: string;
  unit?: string;
}
export interface ProgressView { value: number; max: number; text: string; label: string; }
export interface Presentation {
  state: Phase;
  text: string;
  label: string;
  progress: ProgressView | null;
  detail: string;
  alert: boolean;
  retryable: boolean;
  resultUrl: string | null;
  supportHref: string | null;
}
export function present(job: Job | null, options?: PresentOptions): Presentation;
export const ICONS: Readonly<Record<Phase, string>>;

export interface JobChangeDetail { state: Phase; job: Job | null; }
export type JobChangeEvent = CustomEvent<JobChangeDetail>;

/** <job-status job-id token support-email base-url transports unit> */
export class JobStatusElement extends HTMLElement {
  static readonly observedAttributes: string[];
  readonly job: Job | null;
  readonly transport: Transport;
  messages: Messages | null;
  initial: Job | null;
  getToken: GetToken | null;
  addEventListener<K extends keyof JobStatusElementEventMap>(type: K, listener: (this: JobStatusElement, ev: JobStatusElementEventMap[K]) => unknown, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject, options?: boolean | AddEventListenerOptions): void;
}
export interface JobStatusElementEventMap extends HTMLElementEventMap { "job-change": JobChangeEvent; }

declare global {
  interface HTMLElementTagNameMap { "job-status": JobStatusElement; }
}
