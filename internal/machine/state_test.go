package machine

import (
	"errors"
	"testing"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
)

func TestTransitions(t *testing.T) {
	tests := []struct {
		from, to string
		ok       bool
	}{
		{api.StateCreating, api.StateRunning, true},
		{api.StateRunning, api.StateKilling, true},
		{api.StateRunning, api.StateFailed, true},
		{api.StateKilling, api.StateKilled, true},
		{api.StateFailed, api.StateKilling, true},
		{api.StateCreating, api.StateKilled, false},
		{api.StateKilled, api.StateRunning, false},
		{api.StateKilled, api.StateKilling, false},
		{api.StateRunning, api.StateCreating, false},
		{api.StateFailed, api.StateRunning, false},
		{api.StateRunning, api.StateStopping, true},
		{api.StateStopping, api.StateStopped, true},
		{api.StateStopping, api.StateRunning, true}, // the checkpoint failed
		{api.StateStopped, api.StateStarting, true},
		{api.StateStarting, api.StateRunning, true},
		{api.StateStarting, api.StateStopped, true}, // the boot failed
		{api.StateStopped, api.StateKilling, true},
		{api.StateStopped, api.StateRunning, false}, // only through starting
		{api.StateStopped, api.StateRestoring, false},
		{api.StatePaused, api.StateStopping, false},
		{api.StateStopping, api.StatePaused, false},
	}
	for _, tt := range tests {
		err := checkTransition("m", tt.from, tt.to)
		if (err == nil) != tt.ok {
			t.Errorf("%s -> %s: got %v, want ok=%v", tt.from, tt.to, err, tt.ok)
		}
		var te *errdefs.InvalidTransitionError
		if err != nil && (!errors.As(err, &te) || !errors.Is(err, errdefs.ErrConflict)) {
			t.Errorf("%s -> %s: error %v is not an InvalidTransitionError matching ErrConflict", tt.from, tt.to, err)
		}
	}
}
