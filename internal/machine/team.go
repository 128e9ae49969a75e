package machine

import (
	"context"
	"errors"
	"fmt"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/store"
)

// TeamMachines counts a team's machines that are not killed or failed:
// those running and those whose state is kept (paused, stopped).
func (m *Manager) TeamMachines(ctx context.Context, teamID string) (int, error) {
	recs, err := m.store.ListMachines(ctx, store.MachineFilter{TeamID: teamID, States: append(append([]string{}, liveStates...), heldStates...)})
	if err != nil {
		return 0, err
	}
	return len(recs), nil
}

// EndTeam frees everything a team holds on this server, for the deletion
// of the team: every lineage is killed (with its paused states and
// checkpoints, and the events that say so), then the team's remaining
// snapshots and its volumes are deleted. It goes on past a failure and
// returns them all: what is left can be ended by calling it again.
func (m *Manager) EndTeam(ctx context.Context, teamID string) error {
	var errs []error
	recs, err := m.store.ListMachines(ctx, store.MachineFilter{TeamID: teamID,
		States: append(append([]string{api.StateFailed}, liveStates...), heldStates...)})
	if err != nil {
		return err
	}
	lineages := map[string]bool{}
	for _, rec := range recs {
		if lineages[rec.LineageID] {
			continue
		}
		lineages[rec.LineageID] = true
		if _, err := m.Kill(ctx, teamID, rec.ID); err != nil {
			errs = append(errs, fmt.Errorf("kill machine %s: %w", rec.ID, err))
		}
	}
	for {
		snaps, _, err := m.ListSnapshots(ctx, teamID, SnapshotFilter{}, SnapshotPage{Limit: 100})
		if err != nil {
			errs = append(errs, err)
			break
		}
		deleted := 0
		for _, sn := range snaps {
			if err := m.DeleteSnapshot(ctx, teamID, sn.ID, true); err != nil {
				errs = append(errs, fmt.Errorf("delete snapshot %s: %w", sn.ID, err))
				continue
			}
			deleted++
		}
		if deleted == 0 {
			break
		}
	}
	vols, err := m.store.ListVolumes(ctx, teamID)
	if err != nil {
		errs = append(errs, err)
	}
	for _, v := range vols {
		if err := m.DeleteVolume(ctx, teamID, v.Name); err != nil {
			errs = append(errs, fmt.Errorf("delete volume %s: %w", v.Name, err))
		}
	}
	return errors.Join(errs...)
}
