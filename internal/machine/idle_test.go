package machine

import (
	"testing"
	"time"

	"nullspace.dev/nullspace/internal/store"
)

// TestActivity: a machine is active from its start, at every Touch, and
// when its interface's byte counters move between two samples.
func TestActivity(t *testing.T) {
	a := newActivity()
	start := time.Now().Add(-time.Minute)
	rec := &store.Machine{ID: "m", StartedAt: start}
	if got := a.lastActive(rec); !got.Equal(start) {
		t.Fatalf("last active %v, want the start %v", got, start)
	}
	t1 := start.Add(10 * time.Second)
	a.sawNet("m", 100, 50, t1) // first sample: a baseline, not activity
	if got := a.lastActive(rec); !got.Equal(start) {
		t.Fatalf("a first sample counted as activity: %v", got)
	}
	a.sawNet("m", 100, 50, t1.Add(5*time.Second)) // no change
	if got := a.lastActive(rec); !got.Equal(start) {
		t.Fatalf("unchanged counters counted as activity: %v", got)
	}
	t2 := t1.Add(10 * time.Second)
	a.sawNet("m", 180, 50, t2)
	if got := a.lastActive(rec); !got.Equal(t2) {
		t.Fatalf("moved counters: last active %v, want %v", got, t2)
	}
	a.forget(map[string]bool{})
	if got := a.lastActive(rec); !got.Equal(start) {
		t.Fatalf("forgotten machine: last active %v, want its start", got)
	}
}
