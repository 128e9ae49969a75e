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

func testSnapshotRoundTrip(t *testing.T, s store.Store) {
	ctx := t.Context()
	f := newFixture(t, s)
	m := f.machine("m", "t", "", api.StatePausing)
	in := &store.Snapshot{ID: "s1", TeamID: "t", Kind: "hibernate", State: store.SnapshotWriting, MachineID: "m", LineageID: "m",
		Template: "base", ParentID: "s0", Generation: 2, CreatedAt: base.Add(time.Hour + 5*time.Microsecond),
		Host: json.RawMessage(`{"kernel":"6.1"}`), AgentToken: "tok", Name: "web"}
	must(t, s.CreateSnapshot(ctx, in))
	got, err := s.GetSnapshot(ctx, "s1")
	must(t, err)
	// Spec and Files were not given: they read back as empty JSON values.
	if !json.Valid(got.Spec) || !json.Valid(got.Files) {
		t.Errorf("spec %q files %q, want valid JSON", got.Spec, got.Files)
	}
	want := *in
	want.Spec, want.Files = got.Spec, got.Files
	checkSnapshot(t, "created", got, &want)

	// Commit: the final fields and the paused machine, together.
	in.SizeBytes, in.Checksum, in.PauseWindowMS = 4096, "sha256:abc", 120
	in.Host, in.Spec, in.Files = json.RawMessage(`{"kernel":"6.1","cpu":["avx"]}`), json.RawMessage(`{"cpu_count":1}`), json.RawMessage(`[{"name":"pages.img"}]`)
	m.State, m.SnapshotID, m.Slot = api.StatePaused, "s1", -1
	must(t, s.CommitSnapshot(ctx, in, m))
	if in.State != store.SnapshotReady {
		t.Errorf("the committed record's state is %q, want ready", in.State)
	}
	got, err = s.GetSnapshot(ctx, "s1")
	must(t, err)
	checkSnapshot(t, "committed", got, in)
	if got := f.get("m"); got.State != api.StatePaused || got.SnapshotID != "s1" || got.Slot != -1 {
		t.Errorf("machine after the commit: state %s snapshot %s slot %d, want paused, s1, -1", got.State, got.SnapshotID, got.Slot)
	}
	// A commit with no machines.
	f.snapshot("s2", func(sn *store.Snapshot) { sn.State = store.SnapshotWriting })
	must(t, s.CommitSnapshot(ctx, &store.Snapshot{ID: "s2", SizeBytes: 1}))
	if got, err := s.GetSnapshot(ctx, "s2"); err != nil || got.State != store.SnapshotReady || got.SizeBytes != 1 {
		t.Errorf("s2 after a commit without machines: %+v, %v", got, err)
	}

	if byName, err := s.GetSnapshotByName(ctx, "t", "web"); err != nil || byName.ID != "s1" {
		t.Errorf("by name: %+v, %v; want s1", byName, err)
	}
	_, err = s.GetSnapshot(ctx, "nope")
	checkErr(t, "get an unknown snapshot", err, errdefs.ErrNotFound, "")
	must(t, s.DeleteSnapshot(ctx, "s1"))
	_, err = s.GetSnapshot(ctx, "s1")
	checkErr(t, "get a deleted snapshot", err, errdefs.ErrNotFound, "")
	if err := s.DeleteSnapshot(ctx, "s1"); err != nil {
		t.Errorf("delete a snapshot already gone: %v, want nil", err)
	}
}

// testCommitSnapshotIsAtomic: a commit whose machine write fails records
// nothing, neither the snapshot nor the other machines.
func testCommitSnapshotIsAtomic(t *testing.T, s store.Store) {
	ctx := t.Context()
	f := newFixture(t, s)
	m := f.machine("m", "t", "", api.StatePausing)
	sn := f.snapshot("s", func(sn *store.Snapshot) { sn.State, sn.SizeBytes = store.SnapshotWriting, 0 })
	sn.SizeBytes = 99
	m.State = api.StatePaused
	missing := &store.Machine{ID: "gone", TeamID: "t", State: api.StatePaused}
	if err := s.CommitSnapshot(ctx, sn, m, missing); err == nil {
		t.Fatalf("commit with a machine that does not exist: no error")
	}
	got, err := s.GetSnapshot(ctx, "s")
	must(t, err)
	if got.State != store.SnapshotWriting || got.SizeBytes != 0 {
		t.Errorf("snapshot after a failed commit: state %s size %d, want writing, 0", got.State, got.SizeBytes)
	}
	if got := f.get("m"); got.State != api.StatePausing {
		t.Errorf("machine after a failed commit: state %s, want pausing", got.State)
	}
}

// testSnapshotNames: a name is unique in its team, whatever the
// snapshot's state, and freed when the snapshot is deleted.
func testSnapshotNames(t *testing.T, s store.Store) {
	ctx := t.Context()
	f := newFixture(t, s)
	add := func(id, team, name string) error {
		return s.CreateSnapshot(ctx, &store.Snapshot{ID: id, TeamID: team, Kind: "snapshot", State: store.SnapshotWriting, MachineID: "m",
			LineageID: "m", Template: "minimal", CreatedAt: f.tick(), Name: name})
	}
	for _, c := range []struct {
		id, team, name string
		taken          bool
	}{
		{"s1", "t", "web", false},
		{"s2", "t", "web", true},  // taken, though s1 is still being written
		{"s3", "u", "web", false}, // another team's names are its own
		{"s4", "t", "", false},    // unnamed snapshots do not collide
		{"s5", "t", "", false},
		{"s6", "t", "db", false},
	} {
		err := add(c.id, c.team, c.name)
		what := "create " + c.id + " named " + c.name + " in " + c.team
		if !c.taken {
			must(t, err)
			continue
		}
		checkErr(t, what, err, errdefs.ErrFailedPrecondition, errdefs.CodeSnapshotNameExists)
	}
	for _, c := range []struct{ team, name, wantID string }{{"t", "web", "s1"}, {"u", "web", "s3"}, {"t", "db", "s6"}, {"u", "db", ""}, {"t", "", ""}} {
		sn, err := s.GetSnapshotByName(ctx, c.team, c.name)
		if c.wantID == "" {
			checkErr(t, "snapshot named "+c.name+" in "+c.team, err, errdefs.ErrNotFound, "")
			continue
		}
		if err != nil || sn.ID != c.wantID || sn.Name != c.name {
			t.Errorf("snapshot named %q in %s: %+v %v, want %s", c.name, c.team, sn, err, c.wantID)
		}
	}
	page, _, err := s.ListSnapshotsPage(ctx, store.SnapshotPageQuery{TeamID: "t", Name: "web", Limit: 10})
	if err != nil || !slices.Equal(snapshotIDs(page), []string{"s1"}) {
		t.Fatalf("list team t named web: %v %v, want [s1]", snapshotIDs(page), err)
	}
	// Deleting a snapshot frees its name.
	must(t, s.DeleteSnapshot(ctx, "s1"))
	if err := add("s7", "t", "web"); err != nil {
		t.Fatalf("reuse a deleted snapshot's name: %v", err)
	}
}

// snapshotSet is the snapshots the list tests read: two teams, two
// machines, kinds and states, in creation order s1..s6.
func snapshotSet(f *fixture) {
	of := func(team, machine, kind, state string, gen int) func(*store.Snapshot) {
		return func(sn *store.Snapshot) {
			sn.TeamID, sn.MachineID, sn.LineageID, sn.Kind, sn.State, sn.Generation = team, machine, machine, kind, state, gen
		}
	}
	f.snapshot("s1", of("t", "m", "hibernate", store.SnapshotReady, 1))
	f.snapshot("s2", of("t", "m", "checkpoint", store.SnapshotReady, 2))
	f.snapshot("s3", of("t", "n", "snapshot", store.SnapshotReady, 1))
	f.snapshot("s4", of("t", "m", "checkpoint", store.SnapshotWriting, 3))
	f.snapshot("s5", of("u", "x", "snapshot", store.SnapshotReady, 1))
	f.snapshot("s6", of("t", "m", "checkpoint", store.SnapshotPruned, 4))
}

func testListSnapshots(t *testing.T, s store.Store) {
	snapshotSet(newFixture(t, s))
	for _, c := range []struct {
		name string
		f    store.SnapshotFilter
		want []string
	}{
		{"all", store.SnapshotFilter{}, []string{"s1", "s2", "s3", "s4", "s5", "s6"}},
		{"team", store.SnapshotFilter{TeamID: "t"}, []string{"s1", "s2", "s3", "s4", "s6"}},
		{"machine", store.SnapshotFilter{MachineID: "m"}, []string{"s1", "s2", "s4", "s6"}},
		{"lineage", store.SnapshotFilter{LineageID: "n"}, []string{"s3"}},
		{"kinds", store.SnapshotFilter{Kinds: []string{"hibernate", "snapshot"}}, []string{"s1", "s3", "s5"}},
		{"states", store.SnapshotFilter{States: []string{store.SnapshotWriting, store.SnapshotPruned}}, []string{"s4", "s6"}},
		{"kind and state", store.SnapshotFilter{TeamID: "t", Kinds: []string{"checkpoint"}, States: []string{store.SnapshotReady}}, []string{"s2"}},
		{"newest 2", store.SnapshotFilter{TeamID: "t", Newest: 2}, []string{"s6", "s4"}},
		{"newest of a kind", store.SnapshotFilter{MachineID: "m", Kinds: []string{"checkpoint"}, Newest: 1}, []string{"s6"}},
		{"newest beyond the count", store.SnapshotFilter{LineageID: "n", Newest: 5}, []string{"s3"}},
		{"no match", store.SnapshotFilter{TeamID: "u", Kinds: []string{"hibernate"}}, []string{}},
	} {
		got, err := s.ListSnapshots(t.Context(), c.f)
		must(t, err)
		if ids := snapshotIDs(got); !slices.Equal(ids, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, ids, c.want)
		}
	}
}

// snapshotPages reads every page of q, calling between (if set) after each
// page but the last.
func snapshotPages(t *testing.T, s store.Store, q store.SnapshotPageQuery, between func(page int)) []string {
	t.Helper()
	ids := []string{}
	for page := 0; ; page++ {
		recs, more, err := s.ListSnapshotsPage(t.Context(), q)
		must(t, err)
		if len(recs) > q.Limit || (more && len(recs) == 0) {
			t.Fatalf("page of %d rows (limit %d), more %v", len(recs), q.Limit, more)
		}
		ids = append(ids, snapshotIDs(recs)...)
		if !more {
			return ids
		}
		if page > 100 {
			t.Fatalf("more than 100 pages: %v", ids)
		}
		q.After = store.SnapshotCursorOf(recs[len(recs)-1], q.ByGeneration)
		if between != nil {
			between(page)
		}
	}
}

func testSnapshotPageFilters(t *testing.T, s store.Store) {
	snapshotSet(newFixture(t, s))
	for _, c := range []struct {
		name string
		q    store.SnapshotPageQuery
		want []string
	}{
		{"team", store.SnapshotPageQuery{TeamID: "t"}, []string{"s1", "s2", "s3", "s4", "s6"}},
		{"team by generation", store.SnapshotPageQuery{TeamID: "t", ByGeneration: true}, []string{"s1", "s3", "s2", "s4", "s6"}},
		{"machine", store.SnapshotPageQuery{TeamID: "t", MachineID: "m"}, []string{"s1", "s2", "s4", "s6"}},
		{"lineage by generation", store.SnapshotPageQuery{LineageID: "m", ByGeneration: true}, []string{"s1", "s2", "s4", "s6"}},
		{"kinds", store.SnapshotPageQuery{TeamID: "t", Kinds: []string{"checkpoint", "snapshot"}}, []string{"s2", "s3", "s4", "s6"}},
		{"states", store.SnapshotPageQuery{TeamID: "t", States: []string{store.SnapshotReady}}, []string{"s1", "s2", "s3"}},
		{"another team", store.SnapshotPageQuery{TeamID: "u"}, []string{"s5"}},
	} {
		for _, limit := range []int{1, 10} {
			q := c.q
			q.Limit = limit
			if got := snapshotPages(t, s, q, nil); !slices.Equal(got, c.want) {
				t.Errorf("%s, pages of %d: got %v, want %v", c.name, limit, got, c.want)
			}
		}
	}
}

// testSnapshotPageStability: pages by creation and by generation, with a
// snapshot inserted while paging (listed once, at the end).
func testSnapshotPageStability(t *testing.T, s store.Store) {
	ctx := t.Context()
	add := func(id string, gen int, at time.Time) {
		sn := &store.Snapshot{ID: id, TeamID: "t", Kind: "hibernate", State: store.SnapshotReady, MachineID: "m", LineageID: "m",
			Template: "minimal", Generation: gen, CreatedAt: at, Host: []byte("{}"), Spec: []byte("{}"), Files: []byte("[]")}
		must(t, s.CreateSnapshot(ctx, sn))
	}
	// Creation order and generation order differ for s2 and s3.
	add("s1", 1, base)
	add("s3", 3, base.Add(time.Second))
	add("s2", 2, base.Add(2*time.Second))
	for _, byGen := range []bool{false, true} {
		got := snapshotPages(t, s, store.SnapshotPageQuery{TeamID: "t", ByGeneration: byGen, Limit: 1}, func(page int) {
			if page == 0 {
				add("s4", 4, base.Add(3*time.Second))
			}
		})
		want := []string{"s1", "s3", "s2", "s4"}
		if byGen {
			want = []string{"s1", "s2", "s3", "s4"}
		}
		if !slices.Equal(got, want) {
			t.Errorf("by generation %v: got %v, want %v", byGen, got, want)
		}
		must(t, s.DeleteSnapshot(ctx, "s4"))
	}
	// A snapshot deleted between pages, one not yet listed and one listed.
	got := snapshotPages(t, s, store.SnapshotPageQuery{TeamID: "t", Limit: 1}, func(page int) {
		if page == 0 {
			must(t, s.DeleteSnapshot(ctx, "s1"))
			must(t, s.DeleteSnapshot(ctx, "s2"))
		}
	})
	if !slices.Equal(got, []string{"s1", "s3"}) {
		t.Errorf("across deletes: got %v, want [s1 s3]", got)
	}
}

func testCountRestoredFrom(t *testing.T, s store.Store) {
	ctx := t.Context()
	if n, err := s.CountRestoredFrom(ctx, nil, nil); err != nil || len(n) != 0 {
		t.Fatalf("count of no snapshots: %v, %v", n, err)
	}
	f := newFixture(t, s)
	f.machine("a", "t", "", api.StateRunning, withRestoredFrom("s1"))
	f.machine("b", "t", "", api.StatePaused, withRestoredFrom("s1"))
	f.machine("c", "t", "", api.StateKilled, withRestoredFrom("s1"))
	f.machine("d", "u", "", api.StateRunning, withRestoredFrom("s2"))
	f.machine("e", "t", "", api.StateRunning)
	for _, c := range []struct {
		name   string
		ids    []string
		states []string
		want   map[string]int
	}{
		{"any state", []string{"s1", "s2", "s3"}, nil, map[string]int{"s1": 3, "s2": 1}},
		{"live states", []string{"s1", "s2"}, []string{api.StateRunning, api.StatePaused}, map[string]int{"s1": 2, "s2": 1}},
		{"one snapshot", []string{"s2"}, nil, map[string]int{"s2": 1}},
		{"no match", []string{"s1"}, []string{api.StateFailed}, map[string]int{}},
	} {
		got, err := s.CountRestoredFrom(ctx, c.ids, c.states)
		must(t, err)
		if len(got) != len(c.want) {
			t.Errorf("%s: got %v, want %v", c.name, got, c.want)
			continue
		}
		for id, n := range c.want {
			if got[id] != n {
				t.Errorf("%s: got %v, want %v", c.name, got, c.want)
				break
			}
		}
	}
}

// testSnapshotRetention: pinning, and the prune steps ready ─▶ pruning ─▶
// pruned.
func testSnapshotRetention(t *testing.T, s store.Store) {
	ctx := t.Context()
	f := newFixture(t, s)
	in := f.snapshot("c", func(sn *store.Snapshot) {
		sn.Kind, sn.AgentToken = "checkpoint", "tok"
		sn.Host, sn.Spec, sn.Files = json.RawMessage(`{"k":1}`), json.RawMessage(`{"k":2}`), json.RawMessage(`[1]`)
	})
	f.snapshot("w", func(sn *store.Snapshot) { sn.State = store.SnapshotWriting })
	state := func(id string) *store.Snapshot {
		t.Helper()
		sn, err := s.GetSnapshot(ctx, id)
		must(t, err)
		return sn
	}

	checkErr(t, "pin a writing snapshot", s.SetSnapshotPinned(ctx, "w", true), errdefs.ErrNotFound, "")
	checkErr(t, "pin an unknown snapshot", s.SetSnapshotPinned(ctx, "nope", true), errdefs.ErrNotFound, "")
	must(t, s.SetSnapshotPinned(ctx, "c", true))
	if !state("c").Pinned {
		t.Fatalf("pinned snapshot reads unpinned")
	}
	for _, c := range []struct {
		what string
		id   string
		want bool
	}{{"a pinned snapshot", "c", false}, {"a writing snapshot", "w", false}, {"an unknown snapshot", "nope", false}} {
		if ok, err := s.MarkPruning(ctx, c.id); err != nil || ok != c.want {
			t.Errorf("MarkPruning of %s = %v, %v; want %v", c.what, ok, err, c.want)
		}
	}
	if got := state("c").State; got != store.SnapshotReady {
		t.Fatalf("pinned snapshot is %s after MarkPruning, want ready", got)
	}
	must(t, s.SetSnapshotPinned(ctx, "c", false))
	if state("c").Pinned {
		t.Fatalf("unpinned snapshot reads pinned")
	}
	// MarkPruned of a snapshot that is not pruning does nothing.
	must(t, s.MarkPruned(ctx, "c"))
	checkSnapshot(t, "ready after MarkPruned", state("c"), in)

	if ok, err := s.MarkPruning(ctx, "c"); err != nil || !ok {
		t.Fatalf("MarkPruning = %v, %v; want true", ok, err)
	}
	if ok, err := s.MarkPruning(ctx, "c"); err != nil || ok {
		t.Fatalf("MarkPruning twice = %v, %v; want false", ok, err)
	}
	if got := state("c").State; got != store.SnapshotPruning {
		t.Fatalf("state %s, want pruning", got)
	}
	checkErr(t, "pin a pruning snapshot", s.SetSnapshotPinned(ctx, "c", true), errdefs.ErrNotFound, "")
	must(t, s.MarkPruned(ctx, "c"))
	// A pruned row keeps what lists show and drops what only a restore
	// needed.
	got := state("c")
	want := *in
	want.State, want.AgentToken = store.SnapshotPruned, ""
	want.Host, want.Spec, want.Files = json.RawMessage(`{}`), json.RawMessage(`{}`), json.RawMessage(`[]`)
	checkSnapshot(t, "pruned", got, &want)
}

// testSnapshotBytes: the bytes of ready snapshots, in all and by kind.
func testSnapshotBytes(t *testing.T, s store.Store) {
	ctx := t.Context()
	if n, err := s.SnapshotBytes(ctx); err != nil || n != 0 {
		t.Fatalf("bytes of an empty store: %d, %v", n, err)
	}
	if n, err := s.SnapshotBytesByKind(ctx); err != nil || len(n) != 0 {
		t.Fatalf("bytes by kind of an empty store: %v, %v", n, err)
	}
	f := newFixture(t, s)
	for _, c := range []struct {
		id, kind, state string
		size            int64
	}{
		{"a", "hibernate", store.SnapshotReady, 1 << 40}, // beyond 32 bits
		{"b", "hibernate", store.SnapshotReady, 5},
		{"c", "checkpoint", store.SnapshotReady, 7},
		{"d", "checkpoint", store.SnapshotWriting, 1000},
		{"e", "snapshot", store.SnapshotPruned, 2000},
		{"f", "snapshot", store.SnapshotPruning, 3000},
	} {
		f.snapshot(c.id, func(sn *store.Snapshot) { sn.Kind, sn.State, sn.SizeBytes = c.kind, c.state, c.size })
	}
	if n, err := s.SnapshotBytes(ctx); err != nil || n != 1<<40+12 {
		t.Errorf("SnapshotBytes = %d, %v; want %d", n, err, int64(1<<40+12))
	}
	byKind, err := s.SnapshotBytesByKind(ctx)
	must(t, err)
	if len(byKind) != 2 || byKind["hibernate"] != 1<<40+5 || byKind["checkpoint"] != 7 {
		t.Errorf("SnapshotBytesByKind = %v, want hibernate %d, checkpoint 7", byKind, int64(1<<40+5))
	}
}

func testVolumes(t *testing.T, s store.Store) {
	ctx := t.Context()
	for i, v := range []store.Volume{{TeamID: "t", Name: "c"}, {TeamID: "t", Name: "a"}, {TeamID: "t", Name: "b"}, {TeamID: "t", Name: "d"}, {TeamID: "u", Name: "a"}} {
		v.CreatedAt = base.Add(time.Duration(i) * time.Second)
		must(t, s.CreateVolume(ctx, v))
	}
	err := s.CreateVolume(ctx, store.Volume{TeamID: "t", Name: "a", CreatedAt: base})
	checkErr(t, "create an existing volume", err, errdefs.ErrFailedPrecondition, errdefs.CodeVolumeExists)

	vols, err := s.ListVolumes(ctx, "t")
	must(t, err)
	names := ids(vols, func(v store.Volume) string { return v.Name })
	if !slices.Equal(names, []string{"a", "b", "c", "d"}) {
		t.Fatalf("team t's volumes by name: %v", names)
	}
	if v := vols[0]; v.TeamID != "t" || !v.CreatedAt.Equal(base.Add(time.Second)) {
		t.Errorf("volume a: %+v, want team t, created %v", v, base.Add(time.Second))
	}
	for _, limit := range []int{1, 3, 4, 10} {
		var got []string
		after := ""
		for {
			page, more, err := s.ListVolumesPage(ctx, "t", after, limit)
			must(t, err)
			if len(page) > limit || (more && len(page) == 0) {
				t.Fatalf("page of %d volumes (limit %d), more %v", len(page), limit, more)
			}
			got = append(got, ids(page, func(v store.Volume) string { return v.Name })...)
			if !more {
				break
			}
			after = page[len(page)-1].Name
		}
		if !slices.Equal(got, []string{"a", "b", "c", "d"}) {
			t.Errorf("volumes over pages of %d: %v", limit, got)
		}
	}
	for _, c := range []struct {
		team, name string
		existed    bool
	}{{"t", "b", true}, {"t", "b", false}, {"t", "nope", false}} {
		if existed, err := s.DeleteVolume(ctx, c.team, c.name); err != nil || existed != c.existed {
			t.Errorf("delete volume %s of %s = %v, %v; want %v", c.name, c.team, existed, err, c.existed)
		}
	}
	vols, err = s.ListVolumes(ctx, "u")
	if err != nil || len(vols) != 1 || vols[0].Name != "a" {
		t.Errorf("team u's volumes: %v %v, want [a]", vols, err)
	}
}

// testVolumeMachines: per volume, the machines of the team that mount it
// and are not killed, one per lineage.
func testVolumeMachines(t *testing.T, s store.Store) {
	ctx := t.Context()
	if users, err := s.VolumeMachines(ctx, "t", nil); err != nil || len(users) != 0 {
		t.Fatalf("users of no volumes: %v, %v", users, err)
	}
	f := newFixture(t, s)
	// m1 mounts a and was resumed once (two rows, one machine); k mounting
	// b was killed; p mounting a and c is paused; another team mounts c.
	f.machine("m1", "t", "", api.StatePaused, withMounts("a"))
	f.machine("m2", "t", "m1", api.StateRunning, withMounts("a"))
	f.machine("k", "t", "", api.StateKilled, withMounts("b"))
	f.machine("p", "t", "", api.StatePaused, withMounts("a", "c"))
	f.machine("u", "u", "", api.StateRunning, withMounts("c"))
	users, err := s.VolumeMachines(ctx, "t", []string{"a", "b", "c", "d"})
	must(t, err)
	for name, want := range map[string]int{"a": 2, "b": 0, "c": 1, "d": 0} {
		if users[name] != want {
			t.Errorf("users of volume %s: %d, want %d (all: %v)", name, users[name], want, users)
		}
	}
}

// testCommitMissingSnapshot: committing a snapshot whose row is gone
// fails with not found and writes none of the machines (else a machine is
// recorded paused on a snapshot that does not exist).
func testCommitMissingSnapshot(t *testing.T, s store.Store) {
	f := newFixture(t, s)
	m := f.machine("m", "t", "", api.StatePausing)
	m.State, m.SnapshotID = api.StatePaused, "gone"
	err := s.CommitSnapshot(t.Context(), &store.Snapshot{ID: "gone"}, m)
	checkErr(t, "commit a missing snapshot", err, errdefs.ErrNotFound, "")
	if got := f.get("m"); got.State != api.StatePausing || got.SnapshotID != "" {
		t.Errorf("machine after the commit: state %s snapshot %q, want pausing, none", got.State, got.SnapshotID)
	}
}
