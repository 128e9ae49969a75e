package machine

import (
	"context"
	"fmt"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store"
)

// Leases: every machine has a timeout window (timeout_ms). The lease runs
// while the machine runs: it starts when the machine starts running (create,
// resume, connect, restore, start), set_timeout restarts it from now, and at
// its deadline the machine is destroyed, paused or stopped (on_timeout). It
// does not run while the machine is paused or stopped: the window starts
// again when it resumes or starts, so a resume never shortens a long lease
// to some default. get_info and list never renew it. Deadlines live in the
// store and in one scheduler (internal/lease); after a restart they are
// scheduled again, and one that passed while the server was down fires at
// once.

const (
	// DefaultTimeout is a machine's lease window when create gives none.
	DefaultTimeout = 5 * time.Minute
	// MinTimeout is the shortest window accepted.
	MinTimeout = time.Second
	// expireRetry is how soon an expiry looks again when the machine was
	// busy with another lifecycle operation, or its pause failed.
	expireRetry = time.Second
)

// validateLease fills the lease defaults of a create request and checks them.
func validateLease(req *api.CreateMachineRequest) error {
	if req.TimeoutMS == nil {
		d := DefaultTimeout.Milliseconds()
		req.TimeoutMS = &d
	}
	if err := checkWindow(*req.TimeoutMS); err != nil {
		return err
	}
	switch req.OnTimeout {
	case "":
		req.OnTimeout = api.TimeoutDestroy
	case api.TimeoutHibernate:
		req.OnTimeout = api.TimeoutPause
	case api.TimeoutDestroy, api.TimeoutPause, api.TimeoutStop:
	default:
		return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("on_timeout %q is not a timeout policy", req.OnTimeout),
			`use "destroy" (the default), "pause" (memory and files kept) or "stop" (files kept, memory dropped)`)
	}
	if req.AutoResume && req.OnTimeout == api.TimeoutDestroy {
		return autoResumeNeedsPause("create with auto_resume and on_timeout \"destroy\"")
	}
	return nil
}

func checkWindow(ms int64) error {
	switch {
	case ms < MinTimeout.Milliseconds():
		return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("timeout_ms %d is too short", ms),
			fmt.Sprintf("give at least %d ms and at most %d ms (a year)", MinTimeout.Milliseconds(), api.MaxDurationMS))
	case ms > api.MaxDurationMS:
		return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("timeout_ms %d is too long", ms),
			fmt.Sprintf("give at most %d ms (a year); refresh the lease with set_timeout or keep_alive to keep a machine longer", api.MaxDurationMS))
	}
	return nil
}

func autoResumeNeedsPause(what string) error {
	return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeAutoResumeNeedsPause,
		what+" is refused: an auto-resumable machine must pause or stop at its deadline, so that its id stays one public traffic can wake",
		`use on_timeout "pause" / timeout_action "hibernate" (or "stop" to keep only the files), or create the machine without auto_resume`)
}

// LeaseOf returns a machine's lease as the API shows it, at now.
func LeaseOf(rec *store.Machine, now time.Time) api.Lease {
	l := api.Lease{TimeoutMS: rec.TimeoutMS, TimeoutAction: deadlineAction(rec)}
	if l.TimeoutAction == api.TimeoutPause {
		l.TimeoutAction = api.TimeoutHibernate
	}
	if rec.Deadline.IsZero() {
		l.RemainingMS = rec.TimeoutMS // the window it will have when it runs again
		return l
	}
	at := rec.Deadline.UTC()
	l.TimeoutAt = &at
	l.RemainingMS = max(rec.Deadline.Sub(now).Milliseconds(), 0)
	return l
}

// deadlineAction says what the end of rec's lease does: api.TimeoutPause,
// api.TimeoutStop or api.TimeoutDestroy. An ephemeral machine keeps neither
// a paused state nor a disk: where it would pause or stop, it is destroyed.
func deadlineAction(rec *store.Machine) string {
	if rec.Persistence == api.PersistenceEphemeral {
		return api.TimeoutDestroy
	}
	switch rec.OnTimeout {
	case api.TimeoutPause, api.TimeoutStop:
		return rec.OnTimeout
	}
	return api.TimeoutDestroy
}

// startLease starts rec's window as it begins to run; the caller persists
// rec and then calls schedule.
func startLease(rec *store.Machine, now time.Time) {
	if rec.TimeoutMS > 0 {
		rec.Deadline = now.Add(time.Duration(rec.TimeoutMS) * time.Millisecond)
	}
}

// schedule puts rec's persisted deadline in the scheduler, or takes it out.
func (m *Manager) schedule(rec *store.Machine) {
	if rec.State == api.StateRunning && !rec.Deadline.IsZero() {
		m.leases.Set(rec.ID, rec.Deadline)
		return
	}
	if !isLive(rec.State) {
		m.leases.Cancel(rec.ID)
	}
}

// SetTimeout refreshes the lease of id's latest execution: its window
// becomes timeout from now (a paused machine keeps no deadline; the window
// starts when it resumes), and action, if set, what the deadline does.
func (m *Manager) SetTimeout(ctx context.Context, teamID, id string, req api.SetTimeoutRequest) (*store.Machine, error) {
	if err := checkWindow(req.TimeoutMS); err != nil {
		return nil, err
	}
	onTimeout := ""
	switch req.TimeoutAction {
	case "":
	case api.TimeoutDestroy:
		onTimeout = api.TimeoutDestroy
	case api.TimeoutHibernate, api.TimeoutPause:
		onTimeout = api.TimeoutPause
	case api.TimeoutStop:
		onTimeout = api.TimeoutStop
	default:
		return nil, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("timeout_action %q is not a timeout action", req.TimeoutAction),
			`use "destroy", "hibernate" (memory and files kept) or "stop" (files kept, memory dropped)`)
	}
	rec, err := m.Get(ctx, teamID, id)
	if err != nil {
		return nil, err
	}
	unlockLineage, err := m.lock(ctx, lineageKey(rec.LineageID))
	if err != nil {
		return nil, err
	}
	defer unlockLineage()
	head, unlock, err := m.headLocked(ctx, rec.LineageID)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if onTimeout == api.TimeoutDestroy && head.AutoResume {
		return nil, autoResumeNeedsPause(fmt.Sprintf("timeout_action \"destroy\" on auto-resumable machine %s", head.ID))
	}
	head.TimeoutMS = req.TimeoutMS
	if onTimeout != "" {
		head.OnTimeout = onTimeout
	}
	if head.State == api.StateRunning {
		startLease(head, time.Now())
	}
	if err := m.store.UpdateMachine(ctx, head); err != nil {
		return nil, err
	}
	m.schedule(head)
	l := LeaseOf(head, time.Now())
	m.emit(ctx, api.EventLeaseUpdated, head, map[string]any{"timeout_ms": l.TimeoutMS, "timeout_at": l.TimeoutAt,
		"remaining_ms": l.RemainingMS, "timeout_action": l.TimeoutAction})
	m.logger.InfoContext(ctx, "lease updated", "machine_id", head.ID, "timeout_ms", head.TimeoutMS,
		"on_timeout", head.OnTimeout, "deadline", head.Deadline)
	return head, nil
}

// RunLeases schedules the deadlines of the running machines (one that passed
// while the server was down fires at once) and fires them until ctx ends.
func (m *Manager) RunLeases(ctx context.Context) {
	recs, err := m.store.ListMachines(ctx, store.MachineFilter{States: []string{api.StateRunning}, NodeID: m.cfg.Node})
	if err != nil {
		m.logger.ErrorContext(ctx, "load leases", "err", err)
	}
	for _, rec := range recs {
		m.schedule(rec)
	}
	m.leases.Run(ctx)
}

// expire ends a machine whose deadline passed, as its on_timeout says. It
// runs under the machine's lineage lock and checks the deadline again
// there: a refresh, a pause or a kill that got there first wins, and
// exactly one transition happens.
func (m *Manager) expire(id string) {
	ctx := withCause(m.root, "timeout")
	rec, err := m.store.GetMachine(ctx, id)
	if err != nil {
		return
	}
	ctx, unlockLineage, err := m.tryLockOp(ctx, lineageKey(rec.LineageID), id)
	if err != nil {
		if m.root.Err() == nil {
			m.leases.Set(id, time.Now().Add(expireRetry)) // another operation runs; look again
		}
		return
	}
	defer unlockLineage()
	unlock, err := m.lock(ctx, id)
	if err != nil {
		return
	}
	defer unlock()
	if rec, err = m.store.GetMachine(ctx, id); err != nil || rec.State != api.StateRunning || rec.Deadline.IsZero() {
		return
	}
	if rec.Deadline.After(time.Now()) {
		m.leases.Set(id, rec.Deadline) // refreshed meanwhile
		return
	}
	log := m.logger.With("machine_id", id, "on_timeout", rec.OnTimeout, "deadline", rec.Deadline)
	m.emit(ctx, api.EventMachineTimeout, rec, map[string]any{"on_timeout": rec.OnTimeout, "deadline": rec.Deadline})
	switch deadlineAction(rec) {
	case api.TimeoutPause:
		log.InfoContext(ctx, "lease ended: pausing the machine")
		if _, err := m.capture(ctx, rec, api.SnapshotHibernate, 0); err != nil {
			m.pauseFailed(ctx, rec, "pauses", err)
		}
		return
	case api.TimeoutStop:
		// A stop as POST .../stop makes it, with its default grace: the
		// processes get SIGTERM and time to end before the files are kept.
		log.InfoContext(ctx, "lease ended: stopping the machine")
		if _, err := m.capture(ctx, rec, api.SnapshotDisk, DefaultStopGrace); err != nil {
			m.pauseFailed(ctx, rec, "stops", err)
		}
		return
	}
	log.InfoContext(ctx, "lease ended: destroying the machine")
	if err := m.killHead(ctx, rec); err != nil {
		log.ErrorContext(ctx, "destroy at the end of the lease", "err", err)
	}
}
