package machine

import (
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/store"
	"nullspace.dev/nullspace/internal/usage"
)

// TestUsageAcrossPauseResumeKill: a machine created, paused, resumed and
// killed leaves in the ledger a create, a run per execution, the paused
// state's storage and a resume, with the times of the transitions; the
// machine's usage integrates them, whatever happens to the rows after.
func TestUsageAcrossPauseResumeKill(t *testing.T) {
	ctx := t.Context()
	m, _, db := newHangManager(t, healthyAgent(t))
	if err := os.WriteFile(filepath.Join(m.cfg.AgentDir, "nullspace-agent"), nil, 0o755); err != nil { // resumes check it
		t.Fatal(err)
	}
	t0 := time.Now().UTC()
	a, err := m.Create(ctx, "team", api.CreateMachineRequest{Template: "minimal", CPUCount: 2, MemoryMB: 512})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	sn, err := m.Pause(ctx, "team", a.ID)
	if err != nil {
		t.Fatal(err)
	}
	paused, err := db.GetMachine(ctx, a.ID)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	b, err := m.Resume(ctx, "team", sn.ID)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if _, err := m.Kill(ctx, "team", b.ID); err != nil {
		t.Fatal(err)
	}
	t1 := time.Now().UTC()

	recs, err := db.ListUsage(ctx, store.UsageFilter{TeamID: "team"})
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string][]store.UsageRecord{}
	for _, r := range recs {
		kinds[r.Kind] = append(kinds[r.Kind], r)
		if r.LineageID != a.ID || r.TeamID != "team" {
			t.Errorf("record %+v: want team team, lineage %s", r, a.ID)
		}
		if r.EndedAt.IsZero() {
			t.Errorf("record %+v is still open after the kill", r)
		}
	}
	if len(kinds[store.UsageCreate]) != 1 || len(kinds[store.UsageResume]) != 1 || len(kinds[store.UsageRun]) != 2 {
		t.Fatalf("records %+v: want a create, a resume and two runs", recs)
	}
	runs := kinds[store.UsageRun]
	if runs[0].MachineID != a.ID || runs[1].MachineID != b.ID || runs[0].VCPUs != 2 || runs[0].MemoryMB != 512 {
		t.Errorf("runs %+v: want one of %s then one of %s, 2 vCPUs and 512 MiB", runs, a.ID, b.ID)
	}
	if !runs[0].StartedAt.Equal(paused.StartedAt) || runs[0].EndedAt.Before(runs[0].StartedAt.Add(300*time.Millisecond)) {
		t.Errorf("first run %v..%v: want from its start %v, at least 300 ms", runs[0].StartedAt, runs[0].EndedAt, paused.StartedAt)
	}
	if !runs[1].StartedAt.After(runs[0].EndedAt.Add(300 * time.Millisecond)) {
		t.Errorf("second run begins %v, want at least 300 ms after the first ended (%v)", runs[1].StartedAt, runs[0].EndedAt)
	}
	var held *store.UsageRecord
	for _, r := range kinds[store.UsageStorage] {
		if r.SnapshotID == sn.ID {
			held = &r
		}
	}
	if held == nil || held.Bytes != sn.SizeBytes {
		t.Fatalf("storage records %+v: want the paused state %s (%d bytes)", kinds[store.UsageStorage], sn.ID, sn.SizeBytes)
	}

	rows, err := m.Usage(ctx, "team", t0, t1, usage.GroupBy{Machine: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 || rows[0].MachineID != a.ID || rows[0].Creates != 1 || rows[0].Resumes != 1 {
		t.Fatalf("usage by machine %+v: want one row of %s with a create and a resume", rows, a.ID)
	}
	ran := runs[0].EndedAt.Sub(runs[0].StartedAt).Seconds() + runs[1].EndedAt.Sub(runs[1].StartedAt).Seconds()
	r := rows[0]
	if math.Abs(r.RunningSeconds-ran) > 1e-5 || math.Abs(r.VCPUSeconds-2*ran) > 1e-5 || math.Abs(r.MemoryGiBSeconds-ran/2) > 1e-5 {
		t.Errorf("usage %+v: want %.6f running seconds, twice that in vCPU-seconds, half in GiB-seconds", r, ran)
	}
	if ran < 0.5 || ran > t1.Sub(t0).Seconds() {
		t.Errorf("ran %.3f s between %v and %v: want at least the 0.5 s slept", ran, t0, t1)
	}

	// The rows go; the ledger stays.
	if _, err := db.PruneEnded(ctx, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	again, err := m.Usage(ctx, "team", t0, t1, usage.GroupBy{Machine: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(again) != 1 || again[0] != rows[0] {
		t.Errorf("usage after the rows were pruned %+v, want %+v", again, rows)
	}
}

// TestUsageClockStep: the clock steps back an hour while a machine runs;
// its run, ended "before" it began, counts zero rather than less than
// zero, and the runs after the step count as usual.
func TestUsageClockStep(t *testing.T) {
	ctx := t.Context()
	m, _, db := newHangManager(t, healthyAgent(t))
	if err := os.WriteFile(filepath.Join(m.cfg.AgentDir, "nullspace-agent"), nil, 0o755); err != nil { // starts check it
		t.Fatal(err)
	}
	t0 := time.Now().UTC()
	a, err := m.Create(ctx, "team", api.CreateMachineRequest{Template: "minimal", CPUCount: 1, MemoryMB: 1024})
	if err != nil {
		t.Fatal(err)
	}
	db.SetClock(func() time.Time { return time.Now().Add(-time.Hour) }) // the step
	if _, err := m.Stop(ctx, "team", a.ID, time.Second); err != nil {
		t.Fatal(err)
	}
	db.SetClock(nil)
	if _, err := m.Start(ctx, "team", a.ID); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if _, err := m.Kill(ctx, "team", a.ID); err != nil {
		t.Fatal(err)
	}
	rows, err := m.Usage(ctx, "", t0.Add(-2*time.Hour), time.Now().UTC(), usage.GroupBy{Team: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 {
		t.Fatalf("usage %+v: want one row", rows)
	}
	if s := rows[0].RunningSeconds; s < 0.2 || s > time.Since(t0).Seconds() {
		t.Errorf("running seconds %.3f: want only the run after the step (at least 0.2 s, at most %.3f)", s, time.Since(t0).Seconds())
	}
	if rows[0].Creates != 1 {
		t.Errorf("creates %d, want 1", rows[0].Creates)
	}
}
