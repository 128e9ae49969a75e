package machine

import (
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store"
)

// TestAdmission: creates whose memory would take the host's committed
// memory past its overcommit are refused at once with 503
// capacity_exhausted, also when they race; paused machines commit nothing,
// and a resume is admitted like a create.
func TestAdmission(t *testing.T) {
	ctx := t.Context()
	m, _, db := newHangManager(t, healthyAgent(t))
	m.cfg.HostMemoryMB, m.cfg.MemoryOvercommit, m.cfg.MaxMemoryMB = 2000, 1.5, 2000                    // 3000 MiB may be committed
	if err := os.WriteFile(filepath.Join(m.cfg.AgentDir, "nullspace-agent"), nil, 0o755); err != nil { // resumes check it
		t.Fatal(err)
	}

	// 40 creates of 1000 MiB at once: three fit.
	var wg sync.WaitGroup
	var mu sync.Mutex
	var made []*store.Machine
	refused := 0
	for range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rec, err := m.Create(ctx, "team", api.CreateMachineRequest{Template: "minimal", CPUCount: 1, MemoryMB: 1000})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if p := errdefs.Classify(err); p.Code != errdefs.CodeCapacityExhausted || p.Status != http.StatusServiceUnavailable || !p.Retryable {
					t.Errorf("refused create: %+v, want 503 capacity_exhausted, retryable", p)
				}
				refused++
				return
			}
			made = append(made, rec)
		}()
	}
	wg.Wait()
	if len(made) != 3 || refused != 37 {
		t.Fatalf("%d creates admitted and %d refused, want 3 and 37", len(made), refused)
	}
	if n, _ := db.CommittedMemoryMB(ctx); n != 3000 {
		t.Fatalf("committed %d MiB, want 3000", n)
	}

	// A paused machine frees its share; its resume takes it again.
	sn, err := m.Pause(ctx, "team", made[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Create(ctx, "team", api.CreateMachineRequest{Template: "minimal", CPUCount: 1, MemoryMB: 1000}); err != nil {
		t.Fatalf("create after a pause freed memory: %v", err)
	}
	if _, err := m.Resume(ctx, "team", sn.ID); errdefs.Classify(err).Code != errdefs.CodeCapacityExhausted {
		t.Fatalf("resume on a full host: %v, want capacity_exhausted", err)
	}
	if rec, _ := db.GetMachine(ctx, made[0].ID); rec.State != api.StatePaused {
		t.Fatalf("the refused resume left its machine %s, want paused", rec.State)
	}
}

// TestSparesMakeRoom: spares are made only where a machine would fit, and
// a machine that does not fit removes the idle spares and is admitted.
func TestSparesMakeRoom(t *testing.T) {
	ctx := t.Context()
	m, _, _, db := newSpareManager(t, 3)
	m.cfg.HostMemoryMB, m.cfg.MemoryOvercommit = 200, 1
	addRunning(t, db, "a", "minimal", time.Now()) // 64 MiB
	m.spares.used("team", specOf(m, "minimal"))
	m.spares.fill(ctx)
	if n := len(m.Spares()); n != 2 {
		t.Fatalf("%d spares of 64 MiB beside 64 MiB of machines on 200 MiB, want 2", n)
	}
	rec := &store.Machine{ID: "b", TeamID: "team", State: api.StateCreating, Template: "minimal", CPUCount: 1, MemoryMB: 100,
		ContainerID: "c-b", AgentToken: "x", CreatedAt: time.Now()}
	if err := m.admit(ctx, rec, true, func() error { return db.CreateMachine(ctx, rec, 16) }); err != nil {
		t.Fatalf("a machine that fits once the spares go: %v", err)
	}
	if n := len(m.Spares()); n != 0 {
		t.Fatalf("%d spares left after they made room, want 0", n)
	}
	if n, _ := db.CommittedMemoryMB(ctx); n != 164 {
		t.Fatalf("committed %d MiB, want 164", n)
	}
}
