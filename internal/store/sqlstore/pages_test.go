package sqlstore

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/store"
)

// machineMaker inserts machines with increasing creation times.
type machineMaker struct {
	t   *testing.T
	db  *DB
	now time.Time
}

func (mm *machineMaker) add(id, team, lineage, state string, meta map[string]string) *store.Machine {
	mm.t.Helper()
	mm.now = mm.now.Add(time.Second)
	m := &store.Machine{ID: id, TeamID: team, State: state, Template: "minimal", CPUCount: 1, MemoryMB: 64, LineageID: lineage,
		ContainerID: "c" + id, AgentToken: "x", CreatedAt: mm.now, Metadata: meta}
	if err := mm.db.CreateMachine(mm.t.Context(), m, 1000); err != nil {
		mm.t.Fatalf("create %s: %v", id, err)
	}
	return m
}

// pageAll reads every page of q, calling between after each page.
func pageAll(t *testing.T, db *DB, q store.MachinePageQuery, between func(page int)) []string {
	t.Helper()
	var ids []string
	for page := 0; ; page++ {
		recs, more, err := db.ListMachinesPage(t.Context(), q)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) > q.Limit {
			t.Fatalf("page of %d rows, limit %d", len(recs), q.Limit)
		}
		for _, r := range recs {
			ids = append(ids, r.ID)
		}
		if !more {
			return ids
		}
		q.After = store.CursorOf(recs[len(recs)-1], q.Aliases)
		if between != nil {
			between(page)
		}
	}
}

func TestListMachinesPage(t *testing.T) {
	db := openTest(t)
	mm := &machineMaker{t: t, db: db, now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	// Ten machines; a3 was paused and resumed twice (a3 -> a3r1 -> a3r2).
	for i := range 10 {
		mm.add(fmt.Sprintf("a%d", i), "t", "", "running", map[string]string{"owner": []string{"ann", "bob"}[i%2]})
	}
	mm.add("other", "u", "", "running", nil) // another team's
	mm.add("a3r1", "t", "a3", "paused", map[string]string{"owner": "bob"})
	mm.add("a3r2", "t", "a3", "running", map[string]string{"owner": "bob"})

	all := pageAll(t, db, store.MachinePageQuery{TeamID: "t", Limit: 3}, nil)
	want := []string{"a0", "a1", "a2", "a3r2", "a4", "a5", "a6", "a7", "a8", "a9"}
	if !slices.Equal(all, want) {
		t.Fatalf("one row per machine: got %v, want %v", all, want)
	}
	aliases := pageAll(t, db, store.MachinePageQuery{TeamID: "t", Aliases: true, Limit: 4}, nil)
	if len(aliases) != 12 || aliases[10] != "a3r1" || aliases[11] != "a3r2" {
		t.Fatalf("every execution: got %v", aliases)
	}
	bob := pageAll(t, db, store.MachinePageQuery{TeamID: "t", Metadata: map[string]string{"owner": "bob"}, Limit: 2}, nil)
	if !slices.Equal(bob, []string{"a1", "a3r2", "a5", "a7", "a9"}) {
		t.Fatalf("metadata owner=bob: got %v", bob)
	}
	running := pageAll(t, db, store.MachinePageQuery{TeamID: "t", States: []string{"paused"}, Aliases: true, Limit: 2}, nil)
	if !slices.Equal(running, []string{"a3r1"}) {
		t.Fatalf("paused executions: got %v", running)
	}

	// Between pages: a machine already listed resumes (a new row for its
	// lineage), one not yet listed resumes, one is inserted, one deleted.
	// Each machine is still listed exactly once, at its place.
	got := pageAll(t, db, store.MachinePageQuery{TeamID: "t", Limit: 3}, func(page int) {
		if page == 0 {
			mm.add("a1r1", "t", "a1", "running", nil) // listed as a1 already
			mm.add("a8r1", "t", "a8", "running", nil) // not yet listed: listed as a8r1
			mm.add("new", "t", "", "running", nil)
			if err := db.DeleteMachine(t.Context(), "a6"); err != nil {
				t.Fatal(err)
			}
		}
	})
	want = []string{"a0", "a1", "a2", "a3r2", "a4", "a5", "a7", "a8r1", "a9", "new"}
	if !slices.Equal(got, want) {
		t.Fatalf("paging across changes: got %v, want %v", got, want)
	}

	// Deleting a lineage's latest row (an undone resume) makes the one
	// before it the latest again.
	if err := db.DeleteMachine(t.Context(), "a8r1"); err != nil {
		t.Fatal(err)
	}
	if h, err := db.LineageHead(t.Context(), "a8"); err != nil || h.ID != "a8" || !h.Latest {
		t.Fatalf("after the undone resume: head %+v %v, want a8, latest", h, err)
	}
	sums, err := db.LineageSummaries(t.Context(), []string{"a3", "a8", "a3"})
	if err != nil {
		t.Fatal(err)
	}
	if sums["a3"] != (store.LineageSummary{LatestID: "a3r2", PausedAliases: 1}) || sums["a8"] != (store.LineageSummary{LatestID: "a8"}) {
		t.Fatalf("summaries %+v", sums)
	}
}

func TestListSnapshotsPage(t *testing.T) {
	ctx := t.Context()
	db := openTest(t)
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	add := func(id string, gen int, at time.Time) {
		sn := &store.Snapshot{ID: id, TeamID: "t", Kind: "hibernate", State: store.SnapshotReady, MachineID: "m", LineageID: "m",
			Template: "minimal", Generation: gen, CreatedAt: at, Host: []byte("{}"), Spec: []byte("{}"), Files: []byte("[]")}
		if err := db.CreateSnapshot(ctx, sn); err != nil {
			t.Fatal(err)
		}
	}
	// Creation order and generation order differ for s2 and s3.
	add("s1", 1, base)
	add("s3", 3, base.Add(time.Second))
	add("s2", 2, base.Add(2*time.Second))
	for _, byGen := range []bool{false, true} {
		q := store.SnapshotPageQuery{TeamID: "t", ByGeneration: byGen, Limit: 1}
		var got []string
		for {
			page, more, err := db.ListSnapshotsPage(ctx, q)
			if err != nil {
				t.Fatal(err)
			}
			for _, sn := range page {
				got = append(got, sn.ID)
			}
			if !more {
				break
			}
			q.After = store.SnapshotCursorOf(page[len(page)-1], byGen)
			if len(got) == 1 {
				add("s4", 4, base.Add(3*time.Second)) // inserted while paging: listed once, at the end
			}
		}
		want := []string{"s1", "s3", "s2", "s4"}
		if byGen {
			want = []string{"s1", "s2", "s3", "s4"}
		}
		if !slices.Equal(got, want) {
			t.Fatalf("by generation %v: got %v, want %v", byGen, got, want)
		}
		if err := db.DeleteSnapshot(ctx, "s4"); err != nil {
			t.Fatal(err)
		}
	}
}

func TestVolumePages(t *testing.T) {
	ctx := t.Context()
	db := openTest(t)
	for _, name := range []string{"c", "a", "b", "d"} {
		if err := db.CreateVolume(ctx, store.Volume{TeamID: "t", Name: name, CreatedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	// One machine mounting a, resumed once (two rows, one machine), and
	// a killed one mounting b.
	mount := func(m *store.Machine, vols ...string) {
		for _, v := range vols {
			m.Volumes = append(m.Volumes, api.VolumeMount{Name: v, Path: "/" + v})
		}
	}
	first := &store.Machine{ID: "m1", TeamID: "t", State: "paused", Template: "minimal", CPUCount: 1, MemoryMB: 64, ContainerID: "c1", AgentToken: "x", CreatedAt: time.Now()}
	mount(first, "a")
	if err := db.CreateMachine(ctx, first, 10); err != nil {
		t.Fatal(err)
	}
	next := &store.Machine{ID: "m2", TeamID: "t", State: "running", LineageID: "m1", Template: "minimal", CPUCount: 1, MemoryMB: 64, ContainerID: "c2", AgentToken: "x", CreatedAt: time.Now()}
	mount(next, "a")
	if err := db.CreateMachine(ctx, next, 10); err != nil {
		t.Fatal(err)
	}
	gone := &store.Machine{ID: "k", TeamID: "t", State: "killed", Template: "minimal", CPUCount: 1, MemoryMB: 64, ContainerID: "ck", AgentToken: "x", CreatedAt: time.Now()}
	mount(gone, "b")
	if err := db.CreateMachine(ctx, gone, 10); err != nil {
		t.Fatal(err)
	}
	var got []string
	after := ""
	for {
		page, more, err := db.ListVolumesPage(ctx, "t", after, 3)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range page {
			got = append(got, v.Name)
		}
		if !more {
			break
		}
		after = page[len(page)-1].Name
	}
	if !slices.Equal(got, []string{"a", "b", "c", "d"}) {
		t.Fatalf("volumes by name over pages of 3: %v", got)
	}
	users, err := db.VolumeMachines(ctx, "t", []string{"a", "b"})
	if err != nil || users["a"] != 1 || users["b"] != 0 {
		t.Fatalf("volume users %v %v, want a: 1 (one machine, two executions), b: 0", users, err)
	}
}

func TestListMachinesPageDescAndRange(t *testing.T) {
	db := openTest(t)
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	mm := &machineMaker{t: t, db: db, now: base}
	for i := range 6 {
		mm.add(fmt.Sprintf("a%d", i), "t", "", "running", nil) // created at base+1s .. base+6s
	}

	// Newest first, over pages of 2, while rows come and go between pages:
	// a resume of one already listed (a5r1, still a5's place), one not yet
	// listed (a1r1, listed in a1's place), a newer machine (after the
	// position: not listed), a deletion of one not yet listed.
	got := pageAll(t, db, store.MachinePageQuery{TeamID: "t", Desc: true, Limit: 2}, func(page int) {
		if page == 0 {
			mm.add("a5r1", "t", "a5", "running", nil)
			mm.add("a1r1", "t", "a1", "running", nil)
			mm.add("new", "t", "", "running", nil)
			if err := db.DeleteMachine(t.Context(), "a2"); err != nil {
				t.Fatal(err)
			}
		}
	})
	want := []string{"a5", "a4", "a3", "a1r1", "a0"}
	if !slices.Equal(got, want) {
		t.Fatalf("newest first across changes: got %v, want %v", got, want)
	}
	got = pageAll(t, db, store.MachinePageQuery{TeamID: "t", Desc: true, Aliases: true, Limit: 3}, nil)
	want = []string{"new", "a1r1", "a5r1", "a5", "a4", "a3", "a1", "a0"}
	if !slices.Equal(got, want) {
		t.Fatalf("every execution newest first: got %v, want %v", got, want)
	}

	// A time range: from a1 (inclusive) to a4 (exclusive), both orders.
	q := store.MachinePageQuery{TeamID: "t", CreatedFrom: base.Add(2 * time.Second), CreatedBefore: base.Add(5 * time.Second), Limit: 1}
	if got := pageAll(t, db, q, nil); !slices.Equal(got, []string{"a1r1", "a3"}) {
		t.Fatalf("range oldest first: got %v, want [a1r1 a3]", got)
	}
	q.Desc = true
	if got := pageAll(t, db, q, nil); !slices.Equal(got, []string{"a3", "a1r1"}) {
		t.Fatalf("range newest first: got %v, want [a3 a1r1]", got)
	}
	q.CreatedBefore = time.Time{}
	if got := pageAll(t, db, q, nil); !slices.Equal(got, []string{"new", "a5r1", "a4", "a3", "a1r1"}) {
		t.Fatalf("from a1 newest first: got %v", got)
	}
}
