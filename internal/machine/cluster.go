package machine

import (
	"context"
	"fmt"
	"sync"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/runtime"
	"nullspace.dev/nullspace/internal/store"
)

// The manager's side of a cluster (see internal/cluster): what a node does
// to its own sandboxes when it is cut off from the database, and what the
// leader says of a dead node's machines.

// ElsewhereError is a call on a machine whose live sandbox another node
// runs: the call belongs there (the API forwards it, once). It matches
// errdefs.ErrUnavailable: by the time a caller retries, the machine may
// have moved again, or the call reach its node.
type ElsewhereError struct {
	ID, State, Node string
}

func (e *ElsewhereError) Error() string {
	return fmt.Sprintf("machine %s is %s on node %s, not on this one", e.ID, e.State, e.Node)
}

// Is makes an ElsewhereError match errdefs.ErrUnavailable.
func (e *ElsewhereError) Is(target error) bool { return target == errdefs.ErrUnavailable }

// ownHere fails with an *ElsewhereError if rec is live on another node:
// no operation acts on a sandbox it does not have.
func (m *Manager) ownHere(rec *store.Machine) error {
	if isLive(rec.State) && rec.NodeID != m.cfg.Node {
		return errdefs.Wrap(&ElsewhereError{ID: rec.ID, State: rec.State, Node: rec.NodeID}, errdefs.ErrUnavailable, errdefs.CodeMachineUnavailable,
			fmt.Sprintf("machine %s is %s on node %s, and the call reached another node", rec.ID, rec.State, rec.NodeID),
			"retry: the call goes to the machine's node")
	}
	return nil
}

// writesFor reports whether the machine's row is this node's to repair
// (its node wrote it, or it is gone).
func (m *Manager) writesFor(ctx context.Context, machineID string) bool {
	rec, err := m.store.GetMachine(ctx, machineID)
	return err != nil || rec.NodeID == m.cfg.Node
}

// frozen are the containers Freeze stopped, for Thaw.
type frozen struct {
	mu  sync.Mutex
	ids []string
}

// Freeze stops every task of every sandbox of this node, without the
// database: the node lost it, and another node may soon be allowed to
// resume what runs here.
func (m *Manager) Freeze(ctx context.Context) {
	ids, err := m.driver.List(ctx)
	if err != nil {
		m.logger.ErrorContext(ctx, "freeze: list sandboxes", "err", err)
	}
	m.frozen.mu.Lock()
	defer m.frozen.mu.Unlock()
	for _, id := range ids {
		if st, err := m.driver.State(ctx, id); err != nil || st.Status != runtime.StatusRunning {
			continue // not running: nothing to stop, and nothing to thaw later
		}
		if err := m.driver.Freeze(ctx, id); err != nil {
			m.logger.ErrorContext(ctx, "freeze sandbox", "container", id, "err", err)
			continue
		}
		m.frozen.ids = append(m.frozen.ids, id)
	}
	m.logger.WarnContext(ctx, "froze this node's sandboxes", "count", len(m.frozen.ids))
}

// Thaw lets the sandboxes Freeze stopped run again.
func (m *Manager) Thaw(ctx context.Context) {
	m.frozen.mu.Lock()
	defer m.frozen.mu.Unlock()
	for _, id := range m.frozen.ids {
		if err := m.driver.Thaw(ctx, id); err != nil {
			m.logger.ErrorContext(ctx, "thaw sandbox", "container", id, "err", err)
		}
	}
	m.logger.InfoContext(ctx, "thawed this node's sandboxes", "count", len(m.frozen.ids))
	m.frozen.ids = nil
}

// Abandon kills every sandbox of this node without writing to the
// database: the node was declared dead, its machines were failed (or
// resumed elsewhere), and its rows are no longer its to write. Operations
// in flight are preempted. Reconcile, after the node joins again, removes
// what is left (network slots, directories).
func (m *Manager) Abandon(ctx context.Context) {
	m.preemptAll(errFenced)
	ids, err := m.driver.List(ctx)
	if err != nil {
		m.logger.ErrorContext(ctx, "abandon: list sandboxes", "err", err)
	}
	for _, id := range ids {
		if err := m.driver.Delete(ctx, id, ""); err != nil {
			m.logger.ErrorContext(ctx, "abandon: delete sandbox", "container", id, "err", err)
		}
	}
	m.frozen.mu.Lock()
	m.frozen.ids = nil
	m.frozen.mu.Unlock()
	m.logger.WarnContext(ctx, "killed this node's sandboxes: it was declared dead", "count", len(ids))
}

// errFenced is the cause of operations cancelled because their node was
// declared dead.
var errFenced = fmt.Errorf("this node was declared dead while cut off from the database")

// NodeLost records, on the leader, what became of a dead node's machines:
// each failed one gets its event and the lineage's last durable
// checkpoint, to restore (never restored silently: the newest state died
// with the node).
func (m *Manager) NodeLost(ctx context.Context, loss store.NodeLoss) {
	ctx = withCause(ctx, "node_lost")
	for _, r := range loss.Machines {
		rec := r.Machine
		switch {
		case r.Deleted:
			m.logger.WarnContext(ctx, "undid an operation of a dead node", "machine_id", rec.ID, "state", r.From, "node", loss.Node.ID)
			m.transitioned(rec)
			continue
		case rec.State != api.StateFailed:
			m.logger.WarnContext(ctx, "finished an operation of a dead node", "machine_id", rec.ID, "from", r.From, "to", rec.State, "node", loss.Node.ID)
			m.transitioned(rec)
			continue
		}
		details := map[string]any{"reason": api.FailureNodeLost, "node": loss.Node.ID, "error": rec.Error}
		if last := m.lastDurableCheckpoint(ctx, rec); last != "" {
			rec.Error += fmt.Sprintf("; its last checkpoint %s can be made into a new machine (POST /v1/machines {\"snapshot_id\": %q})", last, last)
			details["last_checkpoint"] = last
			if err := m.store.UpdateMachine(ctx, rec); err != nil {
				m.logger.WarnContext(ctx, "record the last checkpoint of a lost machine", "machine_id", rec.ID, "err", err)
			}
		}
		m.logger.ErrorContext(ctx, "machine lost with its node", "machine_id", rec.ID, "node", loss.Node.ID, "last_checkpoint", details["last_checkpoint"])
		m.transitioned(rec)
		m.emit(ctx, api.EventMachineFailed, rec, details)
	}
}

// lastDurableCheckpoint is lastCheckpoint among the states any node can
// restore: with an object store, only those copied to it.
func (m *Manager) lastDurableCheckpoint(ctx context.Context, rec *store.Machine) string {
	id := m.lastCheckpoint(ctx, rec)
	if id == "" || m.cfg.Remote == nil {
		return id
	}
	snaps, err := m.store.ListSnapshots(ctx, store.SnapshotFilter{LineageID: rec.LineageID, States: []string{store.SnapshotReady}})
	if err != nil {
		return ""
	}
	var last *store.Snapshot
	for _, sn := range snaps {
		if sn.Kind == api.SnapshotDisk || !sn.Durable || sn.TeamID != rec.TeamID {
			continue
		}
		if last == nil || sn.CreatedAt.After(last.CreatedAt) {
			last = sn
		}
	}
	if last == nil {
		return ""
	}
	return last.ID
}
