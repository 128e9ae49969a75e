package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store"
)

const machineColumns = `id, team_id, state, template, cpu_count, memory_mb, env, metadata, allow_internet,
	slot, container_id, agent_token, created_at, started_at, ended_at, error,
	lineage_id, lineage_seq, snapshot_id, restored_from, volumes, hooks, agent_dir,
	timeout_ms, on_timeout, auto_resume, deadline, idle_timeout_ms, persistence,
	command, main_pid, main_exit, public_ports, latest, lineage_created, checkpoint_retention, failure_reason, origin, version, disk_mb, node_id`

// CreateMachine stores a new machine and gives it, in the same transaction,
// the lowest free network slot (slots bounds the pool).
func (s *DB) CreateMachine(ctx context.Context, m *store.Machine, slots int) error {
	return s.withFreeSlot(ctx, "create machine "+m.ID, slots, func(c conn, slot int) error {
		m.Slot = slot
		return insertMachine(ctx, c, m)
	})
}

// withFreeSlot runs fn with the lowest free network slot of the store's
// node in the transaction that takes it (slots bounds the pool; each node
// has its own). The scan and the write that takes the slot are one step:
// on PostgreSQL they hold an advisory lock on the node's slots (a slot is
// unique across two tables, machines and spares, which no one index
// covers); the unique index on machines(node_id, slot) stays as a guard.
func (s *DB) withFreeSlot(ctx context.Context, what string, slots int, fn func(c conn, slot int) error) error {
	return s.inTx(ctx, what, func(c conn) error {
		if err := checkFence(ctx, c); err != nil {
			return err
		}
		if err := lockTxNamed(ctx, c, lockSlots, c.f.nodeID()); err != nil {
			return err
		}
		slot, err := freeSlot(ctx, c, slots)
		if err != nil {
			return err
		}
		return fn(c, slot)
	})
}

// CreateMachineFromSpare stores a new machine that takes over a spare: the
// spare's row goes and the machine gets its id, container and slot, in one
// transaction. It fails if the spare is gone.
func (s *DB) CreateMachineFromSpare(ctx context.Context, m *store.Machine, sp store.Spare) error {
	return s.inTx(ctx, "create machine "+sp.MachineID, func(c conn) error {
		if err := checkFence(ctx, c); err != nil {
			return err
		}
		res, err := c.exec(ctx, `DELETE FROM spares WHERE machine_id = ?`, sp.MachineID)
		if err != nil {
			return fmt.Errorf("take spare %s: %w", sp.MachineID, err)
		}
		if !exactlyOne(res) {
			return fmt.Errorf("take spare %s: another restore took it: %w", sp.MachineID, errdefs.ErrConflict)
		}
		m.ID, m.ContainerID, m.Slot = sp.MachineID, sp.ContainerID, sp.Slot
		return insertMachine(ctx, c, m)
	})
}

// insertMachine stores a new machine as the latest execution of its
// lineage. It locks the lineage's head first (PostgreSQL), so that the
// sequence number, the lineage's creation time and the latest flag are
// read and written by one insert at a time; the unique indexes on
// (lineage_id, lineage_seq) and on the latest row refuse what a race
// would get wrong anyway (a new lineage has no head to lock).
func insertMachine(ctx context.Context, c conn, m *store.Machine) error {
	if m.LineageID == "" {
		m.LineageID = m.ID
	}
	// The lineage's position in lists is its first machine's creation,
	// which the latest row carries on (older rows may have been deleted).
	// A lock on the lineage's id, not a row lock on its latest row: under
	// READ COMMITTED a second insert waiting on that row would find it no
	// longer latest and read no lineage at all.
	if err := lockTxNamed(ctx, c, lockLineage, m.LineageID); err != nil {
		return fmt.Errorf("lineage of machine %s: %w", m.ID, err)
	}
	var created time.Time
	err := c.queryRow(ctx, `SELECT lineage_created FROM machines WHERE lineage_id = ? AND latest`, m.LineageID).Scan(timeDest{&created})
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("lineage of machine %s: %w", m.ID, err)
	}
	if err := c.queryRow(ctx, `SELECT coalesce(max(lineage_seq), 0) + 1 FROM machines WHERE lineage_id = ?`, m.LineageID).Scan(&m.LineageSeq); err != nil {
		return fmt.Errorf("lineage of machine %s: %w", m.ID, err)
	}
	m.LineageCreated = m.CreatedAt
	if !created.IsZero() {
		m.LineageCreated = created
	}
	if _, err := c.exec(ctx, `UPDATE machines SET latest = FALSE WHERE lineage_id = ? AND latest`, m.LineageID); err != nil {
		return fmt.Errorf("lineage of machine %s: %w", m.ID, err)
	}
	m.Latest, m.Version, m.NodeID = true, 0, c.f.nodeID()
	keptTimes(m)
	for k, v := range m.Metadata {
		if _, err := c.exec(ctx, `INSERT INTO machine_metadata (machine_id, key, value) VALUES (?, ?, ?)`, m.ID, k, v); err != nil {
			return fmt.Errorf("metadata of machine %s: %w", m.ID, err)
		}
	}
	for _, v := range m.Volumes {
		if _, err := c.exec(ctx, `INSERT INTO machine_volumes (machine_id, name) VALUES (?, ?) ON CONFLICT DO NOTHING`, m.ID, v.Name); err != nil {
			return fmt.Errorf("volumes of machine %s: %w", m.ID, err)
		}
	}
	env, _ := json.Marshal(nonNil(m.Env))
	meta, _ := json.Marshal(nonNil(m.Metadata))
	vols, _ := json.Marshal(nonNilSlice(m.Volumes))
	hooks, _ := json.Marshal(m.Hooks)
	cmd, _ := json.Marshal(nonNilSlice(m.Command))
	_, err = c.exec(ctx, `INSERT INTO machines (`+machineColumns+`) VALUES (`+placeholders(strings.Count(machineColumns, ",")+1)+`)`,
		m.ID, m.TeamID, m.State, m.Template, m.CPUCount, m.MemoryMB, string(env), string(meta), m.AllowInternet,
		m.Slot, m.ContainerID, m.AgentToken, at(m.CreatedAt), nullAt(m.StartedAt), nullAt(m.EndedAt), m.Error,
		m.LineageID, m.LineageSeq, m.SnapshotID, m.RestoredFrom, string(vols), string(hooks), m.AgentDir,
		m.TimeoutMS, onTimeoutOr(m.OnTimeout), m.AutoResume, optAt(m.Deadline), m.IdleTimeoutMS, persistenceOr(m.Persistence),
		string(cmd), m.MainPID, mainExitJSON(m.MainExit), m.PublicPorts, m.Latest, at(m.LineageCreated), m.CheckpointRetention, m.FailureReason, m.Origin,
		m.Version, m.DiskMB, m.NodeID)
	if c.d.unique(err) {
		return fmt.Errorf("insert machine %s: another write took its slot or its place in lineage %s at the same time: %w", m.ID, m.LineageID, errdefs.ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("insert machine %s: %w", m.ID, err)
	}
	return nil
}

// freeSlot returns the lowest slot that no machine and no spare holds. A
// machine holds its slot until it sets it to -1, which it does only after
// tearing the slot's network down: a slot is never handed out while the
// namespace of its previous holder may still be removed.
func freeSlot(ctx context.Context, c conn, slots int) (int, error) {
	node := c.f.nodeID()
	used, err := queryAll(ctx, c, "allocate slot", `SELECT slot FROM machines WHERE slot >= 0 AND node_id = ? UNION SELECT slot FROM spares WHERE node_id = ? ORDER BY slot`, []any{node, node},
		func(r scanner) (int, error) {
			var n int
			err := r.Scan(&n)
			return n, err
		})
	if err != nil {
		return 0, err
	}
	next := 0
	for _, u := range used {
		if u > next {
			break
		}
		if u == next {
			next++
		}
	}
	if next >= slots {
		return 0, errdefs.New(errdefs.ErrResourceExhausted, errdefs.CodeResourceExhausted,
			fmt.Sprintf("all %d network slots are in use", slots), "kill unused machines or configure a larger --network-cidr")
	}
	return next, nil
}

// UpdateMachine writes a machine's lifecycle fields if no one has since
// it was read (compare-and-set on its version), and advances m.Version.
// A write that may record usage (see store.Usage) is a transaction with
// its ledger record.
func (s *DB) UpdateMachine(ctx context.Context, m *store.Machine) error {
	var err error
	if ledgered(m.State) || s.f.epoch.Load() != 0 {
		err = s.inTx(ctx, "update machine "+m.ID, func(c conn) error { return updateMachine(ctx, c, m) })
	} else {
		err = updateMachine(ctx, s.c(), m)
	}
	if err != nil {
		return err
	}
	m.Version++
	return nil
}

// updateMachine writes m at m.Version+1 if the row is at m.Version, and
// the usage the write records (c must then be a transaction: see
// ledgered); the caller advances m.Version once the write is committed.
func updateMachine(ctx context.Context, c conn, m *store.Machine) error {
	if err := checkFence(ctx, c); err != nil {
		return fmt.Errorf("update machine %s: %w", m.ID, err)
	}
	keptTimes(m)
	var before machineBefore
	if ledgered(m.State) {
		b, found, err := readBefore(ctx, c, m)
		if err != nil {
			return fmt.Errorf("update machine %s: %w", m.ID, err)
		}
		if !found {
			return lostWrite(ctx, c, m)
		}
		before = b
	}
	res, err := c.exec(ctx, `UPDATE machines SET state=?, slot=?, container_id=?, started_at=?, ended_at=?, error=?, failure_reason=?,
		snapshot_id=?, agent_token=?, restored_from=?, timeout_ms=?, on_timeout=?, auto_resume=?, deadline=?, version = version + 1
		WHERE id=? AND version=?`,
		m.State, m.Slot, m.ContainerID, nullAt(m.StartedAt), nullAt(m.EndedAt), m.Error, m.FailureReason,
		m.SnapshotID, m.AgentToken, m.RestoredFrom, m.TimeoutMS, onTimeoutOr(m.OnTimeout), m.AutoResume, optAt(m.Deadline),
		m.ID, m.Version)
	if err != nil {
		return fmt.Errorf("update machine %s: %w", m.ID, err)
	}
	if !exactlyOne(res) {
		return lostWrite(ctx, c, m)
	}
	if err := recordTransition(ctx, c, before, m); err != nil {
		return fmt.Errorf("update machine %s: %w", m.ID, err)
	}
	return nil
}

// keptTimes cuts m's times to the microseconds the store keeps, so that
// the caller's copy equals what a read returns.
func keptTimes(m *store.Machine) {
	for _, t := range []*time.Time{&m.CreatedAt, &m.StartedAt, &m.EndedAt, &m.Deadline, &m.LineageCreated} {
		*t = t.Truncate(time.Microsecond)
	}
}

// lostWrite says why a compare-and-set write of m changed no row: the row
// is gone, or its version moved on.
func lostWrite(ctx context.Context, c conn, m *store.Machine) error {
	var have int64
	err := c.queryRow(ctx, `SELECT version FROM machines WHERE id=?`, m.ID).Scan(&have)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("update machine %s: %w", m.ID, errdefs.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("update machine %s: %w", m.ID, err)
	}
	return &store.ConflictError{ID: m.ID, Want: m.Version, Have: have}
}

// SetMain records that a machine's main process started anew (a boot or a
// start) as pid, and has not exited. UpdateMachine leaves main_pid and
// main_exit alone, so a lifecycle operation holding an older copy of the
// record never undoes what a wait recorded; for the same reason neither
// moves the version.
func (s *DB) SetMain(ctx context.Context, id string, pid int) error {
	if _, err := s.c().exec(ctx, `UPDATE machines SET main_pid=?, main_exit='' WHERE id=?`, pid, id); err != nil {
		return fmt.Errorf("record main process of machine %s: %w", id, err)
	}
	return nil
}

// SetMainExit records how main process pid of a machine ended, unless the
// machine has started another main process since or the exit is recorded
// already; recorded says whether this call recorded it.
func (s *DB) SetMainExit(ctx context.Context, id string, pid int, exit *api.MainExit) (recorded bool, err error) {
	res, err := s.c().exec(ctx, `UPDATE machines SET main_exit=? WHERE id=? AND main_pid=? AND main_exit=''`,
		mainExitJSON(exit), id, pid)
	if err != nil {
		return false, fmt.Errorf("record main process exit of machine %s: %w", id, err)
	}
	return exactlyOne(res), nil
}

func mainExitJSON(e *api.MainExit) string {
	if e == nil {
		return ""
	}
	b, _ := json.Marshal(e)
	return string(b)
}

// DeleteMachine removes a machine's record (a create or resume undone);
// if it was its lineage's latest execution, the one before it is again.
func (s *DB) DeleteMachine(ctx context.Context, id string) error {
	return s.inTx(ctx, "delete machine "+id, func(c conn) error {
		if err := checkFence(ctx, c); err != nil {
			return err
		}
		return deleteMachine(ctx, c, id)
	})
}

func deleteMachine(ctx context.Context, c conn, id string) error {
	var lineage string
	var latest bool
	err := c.queryRow(ctx, `SELECT lineage_id, latest FROM machines WHERE id=?`+c.d.forUpdate, id).Scan(&lineage, &latest)
	if errors.Is(err, sql.ErrNoRows) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, q := range []string{`DELETE FROM machines WHERE id=?`, `DELETE FROM machine_metadata WHERE machine_id=?`, `DELETE FROM machine_volumes WHERE machine_id=?`} {
		if _, err := c.exec(ctx, q, id); err != nil {
			return err
		}
	}
	if latest {
		_, err := c.exec(ctx, `UPDATE machines SET latest = TRUE WHERE id = (SELECT id FROM machines WHERE lineage_id = ? ORDER BY lineage_seq DESC LIMIT 1)`, lineage)
		return err
	}
	return nil
}

// GetMachine returns a machine by id, or an error matching errdefs.ErrNotFound.
func (s *DB) GetMachine(ctx context.Context, id string) (*store.Machine, error) {
	m, err := scanMachine(s.c().queryRow(ctx, `SELECT `+machineColumns+` FROM machines WHERE id=?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("machine %s: %w", id, errdefs.ErrNotFound)
	}
	return m, err
}

// LineageHead returns the latest execution of a lineage (the one with the
// highest lineage_seq), in one indexed lookup.
func (s *DB) LineageHead(ctx context.Context, lineageID string) (*store.Machine, error) {
	m, err := scanMachine(s.c().queryRow(ctx, `SELECT `+machineColumns+` FROM machines WHERE lineage_id=? ORDER BY lineage_seq DESC LIMIT 1`, lineageID))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("lineage %s: %w", lineageID, errdefs.ErrNotFound)
	}
	return m, err
}

// ListMachines returns machines matching f, oldest first.
func (s *DB) ListMachines(ctx context.Context, f store.MachineFilter) ([]*store.Machine, error) {
	var w where
	w.eq("team_id", f.TeamID)
	w.in("state", f.States)
	w.eq("template", f.Template)
	w.eq("lineage_id", f.LineageID)
	w.eq("restored_from", f.RestoredFrom)
	w.eq("node_id", f.NodeID)
	return queryAll(ctx, s.c(), "list machines", `SELECT `+machineColumns+` FROM machines`+w.sql()+" ORDER BY created_at, id", w.args, scanMachine)
}

// AssignSlot gives an existing machine that holds none (a paused one) the
// lowest free network slot; like UpdateMachine, only if the row is still
// at m.Version.
func (s *DB) AssignSlot(ctx context.Context, m *store.Machine, slots int) error {
	var got int
	err := s.withFreeSlot(ctx, "assign slot to "+m.ID, slots, func(c conn, slot int) error {
		res, err := c.exec(ctx, `UPDATE machines SET slot=?, node_id=?, version = version + 1 WHERE id=? AND version=?`, slot, c.f.nodeID(), m.ID, m.Version)
		if err != nil {
			return err
		}
		if !exactlyOne(res) {
			return lostWrite(ctx, c, m)
		}
		got = slot
		return nil
	})
	if err != nil {
		return err
	}
	m.Slot, m.NodeID = got, s.f.nodeID()
	m.Version++
	return nil
}

// CountMachines returns how many machines are in each state.
func (s *DB) CountMachines(ctx context.Context) (map[string]int, error) {
	return countBy[string, int](ctx, s.c(), "count machines", `SELECT state, count(*) FROM machines GROUP BY state`)
}

// CommittedMemoryMB is the memory, in MiB, given to the machines of the
// store's node that hold a network slot (they have, or are about to have,
// a sandbox) and to its spares.
func (s *DB) CommittedMemoryMB(ctx context.Context) (int64, error) {
	var n int64
	err := s.c().queryRow(ctx, `SELECT
		CAST(coalesce((SELECT sum(memory_mb) FROM machines WHERE slot >= 0 AND node_id = ?), 0) +
		coalesce((SELECT sum(`+s.d.jsonInt("shape", "memory_mb")+`) FROM spares WHERE node_id = ?), 0) AS BIGINT)`, s.f.nodeID(), s.f.nodeID()).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("committed memory: %w", err)
	}
	return n, nil
}

// PruneEnded deletes the rows of machines that were killed or failed
// before before, with their metadata (a lineage's latest row only once
// every row of the lineage has ended), and the rows of snapshots pruned by
// retention that were taken before it. It returns how many machine rows
// it deleted.
func (s *DB) PruneEnded(ctx context.Context, before time.Time) (int64, error) {
	var n int64
	err := s.inTx(ctx, "prune ended machines", func(c conn) error {
		// A lineage's latest row goes only with the whole lineage: were it
		// deleted while another row stays (a paused alias, or one that
		// ended after the cutoff), that row would be left without a latest
		// one, out of lists, or look like the latest state.
		const gone = `state IN ('killed', 'failed') AND ended_at IS NOT NULL AND ended_at < ?`
		const ended = `SELECT id FROM machines m WHERE ` + gone + `
			AND (NOT latest OR NOT EXISTS (SELECT 1 FROM machines l WHERE l.lineage_id = m.lineage_id AND l.id <> m.id AND NOT (` + gone + `)))`
		cutoff := []any{at(before), at(before)}
		for _, table := range []string{"machine_metadata", "machine_volumes"} {
			if _, err := c.exec(ctx, `DELETE FROM `+table+` WHERE machine_id IN (`+ended+`)`, cutoff...); err != nil {
				return err
			}
		}
		res, err := c.exec(ctx, `DELETE FROM machines WHERE id IN (`+ended+`)`, cutoff...)
		if err != nil {
			return err
		}
		n, _ = res.RowsAffected()
		_, err = c.exec(ctx, `DELETE FROM snapshots WHERE state = ? AND created_at < ?`, store.SnapshotPruned, at(before))
		return err
	})
	return n, err
}

func scanMachine(r scanner) (*store.Machine, error) {
	var m store.Machine
	var env, meta, vols, hooks, cmd, exit string
	err := r.Scan(&m.ID, &m.TeamID, &m.State, &m.Template, &m.CPUCount, &m.MemoryMB, &env, &meta, &m.AllowInternet,
		&m.Slot, &m.ContainerID, &m.AgentToken, timeDest{&m.CreatedAt}, timeDest{&m.StartedAt}, timeDest{&m.EndedAt}, &m.Error,
		&m.LineageID, &m.LineageSeq, &m.SnapshotID, &m.RestoredFrom, &vols, &hooks, &m.AgentDir,
		&m.TimeoutMS, &m.OnTimeout, &m.AutoResume, timeDest{&m.Deadline}, &m.IdleTimeoutMS, &m.Persistence,
		&cmd, &m.MainPID, &exit, &m.PublicPorts, &m.Latest, timeDest{&m.LineageCreated}, &m.CheckpointRetention, &m.FailureReason, &m.Origin,
		&m.Version, &m.DiskMB, &m.NodeID)
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal([]byte(cmd), &m.Command); err != nil {
		return nil, fmt.Errorf("machine %s command: %w", m.ID, err)
	}
	if len(m.Command) == 0 {
		m.Command = nil
	}
	if exit != "" {
		m.MainExit = new(api.MainExit)
		if err := json.Unmarshal([]byte(exit), m.MainExit); err != nil {
			return nil, fmt.Errorf("machine %s main exit: %w", m.ID, err)
		}
	}
	for _, f := range []struct {
		what string
		src  string
		dst  any
	}{{"volumes", vols, &m.Volumes}, {"hooks", hooks, &m.Hooks}, {"env", env, &m.Env}, {"metadata", meta, &m.Metadata}} {
		if err := json.Unmarshal([]byte(f.src), f.dst); err != nil {
			return nil, fmt.Errorf("machine %s %s: %w", m.ID, f.what, err)
		}
	}
	return &m, nil
}

func persistenceOr(s string) string {
	if s == "" {
		return "persistent"
	}
	return s
}

func onTimeoutOr(s string) string {
	if s == "" {
		return "destroy"
	}
	return s
}
