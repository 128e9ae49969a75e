/**
 * One error hierarchy for every failure, mapped from the API's stable codes
 * (`machine_not_found`, `snapshot_incompatible`, ...) like the Python SDK's:
 * match with `instanceof` or `error.code`, never the message. A code this
 * version does not know is still a `NullspaceError` carrying it.
 */

export interface ErrorFields {
  code?: string;
  status?: number;
  retryable?: boolean;
  suggestedAction?: string;
  retryAfter?: number;
  cause?: unknown;
}

export class NullspaceError extends Error {
  /** The server's stable code; "" when the answer carried none. */
  readonly code: string;
  /** The HTTP status; 0 when no answer came (a network failure, an abort). */
  readonly status: number;
  /** Whether the same call may succeed later. */
  readonly retryable: boolean;
  /** What to do next. */
  readonly suggestedAction: string;
  /** Seconds the server asked to wait before retrying (Retry-After). */
  readonly retryAfter: number | undefined;

  constructor(message: string, f: ErrorFields = {}) {
    super(message, f.cause === undefined ? undefined : { cause: f.cause });
    this.name = new.target.name;
    this.code = f.code ?? "";
    this.status = f.status ?? 0;
    this.retryable = f.retryable ?? false;
    this.suggestedAction = f.suggestedAction ?? "";
    this.retryAfter = f.retryAfter;
  }

  override toString(): string {
    let s = `${this.name}: ${this.message}`;
    if (this.code) s += ` (${this.code})`;
    if (this.suggestedAction) s += `; ${this.suggestedAction}`;
    return s;
  }
}

/** The API key is missing or wrong (401). */
export class AuthenticationError extends NullspaceError {}
/** The request was refused as malformed (400): the message says which field. */
export class InvalidArgumentError extends NullspaceError {}
/** Something the call names does not exist (404). */
export class NotFoundError extends NullspaceError {}
export class MachineNotFoundError extends NotFoundError {}
export class SnapshotNotFoundError extends NotFoundError {}
export class TemplateNotFoundError extends NotFoundError {}
export class VolumeNotFoundError extends NotFoundError {}
export class ProcessNotFoundError extends NotFoundError {}
export class PathNotFoundError extends NotFoundError {}
/**
 * The call conflicts with the current state (409); also an Idempotency-Key
 * sent before with another body (422 `idempotency_key_reused`: use a new key
 * for a different call) or whose first request is still running (409
 * `idempotency_key_in_progress`, retried by the SDK).
 */
export class ConflictError extends NullspaceError {}
/** The machine is paused, stopped, killed or failed: connect() or start() it. */
export class MachineNotRunningError extends ConflictError {}
export class SnapshotIncompatibleError extends ConflictError {}
export class SnapshotCorruptError extends ConflictError {}
export class SnapshotSupersededError extends ConflictError {}
/** No capacity now (503 `capacity_exhausted`, retry after `retryAfter`), or the snapshot disk is full (507). */
export class ResourceExhaustedError extends NullspaceError {}
/** Too many requests (429). */
export class RateLimitError extends NullspaceError {}
/** The server or the machine's agent cannot answer now (503). */
export class UnavailableError extends NullspaceError {}
/** A deadline passed: requestTimeout, a command's timeout, a wait's. */
export class TimeoutError extends NullspaceError {}
/** The server could not be reached, or the answer broke off; `cause` says why. */
export class ConnectionError extends NullspaceError {}
/** The call was aborted by its AbortSignal; `cause` is the signal's reason. */
export class AbortError extends NullspaceError {}
/** A command run with `check: true` exited non-zero. */
export class CommandExitError extends NullspaceError {
  readonly exitCode: number;
  readonly stdout: string;
  readonly stderr: string;
  constructor(r: { exitCode: number; stdout: string; stderr: string }) {
    const tail = (r.stderr || r.stdout).trim().split("\n").pop() ?? "";
    super(`command exited with code ${r.exitCode}${tail ? `: ${tail.slice(0, 200)}` : ""}`, { code: "command_exit" });
    this.exitCode = r.exitCode;
    this.stdout = r.stdout;
    this.stderr = r.stderr;
  }
}
/** A keepAlive() whose lease could not be kept; `cause` is the refresh's error. */
export class KeepAliveError extends NullspaceError {}

type ErrorClass = new (message: string, f?: ErrorFields) => NullspaceError;

const byCode: Record<string, ErrorClass> = {
  unauthenticated: AuthenticationError,
  invalid_argument: InvalidArgumentError,
  auto_resume_requires_pause: InvalidArgumentError,
  port_not_allowed: InvalidArgumentError,
  snapshot_wrong_kind: InvalidArgumentError,
  command_not_found: InvalidArgumentError,
  file_too_large: InvalidArgumentError,
  is_a_directory: InvalidArgumentError,
  not_a_directory: InvalidArgumentError,
  not_found: NotFoundError,
  machine_not_found: MachineNotFoundError,
  snapshot_not_found: SnapshotNotFoundError,
  template_not_found: TemplateNotFoundError,
  volume_not_found: VolumeNotFoundError,
  process_not_found: ProcessNotFoundError,
  file_not_found: PathNotFoundError,
  conflict: ConflictError,
  machine_not_running: MachineNotRunningError,
  machine_ephemeral: ConflictError,
  machine_has_no_command: ConflictError,
  snapshot_in_use: ConflictError,
  volume_in_use: ConflictError,
  volume_exists: ConflictError,
  snapshot_name_exists: ConflictError,
  template_exists: ConflictError,
  template_in_use: ConflictError,
  template_not_ready: ConflictError,
  idempotency_key_reused: ConflictError,
  idempotency_key_in_progress: ConflictError,
  snapshot_incompatible: SnapshotIncompatibleError,
  snapshot_corrupt: SnapshotCorruptError,
  snapshot_superseded: SnapshotSupersededError,
  resource_exhausted: ResourceExhaustedError,
  capacity_exhausted: ResourceExhaustedError,
  unavailable: UnavailableError,
  agent_unavailable: UnavailableError,
  deadline_exceeded: TimeoutError,
  command_timeout: TimeoutError,
};

const byStatus: Record<number, ErrorClass> = {
  400: InvalidArgumentError,
  401: AuthenticationError,
  404: NotFoundError,
  409: ConflictError,
  413: InvalidArgumentError,
  429: RateLimitError,
  503: UnavailableError,
  504: TimeoutError,
  507: ResourceExhaustedError,
};

/** The error of an answer: body is the decoded `{code, message, retryable, suggested_action}`, or text. */
export function errorFromBody(status: number, body: unknown, retryAfter?: number): NullspaceError {
  if (body !== null && typeof body === "object" && typeof (body as { code?: unknown }).code === "string" && (body as { code: string }).code) {
    const b = body as { code: string; message?: string; retryable?: boolean; suggested_action?: string };
    const cls = byCode[b.code] ?? byStatus[status] ?? NullspaceError;
    return new cls(b.message || `server answered ${status}`, {
      code: b.code, status, retryable: !!b.retryable, suggestedAction: b.suggested_action ?? "", retryAfter,
    });
  }
  let msg = `server answered HTTP ${status}`;
  if (typeof body === "string" && body.trim() && !body.trimStart().startsWith("<")) msg += `: ${body.trim().slice(0, 200)}`;
  const cls = byStatus[status] ?? NullspaceError;
  return new cls(msg, { status, retryable: [429, 502, 503, 504].includes(status), retryAfter });
}
