package machine

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	goruntime "runtime"
	"slices"
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
	return m.newestState(ctx, rec, m.cfg.Remote != nil)
}

// Capacity is this node's room, for its heartbeat: what placement reads.
func (m *Manager) Capacity(ctx context.Context) store.NodeCapacity {
	c := store.NodeCapacity{CPUs: goruntime.NumCPU(), MemoryMB: m.memoryLimitMB(), Slots: m.net.Slots(), Load: loadPerCPU()}
	c.CommittedMB, _ = m.store.CommittedMemoryMB(ctx)
	used := 0
	if recs, err := m.store.ListMachines(ctx, store.MachineFilter{NodeID: m.cfg.Node, States: slices.Concat(liveStates, heldStates)}); err == nil {
		for _, rec := range recs {
			if rec.Slot >= 0 {
				used++
			}
			if isLive(rec.State) {
				c.Machines++
			}
		}
	}
	if spares, err := m.store.ListSpares(ctx); err == nil {
		used += len(spares)
	}
	c.FreeSlots = max(0, c.Slots-used)
	return c
}

// loadPerCPU is the host's 1-minute load average per CPU (0 if unknown).
func loadPerCPU() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	var l float64
	if _, err := fmt.Sscanf(string(b), "%f", &l); err != nil {
		return 0
	}
	return l / float64(goruntime.NumCPU())
}

// DialLocal connects to port of a machine whose sandbox runs on this node
// (the relay of a peer's SSH session or envd call); it fails with an error
// matching errNotHere when the machine runs elsewhere or not at all.
func (m *Manager) DialLocal(ctx context.Context, id string, port int) (net.Conn, error) {
	rec, err := m.store.GetMachine(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("machine %s: %w", id, ErrNotHere)
	}
	if (rec.State != api.StateRunning && rec.State != api.StateSnapshotting) || rec.NodeID != m.cfg.Node {
		return nil, fmt.Errorf("machine %s is %s on node %q: %w", id, rec.State, rec.NodeID, ErrNotHere)
	}
	ip, err := m.guestAddr(rec)
	if err != nil {
		return nil, err
	}
	m.Touch(rec.ID)
	var d net.Dialer
	return d.DialContext(ctx, "tcp", netip.AddrPortFrom(ip, uint16(port)).String())
}

// ErrNotHere: the machine has no running sandbox on this node.
var ErrNotHere = errors.New("no running sandbox of the machine on this node")

// Drain pauses this node's running machines, one at a time, so that they
// resume on other nodes: the node was drained. Ephemeral machines keep no
// paused state; they run until they end.
func (m *Manager) Drain(ctx context.Context) {
	ctx = withCause(ctx, "drain")
	recs, err := m.store.ListMachines(ctx, store.MachineFilter{NodeID: m.cfg.Node, States: []string{api.StateRunning}})
	if err != nil {
		m.logger.WarnContext(ctx, "drain: list machines", "err", err)
		return
	}
	for _, rec := range recs {
		if ctx.Err() != nil {
			return
		}
		if rec.Persistence == api.PersistenceEphemeral || rec.TeamID == buildTeam {
			continue
		}
		if _, err := m.Pause(ctx, rec.TeamID, rec.ID); err != nil {
			m.logger.WarnContext(ctx, "drain: pause", "machine_id", rec.ID, "err", err)
			continue
		}
		m.logger.InfoContext(ctx, "drain: paused", "machine_id", rec.ID)
	}
}
