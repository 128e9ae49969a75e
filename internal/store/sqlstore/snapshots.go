package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"

	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store"
)

const snapshotColumns = `id, team_id, kind, state, machine_id, lineage_id, template, parent_id, generation,
	size_bytes, checksum, pause_window_ms, created_at, host, spec, files, agent_token, pinned, name, durable`

// CreateSnapshot stores a new snapshot row. A name the team has given
// another snapshot (in any state: a snapshot being written holds its name)
// is a snapshot_name_exists error.
func (s *DB) CreateSnapshot(ctx context.Context, sn *store.Snapshot) error {
	_, err := s.c().exec(ctx, `INSERT INTO snapshots (`+snapshotColumns+`) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`,
		sn.ID, sn.TeamID, sn.Kind, sn.State, sn.MachineID, sn.LineageID, sn.Template, sn.ParentID, sn.Generation,
		sn.SizeBytes, sn.Checksum, sn.PauseWindowMS, at(sn.CreatedAt), rawOr(sn.Host, "{}"), rawOr(sn.Spec, "{}"),
		rawOr(sn.Files, "[]"), sn.AgentToken, sn.Pinned, sn.Name, sn.Durable)
	if err != nil {
		// Ids are random: the one unique index a new row can hit is the
		// team's names.
		if sn.Name != "" && s.d.unique(err) {
			return store.SnapshotNameTaken(sn.Name)
		}
		return fmt.Errorf("insert snapshot %s: %w", sn.ID, err)
	}
	return nil
}

// CommitSnapshot marks a snapshot ready with its final fields and, in the
// same transaction, writes machines (e.g. the paused source): either both
// are recorded or neither.
func (s *DB) CommitSnapshot(ctx context.Context, sn *store.Snapshot, machines ...*store.Machine) error {
	err := s.inTx(ctx, "commit snapshot "+sn.ID, func(c conn) error {
		if err := checkFence(ctx, c); err != nil {
			return err
		}
		res, err := c.exec(ctx, `UPDATE snapshots SET state=?, size_bytes=?, checksum=?, pause_window_ms=?, host=?, spec=?, files=? WHERE id=?`,
			store.SnapshotReady, sn.SizeBytes, sn.Checksum, sn.PauseWindowMS, rawOr(sn.Host, "{}"), rawOr(sn.Spec, "{}"), rawOr(sn.Files, "[]"), sn.ID)
		if err != nil {
			return err
		}
		if !exactlyOne(res) {
			return fmt.Errorf("snapshot %s: %w", sn.ID, errdefs.ErrNotFound)
		}
		for _, m := range machines {
			if err := updateMachine(ctx, c, m); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	sn.State = store.SnapshotReady
	for _, m := range machines {
		m.Version++
	}
	return nil
}

// GetSnapshot returns a snapshot by id, or an error matching ErrNotFound.
func (s *DB) GetSnapshot(ctx context.Context, id string) (*store.Snapshot, error) {
	row := s.c().queryRow(ctx, `SELECT `+snapshotColumns+` FROM snapshots WHERE id=?`, id)
	sn, err := scanSnapshot(row)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("snapshot %s: %w", id, errdefs.ErrNotFound)
	}
	return sn, err
}

// GetSnapshotByName returns a team's snapshot by name, or an error
// matching ErrNotFound.
func (s *DB) GetSnapshotByName(ctx context.Context, teamID, name string) (*store.Snapshot, error) {
	row := s.c().queryRow(ctx, `SELECT `+snapshotColumns+` FROM snapshots WHERE team_id=? AND name=? AND name != ''`, teamID, name)
	sn, err := scanSnapshot(row)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("snapshot named %s: %w", name, errdefs.ErrNotFound)
	}
	return sn, err
}

// ListSnapshots returns snapshots matching f, oldest first (see Newest).
func (s *DB) ListSnapshots(ctx context.Context, f store.SnapshotFilter) ([]*store.Snapshot, error) {
	var w where
	w.eq("team_id", f.TeamID)
	w.eq("machine_id", f.MachineID)
	w.eq("lineage_id", f.LineageID)
	w.in("kind", f.Kinds)
	w.in("state", f.States)
	if f.NotDurable {
		w.conds = append(w.conds, "NOT durable")
	}
	order := " ORDER BY created_at, id"
	if f.Newest > 0 {
		order = fmt.Sprintf(" ORDER BY created_at DESC, id DESC LIMIT %d", f.Newest)
	}
	return queryAll(ctx, s.c(), "list snapshots", `SELECT `+snapshotColumns+` FROM snapshots`+w.sql()+order, w.args, scanSnapshot)
}

// DeleteSnapshot removes a snapshot's row and, if it was ready, records
// its storage in the usage ledger.
func (s *DB) DeleteSnapshot(ctx context.Context, id string) error {
	return s.inTx(ctx, "delete snapshot "+id, func(c conn) error {
		if err := recordStorageEnd(ctx, c, id); err != nil {
			return err
		}
		_, err := c.exec(ctx, `DELETE FROM snapshots WHERE id=?`, id)
		return err
	})
}

func scanSnapshot(r scanner) (*store.Snapshot, error) {
	var sn store.Snapshot
	var host, spec, files string
	err := r.Scan(&sn.ID, &sn.TeamID, &sn.Kind, &sn.State, &sn.MachineID, &sn.LineageID, &sn.Template, &sn.ParentID,
		&sn.Generation, &sn.SizeBytes, &sn.Checksum, &sn.PauseWindowMS, timeDest{&sn.CreatedAt}, &host, &spec, &files, &sn.AgentToken, &sn.Pinned, &sn.Name, &sn.Durable)
	if err != nil {
		return nil, err
	}
	sn.Host, sn.Spec, sn.Files = json.RawMessage(host), json.RawMessage(spec), json.RawMessage(files)
	return &sn, nil
}

func rawOr(b json.RawMessage, def string) string {
	if len(b) == 0 {
		return def
	}
	return string(b)
}

// CreateVolume stores a volume; an existing name is a volume_exists error.
func (s *DB) CreateVolume(ctx context.Context, v store.Volume) error {
	_, err := s.c().exec(ctx, `INSERT INTO volumes (team_id, name, created_at) VALUES (?, ?, ?)`,
		v.TeamID, v.Name, at(v.CreatedAt))
	if err != nil {
		if s.d.unique(err) {
			return errdefs.New(errdefs.ErrFailedPrecondition, errdefs.CodeVolumeExists, fmt.Sprintf("volume %s already exists", v.Name),
				"use the existing volume, or delete it first")
		}
		return fmt.Errorf("create volume %s: %w", v.Name, err)
	}
	return nil
}

// ListVolumes returns a team's volumes by name.
func (s *DB) ListVolumes(ctx context.Context, teamID string) ([]store.Volume, error) {
	return queryAll(ctx, s.c(), "list volumes", `SELECT team_id, name, created_at FROM volumes WHERE team_id=? ORDER BY name`, []any{teamID}, scanVolume)
}

// ListVolumesPage returns up to limit of a team's volumes whose names come
// after after, by name, and whether more follow.
func (s *DB) ListVolumesPage(ctx context.Context, teamID, after string, limit int) ([]store.Volume, bool, error) {
	vols, err := queryAll(ctx, s.c(), "list volumes", `SELECT team_id, name, created_at FROM volumes WHERE team_id=? AND name > ? ORDER BY name LIMIT ?`,
		[]any{teamID, after, limit + 1}, scanVolume)
	return pageOf(vols, limit, err)
}

func scanVolume(r scanner) (store.Volume, error) {
	var v store.Volume
	err := r.Scan(&v.TeamID, &v.Name, timeDest{&v.CreatedAt})
	return v, err
}

// VolumeMachines counts, for each of a team's volume names, the machines
// (one per lineage: latest executions not killed) that mount it.
func (s *DB) VolumeMachines(ctx context.Context, teamID string, names []string) (map[string]int, error) {
	out := map[string]int{}
	if len(names) == 0 {
		return out, nil
	}
	return countBy[string, int](ctx, s.c(), "volume users", `SELECT mv.name, count(*) FROM machine_volumes mv JOIN machines m ON m.id = mv.machine_id
		WHERE m.team_id = ? AND m.latest AND m.state != 'killed' AND mv.name IN (`+placeholders(len(names))+`) GROUP BY mv.name`,
		append([]any{teamID}, anySlice(names)...)...)
}

// DeleteVolume removes a volume's row; it reports whether one existed.
func (s *DB) DeleteVolume(ctx context.Context, teamID, name string) (bool, error) {
	res, err := s.c().exec(ctx, `DELETE FROM volumes WHERE team_id=? AND name=?`, teamID, name)
	if err != nil {
		return false, fmt.Errorf("delete volume %s: %w", name, err)
	}
	n, _ := res.RowsAffected()
	return n > 0, nil
}

// SetSnapshotPinned pins or unpins a ready snapshot.
func (s *DB) SetSnapshotPinned(ctx context.Context, id string, pinned bool) error {
	res, err := s.c().exec(ctx, `UPDATE snapshots SET pinned=? WHERE id=? AND state=?`, pinned, id, store.SnapshotReady)
	if err != nil {
		return fmt.Errorf("pin snapshot %s: %w", id, err)
	}
	if !exactlyOne(res) {
		return fmt.Errorf("pin snapshot %s: %w", id, errdefs.ErrNotFound)
	}
	return nil
}

// MarkPruning takes a ready snapshot out of every list and restore (the
// first step of a prune); it reports false if it was not ready.
// Its storage ends there (it is recorded in the usage ledger).
func (s *DB) MarkPruning(ctx context.Context, id string) (bool, error) {
	var marked bool
	err := s.inTx(ctx, "prune snapshot "+id, func(c conn) error {
		var pinned bool
		err := c.queryRow(ctx, `SELECT pinned FROM snapshots WHERE id=? AND state=?`+c.d.forUpdate, id, store.SnapshotReady).Scan(&pinned)
		if errors.Is(err, sql.ErrNoRows) || (err == nil && pinned) {
			marked = false
			return nil
		}
		if err != nil {
			return err
		}
		if err := recordStorageEnd(ctx, c, id); err != nil {
			return err
		}
		res, err := c.exec(ctx, `UPDATE snapshots SET state=? WHERE id=? AND state=? AND NOT pinned`, store.SnapshotPruning, id, store.SnapshotReady)
		if err != nil {
			return err
		}
		marked = exactlyOne(res)
		return nil
	})
	return marked, err
}

// MarkPruned records that a pruning snapshot's files are gone, and drops
// what only a restore needed of its row.
func (s *DB) MarkPruned(ctx context.Context, id string) error {
	_, err := s.c().exec(ctx, `UPDATE snapshots SET state=?, host='{}', spec='{}', files='[]', agent_token='' WHERE id=? AND state=?`,
		store.SnapshotPruned, id, store.SnapshotPruning)
	if err != nil {
		return fmt.Errorf("prune snapshot %s: %w", id, err)
	}
	return nil
}

// SnapshotBytesByKind returns the size of the committed snapshots by kind.
func (s *DB) SnapshotBytesByKind(ctx context.Context) (map[string]int64, error) {
	return countBy[string, int64](ctx, s.c(), "snapshot bytes",
		`SELECT kind, CAST(coalesce(sum(size_bytes), 0) AS BIGINT) FROM snapshots WHERE state = ? GROUP BY kind`, store.SnapshotReady)
}

// SnapshotBytes returns the size of the committed snapshots.
func (s *DB) SnapshotBytes(ctx context.Context) (int64, error) {
	var n int64
	err := s.c().queryRow(ctx, `SELECT CAST(coalesce(sum(size_bytes), 0) AS BIGINT) FROM snapshots WHERE state = ?`, store.SnapshotReady).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("snapshot bytes: %w", err)
	}
	return n, nil
}

// MarkDurable records that a ready snapshot's files are in the object
// store; it reports false if the snapshot is no longer ready (pruned or
// deleted while it was uploaded).
func (s *DB) MarkDurable(ctx context.Context, id string) (bool, error) {
	res, err := s.c().exec(ctx, `UPDATE snapshots SET durable = TRUE WHERE id = ? AND state = ?`, id, store.SnapshotReady)
	if err != nil {
		return false, fmt.Errorf("mark snapshot %s durable: %w", id, err)
	}
	return exactlyOne(res), nil
}
