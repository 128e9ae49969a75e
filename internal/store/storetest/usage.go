package storetest

import (
	"slices"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/store"
)

// testUsage: the store writes the usage ledger at the transitions that
// end what it records (a run, a snapshot's storage) and the ones that
// begin a lineage or resume one, each fact once; ListUsage adds the spans
// still open, keeps to the team and range asked, and the ledger outlives
// the rows that PruneEnded deletes.
func testUsage(t *testing.T, s store.Store) {
	ctx := t.Context()
	f := newFixture(t, s)
	t0 := now()
	start := func(m *store.Machine) {
		f.update(m, func(m *store.Machine) { m.State, m.StartedAt = api.StateRunning, now() })
	}
	set := func(m *store.Machine, state string) { f.update(m, func(m *store.Machine) { m.State = state }) }

	// A lineage created, paused (with its snapshot, in one commit),
	// resumed, and killed.
	a := f.machine("a", "t", "", api.StateCreating, func(m *store.Machine) { m.CPUCount, m.MemoryMB = 2, 512 })
	start(a)
	aStarted := a.StartedAt
	set(a, api.StatePausing)
	sn := f.snapshot("hib", func(sn *store.Snapshot) {
		sn.State, sn.MachineID, sn.LineageID, sn.SizeBytes, sn.CreatedAt = store.SnapshotWriting, "a", "a", 1<<20, now()
	})
	a.State = api.StatePaused
	must(t, s.CommitSnapshot(ctx, sn, a))
	a2 := f.machine("a2", "t", "a", api.StateResuming, func(m *store.Machine) { m.CPUCount, m.MemoryMB = 2, 512 })
	start(a2)
	must(t, s.DeleteSnapshot(ctx, "hib")) // the resume supersedes the paused state
	set(a2, api.StateKilling)
	f.update(a2, func(m *store.Machine) { m.State, m.EndedAt = api.StateKilled, now() })
	f.update(a2, func(m *store.Machine) { m.Slot = -1 }) // a write that changes nothing billed

	// A machine stopped and started (one id, two runs), then failed.
	b := f.machine("b", "t", "", api.StateCreating)
	start(b)
	bFirst := b.StartedAt
	set(b, api.StateStopping)
	set(b, api.StateStopped)
	set(b, api.StateStarting)
	start(b)
	bSecond := b.StartedAt
	failedAt := now()
	f.update(b, func(m *store.Machine) { m.State, m.EndedAt = api.StateFailed, failedAt })

	// Snapshots: pruned by retention, pinned (not pruned), one never
	// committed, one kept.
	f.snapshot("old", func(sn *store.Snapshot) {
		sn.Kind, sn.MachineID, sn.LineageID, sn.SizeBytes, sn.CreatedAt = "checkpoint", "b", "b", 300, now()
	})
	if ok, err := s.MarkPruning(ctx, "old"); err != nil || !ok {
		t.Fatalf("mark pruning a ready snapshot: %v, %v", ok, err)
	}
	must(t, s.MarkPruned(ctx, "old"))
	f.snapshot("pin", func(sn *store.Snapshot) {
		sn.Kind, sn.MachineID, sn.LineageID, sn.Pinned, sn.CreatedAt = "checkpoint", "b", "b", true, now()
	})
	if ok, err := s.MarkPruning(ctx, "pin"); err != nil || ok {
		t.Fatalf("mark pruning a pinned snapshot: %v, %v; want false", ok, err)
	}
	f.snapshot("wip", func(sn *store.Snapshot) { sn.State = store.SnapshotWriting })
	must(t, s.DeleteSnapshot(ctx, "wip"))
	// A machine still running, and another team's.
	c := f.machine("c", "t", "", api.StateCreating)
	start(c)
	u := f.machine("u", "u", "", api.StateCreating)
	start(u)
	// Appending a recorded fact again changes nothing.
	dup := store.UsageRecord{ID: "egress:c:1", Kind: store.UsageEgress, TeamID: "t", MachineID: "c", LineageID: "c",
		StartedAt: c.StartedAt, EndedAt: c.StartedAt, Bytes: 77}
	must(t, s.AppendUsage(ctx, dup))
	must(t, s.AppendUsage(ctx, dup))
	t1 := now()

	// The killed and failed rows are pruned: the ledger keeps their usage.
	if _, err := s.PruneEnded(ctx, t1.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}

	got, err := s.ListUsage(ctx, store.UsageFilter{TeamID: "t", From: t0.Add(-time.Hour), To: t1.Add(time.Hour)})
	must(t, err)
	type key struct{ kind, machine, snapshot string }
	byKey := map[key]store.UsageRecord{}
	var keys []key
	for _, r := range got {
		k := key{r.Kind, r.MachineID, r.SnapshotID}
		if _, dup := byKey[k]; dup && r.Kind != store.UsageRun {
			t.Errorf("two %s records of %s %s", r.Kind, r.MachineID, r.SnapshotID)
		}
		if r.TeamID != "t" {
			t.Errorf("record %+v of team %s in team t's usage", r, r.TeamID)
		}
		if r.Kind == store.UsageRun && r.MachineID == "b" {
			k.snapshot = r.StartedAt.String() // b has two runs
		}
		byKey[k] = r
		keys = append(keys, k)
	}
	want := []struct {
		k          key
		start      time.Time // zero: only bounded by t0..t1
		end        time.Time // zero: open; endBound: between t0 and t1
		endBounded bool
		vcpus, mem int
		bytes      int64
	}{
		{k: key{"create", "a", ""}, start: aStarted, end: aStarted, vcpus: 2, mem: 512},
		{k: key{"run", "a", ""}, start: aStarted, endBounded: true, vcpus: 2, mem: 512},
		{k: key{"resume", "a2", ""}, start: a2.StartedAt, end: a2.StartedAt, vcpus: 2, mem: 512},
		{k: key{"run", "a2", ""}, start: a2.StartedAt, endBounded: true, vcpus: 2, mem: 512},
		{k: key{"storage", "a", "hib"}, start: sn.CreatedAt, endBounded: true, bytes: 1 << 20},
		{k: key{"create", "b", ""}, start: bFirst, end: bFirst, vcpus: 1, mem: 64},
		{k: key{"run", "b", bFirst.String()}, start: bFirst, endBounded: true, vcpus: 1, mem: 64},
		{k: key{"run", "b", bSecond.String()}, start: bSecond, end: failedAt, vcpus: 1, mem: 64},
		{k: key{"storage", "b", "old"}, endBounded: true, bytes: 300},
		{k: key{"create", "c", ""}, start: c.StartedAt, end: c.StartedAt, vcpus: 1, mem: 64},
		{k: key{"egress", "c", ""}, start: c.StartedAt, end: c.StartedAt, bytes: 77},
		{k: key{"run", "c", ""}, start: c.StartedAt, vcpus: 1, mem: 64}, // open
		{k: key{"storage", "b", "pin"}, bytes: 10},                      // open
	}
	if len(got) != len(want) {
		t.Errorf("got %d records %v, want %d", len(got), keys, len(want))
	}
	for _, w := range want {
		r, ok := byKey[w.k]
		if !ok {
			t.Errorf("no %v record; got %v", w.k, keys)
			continue
		}
		if !w.start.IsZero() && !r.StartedAt.Equal(w.start) {
			t.Errorf("%v starts at %v, want %v", w.k, r.StartedAt, w.start)
		}
		switch {
		case w.endBounded:
			if r.EndedAt.Before(r.StartedAt) || r.EndedAt.Before(t0) || r.EndedAt.After(t1) {
				t.Errorf("%v ends at %v, want between its start %v and %v", w.k, r.EndedAt, r.StartedAt, t1)
			}
		case !r.EndedAt.Equal(w.end):
			t.Errorf("%v ends at %v, want %v", w.k, r.EndedAt, w.end)
		}
		if r.VCPUs != w.vcpus || r.MemoryMB != w.mem || r.Bytes != w.bytes {
			t.Errorf("%v: vcpus %d, memory %d MB, bytes %d; want %d, %d, %d", w.k, r.VCPUs, r.MemoryMB, r.Bytes, w.vcpus, w.mem, w.bytes)
		}
		if w.k.machine == "a2" && r.LineageID != "a" {
			t.Errorf("%v: lineage %s, want a", w.k, r.LineageID)
		}
	}

	// A range after everything ended holds only what is still open; every
	// team's usage includes u's.
	later, err := s.ListUsage(ctx, store.UsageFilter{TeamID: "t", From: t1.Add(time.Minute), To: t1.Add(time.Hour)})
	must(t, err)
	var open []string
	for _, r := range later {
		open = append(open, r.Kind+":"+r.MachineID+":"+r.SnapshotID)
	}
	if want := []string{"run:c:", "storage:b:pin"}; !slices.Equal(open, want) {
		t.Errorf("usage after everything ended: %v, want %v", open, want)
	}
	before, err := s.ListUsage(ctx, store.UsageFilter{From: t0.Add(-time.Hour), To: t0.Add(-time.Minute)})
	must(t, err)
	if len(before) != 0 {
		t.Errorf("usage before anything began: %+v, want none", before)
	}
	all, err := s.ListUsage(ctx, store.UsageFilter{})
	must(t, err)
	if !slices.ContainsFunc(all, func(r store.UsageRecord) bool { return r.MachineID == "u" && r.Kind == store.UsageRun }) {
		t.Errorf("every team's usage has no run of u")
	}
}
