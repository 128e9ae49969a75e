package machine

import (
	"context"
	"errors"
	"fmt"
	"time"

	"nullspace.dev/nullspace/internal/errdefs"
)

// Locks. Lifecycle operations are serialized per lineage ("lineage:<id>")
// and per machine id. Three rules keep a stuck operation from wedging the
// server:
//
//   - a lock is waited on with the caller's context: a caller that gives up
//     stops waiting (lock);
//   - an operation holding a lineage lock runs under a context that a kill
//     (or the server's shutdown) cancels: preempt cancels the holder and
//     refuses whoever queued behind it, so the kill gets the lock within
//     seconds, whatever the operation was waiting for (lockOp);
//   - everything an operation waits on outside the process (the agent,
//     runsc) has a deadline of its own (see bounds.go).
//
// Code that detaches from its caller (context.WithoutCancel, so that a
// checkpoint once begun finishes or is undone) regains the preemption with
// preemptible.

// idLock is the lock of one id and how many hold or wait for it.
type idLock struct {
	ch chan struct{} // holds a token while the lock is held

	// Guarded by Manager.locksMu:
	refs int // holders and waiters
	// cancel ends the holder's operation; nil when the holder cannot be
	// preempted (a kill itself, or a short write).
	cancel context.CancelCauseFunc
	// preempting counts the kills waiting for the lock: operations that
	// get it meanwhile are cancelled at once.
	preempting int
	// preemptCause is why (the last preempt's cause).
	preemptCause error
}

// errKilled is the cause of an operation cancelled by a kill of its machine.
var errKilled = errors.New("the machine is being killed")

// errShutdown is the cause of an operation cancelled by the server's shutdown.
var errShutdown = errors.New("the server is shutting down")

// lock waits for id's lock (an id, or a lineage with the "lineage:" prefix)
// until ctx ends, and returns the unlock function.
func (m *Manager) lock(ctx context.Context, id string) (func(), error) {
	l := m.ref(id)
	select {
	case l.ch <- struct{}{}:
		return func() { m.release1(id, l) }, nil
	case <-ctx.Done():
		m.unref(id, l)
		return nil, lockTimeout(id, context.Cause(ctx))
	}
}

// tryLock is lock that gives up at once: explicit lifecycle calls (pause,
// resume, snapshot) on a lineage already busy get a conflict instead of
// queueing behind it.
func (m *Manager) tryLock(id string) (func(), bool) {
	l := m.ref(id)
	select {
	case l.ch <- struct{}{}:
		return func() { m.release1(id, l) }, true
	default:
		m.unref(id, l)
		return nil, false
	}
}

// lockOp is lock for an operation that a kill may preempt: the context it
// returns is cancelled (cause errKilled or errShutdown) when preempt is
// called on id while the operation runs, and already cancelled if a
// preempt was waiting when the lock was granted.
func (m *Manager) lockOp(ctx context.Context, id string) (context.Context, func(), error) {
	unlock, err := m.lock(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	opCtx, unlockOp := m.holdOp(ctx, id, unlock)
	if opCtx.Err() != nil {
		unlockOp()
		return nil, nil, interrupted(opCtx, trimLockKey(id), "operation", opCtx.Err())
	}
	return opCtx, unlockOp, nil
}

// tryLockOp is tryLock for an operation that a kill may preempt: it fails
// at once with busy(machineID) when another operation holds id.
func (m *Manager) tryLockOp(ctx context.Context, id, machineID string) (context.Context, func(), error) {
	unlock, ok := m.tryLock(id)
	if !ok {
		return nil, nil, busy(machineID)
	}
	opCtx, unlockOp := m.holdOp(ctx, id, unlock)
	if opCtx.Err() != nil {
		unlockOp()
		return nil, nil, interrupted(opCtx, machineID, "operation", opCtx.Err())
	}
	return opCtx, unlockOp, nil
}

type preemptKey struct{}

// holdOp registers the holder of id's lock as preemptible.
func (m *Manager) holdOp(ctx context.Context, id string, unlock func()) (context.Context, func()) {
	pre, cancel := context.WithCancelCause(context.Background())
	m.locksMu.Lock()
	l := m.locks[id]
	l.cancel = cancel
	switch {
	case l.preempting > 0:
		cancel(l.preemptCause)
	case m.root.Err() != nil:
		cancel(errShutdown)
	}
	m.locksMu.Unlock()
	opCtx, stop := preemptibleBy(context.WithValue(ctx, preemptKey{}, pre), pre)
	return opCtx, func() {
		m.locksMu.Lock()
		l.cancel = nil
		m.locksMu.Unlock()
		stop()
		cancel(nil)
		unlock()
	}
}

// preemptible returns ctx, also cancelled when the operation it belongs to
// is preempted, even if ctx was detached from its caller.
func preemptible(ctx context.Context) (context.Context, context.CancelFunc) {
	pre, _ := ctx.Value(preemptKey{}).(context.Context)
	return preemptibleBy(ctx, pre)
}

func preemptibleBy(ctx context.Context, pre context.Context) (context.Context, context.CancelFunc) {
	c, cancel := context.WithCancelCause(ctx)
	if pre == nil {
		return c, func() { cancel(nil) }
	}
	if pre.Err() != nil {
		cancel(context.Cause(pre)) // at once: AfterFunc would run it later
		return c, func() { cancel(nil) }
	}
	stop := context.AfterFunc(pre, func() { cancel(context.Cause(pre)) })
	return c, func() { stop(); cancel(nil) }
}

// preempt cancels the operation holding id's lock, and those granted it
// until the returned function is called: the caller (a kill) then waits
// for the lock and gets it as soon as the holder has undone its work.
func (m *Manager) preempt(id string, cause error) func() {
	m.locksMu.Lock()
	l, ok := m.locks[id]
	if !ok {
		l = &idLock{ch: make(chan struct{}, 1)}
		m.locks[id] = l
	}
	l.refs++
	l.preempting++
	l.preemptCause = cause
	if l.cancel != nil {
		l.cancel(cause)
	}
	m.locksMu.Unlock()
	return func() {
		m.locksMu.Lock()
		l.preempting--
		m.locksMu.Unlock()
		m.unref(id, l)
	}
}

// preemptAll cancels every preemptible operation in flight (shutdown).
func (m *Manager) preemptAll(cause error) {
	m.locksMu.Lock()
	defer m.locksMu.Unlock()
	for _, l := range m.locks {
		if l.cancel != nil {
			l.cancel(cause)
		}
	}
}

func (m *Manager) release1(id string, l *idLock) {
	<-l.ch
	m.unref(id, l)
}

func (m *Manager) ref(id string) *idLock {
	m.locksMu.Lock()
	defer m.locksMu.Unlock()
	l, ok := m.locks[id]
	if !ok {
		l = &idLock{ch: make(chan struct{}, 1)}
		m.locks[id] = l
	}
	l.refs++
	return l
}

func (m *Manager) unref(id string, l *idLock) {
	m.locksMu.Lock()
	defer m.locksMu.Unlock()
	if l.refs--; l.refs == 0 {
		delete(m.locks, id)
	}
}

// lockTimeout is the error of a caller that gave up waiting for a lock.
func lockTimeout(id string, cause error) error {
	return errdefs.Wrap(cause, errdefs.ErrConflict, errdefs.CodeConflict,
		fmt.Sprintf("machine %s is in the middle of another lifecycle operation and the call gave up waiting for it", trimLockKey(id)),
		"retry; GET /v1/machines/{id} shows its state")
}

func trimLockKey(id string) string {
	const p = "lineage:"
	if len(id) > len(p) && id[:len(p)] == p {
		return id[len(p):]
	}
	return id
}

// killWait bounds how long a kill waits for a preempted operation to let
// go of the machine.
var killWait = 30 * time.Second
