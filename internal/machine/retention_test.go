package machine

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store"
)

// TestPruneHistory: a lineage keeps its newest unpinned states up to its
// retention, every pinned one, the state it is paused in and states
// children are made from; the others are pruned (not listed, restore says
// why), and an unpin prunes at once.
func TestPruneHistory(t *testing.T) {
	ctx := t.Context()
	m, d, _, db := newTestManager(t)
	rec := addLeased(t, m, d, "h", time.Now().Add(time.Hour), false)
	mk := func(gen int, kind string) *store.Snapshot {
		sn := &store.Snapshot{ID: fmt.Sprintf("s%d", gen), TeamID: "team", Kind: kind, State: store.SnapshotReady, MachineID: "h",
			LineageID: "h", Template: "minimal", Generation: gen, CreatedAt: time.Now(), Host: []byte("{}"), Spec: []byte("{}"), Files: []byte("[]")}
		if err := db.CreateSnapshot(ctx, sn); err != nil {
			t.Fatal(err)
		}
		return sn
	}
	for gen := 1; gen <= 7; gen++ {
		kind := api.SnapshotCheckpoint
		if gen == 4 {
			kind = api.SnapshotReusable // not history: never pruned
		}
		mk(gen, kind)
	}
	if err := db.SetSnapshotPinned(ctx, "s1", true); err != nil {
		t.Fatal(err)
	}
	// s3 is the state the machine is paused in; a child is made from s2.
	rec.State, rec.SnapshotID, rec.Slot = api.StatePaused, "s3", -1
	if err := db.UpdateMachine(ctx, rec); err != nil {
		t.Fatal(err)
	}
	child := &store.Machine{ID: "kid", TeamID: "team", State: api.StateResuming, Template: "minimal", CPUCount: 1, MemoryMB: 64,
		ContainerID: "c-kid", AgentToken: "x", CreatedAt: time.Now(), RestoredFrom: "s2"}
	if err := db.CreateMachine(ctx, child, 16); err != nil {
		t.Fatal(err)
	}
	setRetention(t, db, "h", 2) // the lineage head's retention

	if err := m.pruneLocked(ctx, "h"); err != nil {
		t.Fatal(err)
	}
	if got, want := readyIDs(t, db), []string{"s1", "s2", "s3", "s4", "s6", "s7"}; !slices.Equal(got, want) {
		t.Fatalf("after pruning to 2: %v, want %v (s5 pruned)", got, want)
	}
	_, err := m.readySnapshot(ctx, "team", "s5")
	if p := errdefs.Classify(err); p.Code != errdefs.CodeSnapshotNotFound || !strings.Contains(p.Message, "pruned") {
		t.Fatalf("restore of a pruned checkpoint: %+v", p)
	}
	// Unpinning s1 prunes it at once.
	if _, err := m.PinCheckpoint(ctx, "team", "h", "s1", false); err != nil {
		t.Fatal(err)
	}
	if got, want := readyIDs(t, db), []string{"s2", "s3", "s4", "s6", "s7"}; !slices.Equal(got, want) {
		t.Fatalf("after the unpin: %v, want %v", got, want)
	}
	if _, err := m.PinCheckpoint(ctx, "team", "h", "s5", true); errdefs.Classify(err).Code != errdefs.CodeSnapshotNotFound {
		t.Fatalf("pin of a pruned checkpoint: %v", err)
	}
	// Retention 0 keeps all.
	setRetention(t, db, "h", 0)
	mk(8, api.SnapshotCheckpoint)
	if err := m.pruneLocked(ctx, "h"); err != nil {
		t.Fatal(err)
	}
	if got := readyIDs(t, db); len(got) != 6 {
		t.Fatalf("retention 0 pruned: %v", got)
	}
}

func setRetention(t *testing.T, db *store.DB, id string, n int) {
	t.Helper()
	if err := db.SetCheckpointRetention(t.Context(), id, n); err != nil {
		t.Fatal(err)
	}
}

func readyIDs(t *testing.T, db *store.DB) []string {
	t.Helper()
	snaps, err := db.ListSnapshots(t.Context(), store.SnapshotFilter{States: []string{store.SnapshotReady}})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, sn := range snaps {
		ids = append(ids, sn.ID)
	}
	slices.Sort(ids)
	return ids
}
