package machine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store"
)

// SnapshotView returns the public view of a snapshot.
func (m *Manager) SnapshotView(ctx context.Context, sn *store.Snapshot) api.Snapshot {
	return m.SnapshotViews(ctx, []*store.Snapshot{sn})[0]
}

// SnapshotViews returns the public views of snapshots, counting their
// children in one query for all.
func (m *Manager) SnapshotViews(ctx context.Context, snaps []*store.Snapshot) []api.Snapshot {
	ids := make([]string, len(snaps))
	for i, sn := range snaps {
		ids[i] = sn.ID
	}
	kids, err := m.store.CountRestoredFrom(ctx, ids, liveStates)
	if err != nil {
		m.logger.WarnContext(ctx, "children of snapshot views", "err", err)
	}
	out := make([]api.Snapshot, len(snaps))
	for i, sn := range snaps {
		v := api.Snapshot{
			ID: sn.ID, Kind: sn.Kind, MachineID: sn.MachineID, LineageID: sn.LineageID, Template: sn.Template,
			SizeBytes: sn.SizeBytes, CreatedAt: sn.CreatedAt, ParentID: sn.ParentID, Generation: sn.Generation,
			Checksum: sn.Checksum, PauseWindowMS: sn.PauseWindowMS, Children: kids[sn.ID], Pinned: sn.Pinned, Name: sn.Name, Durable: sn.Durable,
		}
		if host, err := hostOf(sn); err == nil {
			v.RuntimeVersion, v.Kernel = host.RuntimeVersion, host.Kernel
		}
		out[i] = v
	}
	return out
}

// GetSnapshot returns a team's committed snapshot, by id or name.
func (m *Manager) GetSnapshot(ctx context.Context, teamID, id string) (*store.Snapshot, error) {
	return m.readySnapshot(ctx, teamID, id)
}

// SnapshotFilter selects a team's snapshots.
type SnapshotFilter struct {
	MachineID string
	Kind      string
	Name      string
}

// SnapshotPage is where a page of snapshots starts and how long it is.
type SnapshotPage struct {
	After store.SnapshotCursor
	Limit int
}

// ListSnapshots returns a page of a team's committed snapshots, oldest
// first, and whether more follow.
func (m *Manager) ListSnapshots(ctx context.Context, teamID string, f SnapshotFilter, p SnapshotPage) ([]*store.Snapshot, bool, error) {
	q := store.SnapshotPageQuery{TeamID: teamID, MachineID: f.MachineID, Name: f.Name, States: []string{store.SnapshotReady}, After: p.After, Limit: p.Limit}
	if f.Kind != "" {
		switch f.Kind {
		case api.SnapshotHibernate, api.SnapshotReusable, api.SnapshotCheckpoint, api.SnapshotDisk:
		default:
			return nil, false, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
				fmt.Sprintf("unknown snapshot kind %q", f.Kind), "use hibernate, snapshot, checkpoint or disk")
		}
		q.Kinds = []string{f.Kind}
	}
	return m.store.ListSnapshotsPage(ctx, q)
}

// Checkpoints returns a page of the history of id's lineage: the states
// its executions recorded (pauses, manual checkpoints, reusable
// snapshots), by generation, and whether more follow.
func (m *Manager) Checkpoints(ctx context.Context, teamID, id string, p SnapshotPage) ([]*store.Snapshot, bool, error) {
	rec, err := m.Get(ctx, teamID, id)
	if err != nil {
		return nil, false, err
	}
	return m.store.ListSnapshotsPage(ctx, store.SnapshotPageQuery{LineageID: rec.LineageID, States: []string{store.SnapshotReady},
		ByGeneration: true, After: p.After, Limit: p.Limit})
}

// DeleteSnapshot removes a snapshot (id may be its name), which frees its
// name. While a paused machine's state is in
// it, or live machines were created from it, it is refused with
// snapshot_in_use unless force is set; forced, the paused machines that
// depended on it are failed (their state is gone), and running children
// are unaffected (a restored machine does not read its snapshot again).
func (m *Manager) DeleteSnapshot(ctx context.Context, teamID, id string, force bool) error {
	sn, err := m.readySnapshot(ctx, teamID, id)
	if err != nil {
		return err
	}
	unlock, err := m.lock(ctx, lineageKey(sn.LineageID))
	if err != nil {
		return err
	}
	defer unlock()
	id = sn.ID
	aliases, children, err := m.dependents(ctx, id)
	if err != nil {
		return err
	}
	if (len(aliases) > 0 || len(children) > 0) && !force {
		var parts []string
		if len(aliases) > 0 {
			parts = append(parts, "it holds the paused state of "+ids(aliases))
		}
		if len(children) > 0 {
			parts = append(parts, "live machines were made from it: "+ids(children))
		}
		return errdefs.New(errdefs.ErrFailedPrecondition, errdefs.CodeSnapshotInUse,
			fmt.Sprintf("snapshot %s is in use: %s", id, strings.Join(parts, "; ")),
			"kill those machines first, or delete with force=true (paused machines that depend on it become failed)")
	}
	return m.dropSnapshot(ctx, sn, aliases, fmt.Sprintf("its snapshot %s was deleted", id))
}

// deleteSnapshot deletes sn whatever depends on it; the paused machines
// whose state it holds become failed with reason.
func (m *Manager) deleteSnapshot(ctx context.Context, sn *store.Snapshot, reason string) error {
	unlock, err := m.lock(ctx, lineageKey(sn.LineageID))
	if err != nil {
		return err
	}
	defer unlock()
	aliases, _, err := m.dependents(ctx, sn.ID)
	if err != nil {
		return err
	}
	return m.dropSnapshot(ctx, sn, aliases, reason)
}

// dependents returns the paused (or restoring) machines whose state is in
// snapshot id, and the live machines made from it.
func (m *Manager) dependents(ctx context.Context, id string) (aliases, children []*store.Machine, err error) {
	paused, err := m.store.ListMachines(ctx, store.MachineFilter{States: append([]string{api.StateRestoring, api.StateStarting}, heldStates...)})
	if err != nil {
		return nil, nil, err
	}
	for _, p := range paused {
		if p.SnapshotID == id {
			aliases = append(aliases, p)
		}
	}
	children, err = m.store.ListMachines(ctx, store.MachineFilter{RestoredFrom: id, States: liveStates})
	return aliases, children, err
}

// dropSnapshot fails the paused aliases with reason and removes sn. The
// caller holds the lineage lock.
func (m *Manager) dropSnapshot(ctx context.Context, sn *store.Snapshot, aliases []*store.Machine, reason string) error {
	var errs []error
	for _, a := range aliases {
		unlockM, err := m.lock(ctx, a.ID)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if cur, err := m.store.GetMachine(ctx, a.ID); err == nil && slices.Contains(heldStates, cur.State) {
			errs = append(errs, m.failFrom(ctx, cur, api.FailureSnapshotLost, reason))
		}
		unlockM()
	}
	if err := m.removeSnapshot(ctx, sn); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (m *Manager) removeSnapshot(ctx context.Context, sn *store.Snapshot) error {
	// Row first: a snapshot without a row is an orphan Reconcile removes;
	// a row without files would be a snapshot that cannot be restored.
	if err := m.store.DeleteSnapshot(ctx, sn.ID); err != nil {
		return err
	}
	m.spares.poke() // its shape may no longer be wanted
	m.emitSnapshot(ctx, api.EventSnapshotDeleted, sn)
	if err := m.deleteSnapshotFiles(ctx, sn.ID); err != nil {
		return fmt.Errorf("remove snapshot %s files: %w", sn.ID, err)
	}
	m.logger.InfoContext(ctx, "snapshot deleted", "snapshot_id", sn.ID)
	return nil
}

// dropLineageSnapshots deletes the hibernate snapshots and checkpoints of a
// lineage that ended, except those live machines were made from. Reusable
// snapshots are the user's to delete.
func (m *Manager) dropLineageSnapshots(ctx context.Context, lineageID string) error {
	snaps, err := m.store.ListSnapshots(ctx, store.SnapshotFilter{LineageID: lineageID,
		Kinds: []string{api.SnapshotHibernate, api.SnapshotCheckpoint, api.SnapshotDisk}, States: []string{store.SnapshotReady}})
	if err != nil {
		return err
	}
	var errs []error
	for _, sn := range snaps {
		kids, err := m.store.ListMachines(ctx, store.MachineFilter{RestoredFrom: sn.ID, States: append([]string{api.StatePaused}, liveStates...)})
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if len(kids) > 0 {
			continue
		}
		errs = append(errs, m.removeSnapshot(ctx, sn))
	}
	return errors.Join(errs...)
}

func ids(recs []*store.Machine) string {
	var out []string
	for _, r := range recs {
		out = append(out, r.ID)
	}
	return strings.Join(out, ", ")
}
