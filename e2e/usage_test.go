package e2e

import (
	"context"
	"math"
	"strings"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/client"
)

// TestUsage: a machine runs 10 s, pauses 10 s and resumes for 5 s; its
// usage by machine is 15 s of running time (times its vCPUs and GiB of
// memory) and the paused state's bytes times the time it was stored, each
// to ±1 s of what the client saw, while the resumed machine still runs
// (an open span) and after it is killed (every span closed). The same
// figures come as CSV.
func TestUsage(t *testing.T) {
	ctx := t.Context()
	t0 := time.Now().UTC()
	m := newMachine(t, api.CreateMachineRequest{Template: "minimal", CPUCount: 2, MemoryMB: 256})
	created := time.Now()
	time.Sleep(10 * time.Second)
	pauseCalled := time.Now()
	sn, err := env.client.Pause(ctx, m.ID)
	if err != nil {
		t.Fatal(err)
	}
	paused := time.Now()
	time.Sleep(10 * time.Second)
	b, err := env.client.Resume(ctx, sn.ID)
	if err != nil {
		t.Fatal(err)
	}
	resumed := time.Now()
	t.Cleanup(func() { env.client.KillMachine(context.Background(), b.ID) })
	_, kept := env.client.GetSnapshot(ctx, sn.ID)
	time.Sleep(5 * time.Second)

	check := func(when string, end time.Time) client.UsageQuery {
		t.Helper()
		q := client.UsageQuery{From: t0, To: time.Now().UTC().Add(time.Second), GroupBy: []string{"machine"}}
		u, err := env.client.Usage(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		var row *api.UsageRow
		for i := range u.Rows {
			if u.Rows[i].MachineID == m.ID {
				row = &u.Rows[i]
			}
		}
		if row == nil {
			t.Fatalf("%s: no row of %s in %+v", when, m.ID, u.Rows)
		}
		// What the client saw: running from the create's answer to the
		// pause's, and from the resume's answer to end; the paused state
		// stored from the pause's call to the resume's answer, or to end if
		// the lineage's history keeps it.
		ran := paused.Sub(created).Seconds() + end.Sub(resumed).Seconds()
		storedUntil := resumed
		if kept == nil {
			storedUntil = end
		}
		stored := storedUntil.Sub(pauseCalled).Seconds()
		gib := float64(sn.SizeBytes) / (1 << 30)
		t.Logf("%s: %+v; client saw %.3f s running (nominal 15), %d bytes stored %.3f s (kept after resume: %v)",
			when, *row, ran, sn.SizeBytes, stored, kept == nil)
		if math.Abs(row.RunningSeconds-ran) > 1 {
			t.Errorf("%s: running %.3f s, want %.3f ± 1", when, row.RunningSeconds, ran)
		}
		if math.Abs(row.VCPUSeconds-2*row.RunningSeconds) > 1e-3 || math.Abs(row.MemoryGiBSeconds-row.RunningSeconds/4) > 1e-3 {
			t.Errorf("%s: %.3f vCPU-s and %.3f GiB-s for %.3f s of 2 vCPUs and 256 MiB", when, row.VCPUSeconds, row.MemoryGiBSeconds, row.RunningSeconds)
		}
		if math.Abs(row.StorageGiBSeconds-gib*stored) > gib {
			t.Errorf("%s: storage %.6f GiB-s, want %.6f ± %.6f (%d bytes for %.3f s)", when, row.StorageGiBSeconds, gib*stored, gib, sn.SizeBytes, stored)
		}
		if row.Creates != 1 || row.Resumes != 1 {
			t.Errorf("%s: %d creates and %d resumes, want 1 and 1", when, row.Creates, row.Resumes)
		}
		return q
	}
	check("resumed machine running", time.Now())
	if _, err := env.client.KillMachine(ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	q := check("after the kill", time.Now())

	var csv strings.Builder
	if err := env.client.UsageCSV(ctx, q, &csv); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(csv.String()), "\n")
	if lines[0] != "team_id,machine_id,day,running_seconds,vcpu_seconds,memory_gib_seconds,storage_gib_seconds,creates,resumes,egress_bytes" {
		t.Errorf("CSV header %q", lines[0])
	}
	found := false
	for _, l := range lines[1:] {
		if strings.HasPrefix(l, ","+m.ID+",,") && strings.HasSuffix(strings.Join(strings.Split(l, ",")[7:9], ","), "1,1") {
			found = true
		}
	}
	if !found {
		t.Errorf("CSV has no row of %s with a create and a resume:\n%s", m.ID, csv.String())
	}
}

// TestUsageAcrossRestart: a machine keeps running while the server is
// stopped and started again; its usage counts the whole time, from its
// start to its pause, to ±1 s of what the client saw, and the pause's
// record is the same after a second restart.
func TestUsageAcrossRestart(t *testing.T) {
	ctx := t.Context()
	t0 := time.Now().UTC()
	m := newMachine(t, api.CreateMachineRequest{Template: "minimal", CPUCount: 1, MemoryMB: 512})
	created := time.Now()
	time.Sleep(3 * time.Second)
	if err := env.inst.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second) // the sandbox runs on without the server
	if err := restartServer(); err != nil {
		t.Fatalf("restart: %v", err)
	}
	time.Sleep(2 * time.Second)
	if _, err := env.client.Pause(ctx, m.ID); err != nil {
		t.Fatal(err)
	}
	paused := time.Now()
	running := func(when string) float64 {
		t.Helper()
		u, err := env.client.Usage(ctx, client.UsageQuery{From: t0, To: time.Now().UTC(), GroupBy: []string{"machine"}})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range u.Rows {
			if r.MachineID == m.ID {
				return r.RunningSeconds
			}
		}
		t.Fatalf("%s: no row of %s in %+v", when, m.ID, u.Rows)
		return 0
	}
	got, want := running("after the pause"), paused.Sub(created).Seconds()
	t.Logf("running %.3f s; the client saw %.3f s (nominal 8, 3 of them with the server down)", got, want)
	if math.Abs(got-want) > 1 {
		t.Errorf("running %.3f s across a restart, want %.3f ± 1", got, want)
	}
	if err := env.inst.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := restartServer(); err != nil {
		t.Fatalf("restart: %v", err)
	}
	if again := running("after a second restart"); again != got {
		t.Errorf("running %.6f s after a second restart, was %.6f", again, got)
	}
}

// TestUsageIsolation: a team's key sees its own usage only, and cannot
// name another team's; the operator's sees any team's, or every team's.
func TestUsageIsolation(t *testing.T) {
	ctx := t.Context()
	m := newMachine(t, api.CreateMachineRequest{Template: "minimal"})
	team, _, b := otherTeam(t)
	q := client.UsageQuery{From: time.Now().Add(-time.Hour), GroupBy: []string{"team", "machine"}}
	u, err := b.Usage(ctx, q)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range u.Rows {
		if r.MachineID == m.ID || r.TeamID != team.ID {
			t.Errorf("team B's usage holds %+v", r)
		}
	}
	q.TeamID = "*"
	_, err = b.Usage(ctx, q)
	wantCode(t, err, "team_not_found")
	all, err := env.client.Usage(ctx, q)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range all.Rows {
		found = found || r.MachineID == m.ID
	}
	if !found {
		t.Errorf("every team's usage (operator) lacks %s: %+v", m.ID, all.Rows)
	}
}
