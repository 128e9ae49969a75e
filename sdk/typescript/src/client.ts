/**
 * A connection to one server, and the calls that are not about one machine:
 * snapshots, volumes, templates, events.
 */

import { resolveKey, resolveUrl } from "./config.js";
import { ConnectionError, UnavailableError } from "./errors.js";
import { backoff, CallOptions, DEFAULT_MAX_RETRIES, DEFAULT_REQUEST_TIMEOUT, ndjson, Request, Transport } from "./http.js";
import * as m from "./models.js";

export interface ClientOptions {
  /** Default NULLSPACE_API_URL, else http://127.0.0.1:7700. */
  apiUrl?: string;
  /** Default NULLSPACE_API_KEY, else the server host's key file (Node). */
  apiKey?: string;
  /** Seconds each call waits for its answer (default 60; null: no limit). */
  requestTimeout?: number | null;
  /** Retries of an idempotent call (default 3). */
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

  /** Builds a template from another by running shell steps; returns when it is ready or failed. */
  async build(name: string, o: { fromTemplate?: string; steps?: string[]; workdir?: string; envs?: Record<string, string> } & CallOptions = {}): Promise<m.Template> {
    const body: m.Wire["BuildTemplateRequest"] = { name, from_template: o.fromTemplate ?? "base", steps: o.steps ?? [] };
    if (o.workdir) body.workdir = o.workdir;
    if (o.envs) body.env = o.envs;
    return m.template(await this.c.json({ method: "POST", path: "/v1/templates", json: body, extraTimeout: null }, o));
  }

  async delete(name: string, o?: CallOptions): Promise<void> {
    await this.c.json({ method: "DELETE", path: `/v1/templates/${enc(name)}`, idempotent: true }, o);
  }
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

