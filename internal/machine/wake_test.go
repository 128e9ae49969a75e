package machine

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
)

// TestWakeAndObservers: Wake reads a lineage's head through its lock
// (without resuming when asked not to, and waiting for an operation in
// progress); every transition reaches the observers, kill included; an
// unknown lineage is not found.
func TestWakeAndObservers(t *testing.T) {
	ctx := t.Context()
	m, d, _, _ := newTestManager(t)
	var mu sync.Mutex
	var seen []string
	m.OnTransition(func(lineageID, machineID, state string) {
		mu.Lock()
		seen = append(seen, lineageID+" "+machineID+" "+state)
		mu.Unlock()
	})
	addLeased(t, m, d, "w", time.Now().Add(time.Hour), true)

	// An operation in progress holds the lineage lock; Wake waits for it.
	unlock, _ := m.lock(t.Context(), lineageKey("w"))
	got := make(chan string, 1)
	go func() {
		rec, err := m.Wake(ctx, "w", false, "edge", map[string]any{"port": 8080})
		if err != nil {
			got <- err.Error()
			return
		}
		got <- rec.State
	}()
	select {
	case s := <-got:
		t.Fatalf("Wake returned %q while the lineage was locked", s)
	case <-time.After(50 * time.Millisecond):
	}
	unlock()
	if s := <-got; s != api.StateRunning {
		t.Fatalf("Wake after the operation: %s, want running", s)
	}

	if _, err := m.Kill(ctx, "team", "w"); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	want := []string{"w w killing", "w w killed"}
	if len(seen) != 2 || seen[0] != want[0] || seen[1] != want[1] {
		t.Fatalf("observers saw %q, want %q", seen, want)
	}
	mu.Unlock()
	if rec, err := m.Wake(ctx, "w", true, "edge", map[string]any{"port": 8080}); err != nil || rec.State != api.StateKilled {
		t.Fatalf("Wake of a killed lineage: %+v %v, want it as it is (killed)", rec, err)
	}
	if _, err := m.Wake(ctx, "nope", true, "edge", nil); errdefs.Classify(err).Code != errdefs.CodeMachineNotFound {
		t.Fatalf("Wake of an unknown lineage: %v, want machine_not_found", err)
	}
	if _, err := m.LineageHead(ctx, "nope"); errdefs.Classify(err).Code != errdefs.CodeMachineNotFound {
		t.Fatalf("LineageHead of an unknown lineage: %v", err)
	}
}

// TestLocksAreFreed: the per-id lock map holds only ids in use.
func TestLocksAreFreed(t *testing.T) {
	m, _, _, _ := newTestManager(t)
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			unlock, _ := m.lock(t.Context(), lineageKey("l"))
			if u, ok := m.tryLock(fmt.Sprintf("m%d", i)); ok {
				u()
			}
			unlock()
		}()
	}
	held, _ := m.lock(t.Context(), "busy")
	if _, ok := m.tryLock("busy"); ok {
		t.Fatal("tryLock of a held id succeeded")
	}
	wg.Wait()
	m.locksMu.Lock()
	n := len(m.locks)
	m.locksMu.Unlock()
	if n != 1 {
		t.Fatalf("%d ids in the lock map with one held, want 1", n)
	}
	held()
	m.locksMu.Lock()
	defer m.locksMu.Unlock()
	if len(m.locks) != 0 {
		t.Fatalf("%d ids left in the lock map, want none", len(m.locks))
	}
}
