// Package store is Nullspace's state: the records the server keeps (teams,
// machines, snapshots, volumes, spares, events, SSH keys), the filters and
// cursors that read them, and the Store interface that keeps them.
//
// Two backends implement Store, both in store/sqlstore: SQLite, embedded,
// the single-node default; and PostgreSQL, which several servers share.
// Nothing above this package knows which one it talks to.
package store

import (
	"context"
	"time"

	"nullspace.dev/nullspace/api"
)

// Store keeps everything the server knows. Its methods are grouped by the
// record they keep, so that a consumer can ask for only its group.
type Store interface {
	Teams
	Machines
	Snapshots
	Volumes
	Spares
	Events
	SSHKeys
	Secrets
	Idempotency
	Audit
	Usage
	Nodes
	Close() error
}

// Nodes keeps the cluster's members, and fences their writes.
//
// A store is opened by one node (SetNode). Once the node has joined
// (JoinNode), every write of machines, spares and snapshots it makes
// carries its fence: it checks, in the write's own transaction, that the
// node's row is still at the epoch it joined with and not dead, and fails
// with errdefs.ErrFenced otherwise. The leader's DeclareDead takes the
// node's row lock, so a fenced write either commits before the node is
// declared dead (and the leader then sees it) or not at all. All times are
// the database's (now()), never a node's clock.
type Nodes interface {
	// SetNode names the node this store writes for: the rows it inserts
	// carry it, and the node-scoped reads (MachineFilter.NodeID, spares,
	// slots, committed memory) are its. Called once, before any write.
	SetNode(id string)
	// JoinNode records n as live at a new epoch (one past its last), sets
	// the store's fence to it, and returns the row as stored.
	JoinNode(ctx context.Context, n Node) (*Node, error)
	// Heartbeat records that the node is alive at its fence's epoch, with
	// its capacity, and returns the database's time; errdefs.ErrFenced if
	// the row has another epoch or is dead.
	Heartbeat(ctx context.Context, c NodeCapacity) (time.Time, error)
	// LeaveNode marks the node left (a clean shutdown); its fence no
	// longer holds.
	LeaveNode(ctx context.Context, reason string) error
	GetNode(ctx context.Context, id string) (*Node, error)
	// ListNodes returns every node, live or not, by name, and the
	// database's time.
	ListNodes(ctx context.Context) ([]Node, time.Time, error)
	// SetNodeDrained drains (no placements) or undrains a node.
	SetNodeDrained(ctx context.Context, id string, drained bool) (*Node, error)
	// DeclareDead marks dead the live nodes whose last heartbeat is older
	// than ttl by the database's clock, and in the same transaction ends
	// what their sandboxes were doing (ReapNode); it returns what it did.
	DeclareDead(ctx context.Context, ttl time.Duration, reason string) ([]NodeLoss, error)
	// ReapNode ends the live executions of a dead node: a create or
	// resume is undone (the row goes), a start goes back to stopped, a
	// kill is done, any other becomes failed with reason node_lost.
	ReapNode(ctx context.Context, id string) ([]ReapedMachine, error)
	// Leadership tries to become the cluster's leader (one at a time,
	// across every node); ok is false if another node is.
	Leadership(ctx context.Context) (l Leader, ok bool, err error)
}

// Leader is a held leadership.
type Leader interface {
	// Check reports whether the leadership still holds (a PostgreSQL
	// session's advisory lock: it ends with the session).
	Check(ctx context.Context) error
	// Release gives it up.
	Release()
}

// Audit keeps the audit log.
type Audit interface {
	AppendAudit(ctx context.Context, e AuditEntry) error
	// ListAudit returns entries newest first.
	ListAudit(ctx context.Context, f AuditFilter) ([]AuditEntry, error)
	// PruneAudit deletes the entries before before, and all but the
	// newest keep (0: no count bound).
	PruneAudit(ctx context.Context, before time.Time, keep int) (int64, error)
}

// Idempotency keeps the requests made with an Idempotency-Key and their
// responses.
type Idempotency interface {
	// BeginIdempotent stores r (in progress) unless its team has a record
	// of the key made at or after notBefore (and, while in progress, at
	// or after staleBefore): then it returns that one and stores nothing.
	// An older record of the key is replaced.
	BeginIdempotent(ctx context.Context, r IdempotencyRecord, notBefore, staleBefore time.Time) (*IdempotencyRecord, error)
	// GetIdempotent returns the record of a team's key (errdefs.ErrNotFound
	// if there is none).
	GetIdempotent(ctx context.Context, teamID, key string) (*IdempotencyRecord, error)
	// FinishIdempotent stores the response of a record in progress.
	FinishIdempotent(ctx context.Context, teamID, key string, status int, body []byte) error
	// AbandonIdempotent deletes a record in progress (its request failed
	// in a way a retry may not: the retry runs again).
	AbandonIdempotent(ctx context.Context, teamID, key string) error
	// PruneIdempotent deletes the records made before before.
	PruneIdempotent(ctx context.Context, before time.Time) (int64, error)
}

// Teams keeps teams and the hashes of their API keys.
type Teams interface {
	// CreateTeam fails with errdefs.CodeTeamExists if a team that is not
	// deleted has the name.
	CreateTeam(ctx context.Context, t Team) error
	// GetTeam fails with errdefs.CodeTeamNotFound for an unknown or
	// deleted team.
	GetTeam(ctx context.Context, id string) (*Team, error)
	// ListTeams returns the teams that are not deleted, oldest first.
	ListTeams(ctx context.Context) ([]Team, error)
	// DeleteTeam marks the team deleted, revokes its API keys and removes
	// its SSH keys.
	DeleteTeam(ctx context.Context, id string, now time.Time) error
	CountTeams(ctx context.Context) (int, error)

	AddAPIKey(ctx context.Context, k APIKey) error
	// ListAPIKeys returns a team's keys, revoked ones included, oldest
	// first.
	ListAPIKeys(ctx context.Context, teamID string) ([]APIKey, error)
	// GetAPIKey fails with errdefs.CodeKeyNotFound for an unknown id.
	GetAPIKey(ctx context.Context, id string) (*APIKey, error)
	// APIKeyByHash returns the key with this hash, revoked or expired
	// alike (the caller says which); it fails with
	// errdefs.ErrUnauthenticated for an unknown hash.
	APIKeyByHash(ctx context.Context, hash string) (*APIKey, error)
	// RevokeAPIKey sets the key's RevokedAt, once; revoking a revoked key
	// changes nothing.
	RevokeAPIKey(ctx context.Context, id string, now time.Time) error
	// TouchAPIKey records that the key was used at now.
	TouchAPIKey(ctx context.Context, id string, now time.Time) error

	// GetQuota returns a team's own limits (DefaultQuota if none were
	// set); SetQuota replaces them.
	GetQuota(ctx context.Context, teamID string) (Quota, error)
	SetQuota(ctx context.Context, teamID string, q Quota) error
	// TeamUsage is what the team holds now, and how many machines it
	// created since since (lineages begun: forks, creates from snapshots
	// and creates; not resumes).
	TeamUsage(ctx context.Context, teamID string, since time.Time) (TeamUsage, error)
}

// Machines keeps machine records: one row per execution, chained into
// lineages by pauses and resumes.
type Machines interface {
	// CreateMachine stores a new machine as its lineage's latest execution
	// and gives it the lowest free network slot of slots.
	CreateMachine(ctx context.Context, m *Machine, slots int) error
	// CreateMachineFromSpare stores a new machine that takes over a spare's
	// id, container and slot; it fails if the spare is gone.
	CreateMachineFromSpare(ctx context.Context, m *Machine, sp Spare) error
	// UpdateMachine writes m's mutable fields if the row is still at
	// m.Version, and advances both; otherwise it fails with a
	// *ConflictError.
	UpdateMachine(ctx context.Context, m *Machine) error
	// SetMain and SetMainExit record the main process; they leave the
	// version alone (see Machine.Command).
	SetMain(ctx context.Context, id string, pid int) error
	SetMainExit(ctx context.Context, id string, pid int, exit *api.MainExit) (recorded bool, err error)
	DeleteMachine(ctx context.Context, id string) error
	GetMachine(ctx context.Context, id string) (*Machine, error)
	LineageHead(ctx context.Context, lineageID string) (*Machine, error)
	ListMachines(ctx context.Context, f MachineFilter) ([]*Machine, error)
	ListMachinesPage(ctx context.Context, q MachinePageQuery) ([]*Machine, bool, error)
	LineageSummaries(ctx context.Context, lineageIDs []string) (map[string]LineageSummary, error)
	AssignSlot(ctx context.Context, m *Machine, slots int) error
	CountMachines(ctx context.Context) (map[string]int, error)
	CommittedMemoryMB(ctx context.Context) (int64, error)
	PruneEnded(ctx context.Context, before time.Time) (int64, error)
}

// Snapshots keeps snapshot records; the files are the snapshot store's.
type Snapshots interface {
	CreateSnapshot(ctx context.Context, sn *Snapshot) error
	// CommitSnapshot marks sn ready and writes machines in one transaction.
	CommitSnapshot(ctx context.Context, sn *Snapshot, machines ...*Machine) error
	GetSnapshot(ctx context.Context, id string) (*Snapshot, error)
	GetSnapshotByName(ctx context.Context, teamID, name string) (*Snapshot, error)
	ListSnapshots(ctx context.Context, f SnapshotFilter) ([]*Snapshot, error)
	ListSnapshotsPage(ctx context.Context, q SnapshotPageQuery) ([]*Snapshot, bool, error)
	CountRestoredFrom(ctx context.Context, snapshotIDs, states []string) (map[string]int, error)
	DeleteSnapshot(ctx context.Context, id string) error
	SetSnapshotPinned(ctx context.Context, id string, pinned bool) error
	MarkPruning(ctx context.Context, id string) (bool, error)
	MarkPruned(ctx context.Context, id string) error
	// MarkDurable records that a ready snapshot's files are in the object
	// store; false if it is no longer ready.
	MarkDurable(ctx context.Context, id string) (bool, error)
	SnapshotBytes(ctx context.Context) (int64, error)
	SnapshotBytesByKind(ctx context.Context) (map[string]int64, error)
}

// Volumes keeps named volumes (their contents are on the host).
type Volumes interface {
	CreateVolume(ctx context.Context, v Volume) error
	ListVolumes(ctx context.Context, teamID string) ([]Volume, error)
	ListVolumesPage(ctx context.Context, teamID, after string, limit int) ([]Volume, bool, error)
	VolumeMachines(ctx context.Context, teamID string, names []string) (map[string]int, error)
	DeleteVolume(ctx context.Context, teamID, name string) (bool, error)
}

// Spares keeps the containers created ahead of restores.
type Spares interface {
	CreateSpare(ctx context.Context, sp *Spare, slots int) error
	DeleteSpare(ctx context.Context, machineID string) error
	ListSpares(ctx context.Context) ([]*Spare, error)
}

// Events keeps lifecycle events in sequence order, and the positions of
// their consumers.
type Events interface {
	// AppendEvent stores ev and sets ev.Seq. Sequence numbers are given in
	// commit order: a reader that has seen seq n never later finds an
	// event below n appear.
	AppendEvent(ctx context.Context, ev *api.Event) error
	ListEvents(ctx context.Context, f EventFilter) ([]api.Event, error)
	Cursor(ctx context.Context, name string) (int64, error)
	SetCursor(ctx context.Context, name string, seq int64) error
	PruneEvents(ctx context.Context, before time.Time, keep int, notAfter int64) (int64, error)
}

// Secrets keeps the keys that every server sharing the store signs with.
// The newest wins: a secret set later (a rotation) replaces one set
// earlier, and an older one offered later changes nothing.
type Secrets interface {
	// PutSecret stores value as the secret name, set at at, unless the
	// stored one is as new or newer; it returns the stored one after it,
	// and when that was set.
	PutSecret(ctx context.Context, name string, value []byte, at time.Time) ([]byte, time.Time, error)
	// Secret returns the stored secret name and when it was set (nil if
	// there is none).
	Secret(ctx context.Context, name string) ([]byte, time.Time, error)
}

// Usage keeps the ledger that usage (the basis for billing) is counted
// from. The store writes it itself, in the transaction of the write that
// ends what it records, so that no path of the manager can forget a record
// and no crash can lose one:
//   - a write that takes a machine out of a running state (running,
//     pausing, snapshotting, stopping) into another records a run from its
//     StartedAt to its EndedAt (killed, failed) or to the write's time;
//   - a write that makes a creating or resuming machine running records a
//     create (its lineage's first execution) or a resume;
//   - DeleteSnapshot and MarkPruning of a ready snapshot record its
//     storage from its CreatedAt to the write's time.
//
// The ledger is never pruned with the machine rows.
type Usage interface {
	// AppendUsage records r unless a record with its ID exists.
	AppendUsage(ctx context.Context, r UsageRecord) error
	// ListUsage returns the ledger's records that overlap the filter's
	// range, then the spans still open (EndedAt zero): the runs of the
	// machines in a running state and the storage of ready snapshots.
	ListUsage(ctx context.Context, f UsageFilter) ([]UsageRecord, error)
}

// SSHKeys keeps the public keys of SSH sessions.
type SSHKeys interface {
	AddSSHKey(ctx context.Context, k SSHKey) error
	ListSSHKeys(ctx context.Context, teamID string) ([]SSHKey, error)
	SSHKeyByFingerprint(ctx context.Context, fingerprint string) (SSHKey, error)
	DeleteSSHKey(ctx context.Context, teamID, idOrFingerprint string) error
}
