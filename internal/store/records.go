package store

import (
	"encoding/json"
	"fmt"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
)

// Team owns machines, snapshots, volumes, templates and API keys.
type Team struct {
	ID        string
	Name      string
	CreatedAt time.Time
	// DeletedAt is set once the team is deleted: its row stays, since the
	// records of its killed machines name it, but its name is free again
	// and its keys are revoked.
	DeletedAt time.Time
}

// APIKey is a stored API key: never the key itself, only its hash.
type APIKey struct {
	ID     string
	TeamID string
	// Hash is apikey.Hash of the key; Prefix its first characters, shown
	// so that people can tell keys apart.
	Hash, Prefix string
	Name         string
	Scopes       []string
	CreatedAt    time.Time
	// LastUsedAt, ExpiresAt and RevokedAt are zero for never.
	LastUsedAt, ExpiresAt, RevokedAt time.Time
}

// Quota is a team's own limits, set by the operator; a field below zero
// takes the server's default (its flag), zero means no limit.
type Quota struct {
	RunningMachines  int64
	VCPUs            int64
	MemoryMB         int64
	SnapshotBytes    int64
	CreatesPerMinute int64
	// APIRate and APIBurst are the rate limit of each of the team's API
	// keys: requests a second, and how many at once.
	APIRate, APIBurst int64
}

// DefaultQuota is a quota that takes every default.
var DefaultQuota = Quota{-1, -1, -1, -1, -1, -1, -1}

// TeamUsage is what a team holds: the machines that hold a network slot
// (they have, or are about to have, a sandbox), what they were given, and
// the bytes of its ready snapshots; Creates counts its machines created
// since the time asked.
type TeamUsage struct {
	RunningMachines int64
	VCPUs           int64
	MemoryMB        int64
	SnapshotBytes   int64
	Creates         int64
	// FirstCreate is when the oldest of those creates was (zero: none).
	FirstCreate time.Time
}

// AuditEntry is one change of keys, teams, quotas or policy, or one
// refused request: who did what, when, from where, and how it ended.
type AuditEntry struct {
	// ID sorts by time ("aud_" + the time in hex + random).
	ID   string
	Time time.Time
	// TeamID is the team acted on ("" for none); ActorTeamID and
	// ActorKeyID the key making the call ("" when it did not
	// authenticate; ActorKeyID then holds the offered key's prefix, if any).
	TeamID, ActorTeamID, ActorKeyID string
	Action                          string // e.g. key.create, team.delete, quota.set, request.denied
	Target                          string // what was acted on: an id, or a method and path
	Outcome                         string // "ok", or the error code
	Source                          string // the client's address
	Details                         string // JSON, may be ""
}

// AuditFilter selects audit entries, newest first.
type AuditFilter struct {
	TeamID string
	Action string
	// Before is the ID of the last entry of the previous page ("": newest).
	Before string
	Limit  int
}

// IdempotencyRecord is a request made with an Idempotency-Key, and, once
// it has one, its response (Status 0: in progress).
type IdempotencyRecord struct {
	TeamID, Key string
	// Route is the request's method and path; RequestHash a hash of them
	// and its body, so that the key's reuse for another request is told.
	Route, RequestHash string
	Status             int
	Body               []byte
	CreatedAt          time.Time
}

// Machine is a machine's stored record.
type Machine struct {
	ID       string
	TeamID   string
	State    string
	Template string
	CPUCount int
	MemoryMB int
	// DiskMB bounds what the machine writes to its root file system, in
	// MiB. 0, in rows written before the limit existed, means the server's
	// default: the manager reads it as that (Manager.diskMB).
	DiskMB        int
	Env           map[string]string
	Metadata      map[string]string
	AllowInternet bool
	// Slot is the machine's network slot, -1 when it holds none.
	Slot        int
	ContainerID string
	AgentToken  string
	CreatedAt   time.Time
	StartedAt   time.Time // zero until running
	EndedAt     time.Time // zero until killed or failed
	Error       string
	// FailureReason is why a failed machine failed, as a stable code
	// (api.Failure*); Error says it in words.
	FailureReason string
	// LineageID is the first machine of this machine's pause/resume chain
	// (its own id for a machine made from a template or a reusable
	// snapshot); LineageSeq orders the chain's executions.
	LineageID  string
	LineageSeq int
	// SnapshotID is the snapshot holding a paused machine's state, or the
	// one being written while it is pausing.
	SnapshotID string
	// RestoredFrom is the snapshot this execution was restored from.
	RestoredFrom string
	Volumes      []api.VolumeMount
	Hooks        api.Hooks
	// AgentDir is the host directory of the agent binary the machine runs:
	// a restore must mount the same binary.
	AgentDir string
	// TimeoutMS is the lease window (0: none), OnTimeout what its end does
	// ("destroy", "pause" or "stop"), AutoResume whether public traffic
	// wakes the machine once paused or stopped.
	TimeoutMS  int64
	OnTimeout  string
	AutoResume bool
	// Deadline is when a running machine's lease ends; zero while the lease
	// does not run (paused, ended, no timeout).
	Deadline time.Time
	// IdleTimeoutMS pauses the machine after this long without network
	// activity (0: never).
	IdleTimeoutMS int64
	// Persistence is "persistent", "sticky" or "ephemeral" (see
	// machine/persistence.go).
	Persistence string
	// Command is the main process's argv (nil: none); MainPID its pid in
	// the current boot (0: not running); MainExit how it ended in this
	// boot. The last two change only through SetMain.
	Command  []string
	MainPID  int
	MainExit *api.MainExit
	// PublicPorts makes every port of the machine reachable through the
	// edge without a signature. Set at create, kept by the lineage.
	PublicPorts bool
	// Origin is the API the lineage was created through: "" Nullspace's,
	// OriginE2B the E2B-compatible one, whose sandboxes' URLs the edge
	// answers in E2B's shape.
	Origin string
	// Latest: this row is its lineage's latest execution (kept by the
	// store). LineageCreated is when the lineage's first machine was
	// created (set by the store).
	Latest         bool
	LineageCreated time.Time
	// CheckpointRetention is how many unpinned checkpoints the lineage
	// keeps (0: all; -1: the server's default).
	CheckpointRetention int
	// Version counts the writes of the row's lifecycle fields. A write
	// names the version it read and fails with a *ConflictError if the row
	// has moved on (set by the store).
	Version int64
	// NodeID is the node whose sandbox this execution is, or was (set by
	// the store: the node that inserted the row, or gave it a slot). While
	// the row is in a live state (LiveStates) that node owns the lineage;
	// after, it is where the state's files were last, a placement hint.
	NodeID string
}

// LiveStates are the states of a machine with a sandbox, or about to
// have one or just done with it: its node owns its lineage (see
// store.Nodes).
var LiveStates = []string{api.StateCreating, api.StateResuming, api.StateRunning, api.StatePausing,
	api.StateSnapshotting, api.StateRestoring, api.StateStopping, api.StateStarting, api.StateKilling}

// OriginE2B is the Origin of a machine created through the E2B layer.
const OriginE2B = "e2b"

// MachineFilter selects machines. Empty fields match everything.
type MachineFilter struct {
	TeamID   string
	States   []string
	Template string
	// LineageID selects one pause/resume chain; RestoredFrom the machines
	// restored from one snapshot.
	LineageID    string
	RestoredFrom string
	// NodeID selects the executions of one node ("" matches every node).
	NodeID string
}

// Snapshot states: a snapshot row is written before its checkpoint (so a
// crash leaves a trace Reconcile can clean) and becomes ready in the same
// transaction that records what it is for.
//
// A checkpoint pruned by retention goes ready ─▶ pruning (no longer
// listed or restorable; committed before its files are touched) ─▶ pruned
// (files gone; the row stays, small, so that a restore of it can say it
// was pruned). Reconcile finishes a prune a crash cut short.
const (
	SnapshotWriting = "writing"
	SnapshotReady   = "ready"
	SnapshotPruning = "pruning"
	SnapshotPruned  = "pruned"
)

// Snapshot is a snapshot's stored record. Host, Spec and Files are opaque
// JSON owned by the machine manager and the snapshot store.
type Snapshot struct {
	ID            string
	TeamID        string
	Kind          string
	State         string
	MachineID     string
	LineageID     string
	Template      string
	ParentID      string
	Generation    int
	SizeBytes     int64
	Checksum      string
	PauseWindowMS int64
	CreatedAt     time.Time
	Host          json.RawMessage
	Spec          json.RawMessage
	Files         json.RawMessage
	// AgentToken is the token the checkpointed agent answers to until it is
	// told its new identity.
	AgentToken string
	// Pinned keeps a checkpoint out of retention's reach.
	Pinned bool
	// Name is the snapshot's name, unique in its team ("": none).
	Name string
	// Durable: the snapshot's files are in the object store, so any
	// server can restore it (set by MarkDurable).
	Durable bool
}

// SnapshotNameTaken is the error of a name the team has given another
// snapshot already.
func SnapshotNameTaken(name string) error {
	return errdefs.New(errdefs.ErrFailedPrecondition, errdefs.CodeSnapshotNameExists,
		fmt.Sprintf("a snapshot named %s already exists", name),
		"choose another name, or delete the snapshot that has it first")
}

// SnapshotFilter selects snapshots. Empty fields match everything.
type SnapshotFilter struct {
	TeamID    string
	MachineID string
	LineageID string
	Kinds     []string
	States    []string
	// Newest, if positive, returns only the newest n snapshots, newest first.
	Newest int
	// NotDurable selects the snapshots whose files are not yet in the
	// object store.
	NotDurable bool
}

// Volume is a named volume's stored record.
type Volume struct {
	TeamID    string
	Name      string
	CreatedAt time.Time
}

// Spare is a container created ahead of a restore (see machine.spares): it
// holds a machine id chosen in advance, a container id and a network slot.
// Shape is the opaque key of the restores it can serve.
type Spare struct {
	// NodeID is the node whose container it is (set by the store).
	NodeID      string
	MachineID   string
	ContainerID string
	Slot        int
	Shape       string
	CreatedAt   time.Time
}

// SSHKey is a public key registered for a team's SSH sessions.
type SSHKey struct {
	ID          string
	TeamID      string
	Name        string
	Fingerprint string // SHA256:... as ssh-keygen -l prints it
	PublicKey   string // authorized_keys form, without a comment
	CreatedAt   time.Time
}

// MaxSSHKeysPerTeam bounds a team's keys (a list of them is one answer).
const MaxSSHKeysPerTeam = 1000

// EventFilter selects events. Zero fields match everything.
type EventFilter struct {
	TeamID    string
	MachineID string
	Types     []string
	// After returns only events with a larger sequence number.
	After int64
	// Limit bounds the number returned (default 1000).
	Limit int
}

// Usage record kinds. A run is a span in which an execution held a
// running sandbox (its vCPUs and memory); storage a span in which a ready
// snapshot's files were kept (its bytes); create and resume are instants
// (a lineage begun, a paused one resumed); egress is bytes a machine sent.
const (
	UsageRun     = "run"
	UsageStorage = "storage"
	UsageCreate  = "create"
	UsageResume  = "resume"
	UsageEgress  = "egress"
)

// UsageRecord is one entry of the usage ledger, or a span still open (a
// machine running, a snapshot kept) read from the live rows, whose EndedAt
// is zero.
type UsageRecord struct {
	// ID is unique per fact (a run is its execution and start, a storage
	// span its snapshot), so that writing one twice records it once.
	ID     string
	Kind   string
	TeamID string
	// MachineID is the execution's id (for storage: the execution the
	// snapshot was taken of); LineageID the machine users know it by.
	MachineID  string
	LineageID  string
	SnapshotID string
	StartedAt  time.Time
	EndedAt    time.Time
	VCPUs      int
	MemoryMB   int
	// Bytes are the snapshot's size (storage) or the bytes sent (egress).
	Bytes int64
}

// UsageFilter selects usage records that overlap [From, To): a span
// ending at or after From (or still open) and starting before To. Empty
// TeamID matches every team.
type UsageFilter struct {
	TeamID   string
	From, To time.Time
}

// Node is a member of the cluster: one `nullspace serve` sharing the
// database with others.
type Node struct {
	// ID is the node's name (--node-name).
	ID string
	// Epoch counts the node's joins. A node writes under its epoch (its
	// fence): once another node declared it dead, or it joined again, the
	// writes of the old epoch fail with errdefs.ErrFenced.
	Epoch int64
	// State is NodeLive, NodeDead (declared by the leader after a missed
	// heartbeat TTL) or NodeLeft (shut down cleanly).
	State string
	// Drained: no placements on the node; its machines are being paused
	// so that they resume elsewhere.
	Drained bool
	// PeerURL is where other nodes forward to (its peer listener); APIURL
	// its public API, for people.
	PeerURL, APIURL string
	// Host is what its snapshots depend on (snapshot.Host as JSON): a
	// snapshot is placed only on nodes whose Host restores it.
	Host json.RawMessage
	// Capacity is what it reported at its last heartbeat.
	Capacity NodeCapacity
	// JoinedAt, HeartbeatAt and DeadAt are the database's times.
	JoinedAt, HeartbeatAt, DeadAt time.Time
	// Reason says why a dead node is dead, or why it left.
	Reason string
}

// Node states.
const (
	NodeLive = "live"
	NodeDead = "dead"
	NodeLeft = "left"
)

// NodeCapacity is a node's room, as it reported it.
type NodeCapacity struct {
	CPUs int `json:"cpus"`
	// MemoryMB is what the node may commit to sandboxes (its memory times
	// the overcommit); CommittedMB what it has committed.
	MemoryMB    int64 `json:"memory_mb"`
	CommittedMB int64 `json:"committed_mb"`
	Slots       int   `json:"slots"`
	FreeSlots   int   `json:"free_slots"`
	// Machines counts its live sandboxes; Load is its 1-minute load
	// average per CPU.
	Machines int     `json:"machines"`
	Load     float64 `json:"load"`
	// Templates are the template digests its cache holds.
	Templates []string `json:"templates,omitempty"`
}

// NodeLoss is a node declared dead, and what became of its executions.
type NodeLoss struct {
	Node     Node
	Machines []ReapedMachine
}

// ReapedMachine is an execution of a dead node after the reap: Deleted
// (an undone create or resume), or in its new state.
type ReapedMachine struct {
	Machine *Machine
	// From is the state the node left it in.
	From    string
	Deleted bool
}
