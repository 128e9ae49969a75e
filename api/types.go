// Package api holds the wire types of the Nullspace HTTP API, shared by the
// server, the Go client and the in-machine agent. The contract itself is
// api/openapi.yaml (embedded as Spec); a test keeps routes and spec in step.
package api

import (
	_ "embed"
	"encoding/json"
	"time"
)

// Spec is the OpenAPI document describing the public API.
//
//go:embed openapi.yaml
var Spec []byte

// Error is the body of every non-2xx response.
type Error struct {
	Code            string `json:"code"`
	Message         string `json:"message"`
	Retryable       bool   `json:"retryable"`
	SuggestedAction string `json:"suggested_action,omitempty"`
	// Quota is set on quota_exceeded: which limit, and the use found.
	Quota *QuotaExceeded `json:"quota,omitempty"`
}

// QuotaExceeded names the quota a request passed.
type QuotaExceeded struct {
	Name  string `json:"name"`
	Limit int64  `json:"limit"`
	Used  int64  `json:"used"`
}

// Machine states. The lifecycle is defined in internal/machine.
const (
	StateCreating = "creating"
	StateRunning  = "running"
	StateKilling  = "killing"
	StateKilled   = "killed"
	StateFailed   = "failed"
	// StatePausing: the machine is being checkpointed and will stop.
	StatePausing = "pausing"
	// StatePaused: the machine is stopped; its memory and files are in a
	// snapshot (SnapshotID). Its id stays as an alias of its lineage.
	StatePaused = "paused"
	// StateResuming: a new machine is being restored from a snapshot.
	StateResuming = "resuming"
	// StateSnapshotting: a running machine is being checkpointed and keeps
	// running (create_snapshot, fork, manual checkpoint).
	StateSnapshotting = "snapshotting"
	// StateRestoring: a machine's state is being replaced in place by one of
	// its checkpoints.
	StateRestoring = "restoring"
	// StateStopping: the machine's processes are being ended and its disk
	// saved (stop).
	StateStopping = "stopping"
	// StateStopped: no process runs and no memory is held; the machine's
	// files are kept (in a snapshot of kind "disk") and start boots it
	// again under the same id.
	StateStopped = "stopped"
	// StateStarting: a stopped machine is being booted from its disk.
	StateStarting = "starting"
)

// MaxDurationMS bounds every duration the API takes in milliseconds
// (timeouts, leases, idle timeouts, URL expiries, grace periods, waits): a
// year. Larger values are refused with 400 invalid_argument; they would
// overflow the server's clock arithmetic.
const MaxDurationMS int64 = 366 * 24 * 60 * 60 * 1000

// Why a machine failed (Machine.FailureReason, the machine.failed event's
// "reason"). Stable codes; the machine's error says it in words.
const (
	// FailureSandboxExit: the machine's sandbox (or its init, the agent)
	// exited.
	FailureSandboxExit = "sandbox_exit"
	// FailureOOM: the host killed the sandbox for exceeding its memory.
	FailureOOM = "oom"
	// FailurePids: the sandbox died at its process limit.
	FailurePids = "pids"
	// FailureAgentUnresponsive: the machine's agent did not answer for
	// longer than the server's bound while its sandbox ran.
	FailureAgentUnresponsive = "agent_unresponsive"
	// FailurePauseFailed: the lease ended and the machine could not be
	// paused (or stopped, with on_timeout "stop"), several times in a row.
	FailurePauseFailed = "pause_failed"
	// FailureSnapshotLost: the snapshot holding its paused state was
	// deleted or could not be kept.
	FailureSnapshotLost = "snapshot_lost"
	// FailureServerRestart: the server stopped during an operation and
	// found the sandbox gone when it started again.
	FailureServerRestart = "server_restart"
	// FailureNodeLost: the node the machine ran on stopped heartbeating
	// and was declared dead; its last durable checkpoint is the state to
	// restore.
	FailureNodeLost = "node_lost"
)

// CreateMachineRequest is the body of POST /v1/machines.
type CreateMachineRequest struct {
	Template string `json:"template,omitempty"`  // default "base"
	CPUCount int    `json:"cpu_count,omitempty"` // vCPUs; default 2
	MemoryMB int    `json:"memory_mb,omitempty"` // default 512
	// DiskMB bounds what the machine writes to its root file system, in
	// MiB: past it, writes fail with ENOSPC inside the machine. Default and
	// maximum are the server's (--disk-default-mb, --disk-max-mb).
	DiskMB        int               `json:"disk_mb,omitempty"`
	Env           map[string]string `json:"env,omitempty"`
	Metadata      map[string]string `json:"metadata,omitempty"`
	AllowInternet bool              `json:"allow_internet,omitempty"`
	// SnapshotID creates the machine from a reusable snapshot (its id or
	// name) instead of a template: memory, processes and files come from
	// the snapshot, and
	// template, cpu_count, memory_mb, disk_mb, env, volumes and hooks are
	// the snapshot's (setting them is an error).
	SnapshotID string `json:"snapshot_id,omitempty"`
	// Volumes are named volumes mounted into the machine.
	Volumes []VolumeMount `json:"volumes,omitempty"`
	// Hooks run inside the machine around pauses and restores.
	Hooks *Hooks `json:"hooks,omitempty"`
	// TimeoutMS is the machine's lease: it ends this long after the machine
	// starts running unless refreshed (POST /v1/machines/{id}/timeout).
	// Default 300000 (5 minutes); at least 1000.
	TimeoutMS *int64 `json:"timeout_ms,omitempty"`
	// OnTimeout is what the end of the lease does: "destroy" (default),
	// "pause" (hibernate: memory and files kept, the id stays an alias) or
	// "stop" (files kept, memory and processes dropped, as POST
	// /v1/machines/{id}/stop: start, connect or a wake boots it cold).
	OnTimeout string `json:"on_timeout,omitempty"`
	// AutoResume lets public traffic wake the machine once paused or
	// stopped; it needs on_timeout "pause" or "stop".
	AutoResume bool `json:"auto_resume,omitempty"`
	// IdleTimeoutMS pauses the machine after this long without network
	// activity (API commands and file calls, packets through its
	// interface); absent or 0: never. At least 1000.
	IdleTimeoutMS int64 `json:"idle_timeout_ms,omitempty"`
	// Persistence of the machine's paused state: "persistent" (default:
	// kept until deleted), "sticky" (kept, but evicted oldest first when
	// the server's snapshot storage budget is exceeded) or "ephemeral"
	// (nothing kept: where it would be paused, it is destroyed).
	Persistence string `json:"persistence,omitempty"`
	// Command is the machine's main process (argv), started when the
	// machine boots and again on every start after a stop. Wait returns
	// its exit status. Absent: the machine has no main process.
	Command []string `json:"command,omitempty"`
	// PublicPorts makes every port of the machine reachable through the
	// edge without a signed URL (the unsigned URL of POST .../urls).
	PublicPorts bool `json:"public_ports,omitempty"`
	// CheckpointRetention is how many unpinned states of its history
	// (pauses, checkpoints) the machine keeps; older ones are pruned.
	// Absent: the server's default (--checkpoint-retention); 0: all.
	CheckpointRetention *int `json:"checkpoint_retention,omitempty"`
	// Origin is set by the server's own front doors, never by a client:
	// "e2b" for a sandbox created through the E2B-compatible API.
	Origin string `json:"-"`
}

// Persistence policies.
const (
	PersistencePersistent = "persistent"
	PersistenceSticky     = "sticky"
	PersistenceEphemeral  = "ephemeral"
)

// Timeout actions: on_timeout takes destroy, pause or stop, timeout_action
// destroy, hibernate (the same thing as pause) or stop.
const (
	TimeoutDestroy   = "destroy"
	TimeoutPause     = "pause"
	TimeoutHibernate = "hibernate"
	TimeoutStop      = "stop"
)

// SetTimeoutRequest refreshes a machine's lease: the deadline becomes
// timeout_ms from now.
type SetTimeoutRequest struct {
	TimeoutMS int64 `json:"timeout_ms"`
	// TimeoutAction is "destroy", "hibernate" or "stop"; empty keeps the
	// current one.
	TimeoutAction string `json:"timeout_action,omitempty"`
}

// Event types. Every lifecycle transition and failure emits one.
const (
	EventMachineCreated      = "machine.created"
	EventMachinePaused       = "machine.paused"
	EventMachineResumed      = "machine.resumed"
	EventMachineResumeFailed = "machine.resume_failed"
	EventMachineRestored     = "machine.restored"
	EventMachineTimeout      = "machine.timeout"
	EventMachineIdle         = "machine.idle"
	EventMachineKilled       = "machine.killed"
	EventMachineStopped      = "machine.stopped"
	EventMachineStarted      = "machine.started"
	EventMachineStartFailed  = "machine.start_failed"
	EventMachineExited       = "machine.exited" // its main process exited
	EventMachineFailed       = "machine.failed"
	EventSnapshotCreated     = "snapshot.created"
	EventSnapshotDurable     = "snapshot.durable"
	EventSnapshotDeleted     = "snapshot.deleted"
	EventSnapshotPruned      = "snapshot.pruned" // removed by checkpoint retention
	EventLeaseUpdated        = "lease.updated"
)

// Event is a lifecycle event. Seq grows by one per event on the server:
// a client that lost its stream resumes it with after=<last seq>.
type Event struct {
	Seq       int64     `json:"seq"`
	Type      string    `json:"type"`
	TeamID    string    `json:"team_id"`
	MachineID string    `json:"machine_id,omitempty"`
	Time      time.Time `json:"time"`
	// Cause is what made it happen: "api" (a client call), "timeout" (the
	// lease ended), "idle" (idle suspend), "reconcile" (the server's
	// start), "sandbox_exit".
	Cause   string         `json:"cause"`
	Details map[string]any `json:"details,omitempty"`
}

// EventList is a page of events.
type EventList struct {
	Events []Event `json:"events"`
	// NextToken fetches the next page (?next_token=); empty when this page
	// was not full. New events later are read with after=<last seq>.
	NextToken string `json:"next_token"`
}

// MetricSample is one measurement of a running machine. Counters (CPU, net)
// are turned into what happened since the previous sample.
type MetricSample struct {
	Timestamp time.Time `json:"timestamp"`
	CPUCount  int       `json:"cpu_count"`
	// CPUUsedPct is the CPU used since the previous sample, in percent of
	// the machine's cpu_count (100: every vCPU busy).
	CPUUsedPct float64 `json:"cpu_used_pct"`
	MemUsed    uint64  `json:"mem_used"`
	MemTotal   uint64  `json:"mem_total"`
	// DiskUsed is what the machine wrote to its root filesystem (the
	// blocks its private overlay takes on the host); DiskTotal is the
	// machine's own limit on it (disk_mb), in bytes.
	DiskUsed  uint64 `json:"disk_used"`
	DiskTotal uint64 `json:"disk_total"`
	// NetRxBytes and NetTxBytes are the bytes received and sent since the
	// machine started.
	NetRxBytes uint64 `json:"net_rx_bytes"`
	NetTxBytes uint64 `json:"net_tx_bytes"`
}

// MetricList is a machine's recent samples, oldest first.
type MetricList struct {
	Metrics []MetricSample `json:"metrics"`
}

// Lease is a machine's effective timeout.
type Lease struct {
	// TimeoutMS is the window in effect.
	TimeoutMS int64 `json:"timeout_ms"`
	// TimeoutAt is the absolute deadline; absent while the lease does not
	// run (a paused machine: its window restarts when it resumes).
	TimeoutAt *time.Time `json:"timeout_at,omitempty"`
	// RemainingMS is the time left until TimeoutAt, clamped at 0; for a
	// paused machine, the window it will have when it resumes.
	RemainingMS int64 `json:"remaining_ms"`
	// TimeoutAction is what fires at the deadline: "destroy", "hibernate"
	// or "stop".
	TimeoutAction string `json:"timeout_action"`
}

// VolumeMount mounts a named volume at Path inside a machine.
type VolumeMount struct {
	Name     string `json:"name"`
	Path     string `json:"path"`
	ReadOnly bool   `json:"read_only,omitempty"`
}

// Machine is the public view of a machine.
type Machine struct {
	ID       string `json:"id"`
	State    string `json:"state"`
	Template string `json:"template"`
	CPUCount int    `json:"cpu_count"`
	MemoryMB int    `json:"memory_mb"`
	// DiskMB is the limit on what the machine writes to its root file
	// system, in MiB.
	DiskMB        int               `json:"disk_mb"`
	Env           map[string]string `json:"env,omitempty"`
	Metadata      map[string]string `json:"metadata,omitempty"`
	AllowInternet bool              `json:"allow_internet"`
	IP            string            `json:"ip,omitempty"`
	CreatedAt     time.Time         `json:"created_at"`
	StartedAt     *time.Time        `json:"started_at,omitempty"`
	EndedAt       *time.Time        `json:"ended_at,omitempty"`
	// Error says why a machine is failed; empty otherwise.
	Error string `json:"error,omitempty"`
	// FailureReason is why a machine is failed as a stable code (one of
	// the Failure* constants); empty otherwise.
	FailureReason string        `json:"failure_reason,omitempty"`
	Volumes       []VolumeMount `json:"volumes,omitempty"`
	Hooks         *Hooks        `json:"hooks,omitempty"`
	// SnapshotID is the snapshot holding a paused machine's state.
	SnapshotID string `json:"snapshot_id,omitempty"`
	// LineageID is the id of the first machine of the pause/resume chain
	// this machine belongs to; every id of the chain is an alias that
	// connect() follows to the latest execution.
	LineageID string `json:"lineage_id"`
	// LatestID is the lineage's latest execution (this machine's id when it
	// is the latest).
	LatestID string `json:"latest_id"`
	// PausedAliases counts the lineage's earlier executions that are paused
	// aliases: ids handed out before, which GET and connect still follow
	// to the latest execution.
	PausedAliases int `json:"paused_aliases,omitempty"`
	// SnapshotBytes is what the machine's history (its lineage's
	// committed snapshots: pauses, checkpoints, reusable snapshots, a
	// stopped disk) takes on disk.
	SnapshotBytes int64 `json:"snapshot_bytes,omitempty"`
	// RestoredFrom is the snapshot this execution was restored from.
	RestoredFrom string `json:"restored_from,omitempty"`
	// The lease (see Lease); absent for a killed or failed machine.
	TimeoutMS     int64      `json:"timeout_ms,omitempty"`
	TimeoutAt     *time.Time `json:"timeout_at,omitempty"`
	RemainingMS   int64      `json:"remaining_ms,omitempty"`
	TimeoutAction string     `json:"timeout_action,omitempty"`
	// OnTimeout is the lease's policy ("destroy", "pause" or "stop") and
	// AutoResume whether public traffic wakes the machine once paused or
	// stopped.
	OnTimeout  string `json:"on_timeout,omitempty"`
	AutoResume bool   `json:"auto_resume,omitempty"`
	// IdleTimeoutMS and Persistence: see CreateMachineRequest.
	IdleTimeoutMS int64  `json:"idle_timeout_ms,omitempty"`
	Persistence   string `json:"persistence,omitempty"`
	// Command is the machine's main process (see CreateMachineRequest);
	// MainPID its pid in the current boot, 0 when it has none.
	Command []string `json:"command,omitempty"`
	MainPID int      `json:"main_pid,omitempty"`
	// Exit is how the main process ended, once it has (in this boot).
	Exit *MainExit `json:"exit,omitempty"`
	// PublicPorts: see CreateMachineRequest.
	PublicPorts bool `json:"public_ports,omitempty"`
	// CheckpointRetention is the retention in effect (0: all kept).
	CheckpointRetention int `json:"checkpoint_retention"`
}

// MachineURLRequest is the body of POST /v1/machines/{id}/urls.
type MachineURLRequest struct {
	Port int `json:"port"`
	// ExpiresInMS makes the URL stop working this long from now; absent
	// or 0: it works as long as the machine lives (and the edge secret is
	// not rotated).
	ExpiresInMS int64 `json:"expires_in_ms,omitempty"`
}

// MachineURL is a public URL of a machine's port, served by the edge. It
// names the machine's lineage, so it stays valid across pauses and resumes
// and always reaches the latest execution. Every path and query appended to
// it is authorized.
type MachineURL struct {
	// URL is the one to use: on a localhost edge domain the path form
	// (which glibc-based clients can resolve; browsers are redirected to
	// OriginURL), else the origin form.
	URL string `json:"url"`
	// WSURL is URL with ws:// or wss://, for WebSockets.
	WSURL string `json:"ws_url"`
	// OriginURL is the origin form, {port}-{id}-{signature}.{domain}: the
	// port as a browser origin of its own. It needs *.{domain} to resolve
	// (browsers and curl resolve *.localhost; elsewhere wildcard DNS).
	OriginURL string `json:"origin_url"`
	// PathURL is the path form, {edge}/m/{label}, which needs no DNS.
	PathURL   string `json:"path_url"`
	Port      int    `json:"port"`
	LineageID string `json:"lineage_id"`
	// ExpiresAt is when the URL stops working; absent: never.
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
	// Public: the machine's ports are public and the URL carries no
	// signature.
	Public bool `json:"public"`
}

// MainExit is how a machine's main process ended: the body of
// GET /v1/machines/{id}/wait and Machine.Exit.
type MainExit struct {
	ExitCode int `json:"exit_code"`
	// Signal names the signal that ended it, if one did (a stop sends
	// SIGTERM, then SIGKILL after the grace period).
	Signal string    `json:"signal,omitempty"`
	At     time.Time `json:"at"`
}

// StopMachineRequest is the (optional) body of POST /v1/machines/{id}/stop.
type StopMachineRequest struct {
	// GraceMS is how long processes have to exit after SIGTERM before
	// they are killed; default 10000, at most 300000, 0 kills at once.
	GraceMS *int64 `json:"grace_ms,omitempty"`
}

// Snapshot kinds.
const (
	// SnapshotHibernate holds a paused machine's state (pause).
	SnapshotHibernate = "hibernate"
	// SnapshotReusable is a snapshot of a running machine that children are
	// created from (create_snapshot, fork).
	SnapshotReusable = "snapshot"
	// SnapshotCheckpoint is a manual checkpoint of a running machine, kept
	// in its history.
	SnapshotCheckpoint = "checkpoint"
	// SnapshotDisk holds a stopped machine's files and no process: start
	// boots from it and then deletes it.
	SnapshotDisk = "disk"
)

// Snapshot is the public view of a snapshot.
type Snapshot struct {
	ID        string    `json:"id"`
	Kind      string    `json:"kind"`
	MachineID string    `json:"machine_id"`
	LineageID string    `json:"lineage_id"`
	Template  string    `json:"template"`
	SizeBytes int64     `json:"size_bytes"`
	CreatedAt time.Time `json:"created_at"`
	// ParentID is the snapshot the source machine was restored from.
	ParentID string `json:"parent_id,omitempty"`
	// Generation counts the states of a lineage: 1 for a machine's first
	// checkpoint, parent's generation + 1 after.
	Generation int `json:"generation"`
	// Checksum is the CRC-32C of the checkpoint files' checksums.
	Checksum string `json:"checksum"`
	// PauseWindowMS is how long the source machine was stopped to take it
	// (for a hibernate snapshot, the time to checkpoint before it stopped).
	PauseWindowMS  int64  `json:"pause_window_ms"`
	RuntimeVersion string `json:"runtime_version"`
	Kernel         string `json:"kernel"`
	// Children counts live machines created or resumed from this snapshot.
	Children int `json:"children"`
	// Pinned: kept whatever the machine's checkpoint retention.
	Pinned bool `json:"pinned,omitempty"`
	// Name is the snapshot's name, unique in the team; usable wherever
	// its id is.
	Name string `json:"name,omitempty"`
	// Durable: its files are in the server's object store, so that any
	// server sharing it can restore the snapshot, and losing this host's
	// disk loses nothing. Always false without --object-store.
	Durable bool `json:"durable"`
}

// CreateSnapshotRequest is the (optional) body of
// POST /v1/machines/{id}/snapshots.
type CreateSnapshotRequest struct {
	// Name names the snapshot: 1 to 128 lower-case letters, digits, '-'
	// and '_', starting with a letter or digit, not with "snp_"; unique in
	// the team (snapshot_name_exists). Usable wherever the id is.
	Name string `json:"name,omitempty"`
}

// SnapshotList is the body of GET /v1/snapshots and GET .../checkpoints:
// a page.
type SnapshotList struct {
	Snapshots []Snapshot `json:"snapshots"`
	// NextToken fetches the next page (?next_token=); empty on the last.
	NextToken string `json:"next_token"`
}

// ForkRequest is the body of POST /v1/machines/{id}/fork.
type ForkRequest struct {
	Count int `json:"count"`
}

// ForkResult is the response of a fork: the snapshot taken and its children.
type ForkResult struct {
	Snapshot Snapshot  `json:"snapshot"`
	Machines []Machine `json:"machines"`
}

// Volume is a named directory on the server host that machines mount. It is
// external storage: not part of snapshots, remounted on resume and in every
// child.
type Volume struct {
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
	SizeBytes int64     `json:"size_bytes"`
	// Machines counts the machines that mount it and are not killed (one
	// per machine: its latest execution; paused aliases are not counted).
	Machines int `json:"machines"`
}

// FileEvent is one event of a file watch (GET .../files/watch), a line
// of its NDJSON stream.
type FileEvent struct {
	Type string `json:"type"` // a FileEvent* constant
	// Seq numbers the watch's events from 1; resume after the last seen.
	Seq     int64     `json:"seq,omitempty"`
	Path    string    `json:"path,omitempty"`
	OldPath string    `json:"old_path,omitempty"` // rename: where it was
	IsDir   bool      `json:"is_dir,omitempty"`
	Time    time.Time `json:"time"`
	// WatchID names the watch (the "watching" event) to resume it by.
	WatchID string `json:"watch_id,omitempty"`
	// Lost counts the events after the resume point that the machine no
	// longer holds (the "lost" event).
	Lost int64 `json:"lost,omitempty"`
	// Entry describes Path as it was when the event was seen, on create,
	// write, chmod and rename events of a watch started with entry=true;
	// absent when it was gone by then.
	Entry *FileInfo `json:"entry,omitempty"`
}

// File event types.
const (
	FileEventCreate = "create"
	FileEventWrite  = "write"
	FileEventRemove = "remove"
	FileEventRename = "rename"
	FileEventChmod  = "chmod"
	// FileEventWatching comes first on a new watch, with its WatchID.
	FileEventWatching = "watching"
	// FileEventLost says events were dropped (Lost of them): the reader
	// resumed from further back than the machine holds.
	FileEventLost = "lost"
	// FileEventOverflow says the kernel's queue overflowed: some changes
	// were not seen.
	FileEventOverflow = "overflow"
	// FileEventEnd is last: the watched directory is gone, or the watch
	// was removed.
	FileEventEnd = "end"
)

// SSHKey is a public key that opens SSH sessions in its team's machines
// (nullspace serve --ssh-addr).
type SSHKey struct {
	ID          string    `json:"id"`
	Name        string    `json:"name"`
	Fingerprint string    `json:"fingerprint"` // SHA256:..., as ssh-keygen -l prints it
	PublicKey   string    `json:"public_key"`  // authorized_keys form
	CreatedAt   time.Time `json:"created_at"`
}

// AddSSHKeyRequest is the body of POST /v1/ssh-keys.
type AddSSHKeyRequest struct {
	// PublicKey is one line of authorized_keys form ("ssh-ed25519 AAAA...
	// comment"), as in ~/.ssh/id_ed25519.pub.
	PublicKey string `json:"public_key"`
	// Name defaults to the key's comment.
	Name string `json:"name,omitempty"`
}

// SSHKeyList is the answer of GET /v1/ssh-keys: all of the team's keys
// (at most 1000), oldest first.
type SSHKeyList struct {
	Keys []SSHKey `json:"keys"`
}

// SSHTokenRequest is the body of POST /v1/machines/{id}/ssh-token.
type SSHTokenRequest struct {
	// TTLSeconds is how long the token signs in; default 600, at most 86400.
	TTLSeconds int `json:"ttl_seconds,omitempty"`
}

// SSHToken is a short-lived password for SSH sessions in one machine.
type SSHToken struct {
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
	// User is the SSH user name: the machine's lineage id, which follows
	// the machine across pauses and resumes.
	User string `json:"user"`
	// Host and Port are the gateway's address as clients reach it.
	Host string `json:"host"`
	Port int    `json:"port"`
	// Command is a ready ssh command line (the token is its password).
	Command string `json:"command"`
}

// CreateVolumeRequest is the body of POST /v1/volumes.
type CreateVolumeRequest struct {
	Name string `json:"name"`
}

// VolumeList is the body of GET /v1/volumes: a page.
type VolumeList struct {
	Volumes []Volume `json:"volumes"`
	// NextToken fetches the next page (?next_token=); empty on the last.
	NextToken string `json:"next_token"`
}

// MachineList is the body of GET /v1/machines: a page.
type MachineList struct {
	Machines []Machine `json:"machines"`
	// NextToken fetches the next page (?next_token=); empty on the last.
	NextToken string `json:"next_token"`
}

// RunCommandRequest is the body of POST /v1/machines/{id}/commands and of the
// agent's POST /commands.
type RunCommandRequest struct {
	// Exactly one of Cmd (argv) and Shell (a string run with /bin/sh -c).
	Cmd   []string          `json:"cmd,omitempty"`
	Shell string            `json:"shell,omitempty"`
	Cwd   string            `json:"cwd,omitempty"`
	Env   map[string]string `json:"env,omitempty"`
	User  string            `json:"user,omitempty"` // name or uid; default root
	Stdin string            `json:"stdin,omitempty"`
	// KeepStdinOpen leaves stdin open for later writes (background commands).
	KeepStdinOpen bool `json:"keep_stdin_open,omitempty"`
	// TimeoutMS kills the command after this long; 0 means no limit for
	// background commands and the server default (60 s) for foreground ones.
	TimeoutMS int64 `json:"timeout_ms,omitempty"`
	// Background returns at once with the pid; output is kept and can be
	// streamed with GET .../commands/{pid}/output.
	Background bool `json:"background,omitempty"`
	// Stream returns the command's events (start, stdout, stderr, exit) as a
	// stream (SSE or NDJSON, by the Accept header) instead of one result.
	Stream bool `json:"stream,omitempty"`
	// PTY runs the command on a pseudo-terminal of this size, in a session
	// of its own with the terminal as its controlling one (job control:
	// Ctrl-C and Ctrl-Z written to stdin reach the foreground process
	// group). Its output, stdout and stderr together as the terminal
	// shows them, is the stdout stream; stdin stays open (write raw bytes
	// with StdinRequest.Bytes). TERM is xterm-256color unless Env sets it.
	PTY *PTYSize `json:"pty,omitempty"`
}

// PTYSize is a terminal's size in character cells: 1 to MaxPTYRows rows
// and 1 to MaxPTYCols columns. It is the body of POST .../resize.
type PTYSize struct {
	Rows int `json:"rows"`
	Cols int `json:"cols"`
}

// Bounds of a PTY's size.
const (
	MaxPTYRows = 1000
	MaxPTYCols = 1000
)

// CommandResult is the response of a foreground command.
type CommandResult struct {
	PID      int    `json:"pid"`
	ExitCode int    `json:"exit_code"`
	Stdout   string `json:"stdout"`
	Stderr   string `json:"stderr"`
	// Signal names the signal that ended the process, if any (e.g. "SIGKILL").
	Signal   string `json:"signal,omitempty"`
	TimedOut bool   `json:"timed_out,omitempty"`
	// Truncated reports that output beyond the buffer limit was dropped
	// from the front of Stdout or Stderr.
	Truncated bool `json:"truncated,omitempty"`
}

// CommandStarted is the response of a background command.
type CommandStarted struct {
	PID int `json:"pid"`
}

// Event types of a command output stream.
const (
	EventStart  = "start"
	EventStdout = "stdout"
	EventStderr = "stderr"
	EventExit   = "exit"
	EventError  = "error"
)

// CommandEvent is one event of a command output stream. Data is raw bytes
// (base64 in JSON) so chunks that split a UTF-8 sequence or carry binary
// output survive intact.
type CommandEvent struct {
	Type string `json:"type"`
	PID  int    `json:"pid,omitempty"`
	Data []byte `json:"data,omitempty"`
	// Offset is the byte offset of Data in the stream named by Type
	// (stdout or stderr); with ?offset= a client resumes without duplicates.
	Offset   int64  `json:"offset,omitempty"`
	ExitCode *int   `json:"exit_code,omitempty"`
	Signal   string `json:"signal,omitempty"`
	TimedOut bool   `json:"timed_out,omitempty"`
	Error    *Error `json:"error,omitempty"`
}

// Process describes a command the agent started.
type Process struct {
	PID       int       `json:"pid"`
	Cmd       []string  `json:"cmd"`
	Cwd       string    `json:"cwd,omitempty"`
	User      string    `json:"user,omitempty"`
	StartedAt time.Time `json:"started_at"`
	Running   bool      `json:"running"`
	ExitCode  *int      `json:"exit_code,omitempty"`
	// PTY is the size of the command's terminal, if it runs on one.
	PTY *PTYSize `json:"pty,omitempty"`
}

// ProcessList is the body of GET .../commands.
type ProcessList struct {
	Processes []Process `json:"processes"`
}

// StdinRequest writes to a background command's stdin.
type StdinRequest struct {
	Data string `json:"data,omitempty"`
	// Bytes are raw bytes written after Data (base64 in JSON): keystrokes
	// such as Ctrl-C ("Aw==") for a PTY, or binary input.
	Bytes []byte `json:"bytes,omitempty"`
	Close bool   `json:"close,omitempty"` // close stdin after writing (not for a PTY)
}

// SignalRequest sends a signal to a command's process group.
type SignalRequest struct {
	Signal string `json:"signal"` // e.g. "SIGTERM", "TERM" or "15"
}

// FileInfo describes a file in a machine.
type FileInfo struct {
	Name    string    `json:"name"`
	Path    string    `json:"path"`
	Type    string    `json:"type"` // "file", "dir", "symlink", "other"
	Size    int64     `json:"size"`
	Mode    string    `json:"mode"` // octal permission bits, e.g. "0644"
	ModTime time.Time `json:"mod_time"`
	Target  string    `json:"symlink_target,omitempty"`
	// Owner and Group are the names of the file's uid and gid in the
	// machine's /etc/passwd and /etc/group, or the number when it has no
	// entry. Empty from agents older than these fields.
	Owner string `json:"owner,omitempty"`
	Group string `json:"group,omitempty"`
	// Metadata is the user metadata kept on a file or directory as
	// extended attributes (user.e2b.KEY), as written with PUT .../files.
	Metadata map[string]string `json:"metadata,omitempty"`
}

// FileList is the body of GET .../files/list.
type FileList struct {
	Entries []FileInfo `json:"entries"`
}

// MkdirRequest is the body of POST .../files/mkdir.
type MkdirRequest struct {
	Path string `json:"path"`
	// User is who creates the directories (name or uid); default root,
	// as for commands.
	User string `json:"user,omitempty"`
	// ParentsAsRoot: a directory the user may not make is made by root and
	// given to the user, as E2B's envd does.
	ParentsAsRoot bool `json:"parents_as_root,omitempty"`
}

// RenameRequest is the body of POST .../files/rename.
type RenameRequest struct {
	From string `json:"from"`
	To   string `json:"to"`
	// User is who renames (name or uid); default root, as for commands.
	User string `json:"user,omitempty"`
}

// WriteResult is the response of PUT .../files.
type WriteResult struct {
	Path string `json:"path"`
	Size int64  `json:"size"`
	// Metadata is what the write stored on the file (it replaces any the
	// file had).
	Metadata map[string]string `json:"metadata,omitempty"`
}

// Template states.
const (
	TemplateBuilding = "building"
	TemplateReady    = "ready"
	TemplateFailed   = "failed"
)

// Template is the public view of a template.
type Template struct {
	Name      string            `json:"name"`
	State     string            `json:"state"`
	Workdir   string            `json:"workdir,omitempty"`
	Env       map[string]string `json:"env,omitempty"`
	SizeBytes int64             `json:"size_bytes"`
	CreatedAt time.Time         `json:"created_at"`
	Error     string            `json:"error,omitempty"`
	// Source says what the template was built from, e.g. "builtin:base",
	// "template:base", "dir:/srv/rootfs", "tarball:/tmp/x.tar", "upload".
	Source string `json:"source,omitempty"`
	// Digest names the root filesystem by its content, "sha256:<hex>"
	// (internal/template/digest.go defines it): two templates with the
	// same digest boot from the same files, on any host. Empty while
	// building, for a failed template, and for one made by an older
	// server until it is computed.
	Digest string `json:"digest,omitempty"`
	// TeamID is the team that owns the template; empty for the built-in
	// ones, which every team may use and none may change.
	TeamID string `json:"team_id,omitempty"`
}

// TemplateList is the body of GET /v1/templates: a page.
type TemplateList struct {
	Templates []Template `json:"templates"`
	// NextToken fetches the next page (?next_token=); empty on the last.
	NextToken string `json:"next_token"`
}

// BuildTemplateRequest is the body of POST /v1/templates, or its request part
// when a tarball is uploaded (multipart/form-data; the upload is then the
// source and the request names none). Otherwise exactly one source:
// FromTemplate (an existing template), FromDir or FromTarball (paths on the
// server host, taken only inside its --template-source-dir directories).
// Steps are shell commands run inside a machine booted from the source; their
// changes become part of the new template.
type BuildTemplateRequest struct {
	Name         string            `json:"name"`
	FromTemplate string            `json:"from_template,omitempty"`
	FromDir      string            `json:"from_dir,omitempty"`
	FromTarball  string            `json:"from_tarball,omitempty"`
	Steps        []string          `json:"steps,omitempty"`
	Workdir      string            `json:"workdir,omitempty"`
	Env          map[string]string `json:"env,omitempty"`
}

// Agent lifecycle calls, made by the server around a checkpoint. They are
// the agent's own routes (not proxied from the public API).

// Hooks are user commands run inside a machine around a pause: OnPause
// before the checkpoint is taken, OnResume after every restore (resume,
// snapshot child, checkpoint restore). Each is a shell command line.
type Hooks struct {
	OnPause  []string `json:"on_pause,omitempty"`
	OnResume []string `json:"on_resume,omitempty"`
}

// AgentPrepareRequest is the body of the agent's POST /lifecycle/prepare,
// called just before a checkpoint: the agent runs the hooks, then flushes
// every filesystem (sync) so the checkpoint holds what was written.
type AgentPrepareRequest struct {
	Hooks []string `json:"hooks,omitempty"`
	// TimeoutMS bounds all hooks together; default 30 s.
	TimeoutMS int64 `json:"timeout_ms,omitempty"`
}

// AgentRestoredRequest is the body of the agent's POST /lifecycle/restored,
// called once after every restore, authenticated with the token the agent
// had when it was checkpointed. The agent adopts the new identity (machine
// id, hostname, token: later calls must use the new token), records the
// restore, checks its clock against Now, then runs the hooks.
type AgentRestoredRequest struct {
	MachineID string    `json:"machine_id"`
	Hostname  string    `json:"hostname"`
	Token     string    `json:"token"`
	Now       time.Time `json:"now"`
	// Files are rewritten in the machine (e.g. /etc/hosts, /etc/hostname).
	Files     map[string]string `json:"files,omitempty"`
	Hooks     []string          `json:"hooks,omitempty"`
	TimeoutMS int64             `json:"timeout_ms,omitempty"`
}

// HookResult is the outcome of one hook command.
type HookResult struct {
	Command    string `json:"command"`
	ExitCode   int    `json:"exit_code"`
	Output     string `json:"output,omitempty"` // stdout and stderr, last 4 KiB
	DurationMS int64  `json:"duration_ms"`
	TimedOut   bool   `json:"timed_out,omitempty"`
}

// AgentStopRequest is the body of the agent's POST /lifecycle/stop: end
// every process (SIGTERM, then SIGKILL after GraceMS), forget them, clear
// /dev/shm and sync, so that a checkpoint taken next holds only files.
type AgentStopRequest struct {
	GraceMS int64 `json:"grace_ms"`
}

// AgentStopResult is the response of POST /lifecycle/stop.
type AgentStopResult struct {
	// Ended is how many of the commands the agent tracked were running.
	Ended int `json:"ended"`
	// Killed is true when something had to be sent SIGKILL.
	Killed bool `json:"killed"`
	// Main is how the main process ended, whether the stop ended it or it
	// had exited before; nil when there is none.
	Main *MainExit `json:"main,omitempty"`
}

// AgentLifecycleResult is the response of both lifecycle calls.
type AgentLifecycleResult struct {
	Hooks []HookResult `json:"hooks,omitempty"`
	// ClockSkewMS is the agent's clock minus Now, measured on restore.
	ClockSkewMS int64 `json:"clock_skew_ms,omitempty"`
	// SyncMS is how long the filesystem flush took (prepare).
	SyncMS int64 `json:"sync_ms,omitempty"`
}

// AgentRestoreInfo is what the agent knows about its restores; GET /health
// reports it and /run/nullspace/restore.json holds it for user processes.
type AgentRestoreInfo struct {
	MachineID    string    `json:"machine_id"`
	RestoreCount int       `json:"restore_count"`
	RestoredAt   time.Time `json:"restored_at,omitempty"`
}

// AgentReclaimResult is the answer of the agent's POST /lifecycle/reclaim:
// the process it killed to give memory back (PID 0: none was left to kill).
type AgentReclaimResult struct {
	PID      int    `json:"pid"`
	Command  string `json:"command,omitempty"`
	RSSBytes int64  `json:"rss_bytes,omitempty"`
}

// Team owns machines, snapshots, volumes, templates and API keys
// (GET/POST /v1/teams, operator scope).
type Team struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
}

// CreateTeamRequest is the body of POST /v1/teams.
type CreateTeamRequest struct {
	Name string `json:"name"`
}

// TeamList is the body of GET /v1/teams.
type TeamList struct {
	Teams []Team `json:"teams"`
}

// APIKey describes an API key; the key itself is shown only once, in
// CreatedAPIKey.
type APIKey struct {
	ID     string `json:"id"`
	TeamID string `json:"team_id"`
	Name   string `json:"name"`
	// Prefix is the key's first characters, to tell keys apart.
	Prefix     string     `json:"prefix"`
	Scopes     []string   `json:"scopes"`
	CreatedAt  time.Time  `json:"created_at"`
	LastUsedAt *time.Time `json:"last_used_at,omitempty"`
	ExpiresAt  *time.Time `json:"expires_at,omitempty"`
	RevokedAt  *time.Time `json:"revoked_at,omitempty"`
}

// CreatedAPIKey is the answer to POST /v1/keys: the key's description and
// the key, which is not stored and cannot be shown again.
type CreatedAPIKey struct {
	APIKey
	Key string `json:"key"`
}

// CreateAPIKeyRequest is the body of POST /v1/keys.
type CreateAPIKeyRequest struct {
	Name string `json:"name"`
	// TeamID is the team the key acts for; default the caller's. Only an
	// operator key names another team.
	TeamID string `json:"team_id,omitempty"`
	// Scopes: at least one of machines:read, machines:write,
	// templates:write, keys:admin, operator; no more than the caller's.
	Scopes []string `json:"scopes"`
	// ExpiresAt, if set, is when the key stops working (in the future).
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
}

// APIKeyList is the body of GET /v1/keys.
type APIKeyList struct {
	Keys []APIKey `json:"keys"`
}

// QuotaLimits are a team's limits; 0 is no limit.
type QuotaLimits struct {
	RunningMachines  int64 `json:"running_machines"`
	VCPUs            int64 `json:"vcpus"`
	MemoryMB         int64 `json:"memory_mb"`
	SnapshotBytes    int64 `json:"snapshot_bytes"`
	CreatesPerMinute int64 `json:"creates_per_minute"`
	// APIRate and APIBurst are the rate limit of each of the team's API
	// keys (requests a second; at once).
	APIRate  int64 `json:"api_rate"`
	APIBurst int64 `json:"api_burst"`
}

// QuotaUsage is what a team holds now: the machines with a sandbox, their
// vCPUs and memory, its snapshots' bytes, and its creates in the last
// minute.
type QuotaUsage struct {
	RunningMachines  int64 `json:"running_machines"`
	VCPUs            int64 `json:"vcpus"`
	MemoryMB         int64 `json:"memory_mb"`
	SnapshotBytes    int64 `json:"snapshot_bytes"`
	CreatesPerMinute int64 `json:"creates_per_minute"`
}

// Quotas is the body of GET /v1/quotas.
type Quotas struct {
	TeamID string      `json:"team_id"`
	Limits QuotaLimits `json:"limits"`
	Usage  QuotaUsage  `json:"usage"`
}

// SetQuotaRequest is the body of PUT /v1/teams/{id}/quota: the team's own
// limits; a limit left out takes the server's default, 0 is no limit.
type SetQuotaRequest struct {
	RunningMachines  *int64 `json:"running_machines,omitempty"`
	VCPUs            *int64 `json:"vcpus,omitempty"`
	MemoryMB         *int64 `json:"memory_mb,omitempty"`
	SnapshotBytes    *int64 `json:"snapshot_bytes,omitempty"`
	CreatesPerMinute *int64 `json:"creates_per_minute,omitempty"`
	APIRate          *int64 `json:"api_rate,omitempty"`
	APIBurst         *int64 `json:"api_burst,omitempty"`
}

// AuditEntry is one entry of the audit log (GET /v1/audit): a change of
// keys, teams, quotas or policy, or a refused request.
type AuditEntry struct {
	ID   string    `json:"id"`
	Time time.Time `json:"time"`
	// TeamID is the team acted on; ActorTeamID and ActorKeyID the key that
	// acted (for a request with a key that is not valid, ActorKeyID is its
	// shown prefix, if it looks like a key).
	TeamID      string          `json:"team_id,omitempty"`
	ActorTeamID string          `json:"actor_team_id,omitempty"`
	ActorKeyID  string          `json:"actor_key_id,omitempty"`
	Action      string          `json:"action"`
	Target      string          `json:"target"`
	Outcome     string          `json:"outcome"`
	Source      string          `json:"source"`
	Details     json.RawMessage `json:"details,omitempty"`
}

// AuditList is the body of GET /v1/audit: newest first.
type AuditList struct {
	Entries []AuditEntry `json:"entries"`
	// Before, passed as ?before=, fetches the next (older) page; empty on
	// the last.
	Before string `json:"before"`
}

// Usage is the body of GET /v1/usage: a team's usage (or every team's, for
// an operator) over [from, to), one row per group.
type Usage struct {
	From    time.Time  `json:"from"`
	To      time.Time  `json:"to"`
	GroupBy []string   `json:"group_by"`
	Rows    []UsageRow `json:"rows"`
}

// UsageRow is the usage of one group; the keys not grouped by are left
// out. MachineID is the machine's id as created (a resume's new id counts
// for the machine it resumed).
type UsageRow struct {
	TeamID    string `json:"team_id,omitempty"`
	MachineID string `json:"machine_id,omitempty"`
	Day       string `json:"day,omitempty"`
	// RunningSeconds is the time machines held a running sandbox;
	// VCPUSeconds and MemoryGiBSeconds weigh it by what they were given.
	RunningSeconds   float64 `json:"running_seconds"`
	VCPUSeconds      float64 `json:"vcpu_seconds"`
	MemoryGiBSeconds float64 `json:"memory_gib_seconds"`
	// StorageGiBSeconds is the bytes of stored snapshots (paused states,
	// stopped disks, snapshots, checkpoints) times how long they were kept.
	StorageGiBSeconds float64 `json:"storage_gib_seconds"`
	Creates           int64   `json:"creates"`
	Resumes           int64   `json:"resumes"`
	EgressBytes       int64   `json:"egress_bytes"`
}

// Node is a member of the cluster (GET /v1/nodes).
type Node struct {
	Name  string `json:"name"`
	Epoch int64  `json:"epoch"`
	// State is live, dead or left.
	State   string `json:"state"`
	Drained bool   `json:"drained"`
	PeerURL string `json:"peer_url,omitempty"`
	APIURL  string `json:"api_url,omitempty"`
	// HeartbeatAgeMS is how long ago its last heartbeat was, by the
	// database's clock.
	HeartbeatAgeMS int64     `json:"heartbeat_age_ms"`
	JoinedAt       time.Time `json:"joined_at"`
	HeartbeatAt    time.Time `json:"heartbeat_at"`
	DeadAt         time.Time `json:"dead_at,omitzero"`
	Reason         string    `json:"reason,omitempty"`
	// Self: the node that answered.
	Self     bool         `json:"self"`
	Capacity NodeCapacity `json:"capacity"`
	// Host is what its snapshots depend on: a snapshot restores only on a
	// node with the same.
	Host NodeHost `json:"host"`
}

// NodeCapacity is a node's room at its last heartbeat.
type NodeCapacity struct {
	CPUs        int     `json:"cpus"`
	MemoryMB    int64   `json:"memory_mb"`
	CommittedMB int64   `json:"committed_mb"`
	Slots       int     `json:"slots"`
	FreeSlots   int     `json:"free_slots"`
	Machines    int     `json:"machines"`
	Load        float64 `json:"load"`
}

// NodeHost is what a node's snapshots depend on.
type NodeHost struct {
	RuntimeVersion string   `json:"runtime_version"`
	Platform       string   `json:"platform"`
	Kernel         string   `json:"kernel"`
	CPUFeatures    []string `json:"cpu_features,omitempty"`
}

// NodeList is the body of GET /v1/nodes.
type NodeList struct {
	Nodes []Node `json:"nodes"`
}
