/**
 * A connection to one server, and the calls that are not about one machine:
 * snapshots, volumes, templates, events.
 */

import { nodeProcess, resolveKey, resolveUrl } from "./config.js";
import { ConnectionError, InvalidArgumentError, UnavailableError } from "./errors.js";
import { backoff, CallOptions, DEFAULT_MAX_RETRIES, DEFAULT_REQUEST_TIMEOUT, ndjson, Request, Transport } from "./http.js";
import * as m from "./models.js";

export interface ClientOptions {
  /** Default NULLSPACE_API_URL, else http://127.0.0.1:7700. */
  apiUrl?: string;
  /** Default NULLSPACE_API_KEY, else the server host's key file (Node). */
  apiKey?: string;
  /** Seconds each call waits for its answer (default 60; null: no limit). */
  requestTimeout?: number | null;
  /** Retries of an idempotent call, or of a create, fork or snapshot (sent with an Idempotency-Key) (default 3). */
  maxRetries?: number;
  /** The fetch to use (default: the global one). */
  fetch?: typeof fetch;
}

export class Client {
  readonly apiUrl: string;
  private readonly transport: Promise<Transport>;
  readonly snapshots = new Snapshots(this);
  readonly volumes = new Volumes(this);
  readonly templates = new Templates(this);

  constructor(o: ClientOptions = {}) {
    this.apiUrl = resolveUrl(o.apiUrl);
    const f = o.fetch ?? globalThis.fetch.bind(globalThis);
    this.transport = resolveKey(o.apiKey).then(
      (apiKey) => new Transport({
        apiUrl: this.apiUrl, apiKey, fetch: f,
        requestTimeout: o.requestTimeout === undefined ? DEFAULT_REQUEST_TIMEOUT : o.requestTimeout,
        maxRetries: o.maxRetries ?? DEFAULT_MAX_RETRIES,
      }),
    );
    // An unreadable key file is reported by the first call, not here.
    this.transport.catch(() => undefined);
  }

  /** Sends r and returns its JSON answer. */
  async json<T>(r: Request, o?: CallOptions): Promise<T> {
    return (await this.transport).json<T>(r, o);
  }

  async bytes(r: Request, o?: CallOptions): Promise<Uint8Array> {
    return (await this.transport).bytes(r, o);
  }

  /** Sends r and returns the answer to be read as a stream. */
  async stream(r: Request, o?: CallOptions): Promise<Response> {
    return (await this.transport).send(r, o, true);
  }

  /** Every item of a paged list. */
  async *pages<W, T>(make: (token?: string) => Request, key: string, conv: (w: W) => T, o?: CallOptions): AsyncGenerator<T> {
    let token: string | undefined;
    for (;;) {
      const page = await this.json<Record<string, unknown>>(make(token), o);
      for (const w of (page[key] as W[] | undefined) ?? []) yield conv(w);
      token = (page["next_token"] as string | undefined) || undefined;
      if (!token) return;
    }
  }

  async health(o?: CallOptions): Promise<{ ok: boolean; version: string }> {
    return this.json({ method: "GET", path: "/v1/health", idempotent: true }, o);
  }

  /**
   * Lifecycle events in seq order, after `after`. With follow (default) it
   * waits for new ones and reconnects after the last seq it yielded, so none
   * is skipped or repeated; without, it ends at the newest.
   */
  async *events(
    opts: { after?: number; machineId?: string; types?: string[]; follow?: boolean } & CallOptions = {},
  ): AsyncGenerator<m.Event> {
    let last = opts.after;
    const q = () => ({ after: last, machine_id: opts.machineId, type: opts.types?.join(",") });
    if (opts.follow === false) {
      for (;;) {
        const page = await this.json<m.Wire["EventList"]>({ method: "GET", path: "/v1/events", query: q(), idempotent: true }, opts);
        for (const e of page.events ?? []) {
          last = e.seq;
          yield m.event(e);
        }
        if (!page.next_token || !page.events?.length) return;
      }
    }
    for (let attempt = 0; ; attempt++) {
      const r: Request = { method: "GET", path: "/v1/events", query: { ...q(), follow: true }, accept: "application/x-ndjson", idempotent: true, extraTimeout: null };
      try {
        const res = await this.stream(r, opts);
        for await (const e of ndjson<m.Wire["Event"]>(res, r, opts.signal)) {
          last = e.seq;
          attempt = 0;
          yield m.event(e);
        }
      } catch (e) {
        if (!(e instanceof ConnectionError || e instanceof UnavailableError) || attempt >= 8) throw e;
      }
      await new Promise((res) => setTimeout(res, backoff(attempt) * 1000));
    }
  }
}

const enc = encodeURIComponent;

export class Snapshots {
  constructor(private readonly c: Client) {}

  /** Every snapshot (of one machine's lineage, of one kind, of one name), oldest first. */
  list(o: { machineId?: string; kind?: string; name?: string } & CallOptions = {}): AsyncGenerator<m.Snapshot> {
    return this.c.pages((tok) => ({ method: "GET", path: "/v1/snapshots", idempotent: true,
      query: { machine_id: o.machineId, kind: o.kind, name: o.name, next_token: tok } }), "snapshots", m.snapshot, o);
  }

  /** The snapshot of this id, or of this name. */
  async get(id: string, o?: CallOptions): Promise<m.Snapshot> {
    return m.snapshot(await this.c.json({ method: "GET", path: `/v1/snapshots/${enc(id)}`, idempotent: true }, o));
  }

  /** Deletes a snapshot; one in use is refused (ConflictError) unless force. */
  async delete(id: string, o: { force?: boolean } & CallOptions = {}): Promise<void> {
    await this.c.json({ method: "DELETE", path: `/v1/snapshots/${enc(id)}`, query: { force: o.force }, idempotent: true }, o);
  }
}

export class Volumes {
  constructor(private readonly c: Client) {}

  list(o?: CallOptions): AsyncGenerator<m.Volume> {
    return this.c.pages((tok) => ({ method: "GET", path: "/v1/volumes", query: { next_token: tok }, idempotent: true }), "volumes", m.volume, o);
  }

  async create(name: string, o?: CallOptions): Promise<m.Volume> {
    return m.volume(await this.c.json({ method: "POST", path: "/v1/volumes", json: { name } }, o));
  }

  async delete(name: string, o?: CallOptions): Promise<void> {
    await this.c.json({ method: "DELETE", path: `/v1/volumes/${enc(name)}`, idempotent: true }, o);
  }
}

export class Templates {
  constructor(private readonly c: Client) {}

  list(o?: CallOptions): AsyncGenerator<m.Template> {
    return this.c.pages((tok) => ({ method: "GET", path: "/v1/templates", query: { next_token: tok }, idempotent: true }), "templates", m.template, o);
  }

  async get(name: string, o?: CallOptions): Promise<m.Template> {
    return m.template(await this.c.json({ method: "GET", path: `/v1/templates/${enc(name)}`, idempotent: true }, o));
  }

  /**
   * Builds a template from another (`fromTemplate`, default "base") or from
   * a root filesystem of yours (`tarball`, uploaded as it is read), then runs
   * shell `steps` in a machine; returns when it is ready or failed (`state`,
   * `error`). One source only. An upload over the server's limit (2 GiB by
   * default) is an InvalidArgumentError with code `file_too_large`.
   */
  async build(name: string, o: BuildTemplateOptions = {}): Promise<m.Template> {
    if (o.tarball !== undefined && o.fromTemplate) {
      throw new InvalidArgumentError("a template is built from one source: fromTemplate or tarball, not both", {
        code: "invalid_argument", suggestedAction: "drop fromTemplate to build from the tarball, or tarball to build from the template",
      });
    }
    const body: m.Wire["BuildTemplateRequest"] = { name, steps: o.steps ?? [] };
    if (o.tarball === undefined) body.from_template = o.fromTemplate ?? "base";
    if (o.workdir) body.workdir = o.workdir;
    if (o.envs) body.env = o.envs;
    // The build answers when it is done: no deadline unless requestTimeout is given.
    if (o.tarball === undefined) return m.template(await this.c.json({ method: "POST", path: "/v1/templates", json: body, extraTimeout: null }, o));
    const up = await upload(body, o.tarball);
    return m.template(await this.c.json({ method: "POST", path: "/v1/templates", ...up, extraTimeout: null }, o));
  }

  async delete(name: string, o?: CallOptions): Promise<void> {
    await this.c.json({ method: "DELETE", path: `/v1/templates/${enc(name)}`, idempotent: true }, o);
  }
}

/**
 * A root filesystem to upload: a tar stream, plain, gzip, zstd or xz. A
 * string is a file path, read as it is sent (Node only).
 */
export type Tarball = Blob | Uint8Array | ArrayBuffer | ReadableStream<Uint8Array> | string;

export interface BuildTemplateOptions extends CallOptions {
  /** The template to start from (default "base"); not with `tarball`. */
  fromTemplate?: string;
  /** A root filesystem to start from instead, uploaded: a Blob (a File), bytes, a ReadableStream, or in Node a path. */
  tarball?: Tarball;
  /** Shell commands run in order in a machine booted from the source. */
  steps?: string[];
  /** The default working directory of machines made from it. */
  workdir?: string;
  /** The default environment of machines made from it. */
  envs?: Record<string, string>;
}

const tarballAction = "pass a Blob (a File), a Uint8Array, a ReadableStream of bytes, or in Node the path of a tarball";

/**
 * A template upload's body (multipart/form-data): a part "request" with the
 * JSON build request, then a part "tarball", streamed. A Blob, bytes or a
 * file is sent as one Blob of the three parts (composing it copies only
 * bytes given in memory, never a Blob's or a file's), which has a length,
 * so a server refuses one over its limit before it is sent; a
 * ReadableStream is read as the upload goes (chunked).
 */
async function upload(request: m.Wire["BuildTemplateRequest"], tarball: Tarball): Promise<{ body: Blob | ReadableStream<Uint8Array>; contentType: string }> {
  const boundary = `nullspace-${[...crypto.getRandomValues(new Uint8Array(16))].map((b) => b.toString(16).padStart(2, "0")).join("")}`;
  const te = new TextEncoder();
  const head = te.encode(
    `--${boundary}\r\nContent-Disposition: form-data; name="request"\r\nContent-Type: application/json\r\n\r\n${JSON.stringify(request)}\r\n` +
    `--${boundary}\r\nContent-Disposition: form-data; name="tarball"; filename="rootfs.tar"\r\nContent-Type: application/octet-stream\r\n\r\n`,
  );
  const tail = te.encode(`\r\n--${boundary}--\r\n`);
  const contentType = `multipart/form-data; boundary=${boundary}`;
  let t: unknown = tarball;
  if (typeof t === "string") t = await openFile(t);
  if (t instanceof ArrayBuffer) t = new Uint8Array(t);
  if (t instanceof Blob || t instanceof Uint8Array) return { body: new Blob([head, t as BlobPart, tail]), contentType };
  if (t instanceof ReadableStream) return { body: framed(head, t as ReadableStream<unknown>, tail), contentType };
  throw new InvalidArgumentError(`tarball takes a Blob, bytes, a ReadableStream or a path, not ${t === null ? "null" : typeof t}`, {
    code: "invalid_argument", suggestedAction: tarballAction,
  });
}

/** head, then what s gives, then tail: read from s only as it is sent. */
function framed(head: Uint8Array, s: ReadableStream<unknown>, tail: Uint8Array): ReadableStream<Uint8Array> {
  const reader = s.getReader();
  let started = false;
  return new ReadableStream<Uint8Array>({
    async pull(ctl) {
      if (!started) {
        started = true;
        return ctl.enqueue(head);
      }
      const { done, value } = await reader.read();
      if (done) {
        ctl.enqueue(tail);
        return ctl.close();
      }
      if (!(value instanceof Uint8Array)) {
        const e = new InvalidArgumentError(`the tarball stream gave ${typeof value}, not a Uint8Array`, { code: "invalid_argument", suggestedAction: tarballAction });
        await reader.cancel(e);
        throw e;
      }
      ctl.enqueue(value);
    },
    cancel(reason) {
      return reader.cancel(reason);
    },
  });
}

/**
 * A file as a Blob that reads it as it is sent (Node's fs.openAsBlob, which
 * also refuses to go on if the file changes meanwhile). Node modules are
 * imported only here, when Node runs it: the SDK runs in browsers.
 */
async function openFile(path: string): Promise<Blob> {
  if (!nodeProcess()) {
    throw new InvalidArgumentError("a tarball path works in Node only", { code: "invalid_argument", suggestedAction: "pass a Blob (a File) or a ReadableStream" });
  }
  const mod = "node:fs";
  const fs = (await import(/* @vite-ignore */ /* webpackIgnore: true */ mod)) as {
    promises: { stat(p: string): Promise<{ isFile(): boolean }> };
    openAsBlob(p: string): Promise<Blob>;
  };
  let file = false;
  try {
    file = (await fs.promises.stat(path)).isFile();
  } catch (e) {
    throw new InvalidArgumentError(`tarball ${path}: ${(e as Error).message}`, { code: "invalid_argument", suggestedAction: tarballAction, cause: e });
  }
  if (!file) throw new InvalidArgumentError(`tarball ${path} is not a regular file`, { code: "invalid_argument", suggestedAction: tarballAction });
  return fs.openAsBlob(path);
}

// Clients made for calls without `client`, one per server and key.
const shared = new Map<string, Client>();

/** `o.client`, or the shared client of o.apiUrl and o.apiKey. */
export function clientOf(o: { client?: Client; apiUrl?: string; apiKey?: string }): Client {
  if (o.client) return o.client;
  const key = `${resolveUrl(o.apiUrl)}\n${o.apiKey ?? ""}`;
  let c = shared.get(key);
  if (!c) shared.set(key, (c = new Client({ apiUrl: o.apiUrl, apiKey: o.apiKey })));
  return c;
}

