package machine

import (
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
)

// TestMemoryWatch: a running machine whose sandbox nears its cgroup's
// memory limit gets the agent's reclaim call (its largest process killed)
// before the host's OOM killer would take the whole sandbox; one well
// below the limit is left alone, and a paused machine is not watched.
func TestMemoryWatch(t *testing.T) {
	port, paths := recordingAgent(t)
	m, d, db := newHangManager(t, port)
	const limit = 576 << 20 // 512 MiB and the driver's headroom
	var used atomic.Uint64
	used.Store(100 << 20)
	d.memory = func(string) (uint64, uint64) { return used.Load(), limit }
	rec := addLeased(t, m, d, "a", time.Now().Add(time.Hour), false)
	m.watchMemory(rec)

	reclaims := func() int {
		n := 0
		for _, p := range paths() {
			if p == "/lifecycle/reclaim" {
				n++
			}
		}
		return n
	}
	time.Sleep(3 * memMaxInterval)
	if n := reclaims(); n != 0 {
		t.Fatalf("%d reclaims of a machine at 100 of 576 MiB, want none", n)
	}
	used.Store(limit - memGuard(limit)/2) // inside the guard
	deadline := time.Now().Add(5 * time.Second)
	for reclaims() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no reclaim of a machine at the edge of its memory; agent calls: %v", paths())
		}
		time.Sleep(10 * time.Millisecond)
	}
	used.Store(100 << 20) // the kill gave memory back

	// A paused machine is not watched.
	if _, err := m.Pause(t.Context(), "team", "a"); err != nil {
		t.Fatal(err)
	}
	if got, _ := db.GetMachine(t.Context(), "a"); got.State != api.StatePaused {
		t.Fatalf("state %s, want paused", got.State)
	}
	m.memWatch.mu.Lock()
	_, watched := m.memWatch.follows["a"]
	m.memWatch.mu.Unlock()
	if watched {
		t.Fatal("the paused machine's memory is still watched")
	}
	before := reclaims()
	used.Store(limit)
	time.Sleep(3 * memMaxInterval)
	if n := reclaims(); n != before {
		t.Fatalf("%d reclaims of a paused machine, want none", n-before)
	}
	if !slices.Contains(paths(), "/lifecycle/prepare") {
		t.Fatalf("the pause did not reach the agent: %v", paths())
	}
}

func TestMemoryWatchIntervals(t *testing.T) {
	for _, tt := range []struct {
		free uint64
		want time.Duration
	}{{0, memMinInterval}, {20 << 20, 10 * time.Millisecond}, {4 << 30, memMaxInterval}} {
		if got := memInterval(tt.free); got != tt.want {
			t.Errorf("memInterval(%d) = %v, want %v", tt.free, got, tt.want)
		}
	}
	if g := memGuard(576 << 20); g != 20<<20 { // two shortest intervals of the fastest filler
		t.Errorf("memGuard(576 MiB) = %d, want 20 MiB", g)
	}
	if g := memGuard(4 << 30); g != 128<<20 { // 1/32
		t.Errorf("memGuard(4 GiB) = %d, want 128 MiB", g)
	}
}
