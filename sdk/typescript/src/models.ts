/**
 * What the API returns, in camelCase. Each is converted from its wire type,
 * generated from api/openapi.yaml (src/generated/openapi.ts), so a change of
 * the spec that these do not follow fails to compile. Field names keep the
 * API's units: `timeoutMs` is milliseconds; the calls take seconds.
 */

import type { components } from "./generated/openapi.js";

type S = components["schemas"];
export type Wire = S;

const date = (v: string | undefined | null): Date | undefined => (v ? new Date(v) : undefined);

export interface VolumeMount {
  name: string;
  path: string;
  readOnly?: boolean;
}

export interface MainExit {
  exitCode: number;
  signal: string;
  at: Date | undefined;
}

export const mainExit = (w: S["MainExit"]): MainExit => ({ exitCode: w.exit_code, signal: w.signal ?? "", at: date(w.at) });

/** A machine as the server sees it; reading it never wakes the machine. */
export interface MachineInfo {
  id: string;
  /** running, paused, stopped, killed, ... (the API's `state`). */
  status: S["MachineState"];
  template: string;
  cpuCount: number;
  memoryMb: number;
  /** Limit in MiB on what the machine writes to its root file system. */
  diskMb: number;
  envs: Record<string, string>;
  metadata: Record<string, string>;
  allowInternet: boolean;
  ip: string;
  createdAt: Date | undefined;
  startedAt: Date | undefined;
  endedAt: Date | undefined;
  error: string;
  /** Why a failed machine failed: sandbox_exit, oom, pids, agent_unresponsive, pause_failed, snapshot_lost, server_restart; "" otherwise. */
  failureReason: string;
  volumes: VolumeMount[];
  snapshotId: string;
  lineageId: string;
  latestId: string;
  pausedAliases: number;
  snapshotBytes: number;
  restoredFrom: string;
  timeoutMs: number;
  timeoutAt: Date | undefined;
  remainingMs: number;
  timeoutAction: string;
  onTimeout: string;
  autoResume: boolean;
  idleTimeoutMs: number;
  persistence: string;
  command: string[];
  mainPid: number;
  exit: MainExit | undefined;
  publicPorts: boolean;
  checkpointRetention: number;
  onPause: string[];
  onResume: string[];
}

export function machineInfo(w: S["Machine"]): MachineInfo {
  return {
    id: w.id,
    status: w.state,
    template: w.template,
    cpuCount: w.cpu_count,
    memoryMb: w.memory_mb,
    diskMb: w.disk_mb,
    envs: { ...(w.env ?? {}) },
    metadata: { ...(w.metadata ?? {}) },
    allowInternet: w.allow_internet,
    ip: w.ip ?? "",
    createdAt: date(w.created_at),
    startedAt: date(w.started_at),
    endedAt: date(w.ended_at),
    error: w.error ?? "",
    failureReason: w.failure_reason ?? "",
    volumes: (w.volumes ?? []).map((v) => ({ name: v.name, path: v.path, readOnly: !!v.read_only })),
    snapshotId: w.snapshot_id ?? "",
    lineageId: w.lineage_id,
    latestId: w.latest_id,
    pausedAliases: w.paused_aliases ?? 0,
    snapshotBytes: w.snapshot_bytes ?? 0,
    restoredFrom: w.restored_from ?? "",
    timeoutMs: w.timeout_ms ?? 0,
    timeoutAt: date(w.timeout_at),
    remainingMs: w.remaining_ms ?? 0,
    timeoutAction: w.timeout_action ?? "",
    onTimeout: w.on_timeout ?? "",
    autoResume: !!w.auto_resume,
    idleTimeoutMs: w.idle_timeout_ms ?? 0,
    persistence: w.persistence ?? "",
    command: w.command ?? [],
    mainPid: w.main_pid ?? 0,
    exit: w.exit ? mainExit(w.exit) : undefined,
    publicPorts: !!w.public_ports,
    checkpointRetention: w.checkpoint_retention ?? 0,
    onPause: w.hooks?.on_pause ?? [],
    onResume: w.hooks?.on_resume ?? [],
  };
}

/** A machine's effective timeout, as setTimeout() echoes it. */
export interface Lease {
  timeoutMs: number;
  timeoutAt: Date | undefined;
  remainingMs: number;
  timeoutAction: string;
}

export const lease = (w: S["Lease"]): Lease => ({
  timeoutMs: w.timeout_ms, timeoutAt: date(w.timeout_at), remainingMs: w.remaining_ms, timeoutAction: w.timeout_action,
});

/** A saved state: hibernate (pause), snapshot (reusable), checkpoint, disk (stop). */
export interface Snapshot {
  id: string;
  kind: S["Snapshot"]["kind"];
  machineId: string;
  lineageId: string;
  template: string;
  sizeBytes: number;
  createdAt: Date | undefined;
  parentId: string;
  generation: number;
  checksum: string;
  pauseWindowMs: number;
  runtimeVersion: string;
  kernel: string;
  children: number;
  pinned: boolean;
  /** The snapshot's name ("" if it has none), unique in the team; it works wherever the id does. */
  name: string;
  /** Its files are in the server's object store (`--object-store`), so any server sharing it can restore it; always false without one. */
  durable: boolean;
}

export const snapshot = (w: S["Snapshot"]): Snapshot => ({
  id: w.id, kind: w.kind, machineId: w.machine_id, lineageId: w.lineage_id, template: w.template, sizeBytes: w.size_bytes,
  createdAt: date(w.created_at), parentId: w.parent_id ?? "", generation: w.generation, checksum: w.checksum,
  pauseWindowMs: w.pause_window_ms, runtimeVersion: w.runtime_version, kernel: w.kernel, children: w.children,
  pinned: !!w.pinned, name: w.name ?? "", durable: !!w.durable,
});

/** One sample of a running machine; cpuUsedPct is in percent of cpuCount. */
export interface Metric {
  timestamp: Date | undefined;
  cpuCount: number;
  cpuUsedPct: number;
  memUsed: number;
  memTotal: number;
  diskUsed: number;
  diskTotal: number;
  netRxBytes: number;
  netTxBytes: number;
}

export const metric = (w: S["MetricSample"]): Metric => ({
  timestamp: date(w.timestamp), cpuCount: w.cpu_count, cpuUsedPct: w.cpu_used_pct, memUsed: w.mem_used,
  memTotal: w.mem_total, diskUsed: w.disk_used, diskTotal: w.disk_total, netRxBytes: w.net_rx_bytes,
  netTxBytes: w.net_tx_bytes,
});

/** How a command ended and what it wrote. */
export interface CommandResult {
  stdout: string;
  stderr: string;
  exitCode: number;
  pid: number;
  signal: string;
  timedOut: boolean;
  truncated: boolean;
}

export const commandResult = (w: S["CommandResult"]): CommandResult => ({
  stdout: w.stdout, stderr: w.stderr, exitCode: w.exit_code, pid: w.pid, signal: w.signal ?? "",
  timedOut: !!w.timed_out, truncated: !!w.truncated,
});

/** A piece of a command's output and its byte offset in its stream. */
export interface OutputChunk {
  stream: "stdout" | "stderr";
  data: string;
  raw: Uint8Array;
  offset: number;
}

export interface ProcessInfo {
  pid: number;
  cmd: string[];
  running: boolean;
  cwd: string;
  user: string;
  startedAt: Date | undefined;
  exitCode: number | undefined;
}

export const processInfo = (w: S["Process"]): ProcessInfo => ({
  pid: w.pid, cmd: w.cmd, running: w.running, cwd: w.cwd ?? "", user: w.user ?? "", startedAt: date(w.started_at),
  exitCode: w.exit_code ?? undefined,
});

/** A file or directory in a machine. */
export interface EntryInfo {
  name: string;
  path: string;
  type: S["FileInfo"]["type"];
  size: number;
  mode: string;
  modTime: Date | undefined;
  symlinkTarget: string;
  /** User metadata (the file's user.e2b.KEY extended attributes, by KEY); empty when none. */
  metadata: Record<string, string>;
  /**
   * The names of its uid and gid in the machine's /etc/passwd and
   * /etc/group, or the number ("1000") when it has no entry there ("" from a
   * server older than these fields).
   */
  owner: string;
  group: string;
}

export const entryInfo = (w: S["FileInfo"]): EntryInfo => ({
  name: w.name, path: w.path, type: w.type, size: w.size, mode: w.mode, modTime: date(w.mod_time),
  symlinkTarget: w.symlink_target ?? "", metadata: { ...(w.metadata ?? {}) },
  owner: w.owner ?? "", group: w.group ?? "",
});

export interface WriteInfo {
  path: string;
  size: number;
  /** The metadata stored on the file; empty when none. */
  metadata: Record<string, string>;
}

/** A public URL of a machine's port; `url` is the one to use. */
export interface MachineURL {
  url: string;
  wsUrl: string;
  originUrl: string;
  pathUrl: string;
  port: number;
  lineageId: string;
  expiresAt: Date | undefined;
  public: boolean;
}

export const machineURL = (w: S["MachineURL"]): MachineURL => ({
  url: w.url, wsUrl: w.ws_url, originUrl: w.origin_url, pathUrl: w.path_url, port: w.port, lineageId: w.lineage_id,
  expiresAt: date(w.expires_at), public: w.public,
});

export interface Event {
  seq: number;
  type: string;
  machineId: string;
  time: Date | undefined;
  cause: string;
  details: Record<string, unknown>;
}

export const event = (w: S["Event"]): Event => ({
  seq: w.seq, type: w.type, machineId: w.machine_id ?? "", time: date(w.time), cause: w.cause,
  details: { ...(w.details ?? {}) },
});

export interface Volume {
  name: string;
  createdAt: Date | undefined;
  sizeBytes: number;
  machines: number;
}

export const volume = (w: S["Volume"]): Volume => ({
  name: w.name, createdAt: date(w.created_at), sizeBytes: w.size_bytes, machines: w.machines,
});

export interface Template {
  name: string;
  state: string;
  workdir: string;
  envs: Record<string, string>;
  sizeBytes: number;
  createdAt: Date | undefined;
  error: string;
  source: string;
  /** The content digest of its tree ("sha256:..."), which snapshots record. */
  digest: string;
}

export const template = (w: S["Template"]): Template => ({
  name: w.name, state: w.state, workdir: w.workdir ?? "", envs: { ...(w.env ?? {}) }, sizeBytes: w.size_bytes,
  createdAt: date(w.created_at), error: w.error ?? "", source: w.source ?? "", digest: w.digest ?? "",
});

/** A terminal's size in character cells (1 to 1000 each). */
export interface PtySize {
  rows: number;
  cols: number;
}

/**
 * A change seen by files.watchDir(): `type` is create, write, remove,
 * rename (`oldPath` is where it was) or chmod; lost, overflow and end
 * report on the watch itself. `seq` numbers the watch's events from 1.
 */
export interface FileEvent {
  type: S["FileEvent"]["type"];
  path: string;
  oldPath: string;
  isDir: boolean;
  seq: number;
  time: Date | undefined;
  /** lost: how many events the machine no longer held. */
  lost: number;
  /** With includeEntry: the file as it was when the create, write, chmod or rename was seen. */
  entry: EntryInfo | undefined;
}

export const fileEvent = (w: S["FileEvent"]): FileEvent => ({
  type: w.type, path: w.path ?? "", oldPath: w.old_path ?? "", isDir: !!w.is_dir, seq: w.seq ?? 0, time: date(w.time),
  lost: w.lost ?? 0, entry: w.entry ? entryInfo(w.entry) : undefined,
});
