package machine

import (
	"context"
	"errors"
	"fmt"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/agent/agentclient"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store"
)

// Stop and start, beside pause and resume:
//
//   - Stop ends every process of a running machine (SIGTERM, then SIGKILL
//     after the grace period), then checkpoints what is left (the agent
//     and the root file system's overlay) into a "disk" snapshot and frees
//     the sandbox. Memory is dropped; files are kept. The id stays.
//   - Start restores that snapshot in place, under the same id, starts the
//     main process (Command) again, restarts the lease, and deletes the
//     disk snapshot: the machine boots fresh from its disk.
//
// gVisor keeps a sandbox's root overlay in its own memory file, which does
// not outlive the sandbox, so the disk of a stopped machine is a checkpoint
// taken with no process left: it holds the files and nothing that ran.
//
// The main process: a machine created with a command runs it at boot and at
// every start. Wait blocks until it exits and returns how; the machine goes
// on running after it exits (its files and logs stay readable) until its
// lease ends or it is stopped or killed.

const (
	// DefaultStopGrace is how long a stop gives processes after SIGTERM.
	DefaultStopGrace = 10 * time.Second
	// MaxStopGrace bounds the grace period of a stop.
	MaxStopGrace = 5 * time.Minute
	// waitPoll is how often Wait looks again at the store when no exit
	// was recorded meanwhile (a lifecycle transition may have changed
	// what it waits for).
	waitPoll = time.Second
)

// Stop ends a running machine's processes and keeps its files; start boots
// it again. Stopping a stopped machine returns it unchanged.
func (m *Manager) Stop(ctx context.Context, teamID, id string, grace time.Duration) (_ *store.Machine, err error) {
	if grace < 0 || grace > MaxStopGrace {
		return nil, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("grace_ms %d is out of range", grace.Milliseconds()),
			fmt.Sprintf("pass 0 (kill at once) to %d ms", MaxStopGrace.Milliseconds()))
	}
	rec, err := m.Get(ctx, teamID, id)
	if err != nil {
		return nil, err
	}
	ctx, rec, unlock, err := m.lockHead(ctx, rec)
	if err != nil {
		return nil, err
	}
	defer unlock()
	defer wrapInterrupted(ctx, id, "stop", &err)
	switch rec.State {
	case api.StateStopped:
		return rec, nil
	case api.StateRunning:
	default:
		return nil, notRunning(rec)
	}
	if rec.Persistence == api.PersistenceEphemeral {
		return nil, errdefs.New(errdefs.ErrFailedPrecondition, errdefs.CodeMachineEphemeral,
			fmt.Sprintf("machine %s is ephemeral: a stop would keep its disk, and it keeps nothing", rec.ID),
			`kill it, or create machines to stop with persistence "sticky" or "persistent"`)
	}
	if _, err := m.capture(ctx, rec, api.SnapshotDisk, grace); err != nil {
		return nil, fmt.Errorf("stop machine %s: %w", id, err)
	}
	return rec, nil
}

// Start boots a stopped machine from its disk under the same id. Starting a
// running machine returns it unchanged.
func (m *Manager) Start(ctx context.Context, teamID, id string) (_ *store.Machine, err error) {
	rec, err := m.Get(ctx, teamID, id)
	if err != nil {
		return nil, err
	}
	ctx, unlockLineage, err := m.tryLockOp(ctx, lineageKey(rec.LineageID), id)
	if err != nil {
		return nil, err
	}
	defer unlockLineage()
	defer wrapInterrupted(ctx, id, "start", &err)
	head, err := m.lineageHead(ctx, rec.LineageID)
	if err != nil {
		return nil, err
	}
	return m.startLocked(ctx, head.ID)
}

// startLocked starts machine id; the caller holds its lineage lock.
func (m *Manager) startLocked(ctx context.Context, id string) (*store.Machine, error) {
	start := time.Now()
	unlock, err := m.lock(ctx, id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	rec, err := m.store.GetMachine(ctx, id)
	if err != nil {
		return nil, err
	}
	switch rec.State {
	case api.StateRunning:
		return rec, nil
	case api.StateStopped:
	default:
		return nil, notRunning(rec)
	}
	sn, err := m.store.GetSnapshot(ctx, rec.SnapshotID)
	if err != nil {
		return nil, fmt.Errorf("disk of stopped machine %s: %w", rec.ID, err)
	}
	spec, err := decodeSpec(sn)
	if err != nil {
		return nil, err
	}
	release, err := m.prepareRestore(ctx, sn, spec)
	if err != nil {
		return nil, err
	}
	defer release()
	// A start, once begun, finishes or goes back to stopped: ctx, for the
	// writes that record or undo it, ends with nothing; opCtx, what the
	// boot waits under, ends with a kill (or the server's shutdown).
	ctx = context.WithoutCancel(ctx)
	opCtx, cancel := preemptible(ctx)
	defer cancel()
	if err := m.admit(ctx, rec, false, func() error { return m.store.AssignSlot(ctx, rec, m.net.Slots()) }); err != nil {
		return nil, err
	}
	rec.ContainerID = newContainerID()
	if err := m.setState(ctx, rec, api.StateStarting); err != nil {
		return nil, err
	}
	boot := func() error {
		if err := m.restoreInto(opCtx, rec, sn, spec, restoreOpts{boot: true}); err != nil {
			return err
		}
		return m.startMain(opCtx, rec)
	}
	if err := boot(); err != nil {
		err = interrupted(opCtx, rec.ID, "start", err)
		if rerr := m.release(ctx, rec); rerr != nil {
			err = errors.Join(err, rerr)
		}
		rec.Slot = -1
		if serr := m.setState(ctx, rec, api.StateStopped); serr != nil {
			err = errors.Join(err, serr)
		}
		m.emit(ctx, api.EventMachineStartFailed, rec, map[string]any{"error": err.Error()})
		return nil, fmt.Errorf("start machine %s (it stays stopped): %w", rec.ID, err)
	}
	rec.SnapshotID = ""
	if err := m.setState(ctx, rec, api.StateRunning); err != nil {
		return nil, err
	}
	// The disk is in the running machine now; the next stop writes anew.
	if err := m.removeSnapshot(ctx, sn); err != nil {
		m.logger.ErrorContext(ctx, "delete the disk snapshot of a started machine", "machine_id", rec.ID, "snapshot_id", sn.ID, "err", err)
	}
	m.logger.InfoContext(ctx, "machine started", "machine_id", rec.ID, "main_pid", rec.MainPID)
	m.emit(ctx, api.EventMachineStarted, rec, map[string]any{"snapshot_id": sn.ID, "main_pid": rec.MainPID})
	m.observe("start", start)
	return rec, nil
}

// startMain starts rec's main process, if it has one, and records its pid.
func (m *Manager) startMain(ctx context.Context, rec *store.Machine) error {
	if len(rec.Command) == 0 {
		return nil
	}
	ip, err := m.guestAddr(rec)
	if err != nil {
		return err
	}
	sctx, cancel := context.WithTimeout(ctx, startMainTimeout)
	defer cancel()
	started, err := agentclient.New(m.agentURL(ip), rec.AgentToken, nil).StartMain(sctx, rec.Command)
	if err != nil {
		return fmt.Errorf("start main process %q: %w", rec.Command[0], err)
	}
	if err := m.store.SetMain(ctx, rec.ID, started.PID); err != nil {
		return err
	}
	rec.MainPID, rec.MainExit = started.PID, nil
	return nil
}

// Wait blocks until the main process of id's latest execution has exited,
// or ctx ends, and returns how it ended. It follows the lineage across
// pauses and resumes and waits through them; a stop ends the main process
// (its exit is the signal that ended it). It reads what the followers of
// main processes record (mainwatch.go): it never talks to the machine, so
// it neither wakes it nor counts as activity, and never renews its lease.
func (m *Manager) Wait(ctx context.Context, teamID, id string) (api.MainExit, error) {
	rec, err := m.Get(ctx, teamID, id)
	if err != nil {
		return api.MainExit{}, err
	}
	if len(rec.Command) == 0 {
		return api.MainExit{}, errdefs.New(errdefs.ErrFailedPrecondition, errdefs.CodeNoCommand,
			fmt.Sprintf("machine %s has no main process: it was created without a command", id),
			"create machines with a command to wait for; to wait for one command, follow its output with GET /v1/machines/{id}/commands/{pid}/output?follow=true")
	}
	for {
		exited := m.mainWatch.exitedChan()
		head, err := m.lineageHead(ctx, rec.LineageID)
		if err != nil {
			return api.MainExit{}, err
		}
		if head.MainExit != nil {
			return *head.MainExit, nil
		}
		switch head.State {
		case api.StateKilled, api.StateFailed, api.StateStopped:
			// A stop records how it ended the main process; a stopped
			// machine without a record has none to wait for until a start.
			return api.MainExit{}, notRunning(head)
		}
		select {
		case <-ctx.Done():
			return api.MainExit{}, ctx.Err()
		case <-exited:
		case <-time.After(waitPoll):
		}
	}
}
