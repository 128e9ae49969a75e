package sqlstore

import (
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/store"
)

func TestPruneEnded(t *testing.T) {
	ctx := t.Context()
	db := openTest(t)
	mm := &machineMaker{t: t, db: db, now: time.Now().Add(-72 * time.Hour)}
	end := func(m *store.Machine, state string, at time.Time) {
		m.State, m.EndedAt = state, at
		if err := db.UpdateMachine(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	old, recent := time.Now().Add(-48*time.Hour), time.Now().Add(-time.Hour)
	gone := mm.add("gone", "t", "", "running", map[string]string{"k": "v"})
	end(gone, "killed", old)
	fresh := mm.add("fresh", "t", "", "running", nil)
	end(fresh, "killed", recent)
	// A lineage whose latest execution failed long ago but whose first id
	// is still a paused alias: its latest row stays.
	mm.add("l", "t", "", "paused", nil)
	failedHead := mm.add("l2", "t", "l", "running", nil)
	end(failedHead, "failed", old)
	// A killed alias of a live lineage goes.
	alias := mm.add("a", "t", "", "running", nil)
	mm.add("a2", "t", "a", "running", nil)
	end(alias, "killed", old)

	n, err := db.PruneEnded(ctx, time.Now().Add(-24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Fatalf("pruned %d rows, want 2 (gone, a)", n)
	}
	for id, want := range map[string]bool{"gone": false, "a": false, "fresh": true, "l2": true, "l": true, "a2": true} {
		_, err := db.GetMachine(ctx, id)
		if (err == nil) != want {
			t.Errorf("machine %s: %v, want kept=%v", id, err, want)
		}
	}
	if h, err := db.LineageHead(ctx, "l"); err != nil || h.ID != "l2" {
		t.Fatalf("lineage l's head %+v %v, want the failed l2 kept", h, err)
	}
	rows, _, err := db.ListMachinesPage(ctx, store.MachinePageQuery{TeamID: "t", Metadata: map[string]string{"k": "v"}, Aliases: true, Limit: 10,
		States: []string{api.StateKilled}})
	if err != nil || len(rows) != 0 {
		t.Fatalf("metadata of a pruned machine still matches: %v %v", rows, err)
	}
}

func TestPruneEvents(t *testing.T) {
	ctx := t.Context()
	db := openTest(t)
	now := time.Now()
	for i := range 10 {
		ev := &api.Event{Type: "machine.created", TeamID: "t", Time: now.Add(time.Duration(i-10) * time.Hour)}
		if err := db.AppendEvent(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	// Older than 5 h: seqs 1..5 (times -10h..-6h); but a consumer is at 3.
	n, err := db.PruneEvents(ctx, now.Add(-5*time.Hour), 0, 3)
	if err != nil || n != 3 {
		t.Fatalf("pruned %d, %v; want 3 (the consumer has not seen 4 and 5)", n, err)
	}
	// Keep the newest 4, the consumer everywhere.
	n, err = db.PruneEvents(ctx, now.Add(-100*time.Hour), 4, 1<<62)
	if err != nil || n != 3 {
		t.Fatalf("pruned %d, %v; want 3 (4, 5, 6)", n, err)
	}
	evs, err := db.ListEvents(ctx, store.EventFilter{})
	if err != nil || len(evs) != 4 || evs[0].Seq != 7 {
		t.Fatalf("left %v %v, want seqs 7..10", evs, err)
	}
}
