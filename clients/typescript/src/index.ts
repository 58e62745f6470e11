/**
 * A client of the aijobs HTTP API: dispatch an analysis, read a job, and follow a job as it
 * runs, by its event stream (EventSource) or, where streams do not work, by polling at the
 * pace the server asks for (Retry-After). No runtime dependency: fetch and EventSource are
 * the platform's. The React Query hook is in `@aijobs/client/react`.
 */

export type AiJobType = "ai-match" | "ai-coverage" | "ai-map-controls";
export type AiJobStatus = "pending" | "processing" | "completed" | "failed";

export interface AiMatchResult {
  aiMatchScore: number;
  aiMatchRationale: string;
  aiMatchRecommendations: string[];
}

export interface AiCoverageResult {
  coverageScore: number;
  summary: string;
  gaps: unknown[];
  documents: { documentId: number; score: number }[];
}

export interface MapControlsResult {
  mappedControls: { controlId: number; confidence: number; rationale: string }[];
  batches: number;
}

/** What a finished job's `result` may hold: the fields of its job type's result. */
export type AiJobResult = Partial<AiMatchResult & AiCoverageResult & MapControlsResult> &
  Record<string, unknown>;

/** A job, as `GET /api/ai-jobs/{jobId}` and each event of its stream show it. */
export interface AiJob {
  id: string;
  jobType: AiJobType;
  entityId: number;
  status: AiJobStatus;
  progressMessage: string | null;
  progress: { current: number | null; total: number | null } | null;
  result: AiJobResult | null;
  /** While an ai-map-controls job runs: what its finished batches have mapped. */
  partialResult?: { mappedControls: MapControlsResult["mappedControls"]; batchesDone: number } | null;
  errorMessage: string | null;
  attempts: number;
  maxAttempts?: number;
  runAfter?: string | null;
  startedAt?: string | null;
  finishedAt?: string | null;
  createdAt: string;
  updatedAt: string;
}

/**
 * Text the job's model wrote since the last delta of the same text (`field`, and `part` and
 * `controlId` where the job has several): ephemeral, never replayed; a new `attempt` starts
 * its texts afresh at offset 0. Within an attempt, a call whose answer was rejected and is
 * written again (the corrective call after an answer that did not match its schema) starts
 * its texts afresh too: their next delta is at offset 0, with empty `text` for a text that is
 * not written again yet. Place each delta's `text` at its `offset`, dropping what followed,
 * and the text ends as the field of the answer taken; appending would keep the rejected one.
 */
export interface AiJobDelta {
  jobId: string;
  attempt: number;
  field: string;
  part?: string;
  controlId?: number;
  text: string;
  /** Characters of this text before `text`: where it goes (0 after earlier text: afresh). */
  offset: number;
}

export interface Dispatched {
  jobId: string;
  status: AiJobStatus;
}

/** Where the API is and how to authenticate to it. */
export interface ClientOptions {
  /** The API's origin, e.g. `https://jobs.example.com`; empty (the default): this page's. */
  baseUrl?: string;
  /**
   * A bearer token, or a function that gives the current one. Without it the browser's
   * session cookie authenticates (same origin, or a listed CORS origin on the same site).
   */
  token?: string | null | (() => string | null | undefined | Promise<string | null | undefined>);
  /** The fetch to use (default: the global one). */
  fetch?: typeof fetch;
}

export interface DispatchOptions extends ClientOptions {
  /** The same key answers with the same job, however often the request is repeated. */
  idempotencyKey?: string;
  signal?: AbortSignal;
}

export interface FollowOptions extends ClientOptions {
  /** Called once when following stops for good on an error (401, 403, 404, ...). */
  onError?: (error: AiJobsError) => void;
  /** The EventSource class; `null` polls only. Default: the global one, if any. */
  EventSource?: EventSourceClass | null;
  /** Called with the text of the model's answer as it is written (event streams only). */
  onDelta?: (delta: AiJobDelta) => void;
  /** Stream errors in a row (without an event between) before polling instead. Default 3. */
  maxStreamErrors?: number;
  /** Milliseconds between polls when the server gives no Retry-After. Default 2000. */
  pollIntervalMs?: number;
}

/** The constructor of an EventSource: the browser's, or a compatible one. */
export type EventSourceClass = new (
  url: string,
  init?: { withCredentials?: boolean },
) => EventSourceLike;

export interface EventSourceLike {
  readonly readyState: number;
  addEventListener(type: string, listener: (event: MessageEvent) => void): void;
  close(): void;
}

/** An answer of the API that is not a success: its status and its error code and message. */
export class AiJobsError extends Error {
  readonly status: number;
  readonly code: string;
  /** Seconds to wait before asking again, when the server said (429, 503). */
  readonly retryAfterS: number | null;

  constructor(status: number, code: string, message: string, retryAfterS: number | null = null) {
    super(message);
    this.name = "AiJobsError";
    this.status = status;
    this.code = code;
    this.retryAfterS = retryAfterS;
  }

  /** Whether asking again cannot help: not signed in, not allowed, or no such job. */
  get fatal(): boolean {
    return this.status === 400 || this.status === 401 || this.status === 403 || this.status === 404;
  }
}

const DISPATCH_PATHS: Record<AiJobType, (entityId: number | string) => string> = {
  "ai-match": (id) => `/api/gap-analysis/ai-match/${encodeURIComponent(String(id))}`,
  "ai-coverage": (id) => `/api/requirements/${encodeURIComponent(String(id))}/ai-coverage`,
  "ai-map-controls": (id) => `/api/documents/${encodeURIComponent(String(id))}/ai-map-controls`,
};

export const FINISHED: readonly AiJobStatus[] = ["completed", "failed"];

export function isFinished(job: Pick<AiJob, "status"> | null | undefined): boolean {
  return job != null && FINISHED.includes(job.status);
}

function url(options: ClientOptions, path: string): string {
  return `${(options.baseUrl ?? "").replace(/\/+$/, "")}${path}`;
}

async function tokenOf(options: ClientOptions): Promise<string | null> {
  const token = typeof options.token === "function" ? await options.token() : options.token;
  return token || null;
}

function retryAfterOf(response: Response): number | null {
  const raw = response.headers.get("Retry-After");
  if (raw === null || !/^\d+$/.test(raw.trim())) return null;
  return Number(raw.trim());
}

async function errorOf(response: Response): Promise<AiJobsError> {
  let code = "error";
  let message = `${response.status} ${response.statusText}`.trim();
  try {
    const body = (await response.json()) as { error?: { code?: string; message?: string } };
    if (body?.error) {
      code = body.error.code ?? code;
      message = body.error.message ?? message;
    }
  } catch {
    // not a JSON error body: the status line says enough
  }
  return new AiJobsError(response.status, code, message, retryAfterOf(response));
}

async function request(
  options: ClientOptions,
  path: string,
  init: Omit<RequestInit, "headers"> & { headers?: Record<string, string> } = {},
): Promise<Response> {
  const headers: Record<string, string> = { Accept: "application/json", ...init.headers };
  const token = await tokenOf(options);
  if (token) headers.Authorization = `Bearer ${token}`;
  const doFetch = options.fetch ?? fetch;
  // "include": the session cookie goes along to a listed origin too, not only to this one.
  return doFetch(url(options, path), { ...init, headers, credentials: "include" });
}

/** Start an analysis: `kind` of the entity `entityId`. Answers at once with the job's id. */
export async function dispatch(
  kind: AiJobType,
  entityId: number | string,
  options: DispatchOptions = {},
): Promise<Dispatched> {
  const path = DISPATCH_PATHS[kind];
  if (path === undefined) throw new TypeError(`Unknown job type: ${String(kind)}`);
  const headers: Record<string, string> = {};
  if (options.idempotencyKey) headers["Idempotency-Key"] = options.idempotencyKey;
  const response = await request(options, path(entityId), {
    method: "POST",
    headers,
    signal: options.signal,
  });
  if (response.status !== 202) throw await errorOf(response);
  const body = (await response.json()) as Dispatched;
  return { jobId: body.jobId, status: body.status };
}

/** One read of a job: the job (null when unchanged since `etag`), its ETag and Retry-After. */
export interface JobRead {
  job: AiJob | null;
  etag: string | null;
  retryAfterS: number | null;
}

/** Read a job; with `etag`, a job unchanged since is answered without its body (304). */
export async function getJob(
  jobId: string,
  options: ClientOptions & { etag?: string | null; signal?: AbortSignal } = {},
): Promise<JobRead> {
  const headers: Record<string, string> = {};
  if (options.etag) headers["If-None-Match"] = options.etag;
  const response = await request(options, `/api/ai-jobs/${encodeURIComponent(jobId)}`, {
    headers,
    cache: "no-store",
    signal: options.signal,
  });
  const etag = response.headers.get("ETag");
  const retryAfterS = retryAfterOf(response);
  if (response.status === 304) return { job: null, etag, retryAfterS };
  if (!response.ok) throw await errorOf(response);
  return { job: (await response.json()) as AiJob, etag, retryAfterS };
}

/** Cancel a job: it ends `failed`, its error message saying it was cancelled. */
export async function cancelJob(jobId: string, options: ClientOptions = {}): Promise<AiJob> {
  const response = await request(options, `/api/ai-jobs/${encodeURIComponent(jobId)}/cancel`, {
    method: "POST",
  });
  if (!response.ok) throw await errorOf(response);
  return (await response.json()) as AiJob;
}

/** Why an event stream was given up: none to be had, refused by the server, or failing. */
export type StreamEnd = "unsupported" | "refused" | "failing";

/**
 * Open a job's event stream. `onJob` gets each state; `onEnd` is called once when the stream
 * is given up (never after the job finished: then the stream just closes). Returns `close`.
 * EventSource resumes by itself after a dropped connection, with Last-Event-ID, and the
 * server replays exactly the events it missed.
 */
export function openJobStream(
  jobId: string,
  onJob: (job: AiJob) => void,
  onEnd: (why: StreamEnd) => void,
  options: FollowOptions = {},
): () => void {
  const Source =
    options.EventSource === undefined
      ? (globalThis as { EventSource?: EventSourceClass }).EventSource
      : options.EventSource;
  if (!Source) {
    onEnd("unsupported");
    return () => {};
  }
  let closed = false;
  let source: EventSourceLike | null = null;
  const close = () => {
    closed = true;
    source?.close();
  };
  const end = (why: StreamEnd) => {
    if (closed) return;
    close();
    onEnd(why);
  };
  void tokenOf(options).then((token) => {
    if (closed) return;
    let path = `/api/ai-jobs/${encodeURIComponent(jobId)}/events`;
    // EventSource cannot send headers: a bearer token goes in the query, the one route
    // that takes it there.
    if (token) path += `?access_token=${encodeURIComponent(token)}`;
    let errors = 0;
    const maxErrors = options.maxStreamErrors ?? 3;
    const opened = new Source(url(options, path), { withCredentials: true });
    source = opened;
    opened.addEventListener("job", (event) => {
      errors = 0;
      let job: AiJob;
      try {
        job = JSON.parse(String(event.data)) as AiJob;
      } catch {
        return;
      }
      if (closed) return;
      onJob(job);
      if (isFinished(job)) close();
    });
    opened.addEventListener("delta", (event) => {
      if (closed || !options.onDelta) return;
      let delta: AiJobDelta;
      try {
        delta = JSON.parse(String(event.data)) as AiJobDelta;
      } catch {
        return;
      }
      options.onDelta(delta);
    });
    opened.addEventListener("error", () => {
      if (closed) return;
      errors += 1;
      // CLOSED (2): the server refused the stream (an error status, or 204 after the end).
      if (opened.readyState === 2) end("refused");
      else if (errors >= maxErrors) end("failing");
    });
  });
  return close;
}

/**
 * Follow a job until it is completed or failed: `onChange` gets every new state. Uses the
 * event stream, and polls instead (at the server's Retry-After) when there is no EventSource
 * or the stream is refused or keeps failing. Stops on 401, 403 and 404 (`onError`). Returns a
 * function that stops following.
 */
export function followJob(
  jobId: string,
  onChange: (job: AiJob) => void,
  options: FollowOptions = {},
): () => void {
  let stopped = false;
  let timer: ReturnType<typeof setTimeout> | null = null;
  let closeStream: (() => void) | null = null;
  let etag: string | null = null;
  let last: string | null = null;
  const controller = new AbortController();
  const pollMs = options.pollIntervalMs ?? 2000;

  const stop = () => {
    stopped = true;
    closeStream?.();
    if (timer !== null) clearTimeout(timer);
    controller.abort();
  };
  const deliver = (job: AiJob) => {
    const text = JSON.stringify(job);
    if (text === last) return;
    last = text;
    onChange(job);
    if (isFinished(job)) stop();
  };
  const poll = async (): Promise<void> => {
    if (stopped) return;
    let waitS: number | null = null;
    try {
      const read = await getJob(jobId, { ...options, etag, signal: controller.signal });
      etag = read.etag ?? etag;
      waitS = read.retryAfterS;
      if (read.job) deliver(read.job);
    } catch (error) {
      if (stopped) return;
      if (error instanceof AiJobsError) {
        if (error.fatal) {
          stop();
          options.onError?.(error);
          return;
        }
        waitS = error.retryAfterS;
      }
      // else the network: ask again later
    }
    if (stopped) return;
    timer = setTimeout(() => void poll(), waitS !== null ? waitS * 1000 : pollMs);
  };

  closeStream = openJobStream(
    jobId,
    deliver,
    () => {
      closeStream = null;
      void poll();
    },
    options,
  );
  return stop;
}
