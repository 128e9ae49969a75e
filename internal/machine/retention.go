package machine

import (
	"context"
	"fmt"
	"slices"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/faults"
	"nullspace.dev/nullspace/internal/store"
)

// Bounded history. Every pause and manual checkpoint adds a state to a
// machine's history; a lineage keeps its newest CheckpointRetention
// unpinned ones (the machine's checkpoint_retention, or the server's
// default; 0 keeps all) and every pinned one. After each new state, older
// ones are pruned once nothing depends on them: not the state a paused or
// stopped machine is in, not a state live machines are being made from.
// Reusable snapshots are the user's and never pruned; a stopped machine's
// disk is not history.
//
// A prune is crash-safe: the row goes ready ─▶ pruning first (from then on
// it is neither listed nor restorable), then the files go, then the row
// becomes pruned and stays, small, so that a restore of it can say it was
// pruned. A prune a crash cut short is finished by Reconcile (the files of
// a snapshot that is not ready are swept there anyway).

// DefaultCheckpointRetention is the server's default retention.
const DefaultCheckpointRetention = 10

// historyKinds are the snapshot kinds retention keeps bounded.
var historyKinds = []string{api.SnapshotHibernate, api.SnapshotCheckpoint}

// retentionOf returns how many unpinned states rec's lineage keeps (0: all).
func (m *Manager) retentionOf(rec *store.Machine) int {
	if rec.CheckpointRetention >= 0 {
		return rec.CheckpointRetention
	}
	return m.cfg.CheckpointRetention
}

// pruneLocked prunes the history of a lineage down to its retention. The
// caller holds the lineage lock.
func (m *Manager) pruneLocked(ctx context.Context, lineageID string) error {
	head, err := m.lineageHead(ctx, lineageID)
	if err != nil {
		return err
	}
	keep := m.retentionOf(head)
	if keep <= 0 {
		return nil
	}
	snaps, err := m.store.ListSnapshots(ctx, store.SnapshotFilter{LineageID: lineageID, Kinds: historyKinds, States: []string{store.SnapshotReady}})
	if err != nil {
		return err
	}
	snaps = slices.DeleteFunc(snaps, func(sn *store.Snapshot) bool { return sn.Pinned })
	if len(snaps) <= keep {
		return nil
	}
	slices.SortFunc(snaps, func(a, b *store.Snapshot) int { return b.Generation - a.Generation }) // newest first
	old := snaps[keep:]
	ids := make([]string, len(old))
	for i, sn := range old {
		ids[i] = sn.ID
	}
	kids, err := m.store.CountRestoredFrom(ctx, ids, liveStates)
	if err != nil {
		return err
	}
	var errs []error
	for _, sn := range old {
		if sn.ID == head.SnapshotID || kids[sn.ID] > 0 {
			continue // the machine's current state, or one children are made from
		}
		if err := m.prune(ctx, sn, keep); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("prune history of %s: %w", lineageID, errs[0])
	}
	return nil
}

// prune removes one state of a history.
func (m *Manager) prune(ctx context.Context, sn *store.Snapshot, keep int) error {
	ctx = context.WithoutCancel(ctx)
	ok, err := m.store.MarkPruning(ctx, sn.ID)
	if err != nil || !ok {
		return err
	}
	faults.Point("prune.marked")
	if err := m.deleteSnapshotFiles(ctx, sn.ID); err != nil {
		return fmt.Errorf("remove files of pruned snapshot %s: %w", sn.ID, err)
	}
	if err := m.store.MarkPruned(ctx, sn.ID); err != nil {
		return err
	}
	m.spares.poke() // its shape may no longer be wanted
	m.logger.InfoContext(ctx, "snapshot pruned by checkpoint retention", "snapshot_id", sn.ID, "machine_id", sn.MachineID, "keep", keep)
	if m.cfg.Events != nil {
		m.cfg.Events.Emit(ctx, api.Event{Type: api.EventSnapshotPruned, TeamID: sn.TeamID, MachineID: sn.MachineID, Cause: causeOf(ctx),
			Details: map[string]any{"snapshot_id": sn.ID, "kind": sn.Kind, "generation": sn.Generation, "size_bytes": sn.SizeBytes, "retention": keep}})
	}
	return nil
}

// PinCheckpoint pins (or unpins) a state of id's history: a pinned one is
// kept whatever the retention. Unpinning prunes the history at once.
func (m *Manager) PinCheckpoint(ctx context.Context, teamID, id, snapshotID string, pinned bool) (*store.Snapshot, error) {
	rec, err := m.Get(ctx, teamID, id)
	if err != nil {
		return nil, err
	}
	unlock, err := m.lock(ctx, lineageKey(rec.LineageID))
	if err != nil {
		return nil, err
	}
	defer unlock()
	sn, err := m.readySnapshot(ctx, teamID, snapshotID)
	if err != nil {
		return nil, err
	}
	if sn.LineageID != rec.LineageID {
		return nil, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeSnapshotKind,
			fmt.Sprintf("snapshot %s is not in the history of machine %s", sn.ID, rec.ID),
			"list the machine's checkpoints with GET /v1/machines/{id}/checkpoints")
	}
	if err := m.store.SetSnapshotPinned(ctx, sn.ID, pinned); err != nil {
		return nil, err
	}
	sn.Pinned = pinned
	if !pinned {
		if err := m.pruneLocked(ctx, rec.LineageID); err != nil {
			m.logger.ErrorContext(ctx, "prune after an unpin", "machine_id", rec.ID, "err", err)
		}
	}
	return sn, nil
}

// finishPrunes completes prunes a crash cut short (at start; their files
// are swept with the other snapshots that are not ready).
func (m *Manager) finishPrunes(ctx context.Context) error {
	pending, err := m.store.ListSnapshots(ctx, store.SnapshotFilter{States: []string{store.SnapshotPruning}})
	if err != nil {
		return err
	}
	for _, sn := range pending {
		m.logger.InfoContext(ctx, "finishing an interrupted prune", "snapshot_id", sn.ID)
		if err := m.deleteSnapshotFiles(ctx, sn.ID); err != nil {
			return err
		}
		if err := m.store.MarkPruned(ctx, sn.ID); err != nil {
			return err
		}
	}
	return nil
}

// retentionOr is the retention a create request asks for: -1 (follow the
// server's default) when it gives none.
func retentionOr(n *int) int {
	if n == nil {
		return -1
	}
	return *n
}
