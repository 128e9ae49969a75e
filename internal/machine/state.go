package machine

import (
	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
)

// The machine lifecycle. Every transition goes through transition(), which
// checks this table and persists the new state before anything acknowledges
// it. A crash between two states is repaired by Reconcile on the next start.
//
//	creating ──▶ running ──▶ killing ──▶ killed
//	    │           │
//	    │           └──▶ failed ──▶ killing    (init died; resources freed)
//	    └──▶ (row deleted: a failed create leaves nothing behind)
var transitions = map[string][]string{
	api.StateCreating: {api.StateRunning},
	api.StateRunning:  {api.StateKilling, api.StateFailed},
	api.StateFailed:   {api.StateKilling},
	api.StateKilling:  {api.StateKilled},
	api.StateKilled:   {},
}

// liveStates hold resources (network slot, container) and count as live.
var liveStates = []string{api.StateCreating, api.StateRunning, api.StateKilling}

// checkTransition is the one guard of the state machine.
func checkTransition(id, from, to string) error {
	for _, s := range transitions[from] {
		if s == to {
			return nil
		}
	}
	return &errdefs.InvalidTransitionError{ID: id, From: from, To: to}
}
