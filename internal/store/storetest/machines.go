package storetest

import (
	"encoding/json"
	"slices"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store"
)

func testMachineRoundTrip(t *testing.T, s store.Store) {
	ctx := t.Context()
	in := &store.Machine{ID: "m", TeamID: "t", State: api.StateCreating, Template: "base", CPUCount: 2, MemoryMB: 512, DiskMB: 2048,
		Env: map[string]string{"A": "1"}, Metadata: map[string]string{"k": "v"}, AllowInternet: true,
		ContainerID: "cid", AgentToken: "tok", CreatedAt: base, StartedAt: base.Add(time.Second),
		SnapshotID: "s0", RestoredFrom: "s-1",
		Volumes:  []api.VolumeMount{{Name: "data", Path: "/data", ReadOnly: true}},
		Hooks:    api.Hooks{OnPause: []string{"sync"}, OnResume: []string{"date"}},
		AgentDir: "/agents/1", TimeoutMS: 60000, OnTimeout: api.TimeoutPause, AutoResume: true,
		Deadline: base.Add(time.Minute + 123*time.Microsecond), IdleTimeoutMS: 5000, Persistence: "sticky",
		Command: []string{"sleep", "infinity"}, PublicPorts: true, Origin: store.OriginE2B, CheckpointRetention: 3}
	must(t, s.CreateMachine(ctx, in, 10))
	// The store sets the slot and the lineage fields on the record.
	if in.Slot != 0 || in.LineageID != "m" || in.LineageSeq != 1 || !in.Latest || !in.LineageCreated.Equal(base) {
		t.Fatalf("after create: slot %d, lineage %q seq %d latest %v created %v; want 0, m, 1, true, %v",
			in.Slot, in.LineageID, in.LineageSeq, in.Latest, in.LineageCreated, base)
	}
	f := newFixture(t, s)
	checkMachine(t, "created", f.get("m"), in)

	// Every mutable field is written; a zero time clears one.
	in.State, in.Slot, in.ContainerID = api.StateFailed, -1, "cid2"
	in.StartedAt, in.EndedAt = base.Add(2*time.Second), base.Add(3*time.Second+7*time.Microsecond)
	in.Error, in.FailureReason = "the sandbox exited", "sandbox_exit"
	in.SnapshotID, in.AgentToken, in.RestoredFrom = "s1", "tok2", "s2"
	in.TimeoutMS, in.OnTimeout, in.AutoResume, in.Deadline = 1000, api.TimeoutDestroy, false, time.Time{}
	must(t, s.UpdateMachine(ctx, in))
	checkMachine(t, "updated", f.get("m"), in)

	_, err := s.GetMachine(ctx, "nope")
	checkErr(t, "get an unknown machine", err, errdefs.ErrNotFound, "")
	err = s.UpdateMachine(ctx, &store.Machine{ID: "nope", TeamID: "t", State: api.StateRunning})
	checkErr(t, "update an unknown machine", err, errdefs.ErrNotFound, "")

	must(t, s.DeleteMachine(ctx, "m"))
	_, err = s.GetMachine(ctx, "m")
	checkErr(t, "get a deleted machine", err, errdefs.ErrNotFound, "")
	if err := s.DeleteMachine(ctx, "m"); err != nil {
		t.Errorf("delete a machine already gone: %v, want nil", err)
	}
}

// testMachineDefaults: a record with only the required fields reads back
// with zero times and the default policies.
func testMachineDefaults(t *testing.T, s store.Store) {
	f := newFixture(t, s)
	f.machine("m", "t", "", api.StateCreating)
	got := f.get("m")
	if !got.StartedAt.IsZero() || !got.EndedAt.IsZero() || !got.Deadline.IsZero() {
		t.Errorf("times: started %v ended %v deadline %v, want zero", got.StartedAt, got.EndedAt, got.Deadline)
	}
	if got.OnTimeout != api.TimeoutDestroy || got.Persistence != "persistent" {
		t.Errorf("on_timeout %q persistence %q, want %q %q", got.OnTimeout, got.Persistence, api.TimeoutDestroy, "persistent")
	}
	if len(got.Env) != 0 || len(got.Metadata) != 0 || len(got.Volumes) != 0 || got.Command != nil || got.MainPID != 0 || got.MainExit != nil {
		t.Errorf("got %+v, want no env, metadata, volumes, command or main process", got)
	}
	if got.DiskMB != 0 {
		t.Errorf("disk_mb %d, want 0 (the server's default, read by the manager)", got.DiskMB)
	}
}

// testMainProcess: SetMain and SetMainExit record the main process, and
// UpdateMachine (with a copy read before them) leaves it alone.
func testMainProcess(t *testing.T, s store.Store) {
	ctx := t.Context()
	f := newFixture(t, s)
	stale := f.machine("m", "t", "", api.StateRunning, func(m *store.Machine) { m.Command = []string{"srv"} })
	must(t, s.SetMain(ctx, "m", 42))
	if got := f.get("m"); got.MainPID != 42 || got.MainExit != nil {
		t.Fatalf("after SetMain: pid %d exit %+v, want 42, none", got.MainPID, got.MainExit)
	}
	exit := &api.MainExit{ExitCode: 143, Signal: "SIGTERM", At: base.Add(time.Minute)}
	for _, c := range []struct {
		pid  int
		want bool
	}{
		{41, false}, // an earlier boot's process
		{42, true},
		{42, false}, // recorded already
	} {
		got, err := s.SetMainExit(ctx, "m", c.pid, exit)
		if err != nil || got != c.want {
			t.Errorf("SetMainExit(pid %d) = %v, %v; want %v", c.pid, got, err, c.want)
		}
	}
	f.update(stale, func(m *store.Machine) { m.State = api.StateStopped })
	got := f.get("m")
	if got.State != api.StateStopped || got.MainPID != 42 || got.MainExit == nil ||
		got.MainExit.ExitCode != 143 || got.MainExit.Signal != "SIGTERM" || !got.MainExit.At.Equal(exit.At) {
		t.Fatalf("after an update from a stale copy: state %s pid %d exit %+v; want stopped, 42, %+v", got.State, got.MainPID, got.MainExit, exit)
	}
	// A new boot clears the exit.
	must(t, s.SetMain(ctx, "m", 7))
	if got := f.get("m"); got.MainPID != 7 || got.MainExit != nil {
		t.Fatalf("after a second SetMain: pid %d exit %+v, want 7, none", got.MainPID, got.MainExit)
	}
}

// testSlotAllocation: the lowest free slot, shared by machines and spares;
// a machine holds its slot until it sets it to -1, whatever its state.
func testSlotAllocation(t *testing.T, s store.Store) {
	ctx := t.Context()
	const pool = 4
	f := newFixture(t, s)
	create := func(id string) (*store.Machine, error) {
		m := &store.Machine{ID: id, TeamID: "t", State: api.StateCreating, Template: "minimal", CPUCount: 1, MemoryMB: 64,
			ContainerID: "c-" + id, CreatedAt: f.tick()}
		return m, s.CreateMachine(ctx, m, pool)
	}
	spare := func(id string) (*store.Spare, error) {
		sp := &store.Spare{MachineID: id, ContainerID: "c-" + id, Shape: `{"memory_mb":64}`, CreatedAt: f.tick()}
		return sp, s.CreateSpare(ctx, sp, pool)
	}
	wantSlot := func(what string, slot int, err error, want int) {
		t.Helper()
		if err != nil || slot != want {
			t.Fatalf("%s: slot %d, %v; want slot %d", what, slot, err, want)
		}
	}
	full := func(what string, err error) {
		t.Helper()
		checkErr(t, what, err, errdefs.ErrResourceExhausted, errdefs.CodeResourceExhausted)
	}

	var ms []*store.Machine
	for i, id := range []string{"a", "b", "c"} {
		m, err := create(id)
		wantSlot("create "+id, m.Slot, err, i)
		ms = append(ms, m)
	}
	a, b := ms[0], ms[1]
	s1, err := spare("s1")
	wantSlot("spare s1", s1.Slot, err, 3)
	_, err = create("d")
	full("create in a full pool", err)
	_, err = spare("s2")
	full("spare in a full pool", err)

	f.update(b, func(m *store.Machine) { m.State = api.StateKilled })
	_, err = create("d")
	full("create while a killed machine holds its slot", err)

	f.update(b, func(m *store.Machine) { m.Slot = -1 })
	s2, err := spare("s2")
	wantSlot("spare s2 in the gap", s2.Slot, err, 1)
	_, err = create("d")
	full("create while the spare holds the gap", err)
	must(t, s.DeleteSpare(ctx, "s2"))
	d, err := create("d")
	wantSlot("create d after the spare went", d.Slot, err, 1)

	// AssignSlot gives a machine that holds none the lowest free slot.
	f.update(a, func(m *store.Machine) { m.Slot = -1 })
	paused, err := create("p")
	wantSlot("create p", paused.Slot, err, 0)
	f.update(paused, func(m *store.Machine) { m.State, m.Slot = api.StatePaused, -1 })
	must(t, s.AssignSlot(ctx, b, pool))
	if b.Slot != 0 || f.get("b").Slot != 0 {
		t.Fatalf("AssignSlot: record slot %d, stored %d; want 0", b.Slot, f.get("b").Slot)
	}
	full("AssignSlot in a full pool", s.AssignSlot(ctx, paused, pool))
	if got := f.get("p").Slot; got != -1 {
		t.Fatalf("after a failed AssignSlot the stored slot is %d, want -1", got)
	}
}

func testSpares(t *testing.T, s store.Store) {
	ctx := t.Context()
	if sps, err := s.ListSpares(ctx); err != nil || len(sps) != 0 {
		t.Fatalf("spares of an empty store: %v, %v", sps, err)
	}
	// Created out of id order: listed oldest first.
	in := []*store.Spare{
		{MachineID: "z", ContainerID: "cz", Shape: `{"memory_mb":64}`, CreatedAt: base.Add(time.Second)},
		{MachineID: "a", ContainerID: "ca", Shape: `{"memory_mb":128}`, CreatedAt: base.Add(2 * time.Second)},
		{MachineID: "m", ContainerID: "cm", Shape: `{"memory_mb":256}`, CreatedAt: base.Add(3 * time.Second)},
	}
	for i, sp := range in {
		must(t, s.CreateSpare(ctx, sp, slots))
		if sp.Slot != i {
			t.Errorf("spare %s got slot %d, want %d", sp.MachineID, sp.Slot, i)
		}
	}
	got, err := s.ListSpares(ctx)
	must(t, err)
	if len(got) != len(in) {
		t.Fatalf("ListSpares: %d spares, want %d", len(got), len(in))
	}
	for i, sp := range got {
		w := in[i]
		if sp.MachineID != w.MachineID || sp.ContainerID != w.ContainerID || sp.Slot != w.Slot || sp.Shape != w.Shape || !sp.CreatedAt.Equal(w.CreatedAt) {
			t.Errorf("spare %d: got %+v, want %+v", i, sp, w)
		}
	}
	must(t, s.DeleteSpare(ctx, "a"))
	for _, id := range []string{"a", "unknown"} {
		if err := s.DeleteSpare(ctx, id); err != nil {
			t.Errorf("delete missing spare %s: %v, want nil", id, err)
		}
	}
	got, err = s.ListSpares(ctx)
	must(t, err)
	if ids := ids(got, func(sp *store.Spare) string { return sp.MachineID }); !slices.Equal(ids, []string{"z", "m"}) {
		t.Fatalf("spares after a delete: %v, want [z m]", ids)
	}
}

// testCreateMachineFromSpare: the machine takes the spare's id, container
// and slot (even in a full pool), the spare disappears, and a spare that
// is gone cannot be taken again.
func testCreateMachineFromSpare(t *testing.T, s store.Store) {
	ctx := t.Context()
	f := newFixture(t, s)
	paused := f.machine("x", "t", "", api.StatePaused)
	f.update(paused, func(m *store.Machine) { m.Slot = -1 })
	sp := &store.Spare{MachineID: "sp", ContainerID: "c-sp", Shape: `{"memory_mb":64}`, CreatedAt: f.tick()}
	must(t, s.CreateSpare(ctx, sp, 1))

	rec := &store.Machine{TeamID: "t", State: api.StateRestoring, Template: "minimal", CPUCount: 1, MemoryMB: 64,
		LineageID: "x", RestoredFrom: "snap", AgentToken: "tok", CreatedAt: f.tick(), OnTimeout: api.TimeoutPause, Persistence: "sticky"}
	must(t, s.CreateMachineFromSpare(ctx, rec, *sp))
	if rec.ID != "sp" || rec.ContainerID != "c-sp" || rec.Slot != sp.Slot || rec.LineageSeq != 2 || !rec.Latest || !rec.LineageCreated.Equal(paused.CreatedAt) {
		t.Fatalf("from spare: %+v; want id sp, container c-sp, slot %d, seq 2, latest, lineage created %v", rec, sp.Slot, paused.CreatedAt)
	}
	checkMachine(t, "stored", f.get("sp"), rec)
	if got := f.get("x"); got.Latest {
		t.Errorf("the previous head is still latest")
	}
	if sps, err := s.ListSpares(ctx); err != nil || len(sps) != 0 {
		t.Fatalf("spares after the takeover: %v, %v; want none", sps, err)
	}

	again := &store.Machine{TeamID: "t", State: api.StateRestoring, Template: "minimal", CreatedAt: f.tick()}
	if err := s.CreateMachineFromSpare(ctx, again, *sp); err == nil {
		t.Fatalf("a spare taken twice: no error")
	}
	ms, err := s.ListMachines(ctx, store.MachineFilter{})
	must(t, err)
	if got := machineIDs(ms); !slices.Equal(got, []string{"x", "sp"}) {
		t.Fatalf("machines after the failed takeover: %v, want [x sp]", got)
	}
}

// testLineages: each execution of a lineage gets the next seq and becomes
// its only latest row, carrying the lineage's creation time; deleting the
// head makes the one before it the head again.
func testLineages(t *testing.T, s store.Store) {
	ctx := t.Context()
	f := newFixture(t, s)
	checkLineage := func(what, lineage string, wantIDs []string, wantHead string, wantCreated time.Time) {
		t.Helper()
		rows, err := s.ListMachines(ctx, store.MachineFilter{LineageID: lineage})
		must(t, err)
		if got := machineIDs(rows); !slices.Equal(got, wantIDs) {
			t.Fatalf("%s: rows %v, want %v", what, got, wantIDs)
		}
		var latest []string
		for _, m := range rows {
			if m.Latest {
				latest = append(latest, m.ID)
			}
			if !m.LineageCreated.Equal(wantCreated) {
				t.Errorf("%s: %s has lineage created %v, want %v", what, m.ID, m.LineageCreated, wantCreated)
			}
		}
		if !slices.Equal(latest, []string{wantHead}) {
			t.Errorf("%s: latest rows %v, want [%s]", what, latest, wantHead)
		}
		head, err := s.LineageHead(ctx, lineage)
		if err != nil || head.ID != wantHead || !head.Latest {
			t.Errorf("%s: head %+v, %v; want %s, latest", what, head, err, wantHead)
		}
	}

	l := f.machine("l", "t", "", api.StatePaused)
	other := f.machine("o", "t", "", api.StateRunning)
	l2 := f.machine("l2", "t", "l", api.StatePaused)
	l3 := f.machine("l3", "t", "l", api.StateRunning)
	for i, m := range []*store.Machine{l, l2, l3} {
		if m.LineageSeq != i+1 || m.LineageID != "l" {
			t.Errorf("%s: lineage %s seq %d, want l, %d", m.ID, m.LineageID, m.LineageSeq, i+1)
		}
		if got := f.get(m.ID); got.LineageSeq != i+1 {
			t.Errorf("%s: stored seq %d, want %d", m.ID, got.LineageSeq, i+1)
		}
	}
	checkLineage("three executions", "l", []string{"l", "l2", "l3"}, "l3", l.CreatedAt)
	checkLineage("another lineage", "o", []string{"o"}, "o", other.CreatedAt)

	// Deleting a row that is not the head leaves the head; the next
	// execution carries the creation time though the first row is gone.
	must(t, s.DeleteMachine(ctx, "l"))
	checkLineage("first row deleted", "l", []string{"l2", "l3"}, "l3", l.CreatedAt)
	l4 := f.machine("l4", "t", "l", api.StateRunning)
	if l4.LineageSeq <= l3.LineageSeq {
		t.Errorf("l4 seq %d, want above l3's %d", l4.LineageSeq, l3.LineageSeq)
	}
	checkLineage("an execution after the first row went", "l", []string{"l2", "l3", "l4"}, "l4", l.CreatedAt)

	// Deleting the head (an undone resume) re-elects the one before it.
	must(t, s.DeleteMachine(ctx, "l4"))
	checkLineage("head deleted", "l", []string{"l2", "l3"}, "l3", l.CreatedAt)
	must(t, s.DeleteMachine(ctx, "l3"))
	checkLineage("head deleted again", "l", []string{"l2"}, "l2", l.CreatedAt)
	checkLineage("the other lineage untouched", "o", []string{"o"}, "o", other.CreatedAt)

	must(t, s.DeleteMachine(ctx, "l2"))
	_, err := s.LineageHead(ctx, "l")
	checkErr(t, "head of an empty lineage", err, errdefs.ErrNotFound, "")
}

func testListMachines(t *testing.T, s store.Store) {
	f := newFixture(t, s)
	f.machine("a", "t", "", api.StateRunning)
	f.machine("b", "t", "", api.StatePaused, withTemplate("base"))
	f.machine("b2", "t", "b", api.StateRunning, withTemplate("base"), withRestoredFrom("s1"))
	f.machine("c", "u", "", api.StateRunning)
	f.machine("d", "t", "", api.StateKilled, withRestoredFrom("s1"))
	for _, c := range []struct {
		name string
		f    store.MachineFilter
		want []string
	}{
		{"all", store.MachineFilter{}, []string{"a", "b", "b2", "c", "d"}},
		{"team", store.MachineFilter{TeamID: "t"}, []string{"a", "b", "b2", "d"}},
		{"state", store.MachineFilter{States: []string{api.StateRunning}}, []string{"a", "b2", "c"}},
		{"states and team", store.MachineFilter{TeamID: "t", States: []string{api.StateRunning, api.StatePaused}}, []string{"a", "b", "b2"}},
		{"template", store.MachineFilter{Template: "base"}, []string{"b", "b2"}},
		{"lineage", store.MachineFilter{LineageID: "b"}, []string{"b", "b2"}},
		{"restored from", store.MachineFilter{RestoredFrom: "s1"}, []string{"b2", "d"}},
		{"no match", store.MachineFilter{TeamID: "u", Template: "base"}, []string{}},
	} {
		got, err := s.ListMachines(t.Context(), c.f)
		must(t, err)
		if ids := machineIDs(got); !slices.Equal(ids, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, ids, c.want)
		}
	}
}

// testCountsAndCommittedMemory: machines by state; the memory of the
// machines that hold a slot, whatever their state, and of the spares (from
// their shape's memory_mb).
func testCountsAndCommittedMemory(t *testing.T, s store.Store) {
	ctx := t.Context()
	if n, err := s.CommittedMemoryMB(ctx); err != nil || n != 0 {
		t.Fatalf("committed memory of an empty store: %d, %v; want 0", n, err)
	}
	if c, err := s.CountMachines(ctx); err != nil || len(c) != 0 {
		t.Fatalf("counts of an empty store: %v, %v; want none", c, err)
	}
	f := newFixture(t, s)
	mem := func(mb int) func(*store.Machine) { return func(m *store.Machine) { m.MemoryMB = mb } }
	f.machine("run", "t", "", api.StateRunning, mem(512))
	paused := f.machine("p", "t", "", api.StatePaused, mem(1024))
	f.update(paused, func(m *store.Machine) { m.Slot = -1 })
	f.machine("k", "t", "", api.StateKilled, mem(128)) // still holds its slot
	f.machine("r2", "u", "", api.StateRunning, mem(32))
	// The shape as machine.spares writes it.
	for i, mb := range []int{256, 64} {
		shape, _ := json.Marshal(map[string]any{"team_id": "t", "template": "base", "template_created": base,
			"cpu_count": 1, "memory_mb": mb, "agent_dir": "/agents/1", "volumes": []api.VolumeMount{{Name: "v", Path: "/v"}}})
		sp := &store.Spare{MachineID: string(rune('x' + i)), ContainerID: "c", Shape: string(shape), CreatedAt: f.tick()}
		must(t, s.CreateSpare(ctx, sp, slots))
	}
	if n, err := s.CommittedMemoryMB(ctx); err != nil || n != 512+128+32+256+64 {
		t.Errorf("committed memory %d, %v; want %d", n, err, 512+128+32+256+64)
	}
	counts, err := s.CountMachines(ctx)
	must(t, err)
	want := map[string]int{api.StateRunning: 2, api.StatePaused: 1, api.StateKilled: 1}
	if len(counts) != len(want) {
		t.Errorf("counts %v, want %v", counts, want)
	}
	for st, n := range want {
		if counts[st] != n {
			t.Errorf("counts %v, want %v", counts, want)
			break
		}
	}
}

// testPruneEnded: rows of machines ended before the cutoff go, with their
// metadata and volume mounts, except a lineage's latest row while any row
// of the lineage lives; pruned snapshots taken before it go too.
func testPruneEnded(t *testing.T, s store.Store) {
	ctx := t.Context()
	f := &fixture{t: t, s: s, clock: now().Add(-72 * time.Hour)}
	old, recent := now().Add(-48*time.Hour), now().Add(-time.Hour)
	end := func(m *store.Machine, state string, at time.Time) {
		f.update(m, func(m *store.Machine) { m.State, m.EndedAt, m.Slot = state, at, -1 })
	}
	end(f.machine("gone", "t", "", api.StateRunning, withMeta("k", "v"), withMounts("vol")), api.StateKilled, old)
	end(f.machine("fresh", "t", "", api.StateRunning), api.StateKilled, recent)
	// Killed, but with no end time recorded: kept.
	f.machine("noend", "t", "", api.StateKilled)
	// A lineage whose latest execution failed long ago but whose first id
	// is still a paused alias: its latest row stays.
	f.machine("l", "t", "", api.StatePaused)
	end(f.machine("l2", "t", "l", api.StateRunning), api.StateFailed, old)
	// A killed alias of a live lineage goes.
	alias := f.machine("a", "t", "", api.StateRunning)
	f.machine("a2", "t", "a", api.StateRunning)
	end(alias, api.StateKilled, old)
	// A lineage that ended entirely goes entirely.
	e1 := f.machine("e", "t", "", api.StateRunning)
	e2 := f.machine("e2", "t", "e", api.StateRunning)
	end(e1, api.StateKilled, old)
	end(e2, api.StateKilled, old)

	// Snapshots: only pruned ones taken before the cutoff go.
	for _, c := range []struct {
		id, state string
		at        time.Time
	}{
		{"pruned-old", store.SnapshotPruned, old},
		{"pruned-new", store.SnapshotPruned, recent},
		{"pruning-old", store.SnapshotPruning, old},
		{"ready-old", store.SnapshotReady, old},
	} {
		f.snapshot(c.id, func(sn *store.Snapshot) { sn.State, sn.CreatedAt = c.state, c.at })
	}

	n, err := s.PruneEnded(ctx, now().Add(-24*time.Hour))
	must(t, err)
	if n != 4 {
		t.Errorf("pruned %d rows, want 4 (gone, a, e, e2)", n)
	}
	for id, kept := range map[string]bool{"gone": false, "a": false, "e": false, "e2": false,
		"fresh": true, "noend": true, "l": true, "l2": true, "a2": true} {
		_, err := s.GetMachine(ctx, id)
		if (err == nil) != kept {
			t.Errorf("machine %s: %v, want kept=%v", id, err, kept)
		}
	}
	if h, err := s.LineageHead(ctx, "l"); err != nil || h.ID != "l2" || !h.Latest {
		t.Errorf("lineage l's head %+v %v, want the failed l2 kept as latest", h, err)
	}
	for id, kept := range map[string]bool{"pruned-old": false, "pruned-new": true, "pruning-old": true, "ready-old": true} {
		_, err := s.GetSnapshot(ctx, id)
		if (err == nil) != kept {
			t.Errorf("snapshot %s: %v, want kept=%v", id, err, kept)
		}
	}
	// A pruned machine's metadata and mounts went with it: a new row with
	// its id matches neither.
	f.machine("gone", "t", "", api.StateRunning)
	rows, _, err := s.ListMachinesPage(ctx, store.MachinePageQuery{TeamID: "t", Metadata: map[string]string{"k": "v"}, Aliases: true, Limit: 10})
	if err != nil || len(rows) != 0 {
		t.Errorf("metadata of a pruned machine still matches: %v %v", machineIDs(rows), err)
	}
	if users, err := s.VolumeMachines(ctx, "t", []string{"vol"}); err != nil || users["vol"] != 0 {
		t.Errorf("volume mounts of a pruned machine still count: %v %v", users, err)
	}
}

// testPruneEndedKeepsOneLatest: a prune that takes a lineage's latest row
// takes every row of the lineage, or leaves a latest one. Here the head
// failed long ago and an older alias was killed recently: the lineage
// must not be left with rows and no latest (it would drop out of lists).
func testPruneEndedKeepsOneLatest(t *testing.T, s store.Store) {
	ctx := t.Context()
	f := &fixture{t: t, s: s, clock: now().Add(-72 * time.Hour)}
	alias := f.machine("l", "t", "", api.StatePaused)
	head := f.machine("l2", "t", "l", api.StateRunning)
	f.update(head, func(m *store.Machine) { m.State, m.EndedAt, m.Slot = api.StateFailed, now().Add(-48*time.Hour), -1 })
	f.update(alias, func(m *store.Machine) { m.State, m.EndedAt, m.Slot = api.StateKilled, now().Add(-time.Hour), -1 })
	if _, err := s.PruneEnded(ctx, now().Add(-24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	rows, err := s.ListMachines(ctx, store.MachineFilter{LineageID: "l"})
	must(t, err)
	latest := 0
	for _, m := range rows {
		if m.Latest {
			latest++
		}
	}
	if len(rows) > 0 && latest != 1 {
		t.Errorf("after the prune: rows %v with %d latest, want none or exactly one latest", machineIDs(rows), latest)
	}
}

// testAssignSlotOfMissingMachine: AssignSlot of a machine whose row is
// gone fails with not found and gives out no slot.
func testAssignSlotOfMissingMachine(t *testing.T, s store.Store) {
	ghost := &store.Machine{ID: "ghost", TeamID: "t", Slot: -1}
	err := s.AssignSlot(t.Context(), ghost, 10)
	checkErr(t, "AssignSlot of a missing machine", err, errdefs.ErrNotFound, "")
	if ghost.Slot != -1 {
		t.Errorf("the record got slot %d, want -1", ghost.Slot)
	}
}
