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

func quotaOf(err error) (errdefs.Public, bool) {
	p := errdefs.Classify(err)
	return p, p.Code == errdefs.CodeQuotaExceeded && p.Status == http.StatusTooManyRequests && p.Quota != nil
}

// TestQuotaConcurrentCreates: 20 creates at once against a quota of 5
// running machines make exactly 5; the others are refused before anything
// is made, naming the quota, and another team is not held back.
func TestQuotaConcurrentCreates(t *testing.T) {
	ctx := t.Context()
	m, _, db := newHangManager(t, healthyAgent(t))
	m.cfg.Quota = store.Quota{RunningMachines: 5}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var made []*store.Machine
	refused := 0
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rec, err := m.Create(ctx, "team", api.CreateMachineRequest{Template: "minimal"})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				p, ok := quotaOf(err)
				if !ok || p.Quota.Name != QuotaRunningMachines || p.Quota.Limit != 5 || p.Quota.Used != 5 || p.Retryable {
					t.Errorf("refused create: %+v %+v, want 429 quota_exceeded of running_machines 5/5, not retryable", p, p.Quota)
				}
				refused++
				return
			}
			made = append(made, rec)
		}()
	}
	wg.Wait()
	if len(made) != 5 || refused != 15 {
		t.Fatalf("%d creates admitted and %d refused, want 5 and 15", len(made), refused)
	}
	recs, err := db.ListMachines(ctx, store.MachineFilter{TeamID: "team"})
	if err != nil || len(recs) != 5 {
		t.Fatalf("%d machine rows after the refusals, want 5 (%v)", len(recs), err)
	}
	if _, err := m.Create(ctx, "other", api.CreateMachineRequest{Template: "minimal"}); err != nil {
		t.Fatalf("another team's create: %v", err)
	}
	// A killed machine frees its place.
	if _, err := m.Kill(ctx, "team", made[0].ID); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Create(ctx, "team", api.CreateMachineRequest{Template: "minimal"}); err != nil {
		t.Fatalf("a create once a machine was killed: %v", err)
	}
}

// TestQuotaLimits: each limit, the team's own over the default, a limit
// lowered below the use (nothing running is touched; new machines are
// refused), a resume counted as running but not as a create, and the
// storage quota on a snapshot the team asks for.
func TestQuotaLimits(t *testing.T) {
	ctx := t.Context()
	m, _, db := newHangManager(t, healthyAgent(t))
	if err := os.WriteFile(filepath.Join(m.cfg.AgentDir, "nullspace-agent"), nil, 0o755); err != nil { // resumes check it
		t.Fatal(err)
	}
	if err := db.CreateTeam(ctx, store.Team{ID: "team", Name: "team", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	m.cfg.Quota = store.Quota{VCPUs: 3, MemoryMB: 1000, CreatesPerMinute: 3}
	create := func(cpu, mb int) (*store.Machine, error) {
		return m.Create(ctx, "team", api.CreateMachineRequest{Template: "minimal", CPUCount: cpu, MemoryMB: mb})
	}
	a, err := create(2, 256)
	if err != nil {
		t.Fatal(err)
	}
	_, err = create(2, 256)
	if p, ok := quotaOf(err); !ok || p.Quota.Name != QuotaVCPUs || p.Quota.Used != 2 {
		t.Fatalf("2 vCPUs more beside 2 of 3: %v, want the vcpus quota", err)
	}
	_, err = create(1, 800)
	if p, ok := quotaOf(err); !ok || p.Quota.Name != QuotaMemoryMB {
		t.Fatalf("800 MiB more beside 256 of 1000: %v, want the memory_mb quota", err)
	}
	if _, err := create(1, 256); err != nil {
		t.Fatal(err)
	}
	_, err = create(0, 0)
	if p, ok := quotaOf(err); !ok || p.Quota.Name != QuotaVCPUs {
		t.Fatalf("a third machine at 3 of 3 vCPUs: %v", err)
	}

	// The team's own limits win over the defaults; lowered below the
	// use, they touch nothing running.
	if err := db.SetQuota(ctx, "team", store.Quota{RunningMachines: 1, VCPUs: 0, MemoryMB: -1, SnapshotBytes: -1, CreatesPerMinute: 100}); err != nil {
		t.Fatal(err)
	}
	_, err = create(1, 64)
	if p, ok := quotaOf(err); !ok || p.Quota.Name != QuotaRunningMachines || p.Quota.Used != 2 {
		t.Fatalf("a create over a lowered quota: %v", err)
	}
	for _, rec := range []*store.Machine{a} {
		if got, _ := db.GetMachine(ctx, rec.ID); got.State != api.StateRunning {
			t.Fatalf("a machine over the lowered quota is %s, want running", got.State)
		}
	}
	q, u, err := m.TeamQuota(ctx, "team")
	if err != nil || q.RunningMachines != 1 || q.VCPUs != 0 || q.MemoryMB != 1000 || u.RunningMachines != 2 || u.VCPUs != 3 || u.Creates != 2 {
		t.Fatalf("quota %+v, use %+v, %v", q, u, err)
	}

	// A pause frees the place; the resume takes it back and is no create.
	if err := db.SetQuota(ctx, "team", store.Quota{RunningMachines: 2, VCPUs: -1, MemoryMB: -1, SnapshotBytes: -1, CreatesPerMinute: 2}); err != nil {
		t.Fatal(err)
	}
	sn, err := m.Pause(ctx, "team", a.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Resume(ctx, "team", sn.ID); err != nil {
		t.Fatalf("a resume within the running quota, at the rate quota: %v", err)
	}
	_, err = create(1, 64)
	if p, ok := quotaOf(err); !ok || p.Quota.Name != QuotaRunningMachines {
		t.Fatalf("a create beside the resumed machine: %v", err)
	}

	// Creates per minute: retryable.
	if err := db.SetQuota(ctx, "team", store.Quota{RunningMachines: 0, VCPUs: 0, MemoryMB: 0, SnapshotBytes: 1, CreatesPerMinute: 2}); err != nil {
		t.Fatal(err)
	}
	_, err = create(1, 64)
	if p, ok := quotaOf(err); !ok || p.Quota.Name != QuotaCreatesPerMinute || !p.Retryable || p.RetryAfter <= 0 || p.RetryAfter > time.Minute {
		t.Fatalf("a third create in a minute at 2 a minute: %+v, want the retryable creates_per_minute quota", errdefs.Classify(err))
	}

	// Storage: the team holds a snapshot (the pause's) past 1 byte.
	running, err := db.ListMachines(ctx, store.MachineFilter{TeamID: "team", States: []string{api.StateRunning}})
	if err != nil || len(running) == 0 {
		t.Fatalf("running machines: %v %v", running, err)
	}
	_, err = m.Checkpoint(ctx, "team", running[0].ID)
	if p, ok := quotaOf(err); !ok || p.Quota.Name != QuotaSnapshotBytes || p.Retryable {
		t.Fatalf("a checkpoint over the storage quota: %+v, want snapshot_bytes, not retryable", errdefs.Classify(err))
	}
}
