package machine

import (
	"context"
	"fmt"
	"sort"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store"
)

// Persistence: what happens to a machine's paused state.
//   - persistent (default): kept until the machine or snapshot is deleted;
//   - sticky: kept, but when the snapshots on the server take more than
//     Config.SnapshotBudget, the paused states of sticky machines are
//     evicted, oldest first; an evicted machine becomes failed with the
//     reason, so connect says so instead of pretending to resume;
//   - ephemeral: nothing is kept; where the machine would be paused (its
//     lease or idle timeout) it is destroyed, and an explicit pause is
//     refused with machine_ephemeral.

func validatePersistence(req *api.CreateMachineRequest) error {
	switch req.Persistence {
	case "":
		req.Persistence = api.PersistencePersistent
	case api.PersistencePersistent, api.PersistenceSticky, api.PersistenceEphemeral:
	default:
		return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("persistence %q is not a policy", req.Persistence), `use "persistent" (the default), "sticky" or "ephemeral"`)
	}
	if req.Persistence == api.PersistenceEphemeral && req.AutoResume {
		return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			"an ephemeral machine cannot be auto-resumed: it keeps no paused state",
			`create it with persistence "sticky" or "persistent"`)
	}
	return nil
}

func ephemeralPause(rec *store.Machine) error {
	return errdefs.New(errdefs.ErrFailedPrecondition, errdefs.CodeMachineEphemeral,
		fmt.Sprintf("machine %s is ephemeral: a pause would keep nothing", rec.ID),
		`kill it, take a reusable snapshot (POST /v1/machines/{id}/snapshots), or create machines to pause with persistence "sticky" or "persistent"`)
}

// enforceBudget evicts the paused states (and stopped disks) of sticky
// machines, oldest first, while the committed snapshots take more than the
// budget.
func (m *Manager) enforceBudget(ctx context.Context) {
	if m.cfg.SnapshotBudget <= 0 {
		return
	}
	m.evictMu.Lock()
	defer m.evictMu.Unlock()
	used, err := m.store.SnapshotBytes(ctx)
	if err != nil || used <= m.cfg.SnapshotBudget {
		return
	}
	paused, err := m.store.ListMachines(ctx, store.MachineFilter{States: heldStates})
	if err != nil {
		return
	}
	type victim struct {
		rec *store.Machine
		sn  *store.Snapshot
	}
	var victims []victim
	for _, rec := range paused {
		if rec.Persistence != api.PersistenceSticky || rec.SnapshotID == "" {
			continue
		}
		if sn, err := m.store.GetSnapshot(ctx, rec.SnapshotID); err == nil && sn.State == store.SnapshotReady {
			victims = append(victims, victim{rec, sn})
		}
	}
	sort.Slice(victims, func(i, j int) bool { return victims[i].sn.CreatedAt.Before(victims[j].sn.CreatedAt) })
	for _, v := range victims {
		if used <= m.cfg.SnapshotBudget {
			return
		}
		what := "paused state"
		if v.rec.State == api.StateStopped {
			what = "stopped disk"
		}
		reason := fmt.Sprintf("its %s (snapshot %s, %d bytes) was evicted: it is sticky and the server's snapshot storage (%d of %d bytes) was over budget",
			what, v.sn.ID, v.sn.SizeBytes, used, m.cfg.SnapshotBudget)
		m.logger.InfoContext(ctx, "evicting a sticky machine's paused state", "machine_id", v.rec.ID, "snapshot_id", v.sn.ID,
			"used", used, "budget", m.cfg.SnapshotBudget)
		if err := m.deleteSnapshot(withCause(ctx, "evicted"), v.sn, reason); err != nil {
			m.logger.ErrorContext(ctx, "evict", "snapshot_id", v.sn.ID, "err", err)
			continue
		}
		used -= v.sn.SizeBytes
	}
}
