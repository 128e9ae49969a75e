// Package errdefs defines the fixed set of error classes used across Nullspace
// and the stable public error codes they map to.
//
// Every layer wraps errors with context (fmt.Errorf("pause machine %s: %w", id, err));
// the HTTP edge maps the class to a status and a code exactly once, through
// Classify. A *Error carries a specific public code and message (for example
// template_not_found) while still matching its class with errors.Is.
package errdefs

import (
	"errors"
	"log/slog"
	"net/http"
	"time"
)

// Error classes. Match with errors.Is.
var (
	ErrNotFound           = errors.New("not found")
	ErrConflict           = errors.New("conflict")
	ErrInvalidArgument    = errors.New("invalid argument")
	ErrFailedPrecondition = errors.New("failed precondition")
	ErrUnauthenticated    = errors.New("unauthenticated")
	// ErrForbidden: the key is valid but lacks the scope (403).
	ErrForbidden         = errors.New("forbidden")
	ErrResourceExhausted = errors.New("resource exhausted")
	ErrUnavailable       = errors.New("unavailable")
	ErrDeadlineExceeded  = errors.New("deadline exceeded")
	ErrInternal          = errors.New("internal")
)

// Error is an error with a stable public code, a message that is safe to show
// to API callers, and a suggested next step. It matches its Class with errors.Is.
type Error struct {
	Class           error  // one of the Err* classes above
	Code            string // stable public code, e.g. "machine_not_found"
	Message         string // public, lower-case, no trailing punctuation
	SuggestedAction string // what the caller should do next; may be empty
	Err             error  // internal cause; logged, never sent
	// Status overrides the class's HTTP status when non-zero (e.g. 413 for
	// file_too_large, which is an invalid argument).
	Status int
	// Final says retrying will not help until someone acts, for a class
	// that is retryable by default (a paused machine without auto_resume
	// is unavailable, but not for a while).
	Final bool
	// RetryAfter, when non-zero, is how long the caller should wait before
	// trying again (sent as Retry-After, in whole seconds rounded up).
	RetryAfter time.Duration
	// Quota names the limit a quota_exceeded error hit.
	Quota *QuotaDetail
}

// QuotaDetail is the limit a request passed and the use it found.
type QuotaDetail struct {
	Name  string `json:"name"`
	Limit int64  `json:"limit"`
	Used  int64  `json:"used"`
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Message + ": " + e.Err.Error()
	}
	return e.Message
}

// Is reports whether target is this error's class.
func (e *Error) Is(target error) bool { return target == e.Class }

// Unwrap returns the internal cause.
func (e *Error) Unwrap() error { return e.Err }

// New returns a public error of the given class and code.
func New(class error, code, message, action string) *Error {
	return &Error{Class: class, Code: code, Message: message, SuggestedAction: action}
}

// Wrap is New with an internal cause attached.
func Wrap(cause, class error, code, message, action string) *Error {
	return &Error{Class: class, Code: code, Message: message, SuggestedAction: action, Err: cause}
}

// Stable public codes. Documented in api/openapi.yaml; never renamed.
const (
	CodeInvalidArgument      = "invalid_argument"
	CodeUnauthenticated      = "unauthenticated"
	CodeNotFound             = "not_found"
	CodeMachineNotFound      = "machine_not_found"
	CodeTemplateNotFound     = "template_not_found"
	CodeTemplateNotReady     = "template_not_ready"
	CodeTemplateInUse        = "template_in_use"
	CodeTemplateExists       = "template_exists"
	CodeMachineNotRunning    = "machine_not_running"
	CodeConflict             = "conflict"
	CodeResourceExhausted    = "resource_exhausted"
	CodeCommandNotFound      = "command_not_found"
	CodeProcessNotFound      = "process_not_found"
	CodeFileNotFound         = "file_not_found"
	CodeFileExists           = "file_exists"
	CodeIsADirectory         = "is_a_directory"
	CodeNotADirectory        = "not_a_directory"
	CodePermissionDenied     = "permission_denied"
	CodeFileTooLarge         = "file_too_large"
	CodeDirectoryNotEmpty    = "directory_not_empty"
	CodeAgentUnavailable     = "agent_unavailable"
	CodeCommandTimeout       = "command_timeout"
	CodeUnavailable          = "unavailable"
	CodeInternal             = "internal"
	CodeDeadlineExceeded     = "deadline_exceeded"
	CodeFailedPrecondition   = "failed_precondition"
	CodeInternetNotAllowed   = "internet_not_allowed"
	CodeInvalidTransition    = "invalid_transition"
	CodeSnapshotNotFound     = "snapshot_not_found"
	CodeSnapshotInUse        = "snapshot_in_use"
	CodeSnapshotCorrupt      = "snapshot_corrupt"
	CodeSnapshotIncompatible = "snapshot_incompatible"
	CodeSnapshotSuperseded   = "snapshot_superseded"
	CodeSnapshotKind         = "snapshot_wrong_kind"
	CodeSnapshotNameExists   = "snapshot_name_exists"
	// CodeSnapshotNotDurable: a restore on a server without the
	// snapshot's files, of a snapshot not yet uploaded to the object
	// store; retryable (the server that took it is uploading it).
	CodeSnapshotNotDurable   = "snapshot_not_durable"
	CodeVolumeNotFound       = "volume_not_found"
	CodeVolumeInUse          = "volume_in_use"
	CodeVolumeExists         = "volume_exists"
	CodeAutoResumeNeedsPause = "auto_resume_requires_pause"
	CodeMachineEphemeral     = "machine_ephemeral"
	CodeNoCommand            = "machine_has_no_command"
	CodeSSHKeyExists         = "ssh_key_exists"
	CodeSSHKeyNotFound       = "ssh_key_not_found"
	CodeSSHKeyInvalid        = "ssh_key_invalid"
	CodeSSHDisabled          = "ssh_disabled"
	CodeWatchNotFound        = "watch_not_found"
	CodeBodyTooLarge         = "body_too_large"
	CodeBodyTooSlow          = "body_too_slow"
	CodeHeadersTooLarge      = "headers_too_large"
	// CodeCapacityExhausted: the host has no room for another sandbox
	// (memory over its overcommit, or no free network slot); retryable.
	CodeCapacityExhausted = "capacity_exhausted"
	// CodeStoreUnavailable: the state database (PostgreSQL) could not be
	// reached; nothing was changed, and a retry can finish the operation.
	CodeStoreUnavailable = "store_unavailable"
	// CodeObjectStoreUnavailable: the object store (--object-store) did not
	// answer, or kept failing, after retries; retryable, 503.
	CodeObjectStoreUnavailable = "object_store_unavailable"
	// CodeRateLimited: the caller (an API key, a source address) or the
	// machine sent requests or opened connections faster than the
	// server's rate limit; 429, retryable after its Retry-After.
	CodeRateLimited = "rate_limited"

	// The edge's codes (public machine URLs; see internal/edge).
	CodeURLInvalid       = "url_invalid"
	CodePortNotAllowed   = "port_not_allowed"
	CodeSignatureMissing = "url_signature_missing"
	CodeSignatureInvalid = "url_signature_invalid"
	// CodeTrafficTokenInvalid: an E2B sandbox's private port without its
	// traffic access token (403; serve --e2b-compat only).
	CodeTrafficTokenInvalid  = "traffic_access_token_invalid"
	CodeURLExpired           = "url_expired"
	CodePortNotListening     = "port_not_listening"
	CodeUpstreamFailed       = "upstream_failed"
	CodePausedAutoResumeOff  = "machine_paused_auto_resume_disabled"
	CodeStoppedAutoResumeOff = "machine_stopped_auto_resume_disabled"
	CodeWakeTimeout          = "machine_wake_timeout"
	CodeWakeFailed           = "machine_wake_failed"
	CodeWakeCapacity         = "machine_wake_capacity_exhausted"
	CodeWakeSnapshotUnusable = "machine_wake_snapshot_unusable"
	CodeWakeBodyTooLarge     = "machine_wake_body_too_large"
	CodeMachineFailed        = "machine_failed"
	CodeMachineUnavailable   = "machine_unavailable"

	// Teams and keys.
	CodeTeamNotFound = "team_not_found"
	CodeTeamExists   = "team_exists"
	// CodeTeamInUse: a team with live machines is deleted only with force.
	CodeTeamInUse   = "team_in_use"
	CodeKeyNotFound = "key_not_found"
	// CodeInsufficientScope: the key is valid but lacks the route's scope
	// (403); the message names the scope.
	CodeInsufficientScope = "insufficient_scope"
	// CodeQuotaExceeded: a team quota refused the request (429); the body
	// names the quota, its limit and the use. Retryable only for the
	// rate of creates.
	CodeQuotaExceeded = "quota_exceeded"
	// CodeIdempotencyKeyReused: an Idempotency-Key sent with another
	// request than the first it came with (422).
	CodeIdempotencyKeyReused = "idempotency_key_reused"
	// CodeIdempotencyKeyInProgress: the first request with the key is
	// still running (409, retryable).
	CodeIdempotencyKeyInProgress = "idempotency_key_in_progress"

	// Many nodes.
	// CodeNodeFenced: the node answering has lost the database, or was
	// declared dead while cut off; it takes no lifecycle call until it has
	// rejoined (503, retryable: another node, or this one soon).
	CodeNodeFenced = "node_fenced"
	// CodeNodeUnreachable: the node that runs the machine did not answer a
	// forwarded call (503, retryable).
	CodeNodeUnreachable = "node_unreachable"
	// CodeNodeNotFound: no node of that name has joined the cluster.
	CodeNodeNotFound = "node_not_found"
)

// ErrFenced is a write refused because its node's fence (its epoch) no
// longer holds: the node was declared dead, or joined again since.
var ErrFenced = &Error{Class: ErrUnavailable, Code: CodeNodeFenced,
	Message:         "this node is fenced off the cluster: it lost the database, or was declared dead while cut off, and takes no lifecycle call until it rejoins",
	SuggestedAction: "retry, or call another node"}

// Codes lists every stable public code; the spec test checks each is documented.
var Codes = []string{
	CodeNodeFenced,
	CodeNodeUnreachable,
	CodeNodeNotFound,
	CodeTeamNotFound,
	CodeTeamExists,
	CodeTeamInUse,
	CodeKeyNotFound,
	CodeInsufficientScope,
	CodeQuotaExceeded,
	CodeIdempotencyKeyReused,
	CodeIdempotencyKeyInProgress,
	CodeSSHKeyExists,
	CodeSSHKeyNotFound,
	CodeSSHKeyInvalid,
	CodeSSHDisabled,
	CodeWatchNotFound,
	CodeCapacityExhausted,
	CodeStoreUnavailable,
	CodeObjectStoreUnavailable,
	CodeRateLimited,
	CodeSnapshotNotDurable,
	CodeBodyTooLarge,
	CodeBodyTooSlow,
	CodeHeadersTooLarge,
	CodeInvalidArgument,
	CodeUnauthenticated,
	CodeNotFound,
	CodeMachineNotFound,
	CodeTemplateNotFound,
	CodeTemplateNotReady,
	CodeTemplateInUse,
	CodeTemplateExists,
	CodeMachineNotRunning,
	CodeConflict,
	CodeResourceExhausted,
	CodeCommandNotFound,
	CodeProcessNotFound,
	CodeFileNotFound,
	CodeFileExists,
	CodeIsADirectory,
	CodeNotADirectory,
	CodePermissionDenied,
	CodeFileTooLarge,
	CodeDirectoryNotEmpty,
	CodeAgentUnavailable,
	CodeCommandTimeout,
	CodeUnavailable,
	CodeInternal,
	CodeDeadlineExceeded,
	CodeFailedPrecondition,
	CodeInternetNotAllowed,
	CodeInvalidTransition,
	CodeSnapshotNotFound,
	CodeSnapshotInUse,
	CodeSnapshotCorrupt,
	CodeSnapshotIncompatible,
	CodeSnapshotSuperseded,
	CodeSnapshotKind,
	CodeSnapshotNameExists,
	CodeVolumeNotFound,
	CodeVolumeInUse,
	CodeVolumeExists,
	CodeAutoResumeNeedsPause,
	CodeMachineEphemeral,
	CodeNoCommand,
	CodeURLInvalid,
	CodePortNotAllowed,
	CodeSignatureMissing,
	CodeSignatureInvalid,
	CodeTrafficTokenInvalid,
	CodeURLExpired,
	CodePortNotListening,
	CodeUpstreamFailed,
	CodePausedAutoResumeOff,
	CodeStoppedAutoResumeOff,
	CodeWakeTimeout,
	CodeWakeFailed,
	CodeWakeCapacity,
	CodeWakeSnapshotUnusable,
	CodeWakeBodyTooLarge,
	CodeMachineFailed,
	CodeMachineUnavailable,
}

// Public is the public view of an error: what the API sends.
type Public struct {
	Status          int
	Code            string
	Message         string
	Retryable       bool
	SuggestedAction string
	// RetryAfter is the Error's, if any: how long to wait before a retry.
	RetryAfter time.Duration
	Quota      *QuotaDetail
	// Hidden says Message is a class's fixed message standing in for the
	// error's own text: the cause is only in the server log, which should
	// then have it whatever the status.
	Hidden bool
}

// LogLevel is how loudly the writer of p logs its cause: a failure (5xx)
// is an error; a refusal whose own text was hidden (Hidden) a warning,
// since the log is the only place that has it; any other refusal debug.
func (p Public) LogLevel() slog.Level {
	switch {
	case p.Status >= 500:
		return slog.LevelError
	case p.Hidden:
		return slog.LevelWarn
	}
	return slog.LevelDebug
}

// Classify maps any error to its public view. Only two kinds of message
// reach a caller: the Message of an *Error (written for callers, and free
// of host paths and other internal text) and the fixed message of a class.
// An error that has a class but is not an *Error (fmt.Errorf("...: %w",
// ErrConflict)) gets its class's message, and an error without a class is
// internal: their text, which can hold host paths, SQL or a runtime's
// output, is the caller's to log, never to send.
func Classify(err error) Public {
	var e *Error
	if errors.As(err, &e) {
		p := classPublic(e.Class)
		p.Code = e.Code
		p.Message = e.Message
		if e.Status != 0 {
			p.Status = e.Status
		}
		if e.SuggestedAction != "" {
			p.SuggestedAction = e.SuggestedAction
		}
		if e.Final {
			p.Retryable = false
		}
		p.RetryAfter = e.RetryAfter
		p.Quota = e.Quota
		return p
	}
	var te *InvalidTransitionError
	if errors.As(err, &te) {
		p := classPublic(ErrConflict)
		p.Code = CodeInvalidTransition
		p.Message = te.Error()
		p.SuggestedAction = "check the machine's state with GET /v1/machines/{id}"
		return p
	}
	for _, class := range []error{ErrNotFound, ErrConflict, ErrInvalidArgument, ErrFailedPrecondition,
		ErrUnauthenticated, ErrResourceExhausted, ErrUnavailable, ErrDeadlineExceeded} {
		if errors.Is(err, class) {
			p := classPublic(class)
			p.Hidden = err != class // a bare class has nothing more to say
			return p
		}
	}
	p := classPublic(ErrInternal)
	p.Hidden = true
	return p
}

func classPublic(class error) Public {
	switch class {
	case ErrNotFound:
		return Public{Status: http.StatusNotFound, Code: CodeNotFound, Message: "not found"}
	case ErrConflict:
		return Public{Status: http.StatusConflict, Code: CodeConflict, Message: "conflict", Retryable: true,
			SuggestedAction: "retry after the operation in progress finishes"}
	case ErrInvalidArgument:
		return Public{Status: http.StatusBadRequest, Code: CodeInvalidArgument, Message: "invalid argument",
			SuggestedAction: "fix the request and send it again"}
	case ErrFailedPrecondition:
		return Public{Status: http.StatusConflict, Code: CodeFailedPrecondition, Message: "failed precondition"}
	case ErrUnauthenticated:
		return Public{Status: http.StatusUnauthorized, Code: CodeUnauthenticated, Message: "missing or invalid API key",
			SuggestedAction: "send Authorization: Bearer <api key>; on the server host the key is in <data dir>/api-key"}
	case ErrForbidden:
		return Public{Status: http.StatusForbidden, Code: CodeInsufficientScope, Message: "the API key lacks the scope this call needs",
			SuggestedAction: "use a key with the scope (nullspace key create --scope ...)"}
	case ErrResourceExhausted:
		return Public{Status: http.StatusTooManyRequests, Code: CodeResourceExhausted, Message: "resource exhausted", Retryable: true,
			SuggestedAction: "kill unused machines or retry later"}
	case ErrUnavailable:
		return Public{Status: http.StatusServiceUnavailable, Code: CodeUnavailable, Message: "unavailable", Retryable: true,
			SuggestedAction: "retry in a few seconds"}
	case ErrDeadlineExceeded:
		return Public{Status: http.StatusGatewayTimeout, Code: CodeDeadlineExceeded, Message: "deadline exceeded", Retryable: true}
	default:
		return Public{Status: http.StatusInternalServerError, Code: CodeInternal, Message: "internal error", Retryable: true,
			SuggestedAction: "retry; if it keeps failing, check the server log"}
	}
}

// RateLimited is the error of a request refused by a rate limit: 429
// rate_limited, retryable after retryAfter. what names what was limited
// ("requests with this API key").
func RateLimited(what string, retryAfter time.Duration) *Error {
	return &Error{Class: ErrResourceExhausted, Code: CodeRateLimited, Status: http.StatusTooManyRequests,
		Message:         "too many " + what + ": over the server's rate limit",
		SuggestedAction: "retry after the Retry-After delay, and send requests more slowly",
		RetryAfter:      retryAfter}
}

// InvalidTransitionError reports a lifecycle transition the state machine does not allow.
type InvalidTransitionError struct {
	ID       string
	From, To string
}

func (e *InvalidTransitionError) Error() string {
	return "machine " + e.ID + " cannot go from " + e.From + " to " + e.To
}

// Is makes InvalidTransitionError match ErrConflict.
func (e *InvalidTransitionError) Is(target error) bool { return target == ErrConflict }
