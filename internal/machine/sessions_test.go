package machine

import (
	"context"
	"testing"

	"nullspace.dev/nullspace/api"
)

// TestWhileRunning: calls into a machine end when it stops running, not
// while it snapshots, and not those of other machines.
func TestWhileRunning(t *testing.T) {
	m := &Manager{}
	a, doneA := m.WhileRunning(context.Background(), "mch_a")
	defer doneA()
	b, doneB := m.WhileRunning(context.Background(), "mch_b")
	defer doneB()
	m.sessions.end("mch_a", api.StateSnapshotting)
	m.sessions.end("mch_a", api.StateRunning)
	if a.Err() != nil {
		t.Fatal("a snapshot ended the calls")
	}
	m.sessions.end("mch_a", api.StatePausing)
	if a.Err() == nil {
		t.Fatal("a pause did not end the calls")
	}
	if b.Err() != nil {
		t.Fatal("another machine's calls ended")
	}
	doneB()
	if len(m.sessions.by) != 0 {
		t.Fatalf("calls left registered: %v", m.sessions.by)
	}
}
