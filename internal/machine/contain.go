package machine

import (
	"context"
	"fmt"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/store"
)

// exitReasoner is a driver that can tell why a container's sandbox died:
// "oom" or "pids" when its host cgroup killed it (runtime/gvisor reads the
// cgroup's counters), "" otherwise. It must be asked before the container
// is deleted.
type exitReasoner interface {
	ExitReason(id string) string
}

// sandboxExit says why a running machine's sandbox is gone: the reason the
// failed machine keeps, and details for its machine.failed event
// (exit_reason, last_checkpoint). The machine's last checkpoint is named so
// that its user can go back to it.
func (m *Manager) sandboxExit(ctx context.Context, rec *store.Machine) (string, map[string]any) {
	details := map[string]any{}
	reason := "the machine's sandbox exited"
	if er, ok := m.driver.(exitReasoner); ok {
		switch why := er.ExitReason(rec.ContainerID); why {
		case "oom":
			reason = "the machine ran out of memory and the host killed its sandbox (raise memory_mb)"
			details["exit_reason"] = why
		case "pids":
			reason = "the machine's processes hit the host's pids limit and its sandbox died (a fork bomb run as root?)"
			details["exit_reason"] = why
		}
	}
	if sn := m.lastCheckpoint(ctx, rec); sn != nil {
		reason += fmt.Sprintf("; its last checkpoint is %s (%s): create a machine from it with snapshot_id",
			sn.ID, sn.CreatedAt.UTC().Format("2006-01-02 15:04:05Z"))
		details["last_checkpoint"] = sn.ID
	}
	return reason, details
}

// lastCheckpoint returns the newest state of rec's lineage that a machine
// can be created from, or nil.
func (m *Manager) lastCheckpoint(ctx context.Context, rec *store.Machine) *store.Snapshot {
	snaps, err := m.store.ListSnapshots(ctx, store.SnapshotFilter{LineageID: rec.LineageID, States: []string{store.SnapshotReady}})
	if err != nil {
		return nil
	}
	for i := len(snaps) - 1; i >= 0; i-- { // oldest first
		if snaps[i].Kind != api.SnapshotDisk && snaps[i].TeamID == rec.TeamID {
			return snaps[i]
		}
	}
	return nil
}
