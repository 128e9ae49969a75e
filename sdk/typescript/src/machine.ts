/**
 * Machines, their files and commands. Durations are seconds, like the
 * Python SDK and the CLI; the HTTP fields stay `*_ms`.
 *
 *     const machine = await Machine.create({ template: "base", timeout: 600, onTimeout: "pause", autoResume: true });
 *     const { stdout } = await machine.commands.run("echo hi");
 */

import { Client, clientOf } from "./client.js";
import {
  CommandExitError, ConnectionError, InvalidArgumentError, KeepAliveError, MachineNotFoundError, NullspaceError,
  PathNotFoundError, ProcessNotFoundError, TimeoutError, UnavailableError,
} from "./errors.js";
import { backoff, Body, CallOptions, idempotencyKey, ndjson, Request } from "./http.js";
import * as m from "./models.js";

type W = m.Wire;

/** Where to send a call: a Client, or the URL and key of a shared one. */
export interface ConnectionOptions extends CallOptions {
  client?: Client;
  apiUrl?: string;
  apiKey?: string;
}

export interface CreateOptions extends ConnectionOptions {
  /** Default "base". */
  template?: string;
  /** The lease in seconds (default 300). */
  timeout?: number;
  /**
   * What the lease's end does: "destroy" (default), "pause" (memory and
   * files kept) or "stop" (files kept, memory and processes dropped: `start`,
   * `connect` or a wake boots it afresh).
   */
  onTimeout?: "destroy" | "pause" | "stop";
  /** Public traffic wakes the machine once paused or stopped (needs onTimeout "pause" or "stop"). */
  autoResume?: boolean;
  /** Pause after this many seconds without network activity. */
  idleTimeout?: number;
  persistence?: "persistent" | "sticky" | "ephemeral";
  cpu?: number;
  memoryMb?: number;
  /** Limit in MiB on what the machine writes to its root file system (default: the server's); past it, writes inside fail with ENOSPC. */
  diskMb?: number;
  envs?: Record<string, string>;
  metadata?: Record<string, string>;
  volumes?: m.VolumeMount[] | Record<string, string>;
  allowInternet?: boolean;
  /** The main process, an argv (a string is split on spaces). */
  command?: string | string[];
  onPause?: string[];
  onResume?: string[];
  snapshotId?: string;
  publicPorts?: boolean;
  checkpointRetention?: number;
  /**
   * The Idempotency-Key sent with the create (default: a new random UUID
   * per call). Pass your own (1 to 255 printable ASCII characters) to retry
   * a create across process restarts: the server answers a repeated key
   * with the first create's machine for 24 hours.
   */
  idempotencyKey?: string;
}

/** Options of a call that makes something: its Idempotency-Key (see CreateOptions.idempotencyKey). */
export interface IdempotentOptions extends CallOptions {
  idempotencyKey?: string;
}

const enc = encodeURIComponent;
const mpath = (id: string, ...rest: string[]) => {
  if (!id) throw new InvalidArgumentError("a machine id is needed", { code: "invalid_argument" });
  return `/v1/machines/${enc(id)}${rest.map((r) => `/${r}`).join("")}`;
};

function ms(secs: number | undefined, name: string, min = 0): number | undefined {
  if (secs === undefined) return undefined;
  if (typeof secs !== "number" || Number.isNaN(secs) || secs < min) {
    throw new InvalidArgumentError(`${name} must be a number of seconds of at least ${min}, not ${String(secs)}`, { code: "invalid_argument" });
  }
  return Math.round(secs * 1000);
}

function argv(cmd: string | string[], what: string): string[] {
  const parts = Array.isArray(cmd) ? cmd.map(String) : cmd.trim().split(/\s+/).filter(Boolean);
  if (!parts.length) throw new InvalidArgumentError(`${what} is empty`, { code: "invalid_argument" });
  return parts;
}

function createBody(o: CreateOptions): W["CreateMachineRequest"] {
  const b: W["CreateMachineRequest"] = {};
  if (o.template) b.template = o.template;
  if (o.snapshotId) b.snapshot_id = o.snapshotId;
  if (o.timeout !== undefined) b.timeout_ms = ms(o.timeout, "timeout", 1);
  if (o.onTimeout) b.on_timeout = o.onTimeout;
  if (o.autoResume) b.auto_resume = true;
  if (o.idleTimeout) b.idle_timeout_ms = ms(o.idleTimeout, "idleTimeout", 1);
  if (o.persistence) b.persistence = o.persistence;
  if (o.cpu) b.cpu_count = o.cpu;
  if (o.memoryMb) b.memory_mb = o.memoryMb;
  if (o.diskMb) b.disk_mb = o.diskMb;
  if (o.envs) b.env = o.envs;
  if (o.metadata) b.metadata = o.metadata;
  if (o.volumes) {
    b.volumes = Array.isArray(o.volumes)
      ? o.volumes.map((v) => ({ name: v.name, path: v.path, ...(v.readOnly ? { read_only: true } : {}) }))
      : Object.entries(o.volumes).map(([name, path]) => ({ name, path }));
  }
  if (o.allowInternet) b.allow_internet = true;
  if (o.command !== undefined) b.command = argv(o.command, "command");
  if (o.onPause || o.onResume) b.hooks = { on_pause: o.onPause ?? [], on_resume: o.onResume ?? [] };
  if (o.publicPorts) b.public_ports = true;
  if (o.checkpointRetention !== undefined) b.checkpoint_retention = o.checkpointRetention;
  return b;
}

const reconnectable = (e: unknown) =>
  e instanceof ConnectionError || e instanceof UnavailableError || (e instanceof TimeoutError && e.code === "request_timeout");

const delay = (secs: number) => new Promise((r) => setTimeout(r, secs * 1000));

/** A handle on one machine execution. */
export class Machine {
  readonly id: string;
  readonly files: Files;
  readonly commands: Commands;
  readonly pty: Pty;
  /** What the last call that returned this machine said (no request). */
  info: m.MachineInfo;

  constructor(info: m.MachineInfo, readonly client: Client) {
    this.id = info.id;
    this.info = info;
    this.files = new Files(this);
    this.commands = new Commands(this);
    this.pty = new Pty(this);
  }

  /**
   * Creates a running machine from a template, or from a reusable snapshot.
   * It is sent with an Idempotency-Key (a new UUID, or `idempotencyKey`), the
   * same on each retry, so it is retried like an idempotent call and a retry
   * never makes a second machine; the same key with other options is a
   * ConflictError with code idempotency_key_reused.
   */
  static async create(o: CreateOptions = {}): Promise<Machine> {
    const c = clientOf(o);
    const r: Request = { method: "POST", path: "/v1/machines", json: createBody(o), idempotencyKey: idempotencyKey(o.idempotencyKey) };
    return new Machine(m.machineInfo(await c.json(r, o)), c);
  }

  /** The running latest execution of the machine any id of its lineage names: resumed or started first. */
  static async connect(id: string, o: ConnectionOptions = {}): Promise<Machine> {
    const c = clientOf(o);
    return new Machine(m.machineInfo(await c.json({ method: "POST", path: mpath(id, "connect"), idempotent: true }, o)), c);
  }

  /** A new running machine from a paused machine's snapshot. */
  static async resume(snapshotId: string, o: ConnectionOptions = {}): Promise<Machine> {
    const c = clientOf(o);
    return new Machine(m.machineInfo(await c.json({ method: "POST", path: `/v1/snapshots/${enc(snapshotId)}/resume` }, o)), c);
  }

  /** The machine's state; read-only: it never wakes a paused machine. */
  static async getInfoById(id: string, o: ConnectionOptions = {}): Promise<m.MachineInfo> {
    return m.machineInfo(await clientOf(o).json({ method: "GET", path: mpath(id), idempotent: true }, o));
  }

  /** Every machine (its latest execution), oldest first, a page at a time. */
  static list(o: { state?: string; metadata?: Record<string, string>; template?: string; includeAliases?: boolean; pageSize?: number } & ConnectionOptions = {}): AsyncGenerator<m.MachineInfo> {
    const md = Object.entries(o.metadata ?? {}).map(([k, v]) => `${k}=${v}`);
    return clientOf(o).pages<W["Machine"], m.MachineInfo>((tok) => ({
      method: "GET", path: "/v1/machines", idempotent: true,
      query: { state: o.state, metadata: md, template: o.template, include_aliases: o.includeAliases, limit: o.pageSize, next_token: tok },
    }), "machines", m.machineInfo, o);
  }

  /** Kills a machine, named by any id of its lineage (a paused alias ends the latest execution too); false when there is no such machine. */
  static async kill(id: string, o: ConnectionOptions = {}): Promise<boolean> {
    try {
      await clientOf(o).json({ method: "DELETE", path: mpath(id), idempotent: true }, o);
      return true;
    } catch (e) {
      if (e instanceof MachineNotFoundError) return false;
      throw e;
    }
  }

  private async call<T>(r: Request, o?: CallOptions): Promise<T> {
    return this.client.json<T>(r, o);
  }

  private set(w: W["Machine"]): m.MachineInfo {
    this.info = m.machineInfo(w);
    return this.info;
  }

  /** Kills this machine. */
  kill(o: CallOptions = {}): Promise<boolean> {
    return Machine.kill(this.id, { ...o, client: this.client });
  }

  async getInfo(o?: CallOptions): Promise<m.MachineInfo> {
    return this.set(await this.call({ method: "GET", path: mpath(this.id), idempotent: true }, o));
  }

  async isRunning(o?: CallOptions): Promise<boolean> {
    return (await this.getInfo(o)).status === "running";
  }

  /** Hibernates: memory and files into a snapshot; the id stays as a paused alias. */
  async pause(o?: CallOptions): Promise<m.Snapshot> {
    return m.snapshot(await this.call({ method: "POST", path: mpath(this.id, "pause") }, o));
  }

  /**
   * A reusable snapshot; the machine keeps running. `name` names it (unique in the team, else
   * ConflictError with code snapshot_name_exists); the name then works wherever the id does.
   * Sent with an Idempotency-Key and retried like create.
   */
  async createSnapshot(o: { name?: string } & IdempotentOptions = {}): Promise<m.Snapshot> {
    const json = o.name ? { name: o.name } : undefined;
    const key = idempotencyKey(o.idempotencyKey);
    return m.snapshot(await this.call({ method: "POST", path: mpath(this.id, "snapshots"), json, idempotencyKey: key }, o));
  }

  /** `count` running children of one snapshot; all or none. Sent with an Idempotency-Key and retried like create. */
  async fork(count = 1, o: IdempotentOptions = {}): Promise<Machine[]> {
    const key = idempotencyKey(o.idempotencyKey);
    const r = await this.call<W["ForkResult"]>({ method: "POST", path: mpath(this.id, "fork"), json: { count }, idempotencyKey: key }, o);
    return r.machines.map((w) => new Machine(m.machineInfo(w), this.client));
  }

  /** Ends every process (SIGTERM, SIGKILL after `grace` seconds) and keeps only the files. */
  async stop(o: { grace?: number } & CallOptions = {}): Promise<m.MachineInfo> {
    const json = o.grace === undefined ? undefined : { grace_ms: ms(o.grace, "grace") };
    return this.set(await this.call({ method: "POST", path: mpath(this.id, "stop"), json, idempotent: true, extraTimeout: o.grace ?? 10 }, o));
  }

  /** Boots a stopped machine under the same id. */
  async start(o?: CallOptions): Promise<m.MachineInfo> {
    return this.set(await this.call({ method: "POST", path: mpath(this.id, "start"), idempotent: true }, o));
  }

  /** Waits for the main process to exit; TimeoutError after `timeout` seconds. */
  async wait(o: { timeout?: number } & CallOptions = {}): Promise<m.MainExit> {
    const w = await this.call<W["MainExit"]>({
      method: "GET", path: mpath(this.id, "wait"), query: { timeout_ms: ms(o.timeout, "timeout") }, idempotent: true,
      extraTimeout: o.timeout ?? null,
    }, o);
    return m.mainExit(w);
  }

  async checkpoint(o?: CallOptions): Promise<m.Snapshot> {
    return m.snapshot(await this.call({ method: "POST", path: mpath(this.id, "checkpoints") }, o));
  }

  async checkpoints(o?: CallOptions): Promise<m.Snapshot[]> {
    const out: m.Snapshot[] = [];
    for await (const s of this.client.pages<W["Snapshot"], m.Snapshot>((tok) => ({
      method: "GET", path: mpath(this.id, "checkpoints"), query: { next_token: tok }, idempotent: true,
    }), "snapshots", m.snapshot, o)) out.push(s);
    return out;
  }

  async restoreCheckpoint(snapshotId: string, o?: CallOptions): Promise<m.MachineInfo> {
    return this.set(await this.call({ method: "POST", path: mpath(this.id, "checkpoints", enc(snapshotId), "restore") }, o));
  }

  async pinCheckpoint(snapshotId: string, pinned = true, o?: CallOptions): Promise<m.Snapshot> {
    return m.snapshot(await this.call({ method: "POST", path: mpath(this.id, "checkpoints", enc(snapshotId), pinned ? "pin" : "unpin"), idempotent: true }, o));
  }

  /**
   * Refreshes the lease: its deadline becomes `timeout` seconds from now, and
   * `timeoutAction` ("destroy", "hibernate" or "stop") what it does then.
   */
  async setTimeout(timeout: number, o: { timeoutAction?: "destroy" | "hibernate" | "stop" } & CallOptions = {}): Promise<m.Lease> {
    const json: W["SetTimeoutRequest"] = { timeout_ms: ms(timeout, "timeout", 1)! };
    if (o.timeoutAction) json.timeout_action = o.timeoutAction;
    return m.lease(await this.call({ method: "POST", path: mpath(this.id, "timeout"), json, idempotent: true }, o));
  }

  /**
   * Holds the lease open: refreshes now (the returned promise fails if it
   * cannot), then every `refreshEverySecs` (default half of `timeoutSecs`,
   * itself default the machine's current window). Dispose of it
   * (`await using`) or call stop(); stop() rejects with KeepAliveError if
   * the lease could not be kept.
   */
  async keepAlive(o: { timeoutSecs?: number; refreshEverySecs?: number; onError?: (e: NullspaceError) => void } = {}): Promise<KeepAlive> {
    const timeoutSecs = o.timeoutSecs ?? ((await this.getInfo()).timeoutMs || 300_000) / 1000;
    const every = o.refreshEverySecs ?? timeoutSecs / 2;
    if (!(every > 0 && every < timeoutSecs)) {
      throw new InvalidArgumentError(`refreshEverySecs (${every}) must be above 0 and below timeoutSecs (${timeoutSecs})`, { code: "invalid_argument" });
    }
    const ka = new KeepAlive(this, timeoutSecs, every, o.onError);
    await ka.refresh();
    ka.startLoop();
    return ka;
  }

  async getMetrics(o?: CallOptions): Promise<m.Metric[]> {
    const l = await this.call<W["MetricList"]>({ method: "GET", path: mpath(this.id, "metrics"), idempotent: true }, o);
    return (l.metrics ?? []).map(m.metric);
  }

  /** Live samples as they are taken; reconnects by itself, ends when the machine is killed. */
  async *monitor(o: CallOptions = {}): AsyncGenerator<m.Metric> {
    for (let attempt = 0; ; attempt++) {
      const r: Request = { method: "GET", path: mpath(this.id, "metrics"), query: { follow: true }, accept: "application/x-ndjson", idempotent: true, extraTimeout: null };
      try {
        for await (const w of ndjson<W["MetricSample"]>(await this.client.stream(r, o), r, o.signal)) {
          attempt = 0;
          yield m.metric(w);
        }
      } catch (e) {
        if (e instanceof MachineNotFoundError) return;
        if (!reconnectable(e) || attempt >= 8) throw e;
      }
      const st = await this.getInfo(o).then((i) => i.status, (e) => (e instanceof MachineNotFoundError ? "killed" : "unknown"));
      if (st === "killed" || st === "failed") return;
      await delay(backoff(attempt));
    }
  }

  /** The public URL of `port` (signed; survives pauses; wakes an autoResume machine). */
  async getUrl(port: number, o: { expiresIn?: number } & CallOptions = {}): Promise<m.MachineURL> {
    const json: W["MachineURLRequest"] = { port };
    if (o.expiresIn) json.expires_in_ms = ms(o.expiresIn, "expiresIn", 1);
    return m.machineURL(await this.call({ method: "POST", path: mpath(this.id, "urls"), json, idempotent: true }, o));
  }

  /** `await using machine = await Machine.create(...)` kills its latest execution at the end. */
  async [Symbol.asyncDispose](): Promise<void> {
    let target = this.info.latestId || this.id;
    try {
      target = (await Machine.getInfoById(this.id, { client: this.client })).latestId || this.id;
    } catch {
      // kill what we know
    }
    await Machine.kill(target, { client: this.client });
  }
}

/** See Machine.keepAlive. */
export class KeepAlive {
  lease: m.Lease | undefined;
  refreshes = 0;
  /** The refresh error that made the lease uncertain, if one did. */
  error: NullspaceError | undefined;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private stopped = false;
  private deadline = 0;
  private attempt = 0;

  constructor(private readonly machine: Machine, readonly timeoutSecs: number, readonly refreshEverySecs: number,
    private readonly onError?: (e: NullspaceError) => void) {}

  async refresh(): Promise<void> {
    this.lease = await this.machine.setTimeout(this.timeoutSecs);
    this.refreshes++;
    this.deadline = Date.now() + this.timeoutSecs * 1000;
    this.attempt = 0;
  }

  startLoop(wait = this.refreshEverySecs): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.refresh().then(() => this.startLoop(), (e: unknown) => {
        const err = e instanceof NullspaceError ? e : new NullspaceError(String(e), { cause: e });
        if (!this.error) this.onError?.(err);
        const left = (this.deadline - Date.now()) / 1000 - 1;
        if (!err.retryable || left <= 0) {
          this.error = err;
          return;
        }
        this.startLoop(Math.min(backoff(this.attempt++, err.retryAfter), Math.max(0.1, left)));
      });
    }, wait * 1000);
    // In Node, a refresher alone does not keep the process running: when
    // the program is done, the lease runs out as set last.
    (this.timer as { unref?: () => void }).unref?.();
  }

  /** Stops refreshing; rejects with KeepAliveError if the lease could not be kept. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer !== undefined) clearTimeout(this.timer);
    if (this.error) {
      throw new KeepAliveError(`keepAlive could not refresh the lease of machine ${this.machine.id}: ${this.error.message}`, {
        code: this.error.code, status: this.error.status, cause: this.error,
      });
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }
}

export type ReadFormat = "text" | "bytes" | "stream";

/**
 * The machine's filesystem. Every call takes `user` (a name or uid of the
 * machine; default root, as for commands): it acts with that user's
 * permissions and what it creates is that user's.
 */
export class Files {
  constructor(private readonly m: Machine) {}

  read(path: string, o?: { format?: "text"; user?: string } & CallOptions): Promise<string>;
  read(path: string, o: { format: "bytes"; user?: string } & CallOptions): Promise<Uint8Array>;
  read(path: string, o: { format: "stream"; user?: string } & CallOptions): Promise<ReadableStream<Uint8Array>>;
  async read(path: string, o: { format?: ReadFormat; user?: string } & CallOptions = {}): Promise<string | Uint8Array | ReadableStream<Uint8Array>> {
    const r: Request = { method: "GET", path: mpath(this.m.id, "files"), query: { path, user: o.user }, accept: "application/octet-stream", idempotent: true };
    const format = o.format ?? "text";
    if (format === "stream") {
      const res = await this.m.client.stream({ ...r, extraTimeout: null }, o);
      return res.body ?? new ReadableStream();
    }
    if (format !== "text" && format !== "bytes") {
      throw new InvalidArgumentError(`format must be "text", "bytes" or "stream", not ${JSON.stringify(format)}`, { code: "invalid_argument" });
    }
    const b = await this.m.client.bytes(r, o);
    return format === "bytes" ? b : new TextDecoder().decode(b);
  }

  /**
   * Creates or replaces a file; a Blob or ReadableStream is streamed.
   * `metadata` is stored on it (user.e2b.KEY extended attributes; printable
   * ASCII), replacing what it had.
   */
  async write(path: string, data: string | Uint8Array | ArrayBuffer | Blob | ReadableStream<Uint8Array>, o: { mode?: number; user?: string; metadata?: Record<string, string> } & CallOptions = {}): Promise<m.WriteInfo> {
    let body: Body;
    if (typeof data === "string") body = new TextEncoder().encode(data);
    else if (data instanceof ArrayBuffer) body = new Uint8Array(data);
    else if (data instanceof Uint8Array || data instanceof Blob || data instanceof ReadableStream) body = data;
    else throw new InvalidArgumentError("files.write takes a string, Uint8Array, ArrayBuffer, Blob or ReadableStream", { code: "invalid_argument" });
    const query: Record<string, string | undefined> = { path, mode: o.mode === undefined ? undefined : o.mode.toString(8).padStart(4, "0"), user: o.user };
    for (const [k, v] of Object.entries(o.metadata ?? {})) query[`metadata[${k}]`] = v;
    const w = await this.m.client.json<W["WriteResult"]>({
      method: "PUT", path: mpath(this.m.id, "files"), body, query, idempotent: true,
    }, o);
    return { path: w.path, size: w.size, metadata: { ...(w.metadata ?? {}) } };
  }

  async list(path: string, o: { depth?: number; user?: string } & CallOptions = {}): Promise<m.EntryInfo[]> {
    const l = await this.m.client.json<W["FileList"]>({ method: "GET", path: mpath(this.m.id, "files", "list"), query: { path, depth: o.depth, user: o.user }, idempotent: true }, o);
    return (l.entries ?? []).map(m.entryInfo);
  }

  async stat(path: string, o: { user?: string } & CallOptions = {}): Promise<m.EntryInfo> {
    return m.entryInfo(await this.m.client.json({ method: "GET", path: mpath(this.m.id, "files", "stat"), query: { path, user: o.user }, idempotent: true }, o));
  }

  async exists(path: string, o: { user?: string } & CallOptions = {}): Promise<boolean> {
    try {
      await this.stat(path, o);
      return true;
    } catch (e) {
      if (e instanceof PathNotFoundError) return false;
      throw e;
    }
  }

  async remove(path: string, o: { recursive?: boolean; user?: string } & CallOptions = {}): Promise<void> {
    await this.m.client.json({ method: "DELETE", path: mpath(this.m.id, "files"), query: { path, recursive: o.recursive, user: o.user }, idempotent: true }, o);
  }

  async makeDir(path: string, o: { user?: string } & CallOptions = {}): Promise<m.EntryInfo> {
    return m.entryInfo(await this.m.client.json({ method: "POST", path: mpath(this.m.id, "files", "mkdir"), json: { path, user: o.user }, idempotent: true }, o));
  }

  async rename(oldPath: string, newPath: string, o: { user?: string } & CallOptions = {}): Promise<m.EntryInfo> {
    return m.entryInfo(await this.m.client.json({ method: "POST", path: mpath(this.m.id, "files", "rename"), json: { from: oldPath, to: newPath, user: o.user } }, o));
  }

  /**
   * Watches a directory (`recursive`: its whole tree) for changes made in
   * the machine, from now on: async-iterate the handle for FileEvent
   * values, or pass `onEvent`, or poll with getNewEvents(). A dropped
   * stream is reopened where it left off; stop() removes the watch.
   * `includeEntry`: each create, write, chmod and rename carries the file as
   * it was when the change was seen (FileEvent.entry).
   */
  async watchDir(path: string, o: { recursive?: boolean; includeEntry?: boolean; onEvent?: (e: m.FileEvent) => void | Promise<void> } & CallOptions = {}): Promise<WatchHandle> {
    const h = new WatchHandle(this.m, path, !!o.recursive, !!o.includeEntry);
    await h.open(o);
    if (o.onEvent) h.pump(o.onEvent);
    return h;
  }
}

/** A watch of a directory (Files.watchDir). */
export class WatchHandle implements AsyncIterable<m.FileEvent> {
  watchId = "";
  lastSeq = 0;
  private events: AsyncGenerator<W["FileEvent"]> | undefined;
  private abort = new AbortController();
  private stopped = false;
  private ended = false;
  private pumping: Promise<void> | undefined;
  /** Why the onEvent pump stopped, if it failed. */
  error: unknown;

  constructor(private readonly m: Machine, readonly path: string, readonly recursive: boolean, readonly includeEntry = false) {}

  private request(follow: boolean): Request {
    const query: Record<string, string | number | boolean | undefined> = this.watchId
      ? { watch_id: this.watchId, after: this.lastSeq }
      : { path: this.path, recursive: this.recursive || undefined, entry: this.includeEntry || undefined };
    if (!follow) query.follow = "false";
    // Only a watch that exists may be asked for again.
    return { method: "GET", path: mpath(this.m.id, "files", "watch"), accept: "application/x-ndjson", query, idempotent: !!this.watchId, extraTimeout: null };
  }

  /** Starts the watch, or reopens its stream after the last seq seen. */
  async open(o: CallOptions = {}): Promise<void> {
    const r = this.request(true);
    const signal = o.signal ? AbortSignal.any([o.signal, this.abort.signal]) : this.abort.signal;
    this.events = ndjson<W["FileEvent"]>(await this.m.client.stream(r, { ...o, signal }), r, signal);
    if (!this.watchId) {
      const first = await this.events.next();
      this.watchId = first.done ? "" : (first.value.watch_id ?? "");
    }
  }

  private take(w: W["FileEvent"]): m.FileEvent | undefined {
    if (w.type === "watching") return undefined;
    const ev = m.fileEvent(w);
    if (ev.seq) this.lastSeq = ev.seq;
    if (ev.type === "end") this.ended = true;
    return ev;
  }

  async *[Symbol.asyncIterator](): AsyncIterator<m.FileEvent> {
    for (let attempt = 0; !this.ended && !this.stopped; ) {
      try {
        if (!this.events) await this.open();
        for await (const w of this.events!) {
          attempt = 0;
          const ev = this.take(w);
          if (ev) yield ev;
          if (this.ended) return;
        }
        this.events = undefined;
        if (!this.stopped) throw new ConnectionError("the watch stream ended before the watch", { code: "connection_failed" });
      } catch (e) {
        this.events = undefined;
        if (this.stopped) return;
        if (!reconnectable(e) || attempt >= 6) throw e;
        await delay(backoff(attempt++));
      }
    }
  }

  pump(onEvent: (e: m.FileEvent) => void | Promise<void>): void {
    this.pumping = (async () => {
      try {
        for await (const ev of this) await onEvent(ev);
      } catch (e) {
        if (!this.stopped) this.error = e;
      }
    })();
  }

  /** The events since the last ones returned (polling; do not mix with iterating). */
  async getNewEvents(o?: CallOptions): Promise<m.FileEvent[]> {
    this.closeStream();
    const r = this.request(false);
    const out: m.FileEvent[] = [];
    for await (const w of ndjson<W["FileEvent"]>(await this.m.client.stream(r, o), r, o?.signal)) {
      const ev = this.take(w);
      if (ev) out.push(ev);
    }
    return out;
  }

  private closeStream(): void {
    if (this.events) {
      this.abort.abort();
      this.abort = new AbortController();
      this.events = undefined;
    }
  }

  /** Removes the watch; an iteration in progress ends. */
  async stop(o?: CallOptions): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    try {
      await this.m.client.json({ method: "DELETE", path: mpath(this.m.id, "files", "watch", encodeURIComponent(this.watchId)), idempotent: true }, o);
    } catch (e) {
      if (!(e instanceof NullspaceError && (e.status === 404 || e.code === "machine_not_running"))) throw e;
    }
    this.abort.abort();
    this.events = undefined;
    await this.pumping;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }
}

/** What pty.create() runs without a command: a login shell (bash where the template has it). */
export const DEFAULT_SHELL = "command -v bash >/dev/null 2>&1 && exec bash -l || exec sh -l";

export interface PtyCreateOptions extends CallOptions {
  /** Default 24×80. */
  size?: m.PtySize;
  /** Default: a login shell. A string runs with /bin/sh -c. */
  cmd?: string | string[];
  cwd?: string;
  /** TERM is xterm-256color unless set here. */
  envs?: Record<string, string>;
  user?: string;
  /** Seconds before it is killed (default: never). */
  timeout?: number;
  /** The output bytes, as they come. */
  onData?: (data: Uint8Array) => void | Promise<void>;
}

const bytesOf = (data: string | Uint8Array) => (typeof data === "string" ? new TextEncoder().encode(data) : data);
const base64 = (b: Uint8Array) => btoa(Array.from(b, (c) => String.fromCharCode(c)).join(""));

/** Terminals in the machine: commands on a pseudo-terminal (job control works: "\x03" is Ctrl-C). */
export class Pty {
  constructor(private readonly m: Machine) {}

  async create(o: PtyCreateOptions = {}): Promise<PtyHandle> {
    const b: W["RunCommandRequest"] = { background: true, pty: o.size ?? { rows: 24, cols: 80 } };
    if (o.cmd === undefined || typeof o.cmd === "string") b.shell = o.cmd ?? DEFAULT_SHELL;
    else b.cmd = argv(o.cmd, "the command");
    if (o.cwd) b.cwd = o.cwd;
    if (o.envs) b.env = o.envs;
    if (o.user) b.user = o.user;
    if (o.timeout !== undefined) b.timeout_ms = ms(o.timeout, "timeout");
    const started = await this.m.client.json<W["CommandStarted"]>({ method: "POST", path: mpath(this.m.id, "commands"), json: b }, o);
    const h = new PtyHandle(this.m, started.pid);
    if (o.onData) h.pumpData(o.onData, o.signal);
    return h;
  }

  /** A terminal started earlier (also before a pause), its output from byte `offset` (default 0: the scrollback). */
  async connect(pid: number, o: { offset?: number; onData?: (data: Uint8Array) => void | Promise<void> } & CallOptions = {}): Promise<PtyHandle> {
    if (!(await this.m.commands.list(o)).some((p) => p.pid === pid)) {
      throw new ProcessNotFoundError(`no command with pid ${pid} in machine ${this.m.id}`, { code: "process_not_found", status: 404 });
    }
    const h = new PtyHandle(this.m, pid);
    h.setOffsets(o.offset ?? 0, 0);
    if (o.onData) h.pumpData(o.onData, o.signal);
    return h;
  }

  /** Types `data` (bytes as they are, a string as UTF-8). */
  async sendStdin(pid: number, data: string | Uint8Array, o?: CallOptions): Promise<void> {
    await this.m.client.json({ method: "POST", path: mpath(this.m.id, "commands", String(pid), "stdin"), json: { bytes: base64(bytesOf(data)) } }, o);
  }

  async resize(pid: number, size: m.PtySize, o?: CallOptions): Promise<void> {
    await this.m.client.json({ method: "POST", path: mpath(this.m.id, "commands", String(pid), "resize"), json: size, idempotent: true }, o);
  }

  kill(pid: number, o?: CallOptions): Promise<boolean> {
    return this.m.commands.kill(pid, o);
  }
}

export interface RunOptions extends CallOptions {
  /** Run with /bin/sh -c (pipes, redirections); otherwise a string is split on spaces. */
  shell?: boolean;
  cwd?: string;
  envs?: Record<string, string>;
  user?: string;
  stdin?: string;
  /** Seconds before the command is killed (foreground default 60; 0: none). */
  timeout?: number;
  background?: boolean;
  onStdout?: (data: string) => void | Promise<void>;
  onStderr?: (data: string) => void | Promise<void>;
  /** Reject with CommandExitError on a non-zero exit. */
  check?: boolean;
  keepStdinOpen?: boolean;
}

/** Reads one command's output stream: decoded text, offsets, the exit. */
class Collector {
  offsets = { stdout: 0, stderr: 0 };
  text = { stdout: "", stderr: "" };
  private dec = { stdout: new TextDecoder(), stderr: new TextDecoder() };
  exit: W["CommandEvent"] | undefined;

  constructor(public pid = 0) {}

  feed(ev: W["CommandEvent"]): m.OutputChunk | undefined {
    if (ev.type === "start") {
      this.pid = ev.pid ?? this.pid;
      return undefined;
    }
    if (ev.type === "stdout" || ev.type === "stderr") {
      let raw = ev.data ? Uint8Array.from(atob(ev.data), (c) => c.charCodeAt(0)) : new Uint8Array();
      let off = ev.offset ?? 0;
      const seen = this.offsets[ev.type];
      if (off + raw.length <= seen) return undefined; // read before a reconnect
      if (off < seen) {
        raw = raw.subarray(seen - off);
        off = seen;
      }
      this.offsets[ev.type] = off + raw.length;
      const data = this.dec[ev.type].decode(raw, { stream: true });
      this.text[ev.type] += data;
      return { stream: ev.type, data, raw, offset: off };
    }
    if (ev.type === "exit") this.exit = ev;
    if (ev.type === "error") {
      throw new NullspaceError(ev.error?.message ?? "stream error", { code: ev.error?.code ?? "internal", retryable: !!ev.error?.retryable });
    }
    return undefined;
  }

  result(): m.CommandResult {
    const e = this.exit!;
    return {
      stdout: this.text.stdout + this.dec.stdout.decode(), stderr: this.text.stderr + this.dec.stderr.decode(),
      exitCode: e.exit_code ?? 0, pid: this.pid, signal: e.signal ?? "", timedOut: !!e.timed_out, truncated: false,
    };
  }
}

function checked(r: m.CommandResult, check?: boolean): m.CommandResult {
  if (check && r.exitCode !== 0) throw new CommandExitError(r);
  return r;
}

async function dispatch(ch: m.OutputChunk | undefined, o: RunOptions): Promise<void> {
  if (!ch?.data) return;
  await (ch.stream === "stdout" ? o.onStdout : o.onStderr)?.(ch.data);
}

/** Processes in the machine. */
export class Commands {
  constructor(private readonly m: Machine) {}

  run(cmd: string | string[], o: RunOptions & { background: true }): Promise<CommandHandle>;
  run(cmd: string | string[], o?: RunOptions & { background?: false }): Promise<m.CommandResult>;
  run(cmd: string | string[], o?: RunOptions): Promise<m.CommandResult | CommandHandle>;
  async run(cmd: string | string[], o: RunOptions = {}): Promise<m.CommandResult | CommandHandle> {
    const b: W["RunCommandRequest"] = {};
    if (o.shell) {
      b.shell = Array.isArray(cmd) ? cmd.join(" ") : cmd;
      if (!b.shell.trim()) throw new InvalidArgumentError("the command is empty", { code: "invalid_argument" });
    } else b.cmd = argv(cmd, "the command");
    if (o.cwd) b.cwd = o.cwd;
    if (o.envs) b.env = o.envs;
    if (o.user) b.user = o.user;
    if (o.stdin !== undefined) b.stdin = o.stdin;
    if (o.keepStdinOpen) b.keep_stdin_open = true;
    if (o.timeout !== undefined) b.timeout_ms = ms(o.timeout, "timeout");
    const streamed = !!(o.onStdout || o.onStderr);
    if (o.background) b.background = true;
    else if (streamed) b.stream = true;
    const extraTimeout = o.background ? 0 : o.timeout === 0 ? null : (o.timeout ?? 60);
    const r: Request = { method: "POST", path: mpath(this.m.id, "commands"), json: b, extraTimeout };
    if (o.background) {
      const started = await this.m.client.json<W["CommandStarted"]>(r, o);
      const h = new CommandHandle(this.m, started.pid);
      if (streamed) h.pump(o);
      return h;
    }
    if (!streamed) return checked(m.commandResult(await this.m.client.json(r, o)), o.check);
    r.accept = "application/x-ndjson";
    const col = new Collector();
    for await (const ev of ndjson<W["CommandEvent"]>(await this.m.client.stream(r, o), r, o.signal)) await dispatch(col.feed(ev), o);
    if (!col.exit) throw new ConnectionError("the command's stream ended before its exit", { code: "connection_failed" });
    return checked(col.result(), o.check);
  }

  /** A handle on a command started earlier, also before a pause and resume; output read from the offsets given. */
  async connect(pid: number, o: { stdoutOffset?: number; stderrOffset?: number } & CallOptions = {}): Promise<CommandHandle> {
    if (!(await this.list(o)).some((p) => p.pid === pid)) {
      throw new ProcessNotFoundError(`no command with pid ${pid} in machine ${this.m.id}`, { code: "process_not_found", status: 404 });
    }
    const h = new CommandHandle(this.m, pid);
    h.setOffsets(o.stdoutOffset ?? 0, o.stderrOffset ?? 0);
    return h;
  }

  async list(o?: CallOptions): Promise<m.ProcessInfo[]> {
    const l = await this.m.client.json<W["ProcessList"]>({ method: "GET", path: mpath(this.m.id, "commands"), idempotent: true }, o);
    return (l.processes ?? []).map(m.processInfo);
  }

  /** SIGKILL to the command's process group; false if it is gone. */
  async kill(pid: number, o?: CallOptions): Promise<boolean> {
    try {
      await this.m.client.json({ method: "DELETE", path: mpath(this.m.id, "commands", String(pid)), idempotent: true }, o);
      return true;
    } catch (e) {
      if (e instanceof ProcessNotFoundError) return false;
      throw e;
    }
  }

  async sendSignal(pid: number, signal = "SIGTERM", o?: CallOptions): Promise<void> {
    await this.m.client.json({ method: "POST", path: mpath(this.m.id, "commands", String(pid), "signal"), json: { signal }, idempotent: true }, o);
  }

  /** Writes to the stdin of a command started with keepStdinOpen. */
  async sendStdin(pid: number, data: string, o: { close?: boolean } & CallOptions = {}): Promise<void> {
    await this.m.client.json({ method: "POST", path: mpath(this.m.id, "commands", String(pid), "stdin"), json: { data, close: !!o.close } }, o);
  }
}

/** A command running in the background: async-iterate for its output, wait() for its result. */
export class CommandHandle implements AsyncIterable<m.OutputChunk> {
  private col: Collector;
  private pumping: Promise<void> | undefined;
  private busy = false;

  constructor(protected readonly m: Machine, readonly pid: number) {
    this.col = new Collector(pid);
  }

  get stdoutOffset(): number {
    return this.col.offsets.stdout;
  }

  get stderrOffset(): number {
    return this.col.offsets.stderr;
  }

  /** The exit code once the end was read, else undefined. */
  get exitCode(): number | undefined {
    return this.col.exit ? (this.col.exit.exit_code ?? 0) : undefined;
  }

  setOffsets(stdout: number, stderr: number): void {
    this.col.offsets = { stdout, stderr };
  }

  protected async *chunks(o: CallOptions = {}): AsyncGenerator<m.OutputChunk> {
    if (this.busy) throw new InvalidArgumentError("this handle's output is already being read", { code: "invalid_argument" });
    this.busy = true;
    try {
      for (let attempt = 0; !this.col.exit; ) {
        const r: Request = {
          method: "GET", path: mpath(this.m.id, "commands", String(this.pid), "output"), accept: "application/x-ndjson",
          query: { follow: true, stdout_offset: this.col.offsets.stdout || undefined, stderr_offset: this.col.offsets.stderr || undefined },
          idempotent: true, extraTimeout: null,
        };
        try {
          for await (const ev of ndjson<W["CommandEvent"]>(await this.m.client.stream(r, o), r, o.signal)) {
            attempt = 0;
            const ch = this.col.feed(ev);
            if (ch) yield ch;
          }
          if (!this.col.exit) throw new ConnectionError("the output stream ended before the exit", { code: "connection_failed" });
        } catch (e) {
          if (!reconnectable(e) || attempt >= 6) throw e;
          await delay(backoff(attempt++));
        }
      }
    } finally {
      this.busy = false;
    }
  }

  [Symbol.asyncIterator](): AsyncIterator<m.OutputChunk> {
    return this.chunks();
  }

  /** Waits for the exit and returns the result read through this handle. */
  async wait(o: Pick<RunOptions, "onStdout" | "onStderr" | "check" | "signal"> = {}): Promise<m.CommandResult> {
    if (this.pumping) await this.pumping;
    else for await (const ch of this.chunks(o)) await dispatch(ch, o);
    return checked(this.col.result(), o.check);
  }

  pump(o: RunOptions): void {
    this.pumpChunks((ch) => dispatch(ch, o), o.signal);
  }

  protected pumpChunks(fn: (ch: m.OutputChunk) => void | Promise<void>, signal?: AbortSignal): void {
    this.pumping = (async () => {
      for await (const ch of this.chunks({ signal })) await fn(ch);
    })();
    this.pumping.catch(() => undefined); // surfaced by wait()
  }

  kill(o?: CallOptions): Promise<boolean> {
    return this.m.commands.kill(this.pid, o);
  }

  sendStdin(data: string, o: { close?: boolean } & CallOptions = {}): Promise<void> {
    return this.m.commands.sendStdin(this.pid, data, o);
  }
}

/** A terminal: a CommandHandle whose output (stdout) is what the terminal shows. */
export class PtyHandle extends CommandHandle {
  pumpData(onData: (data: Uint8Array) => void | Promise<void>, signal?: AbortSignal): void {
    this.pumpChunks(async (ch) => {
      if (ch.raw.length) await onData(ch.raw);
    }, signal);
  }

  /** Types `data`; a terminal's input is never closed (send "\x04", Ctrl-D). */
  override sendStdin(data: string | Uint8Array, o: { close?: boolean } & CallOptions = {}): Promise<void> {
    if (o.close) throw new InvalidArgumentError('a terminal\'s input cannot be closed: send "\\x04" (Ctrl-D)', { code: "invalid_argument" });
    return this.m.pty.sendStdin(this.pid, data, o);
  }

  resize(size: m.PtySize, o?: CallOptions): Promise<void> {
    return this.m.pty.resize(this.pid, size, o);
  }
}
