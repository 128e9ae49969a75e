/**
 * The transport: global fetch with a deadline per call, the caller's
 * AbortSignal, and retries of idempotent calls (after network failures and
 * 429/502/503/504, honouring Retry-After), like the Python SDK. A create, a
 * fork or a snapshot carries an Idempotency-Key, the same on each attempt,
 * and is retried like an idempotent call (and after a request timeout, or
 * while the server says the first attempt is in progress): the server
 * answers a repeated key with the first answer. A command is sent again
 * only when the connection was refused (it never reached the server).
 */

import { AbortError, ConnectionError, InvalidArgumentError, NullspaceError, TimeoutError, errorFromBody } from "./errors.js";

export const VERSION = "0.1.0";
/** Seconds a call waits for its answer by default: not a machine's lease. */
export const DEFAULT_REQUEST_TIMEOUT = 60;
export const DEFAULT_MAX_RETRIES = 3;

/** Options every call takes. */
export interface CallOptions {
  /** Aborts the call (and, for a stream, the stream). */
  signal?: AbortSignal;
  /**
   * Seconds to wait for the answer beyond the time the call itself is asked
   * to take (a command's timeout, a wait's); null: no limit. Not a
   * machine's lease, which is `timeout`.
   */
  requestTimeout?: number | null;
}

export type Body = string | Uint8Array | ArrayBuffer | Blob | ReadableStream<Uint8Array>;

export interface Request {
  method: "GET" | "POST" | "PUT" | "DELETE";
  path: string;
  query?: Record<string, string | number | boolean | string[] | undefined | null>;
  json?: unknown;
  body?: Body;
  /** The body's Content-Type (default application/octet-stream). */
  contentType?: string;
  accept?: string;
  /** May be sent again after a failure that may have reached the server. */
  idempotent?: boolean;
  /** Sent as the Idempotency-Key header on every attempt: makes a create as safe to send again as an idempotent call. */
  idempotencyKey?: string;
  /** Seconds added to requestTimeout (the work the call asks for); null: no deadline. */
  extraTimeout?: number | null;
}

export interface Settings {
  apiUrl: string;
  apiKey: string;
  requestTimeout: number | null;
  maxRetries: number;
  fetch: typeof fetch;
}

const retryStatuses = [429, 502, 503, 504];

/** A random (version 4) UUID. Browsers have randomUUID only on https and localhost pages; getRandomValues everywhere. */
function uuid4(): string {
  const c = globalThis.crypto;
  if (typeof c.randomUUID === "function") return c.randomUUID();
  const b = c.getRandomValues(new Uint8Array(16));
  b[6] = (b[6]! & 0x0f) | 0x40;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/**
 * The Idempotency-Key of one logical call: the caller's, checked (1 to 255
 * printable ASCII characters, no leading or trailing space), else a new
 * random UUID.
 */
export function idempotencyKey(key?: string): string {
  if (key === undefined) return uuid4();
  if (typeof key !== "string" || key.length < 1 || key.length > 255 || key !== key.trim() || !/^[\x20-\x7e]+$/.test(key)) {
    throw new InvalidArgumentError(
      `idempotencyKey must be 1 to 255 printable ASCII characters without leading or trailing spaces, not ${JSON.stringify(key)}`,
      { code: "invalid_argument", suggestedAction: "pass a UUID or another short ASCII id of the logical call, or leave it out for a new one" },
    );
  }
  return key;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortError(signal));
    const t = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(abortError(signal!));
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

function abortError(signal: AbortSignal): AbortError {
  return new AbortError("the call was aborted", { code: "aborted", cause: signal.reason });
}

/** Seconds before retry `attempt`: the server's Retry-After, else backoff with jitter. */
export function backoff(attempt: number, hint?: number): number {
  if (hint !== undefined) return Math.min(hint, 30);
  return Math.min(0.2 * 2 ** attempt, 5) * (0.5 + Math.random() / 2);
}

function retryAfter(h: Headers): number | undefined {
  const v = h.get("retry-after");
  if (!v) return undefined;
  const n = Number(v);
  if (!Number.isNaN(n)) return Math.max(0, n);
  const t = Date.parse(v);
  return Number.isNaN(t) ? undefined : Math.max(0, (t - Date.now()) / 1000);
}

function refused(e: unknown): boolean {
  // Node's fetch (undici) says why in cause.code; a refused connection
  // never carried the request.
  const c = (e as { cause?: { code?: string } })?.cause;
  return c?.code === "ECONNREFUSED";
}

function queryString(q: Request["query"]): string {
  if (!q) return "";
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(q)) {
    if (v === undefined || v === null || v === false) continue;
    if (Array.isArray(v)) v.forEach((x) => p.append(k, x));
    else p.append(k, v === true ? "true" : String(v));
  }
  const s = p.toString();
  return s ? `?${s}` : "";
}

export class Transport {
  constructor(readonly settings: Settings) {}

  /** Sends r and returns the 2xx answer; for a stream, read its body. */
  async send(r: Request, o: CallOptions = {}, stream = false): Promise<Response> {
    const s = this.settings;
    const base = o.requestTimeout === undefined ? s.requestTimeout : o.requestTimeout;
    const extra = r.extraTimeout === undefined ? 0 : r.extraTimeout;
    // An explicit requestTimeout always bounds the call; the default one
    // only when the call has a bound of its own (streams and open waits
    // run as long as they take).
    const limit = base === null ? null : extra === null ? (o.requestTimeout === undefined ? null : base) : base + extra;
    const replayable = r.body === undefined || typeof r.body === "string" || r.body instanceof Uint8Array;
    // A call with an Idempotency-Key is answered once by the server however
    // often it is sent: it may be sent again as an idempotent call may.
    const keyed = r.idempotencyKey !== undefined;
    const repeatable = !!r.idempotent || keyed;
    for (let attempt = 0; ; attempt++) {
      let err: NullspaceError;
      try {
        const res = await this.once(r, o.signal, limit, stream);
        if (res.ok) return res;
        const text = await res.text().catch(() => "");
        let body: unknown = text;
        try {
          body = JSON.parse(text);
        } catch {
          // not JSON: a proxy's page
        }
        err = errorFromBody(res.status, body, retryAfter(res.headers));
        const again = (repeatable && retryStatuses.includes(res.status) && err.retryable) ||
          (keyed && res.status === 409 && err.code === "idempotency_key_in_progress");
        if (!(again && replayable)) throw err;
      } catch (e) {
        if (keyed && replayable && e instanceof TimeoutError && e.status === 0 && e.code === "request_timeout") {
          // No answer in time: the retry gets the first attempt's answer.
          err = e;
        } else {
          if (e instanceof NullspaceError && !(e instanceof ConnectionError)) throw e;
          err = e instanceof ConnectionError ? e : this.networkError(r, e);
          const sent = !refused(e) && !refused(err.cause);
          if (!replayable || (sent && !repeatable)) throw err;
        }
      }
      if (attempt >= s.maxRetries) throw err;
      await sleep(backoff(attempt, err.retryAfter) * 1000, o.signal);
    }
  }

  private async once(r: Request, signal: AbortSignal | undefined, limit: number | null, stream: boolean): Promise<Response> {
    const ctl = new AbortController();
    let timedOut = false;
    const onAbort = () => ctl.abort(signal!.reason);
    if (signal?.aborted) throw abortError(signal);
    signal?.addEventListener("abort", onAbort, { once: true });
    const timer = limit === null ? undefined : setTimeout(() => {
      timedOut = true;
      ctl.abort();
    }, limit * 1000);
    const headers: Record<string, string> = { Accept: r.accept ?? "application/json" };
    if (this.settings.apiKey) headers["Authorization"] = `Bearer ${this.settings.apiKey}`;
    if (r.idempotencyKey !== undefined) headers["Idempotency-Key"] = r.idempotencyKey;
    let body: BodyInit | undefined;
    if (r.json !== undefined) {
      body = JSON.stringify(r.json);
      headers["Content-Type"] = "application/json";
    } else if (r.body !== undefined) {
      body = r.body as BodyInit;
      headers["Content-Type"] = r.contentType ?? "application/octet-stream";
    }
    const init: RequestInit & { duplex?: "half" } = { method: r.method, headers, body, signal: ctl.signal };
    if (body instanceof ReadableStream) init.duplex = "half"; // a streamed upload
    // Following a redirect means fetch keeps a copy of the body to send
    // again: all of it, for a stream or a Blob (a file) that is sent as it
    // is read (Node's fetch tees it). The API never redirects.
    if (body instanceof ReadableStream || body instanceof Blob) init.redirect = "error";
    const done = () => {
      if (timer !== undefined) clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
    };
    try {
      const res = await this.settings.fetch(this.settings.apiUrl + r.path + queryString(r.query), init);
      if (!stream) {
        // Read the body under the same deadline, then release it.
        const buf = await res.arrayBuffer();
        done();
        return new Response(res.status === 204 ? null : buf, { status: res.status, headers: res.headers });
      }
      // A stream outlives the deadline (it lasts as long as it has data)
      // but not the caller's signal.
      if (timer !== undefined) clearTimeout(timer);
      return res;
    } catch (e) {
      done();
      if (signal?.aborted) throw abortError(signal);
      // The body's own refusal (a bad chunk of an upload), not the network's.
      const cause = (e as { cause?: unknown })?.cause;
      if (cause instanceof NullspaceError) throw cause;
      if (timedOut) {
        throw new TimeoutError(`${r.method} ${r.path}: no answer within the request timeout`, {
          code: "request_timeout", retryable: true, suggestedAction: "pass a larger requestTimeout, or null for no limit", cause: e,
        });
      }
      throw this.networkError(r, e);
    }
  }

  private networkError(r: Request, e: unknown): ConnectionError {
    const why = (e as { cause?: { message?: string } })?.cause?.message ?? (e as Error)?.message ?? String(e);
    return new ConnectionError(`${r.method} ${r.path}: ${why}`, {
      code: "connection_failed", retryable: true, cause: e,
      suggestedAction: "check that the server is running and apiUrl is right",
    });
  }

  async json<T>(r: Request, o?: CallOptions): Promise<T> {
    const res = await this.send(r, o);
    const text = await res.text();
    return (text ? JSON.parse(text) : undefined) as T;
  }

  async bytes(r: Request, o?: CallOptions): Promise<Uint8Array> {
    return new Uint8Array(await (await this.send(r, o)).arrayBuffer());
  }
}

/** The lines of an NDJSON stream, parsed; a line cut off is a ConnectionError. */
export async function* ndjson<T>(res: Response, r: Request, signal?: AbortSignal): AsyncGenerator<T> {
  if (!res.body) return;
  const reader = res.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  try {
    for (;;) {
      let chunk: ReadableStreamReadResult<Uint8Array>;
      try {
        chunk = await reader.read();
      } catch (e) {
        if (signal?.aborted) throw abortError(signal);
        throw new ConnectionError(`${r.method} ${r.path}: the stream broke: ${(e as Error)?.message ?? e}`, {
          code: "connection_failed", retryable: true, cause: e,
        });
      }
      if (chunk.done) break;
      buf += dec.decode(chunk.value, { stream: true });
      let i: number;
      while ((i = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, i).trim();
        buf = buf.slice(i + 1);
        if (line) yield JSON.parse(line) as T;
      }
    }
    if (buf.trim()) {
      throw new ConnectionError(`${r.method} ${r.path}: the stream ended inside a line`, { code: "connection_failed", retryable: true });
    }
  } finally {
    reader.cancel().catch(() => undefined);
  }
}
