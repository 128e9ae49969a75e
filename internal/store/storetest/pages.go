package storetest

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/store"
)

// pageAll reads every page of q, calling between (if set) after each page
// but the last, and returns the ids read.
func pageAll(t *testing.T, s store.Store, q store.MachinePageQuery, between func(page int)) []string {
	t.Helper()
	ids := []string{}
	for page := 0; ; page++ {
		recs, more, err := s.ListMachinesPage(t.Context(), q)
		must(t, err)
		if len(recs) > q.Limit {
			t.Fatalf("page of %d rows, limit %d", len(recs), q.Limit)
		}
		if more && len(recs) == 0 {
			t.Fatalf("an empty page says more follow")
		}
		ids = append(ids, machineIDs(recs)...)
		if !more {
			return ids
		}
		if page > 100 {
			t.Fatalf("more than 100 pages: %v", ids)
		}
		q.After = store.CursorOf(recs[len(recs)-1], q.Aliases)
		if between != nil {
			between(page)
		}
	}
}

func testMachinePageFilters(t *testing.T, s store.Store) {
	f := newFixture(t, s)
	f.machine("a", "t", "", api.StateRunning, withMeta("owner", "ann", "env", "prod"))
	f.machine("b", "t", "", api.StatePaused, withTemplate("base"), withMeta("owner", "bob", "env", "prod"))
	f.machine("b2", "t", "b", api.StateRunning, withTemplate("base"), withMeta("owner", "bob"))
	f.machine("c", "t", "", api.StateKilled, withMeta("owner", "ann", "env", "dev"))
	f.machine("u", "u", "", api.StateRunning, withMeta("owner", "ann", "env", "prod"))
	for _, c := range []struct {
		name string
		q    store.MachinePageQuery
		want []string
	}{
		{"one row per machine", store.MachinePageQuery{TeamID: "t"}, []string{"a", "b2", "c"}},
		{"every execution", store.MachinePageQuery{TeamID: "t", Aliases: true}, []string{"a", "b", "b2", "c"}},
		{"state", store.MachinePageQuery{TeamID: "t", States: []string{api.StateRunning}}, []string{"a", "b2"}},
		// The filters apply to the latest row: b's lineage is running.
		{"state of an older execution", store.MachinePageQuery{TeamID: "t", States: []string{api.StatePaused}}, []string{}},
		{"state, every execution", store.MachinePageQuery{TeamID: "t", States: []string{api.StatePaused, api.StateKilled}, Aliases: true}, []string{"b", "c"}},
		{"template", store.MachinePageQuery{TeamID: "t", Template: "base"}, []string{"b2"}},
		{"template, every execution", store.MachinePageQuery{TeamID: "t", Template: "base", Aliases: true}, []string{"b", "b2"}},
		{"metadata", store.MachinePageQuery{TeamID: "t", Metadata: map[string]string{"owner": "ann"}}, []string{"a", "c"}},
		{"every metadata pair", store.MachinePageQuery{TeamID: "t", Metadata: map[string]string{"owner": "ann", "env": "prod"}}, []string{"a"}},
		{"metadata of the latest row", store.MachinePageQuery{TeamID: "t", Metadata: map[string]string{"env": "prod"}}, []string{"a"}},
		{"metadata and state", store.MachinePageQuery{TeamID: "t", Metadata: map[string]string{"owner": "ann"}, States: []string{api.StateKilled}}, []string{"c"}},
		{"another team", store.MachinePageQuery{TeamID: "u"}, []string{"u"}},
	} {
		for _, limit := range []int{1, 10} {
			q := c.q
			q.Limit = limit
			if got := pageAll(t, s, q, nil); !slices.Equal(got, c.want) {
				t.Errorf("%s, pages of %d: got %v, want %v", c.name, limit, got, c.want)
			}
		}
	}
}

// testMachinePageStability: rows inserted or deleted between pages are
// neither skipped nor repeated, oldest first.
func testMachinePageStability(t *testing.T, s store.Store) {
	f := newFixture(t, s)
	// Ten machines; a3 was paused and resumed twice (a3 -> a3r1 -> a3r2).
	for i := range 10 {
		f.machine(fmt.Sprintf("a%d", i), "t", "", api.StateRunning, withMeta("owner", []string{"ann", "bob"}[i%2]))
	}
	f.machine("other", "u", "", api.StateRunning) // another team's
	f.machine("a3r1", "t", "a3", api.StatePaused, withMeta("owner", "bob"))
	f.machine("a3r2", "t", "a3", api.StateRunning, withMeta("owner", "bob"))

	all := pageAll(t, s, store.MachinePageQuery{TeamID: "t", Limit: 3}, nil)
	want := []string{"a0", "a1", "a2", "a3r2", "a4", "a5", "a6", "a7", "a8", "a9"}
	if !slices.Equal(all, want) {
		t.Fatalf("one row per machine: got %v, want %v", all, want)
	}
	aliases := pageAll(t, s, store.MachinePageQuery{TeamID: "t", Aliases: true, Limit: 4}, nil)
	want = []string{"a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8", "a9", "a3r1", "a3r2"}
	if !slices.Equal(aliases, want) {
		t.Fatalf("every execution: got %v, want %v", aliases, want)
	}
	bob := pageAll(t, s, store.MachinePageQuery{TeamID: "t", Metadata: map[string]string{"owner": "bob"}, Limit: 2}, nil)
	if !slices.Equal(bob, []string{"a1", "a3r2", "a5", "a7", "a9"}) {
		t.Fatalf("metadata owner=bob: got %v", bob)
	}
	paused := pageAll(t, s, store.MachinePageQuery{TeamID: "t", States: []string{api.StatePaused}, Aliases: true, Limit: 2}, nil)
	if !slices.Equal(paused, []string{"a3r1"}) {
		t.Fatalf("paused executions: got %v", paused)
	}

	// Between pages: a machine already listed resumes (a new row for its
	// lineage), one not yet listed resumes, one is inserted, one deleted.
	// Each machine is still listed exactly once, at its place.
	got := pageAll(t, s, store.MachinePageQuery{TeamID: "t", Limit: 3}, func(page int) {
		if page == 0 {
			f.machine("a1r1", "t", "a1", api.StateRunning) // listed as a1 already
			f.machine("a8r1", "t", "a8", api.StateRunning) // not yet listed: listed as a8r1
			f.machine("new", "t", "", api.StateRunning)
			must(t, s.DeleteMachine(t.Context(), "a6"))
		}
	})
	want = []string{"a0", "a1", "a2", "a3r2", "a4", "a5", "a7", "a8r1", "a9", "new"}
	if !slices.Equal(got, want) {
		t.Fatalf("paging across changes: got %v, want %v", got, want)
	}
	// Every execution, across the same kind of changes: rows are placed by
	// their own creation, so new ones come at the end.
	got = pageAll(t, s, store.MachinePageQuery{TeamID: "t", Aliases: true, Limit: 5}, func(page int) {
		if page == 0 {
			f.machine("a0r1", "t", "a0", api.StateRunning)
			must(t, s.DeleteMachine(t.Context(), "a9"))
			must(t, s.DeleteMachine(t.Context(), "a2"))
		}
	})
	want = []string{"a0", "a1", "a2", "a3", "a4", "a5", "a7", "a8", "a3r1", "a3r2", "a1r1", "a8r1", "new", "a0r1"}
	if !slices.Equal(got, want) {
		t.Fatalf("every execution across changes: got %v, want %v", got, want)
	}
}

// testMachinePageDescAndRange: newest first across changes, and the
// CreatedFrom/CreatedBefore bounds in both orders.
func testMachinePageDescAndRange(t *testing.T, s store.Store) {
	f := newFixture(t, s)
	for i := range 6 {
		f.machine(fmt.Sprintf("a%d", i), "t", "", api.StateRunning) // created at base+1s .. base+6s
	}

	// Newest first, over pages of 2, while rows come and go between pages:
	// a resume of one already listed (a5r1, still a5's place), one not yet
	// listed (a1r1, listed in a1's place), a newer machine (after the
	// position: not listed), a deletion of one not yet listed.
	got := pageAll(t, s, store.MachinePageQuery{TeamID: "t", Desc: true, Limit: 2}, func(page int) {
		if page == 0 {
			f.machine("a5r1", "t", "a5", api.StateRunning)
			f.machine("a1r1", "t", "a1", api.StateRunning)
			f.machine("new", "t", "", api.StateRunning)
			must(t, s.DeleteMachine(t.Context(), "a2"))
		}
	})
	want := []string{"a5", "a4", "a3", "a1r1", "a0"}
	if !slices.Equal(got, want) {
		t.Fatalf("newest first across changes: got %v, want %v", got, want)
	}
	got = pageAll(t, s, store.MachinePageQuery{TeamID: "t", Desc: true, Aliases: true, Limit: 3}, nil)
	want = []string{"new", "a1r1", "a5r1", "a5", "a4", "a3", "a1", "a0"}
	if !slices.Equal(got, want) {
		t.Fatalf("every execution newest first: got %v, want %v", got, want)
	}

	// A time range: from a1 (inclusive) to a4 (exclusive), both orders.
	q := store.MachinePageQuery{TeamID: "t", CreatedFrom: base.Add(2 * time.Second), CreatedBefore: base.Add(5 * time.Second), Limit: 1}
	if got := pageAll(t, s, q, nil); !slices.Equal(got, []string{"a1r1", "a3"}) {
		t.Fatalf("range oldest first: got %v, want [a1r1 a3]", got)
	}
	q.Desc = true
	if got := pageAll(t, s, q, nil); !slices.Equal(got, []string{"a3", "a1r1"}) {
		t.Fatalf("range newest first: got %v, want [a3 a1r1]", got)
	}
	q.CreatedBefore = time.Time{}
	if got := pageAll(t, s, q, nil); !slices.Equal(got, []string{"new", "a5r1", "a4", "a3", "a1r1"}) {
		t.Fatalf("from a1 newest first: got %v", got)
	}
	// With Aliases the range bounds each execution's own creation.
	q = store.MachinePageQuery{TeamID: "t", Aliases: true, CreatedFrom: base.Add(6 * time.Second), CreatedBefore: base.Add(8 * time.Second), Limit: 1}
	if got := pageAll(t, s, q, nil); !slices.Equal(got, []string{"a5", "a5r1"}) {
		t.Fatalf("executions created in [6s, 8s): got %v, want [a5 a5r1]", got)
	}
}

// testLineageSummaries: the latest id, the paused aliases and the bytes of
// the committed snapshots of each lineage asked for.
func testLineageSummaries(t *testing.T, s store.Store) {
	ctx := t.Context()
	if sums, err := s.LineageSummaries(ctx, nil); err != nil || len(sums) != 0 {
		t.Fatalf("summaries of no lineages: %v, %v", sums, err)
	}
	f := newFixture(t, s)
	f.machine("a", "t", "", api.StatePaused)
	f.machine("ar1", "t", "a", api.StatePaused)
	f.machine("ar2", "t", "a", api.StateRunning)
	f.machine("k", "t", "", api.StateKilled)
	f.machine("kr1", "t", "k", api.StatePaused)
	f.machine("b", "t", "", api.StateRunning)
	f.machine("br1", "t", "b", api.StateRunning)
	f.snapshot("s1", func(sn *store.Snapshot) { sn.LineageID, sn.SizeBytes = "a", 100 })
	f.snapshot("s2", func(sn *store.Snapshot) { sn.LineageID, sn.SizeBytes = "a", 50 })
	f.snapshot("s3", func(sn *store.Snapshot) { sn.LineageID, sn.SizeBytes, sn.State = "a", 1000, store.SnapshotWriting })
	f.snapshot("s4", func(sn *store.Snapshot) { sn.LineageID, sn.SizeBytes = "b", 7 })
	must(t, s.DeleteMachine(ctx, "br1")) // an undone resume: b is latest again

	sums, err := s.LineageSummaries(ctx, []string{"a", "k", "b", "a", "unknown"})
	must(t, err)
	want := map[string]store.LineageSummary{
		"a": {LatestID: "ar2", PausedAliases: 2, SnapshotBytes: 150},
		"k": {LatestID: "kr1"},
		"b": {LatestID: "b", SnapshotBytes: 7},
	}
	if len(sums) != len(want) {
		t.Errorf("summaries %+v, want %+v", sums, want)
	}
	for id, w := range want {
		if sums[id] != w {
			t.Errorf("summary of %s: %+v, want %+v", id, sums[id], w)
		}
	}
}
