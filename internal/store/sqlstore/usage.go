package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/store"
)

// The usage ledger (see store.Usage). Records are written in the
// transaction of the write that ends what they record, with ids that name
// the fact, so that a retried write records it once.

// runStates are the states in which a machine holds a running sandbox,
// whose vCPUs and memory are counted. A restore in place (restoring)
// replaces the sandbox: the run before it ends there, the next begins
// when the restored one runs (StartedAt).
var runStates = []string{api.StateRunning, api.StatePausing, api.StateSnapshotting, api.StateStopping}

const usageColumns = `id, kind, team_id, machine_id, lineage_id, snapshot_id, started_at, ended_at, vcpus, memory_mb, bytes`

// AppendUsage records r unless a record with its id exists.
func (s *DB) AppendUsage(ctx context.Context, r store.UsageRecord) error {
	return appendUsage(ctx, s.c(), r)
}

func appendUsage(ctx context.Context, c conn, r store.UsageRecord) error {
	_, err := c.exec(ctx, `INSERT INTO usage_records (`+usageColumns+`) VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (id) DO NOTHING`,
		r.ID, r.Kind, r.TeamID, r.MachineID, r.LineageID, r.SnapshotID, at(r.StartedAt), at(r.EndedAt), r.VCPUs, r.MemoryMB, r.Bytes)
	if err != nil {
		return fmt.Errorf("record %s usage of %s: %w", r.Kind, r.MachineID, err)
	}
	return nil
}

// ListUsage returns the ledger's records that overlap f, by start, then
// the runs of the machines in a running state and the storage of the
// ready snapshots that began before f.To, open (EndedAt zero).
func (s *DB) ListUsage(ctx context.Context, f store.UsageFilter) ([]store.UsageRecord, error) {
	c := s.c()
	var w where
	w.eq("team_id", f.TeamID)
	if !f.From.IsZero() {
		// Instants (create, resume) end where they start: >= keeps one at
		// From.
		w.cond("ended_at >= ?", at(f.From))
	}
	if !f.To.IsZero() {
		w.cond("started_at < ?", at(f.To))
	}
	out, err := queryAll(ctx, c, "list usage", `SELECT `+usageColumns+` FROM usage_records`+w.sql()+` ORDER BY started_at, id`, w.args, scanUsage)
	if err != nil {
		return nil, err
	}

	var mw where
	mw.eq("team_id", f.TeamID)
	mw.in("state", runStates)
	mw.conds = append(mw.conds, "started_at IS NOT NULL")
	if !f.To.IsZero() {
		mw.cond("started_at < ?", at(f.To))
	}
	runs, err := queryAll(ctx, c, "list running machines' usage",
		`SELECT id, team_id, lineage_id, started_at, cpu_count, memory_mb FROM machines`+mw.sql()+` ORDER BY started_at, id`, mw.args,
		func(r scanner) (store.UsageRecord, error) {
			u := store.UsageRecord{Kind: store.UsageRun}
			err := r.Scan(&u.MachineID, &u.TeamID, &u.LineageID, timeDest{&u.StartedAt}, &u.VCPUs, &u.MemoryMB)
			u.ID = runID(u.MachineID, u.StartedAt)
			return u, err
		})
	if err != nil {
		return nil, err
	}
	out = append(out, runs...)

	var sw where
	sw.eq("team_id", f.TeamID)
	sw.eq("state", store.SnapshotReady)
	if !f.To.IsZero() {
		sw.cond("created_at < ?", at(f.To))
	}
	kept, err := queryAll(ctx, c, "list kept snapshots' usage",
		`SELECT id, team_id, machine_id, lineage_id, created_at, size_bytes FROM snapshots`+sw.sql()+` ORDER BY created_at, id`, sw.args,
		func(r scanner) (store.UsageRecord, error) {
			u := store.UsageRecord{Kind: store.UsageStorage}
			err := r.Scan(&u.SnapshotID, &u.TeamID, &u.MachineID, &u.LineageID, timeDest{&u.StartedAt}, &u.Bytes)
			u.ID = storageID(u.SnapshotID)
			return u, err
		})
	if err != nil {
		return nil, err
	}
	return append(out, kept...), nil
}

func scanUsage(r scanner) (store.UsageRecord, error) {
	var u store.UsageRecord
	err := r.Scan(&u.ID, &u.Kind, &u.TeamID, &u.MachineID, &u.LineageID, &u.SnapshotID,
		timeDest{&u.StartedAt}, timeDest{&u.EndedAt}, &u.VCPUs, &u.MemoryMB, &u.Bytes)
	return u, err
}

func runID(machineID string, started time.Time) string {
	return fmt.Sprintf("run:%s:%d", machineID, started.UnixMicro())
}

func storageID(snapshotID string) string { return "storage:" + snapshotID }

// ledgered reports whether a write of a machine into state may record
// usage: it may end a run (any state but a running one) or begin one
// (running).
func ledgered(state string) bool {
	return state == api.StateRunning || !slices.Contains(runStates, state)
}

// machineBefore is what the ledger needs of a machine's row before a write.
type machineBefore struct {
	state     string
	startedAt time.Time
}

// readBefore reads m's row as it is at m.Version, locked until the
// transaction ends; found is false if the row is gone or has moved on
// (the write that follows fails).
func readBefore(ctx context.Context, c conn, m *store.Machine) (b machineBefore, found bool, err error) {
	err = c.queryRow(ctx, `SELECT state, started_at FROM machines WHERE id=? AND version=?`+c.d.forUpdate, m.ID, m.Version).
		Scan(&b.state, timeDest{&b.startedAt})
	if errors.Is(err, sql.ErrNoRows) {
		return b, false, nil
	}
	return b, err == nil, err
}

// recordTransition writes what the move of m from before to m.State
// records in the ledger: the end of a run, or a create or resume.
func recordTransition(ctx context.Context, c conn, before machineBefore, m *store.Machine) error {
	switch {
	case slices.Contains(runStates, before.state) && !slices.Contains(runStates, m.State) && !before.startedAt.IsZero():
		end := m.EndedAt
		if end.IsZero() {
			end = c.now()
		}
		return appendUsage(ctx, c, store.UsageRecord{
			ID: runID(m.ID, before.startedAt), Kind: store.UsageRun, TeamID: m.TeamID, MachineID: m.ID, LineageID: m.LineageID,
			StartedAt: before.startedAt, EndedAt: end, VCPUs: m.CPUCount, MemoryMB: m.MemoryMB,
		})
	case (before.state == api.StateCreating || before.state == api.StateResuming) && m.State == api.StateRunning:
		kind := store.UsageResume
		if m.LineageSeq <= 1 {
			kind = store.UsageCreate
		}
		t := m.StartedAt
		if t.IsZero() {
			t = c.now()
		}
		return appendUsage(ctx, c, store.UsageRecord{
			ID: kind + ":" + m.ID, Kind: kind, TeamID: m.TeamID, MachineID: m.ID, LineageID: m.LineageID,
			StartedAt: t, EndedAt: t, VCPUs: m.CPUCount, MemoryMB: m.MemoryMB,
		})
	}
	return nil
}

// recordStorageEnd writes the storage span of snapshot id if it is ready
// (a snapshot being written or pruned already is not kept as one).
func recordStorageEnd(ctx context.Context, c conn, id string) error {
	u := store.UsageRecord{ID: storageID(id), Kind: store.UsageStorage, SnapshotID: id}
	var state string
	err := c.queryRow(ctx, `SELECT state, team_id, machine_id, lineage_id, created_at, size_bytes FROM snapshots WHERE id=?`+c.d.forUpdate, id).
		Scan(&state, &u.TeamID, &u.MachineID, &u.LineageID, timeDest{&u.StartedAt}, &u.Bytes)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && state != store.SnapshotReady) {
		return nil
	}
	if err != nil {
		return err
	}
	u.EndedAt = c.now()
	return appendUsage(ctx, c, u)
}
