package machine

import (
	"fmt"
	"sync"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store"
)

// Idle suspend: a machine with an idle timeout is paused after that long
// without network activity. Activity is an API command or file call
// (Touch, from the proxy to its agent), bytes through its interface (seen
// by the metrics sampler, every MetricsInterval) or, later, edge traffic.
// The clock starts when the machine starts running. It wakes like any
// paused machine: connect, resume, or public traffic when auto-resumable.

// activity remembers when each running machine was last active.
type activity struct {
	mu   sync.Mutex
	last map[string]time.Time
	net  map[string][2]uint64 // rx, tx at the last sample
}

func newActivity() *activity {
	return &activity{last: map[string]time.Time{}, net: map[string][2]uint64{}}
}

// Touch records activity of a machine now (an API call reached it).
func (m *Manager) Touch(id string) {
	m.activity.mu.Lock()
	m.activity.last[id] = time.Now()
	m.activity.mu.Unlock()
}

// lastActive returns when rec was last active: its start if nothing since.
func (a *activity) lastActive(rec *store.Machine) time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	t := a.last[rec.ID]
	if rec.StartedAt.After(t) {
		t = rec.StartedAt
	}
	return t
}

// sawNet records a machine's byte counters and counts a change as activity.
func (a *activity) sawNet(id string, rx, tx uint64, now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	prev, seen := a.net[id]
	if seen && (prev[0] != rx || prev[1] != tx) {
		a.last[id] = now
	}
	a.net[id] = [2]uint64{rx, tx}
}

func (a *activity) forget(running map[string]bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for id := range a.net {
		if !running[id] {
			delete(a.net, id)
		}
	}
	for id := range a.last {
		if !running[id] {
			delete(a.last, id)
		}
	}
}

func validateIdle(req *api.CreateMachineRequest) error {
	if req.IdleTimeoutMS < 0 || req.IdleTimeoutMS > api.MaxDurationMS {
		return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("idle_timeout_ms %d is out of range", req.IdleTimeoutMS),
			fmt.Sprintf("give 0 (never suspend an idle machine) or %d to %d ms", MinTimeout.Milliseconds(), api.MaxDurationMS))
	}
	if req.IdleTimeoutMS != 0 && req.IdleTimeoutMS < MinTimeout.Milliseconds() {
		return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("idle_timeout_ms %d is too short", req.IdleTimeoutMS),
			fmt.Sprintf("give at least %d ms, or 0 to never suspend an idle machine", MinTimeout.Milliseconds()))
	}
	return nil
}

// checkIdle pauses rec if it has been idle for its idle timeout.
func (m *Manager) checkIdle(rec *store.Machine, now time.Time) {
	if rec.IdleTimeoutMS <= 0 {
		return
	}
	idle := now.Sub(m.activity.lastActive(rec))
	if idle < time.Duration(rec.IdleTimeoutMS)*time.Millisecond {
		return
	}
	m.background(func() { m.suspendIdle(rec.ID, idle) })
}

// suspendIdle pauses an idle machine under its lineage lock, unless it is
// busy with another operation (then the next check looks again) or no
// longer running.
func (m *Manager) suspendIdle(id string, idle time.Duration) {
	ctx := withCause(m.root, "idle")
	rec, err := m.store.GetMachine(ctx, id)
	if err != nil {
		return
	}
	ctx, unlockLineage, err := m.tryLockOp(ctx, lineageKey(rec.LineageID), id)
	if err != nil {
		return
	}
	defer unlockLineage()
	unlock, err := m.lock(ctx, id)
	if err != nil {
		return
	}
	defer unlock()
	if rec, err = m.store.GetMachine(ctx, id); err != nil || rec.State != api.StateRunning {
		return
	}
	if time.Since(m.activity.lastActive(rec)) < time.Duration(rec.IdleTimeoutMS)*time.Millisecond {
		return // activity came in meanwhile
	}
	m.logger.InfoContext(ctx, "machine idle: pausing it", "machine_id", id, "idle", idle)
	m.emit(ctx, api.EventMachineIdle, rec, map[string]any{"idle_ms": idle.Milliseconds(), "idle_timeout_ms": rec.IdleTimeoutMS})
	if rec.Persistence == api.PersistenceEphemeral {
		if err := m.killHead(ctx, rec); err != nil { // nothing of it is kept
			m.logger.ErrorContext(ctx, "destroy an idle ephemeral machine", "machine_id", id, "err", err)
		}
		return
	}
	if _, err := m.capture(ctx, rec, api.SnapshotHibernate, 0); err != nil {
		m.logger.ErrorContext(ctx, "pause of an idle machine failed; it keeps running", "machine_id", id, "err", err)
	}
}
