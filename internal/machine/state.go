package machine

import (
	"slices"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store"
)

// The machine lifecycle. Every transition goes through setState, which
// checks this table and persists the new state before anything acknowledges
// it. A crash between two states is repaired by Reconcile on the next start.
//
//	creating ─▶ running ─▶ pausing ─▶ paused            (old id stays an alias)
//	resuming ─▶ running        │          │
//	               ▲  │        └─▶ running (checkpoint failed: machine kept)
//	               │  ├─▶ snapshotting ─▶ running       (source keeps running)
//	               │  ├─▶ restoring ─▶ running | failed (checkpoint restored in place)
//	               │  ├─▶ failed ─▶ killing
//	               │  └─▶ killing ─▶ killed
//	   paused ─▶ restoring, killing, failed (snapshot force-deleted)
//
//	running ─▶ stopping ─▶ stopped ─▶ starting ─▶ running   (same id)
//	               │          │           └─▶ stopped (boot failed)
//	               │          └─▶ killing, failed (disk snapshot deleted)
//	               └─▶ running (checkpoint failed: processes are gone)
//
// creating and resuming rows are deleted when they fail: a failed create or
// resume leaves nothing behind (the paused source of a resume is untouched).
var transitions = map[string][]string{
	api.StateCreating:     {api.StateRunning},
	api.StateResuming:     {api.StateRunning},
	api.StateRunning:      {api.StatePausing, api.StateSnapshotting, api.StateRestoring, api.StateStopping, api.StateKilling, api.StateFailed},
	api.StatePausing:      {api.StatePaused, api.StateRunning, api.StateFailed, api.StateKilling},
	api.StateSnapshotting: {api.StateRunning, api.StateFailed, api.StateKilling},
	api.StatePaused:       {api.StateRestoring, api.StateKilling, api.StateFailed},
	api.StateRestoring:    {api.StateRunning, api.StatePaused, api.StateFailed, api.StateKilling},
	api.StateStopping:     {api.StateStopped, api.StateRunning, api.StateFailed, api.StateKilling},
	api.StateStopped:      {api.StateStarting, api.StateKilling, api.StateFailed},
	api.StateStarting:     {api.StateRunning, api.StateStopped, api.StateFailed, api.StateKilling},
	api.StateFailed:       {api.StateKilling},
	api.StateKilling:      {api.StateKilled},
	api.StateKilled:       {},
}

// liveStates hold resources (network slot, container) and count as live.
var liveStates = store.LiveStates

func isLive(state string) bool { return slices.Contains(liveStates, state) }

// visibleStates are listed by default: every state but killed.
var visibleStates = append([]string{api.StatePaused, api.StateStopped, api.StateFailed}, liveStates...)

// heldStates keep a machine's state in a snapshot (SnapshotID) without a
// sandbox: paused (memory and files) and stopped (files).
var heldStates = []string{api.StatePaused, api.StateStopped}

// checkTransition is the one guard of the state machine.
func checkTransition(id, from, to string) error {
	for _, s := range transitions[from] {
		if s == to {
			return nil
		}
	}
	return &errdefs.InvalidTransitionError{ID: id, From: from, To: to}
}
