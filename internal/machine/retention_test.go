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
	"nullspace.dev/nullspace/internal/store/sqlstore"
)

// TestPruneHistory: a lineage keeps its newest unpinned states up to its
// retention, every pinned one, the state it is paused in and states
// children are made from; the others are pruned (not listed, restore says
// why), and an unpin prunes at once.
func TestPruneHistory(t *testing.T) {
	ctx := t.Context()
	m, _, _, db := newTestManager(t)
	newMachine := func(id string, retention int) *store.Machine {
		rec := &store.Machine{ID: id, TeamID: "team", State: api.StateRunning, Template: "minimal", CPUCount: 1, MemoryMB: 64,
			ContainerID: "c-" + id, AgentToken: "x", CreatedAt: time.Now(), CheckpointRetention: retention}
		if err := db.CreateMachine(ctx, rec, 16); err != nil {
			t.Fatal(err)
		}
		return rec
	}
	mk := func(lineage string, gen int, kind string) {
		sn := &store.Snapshot{ID: fmt.Sprintf("%s%d", strings.TrimPrefix(lineage, "h"), gen), TeamID: "team", Kind: kind, State: store.SnapshotReady,
			MachineID: lineage, LineageID: lineage, Template: "minimal", Generation: gen, CreatedAt: time.Now(),
			Host: []byte("{}"), Spec: []byte("{}"), Files: []byte("[]")}
		if err := db.CreateSnapshot(ctx, sn); err != nil {
			t.Fatal(err)
		}
	}
	rec := newMachine("h", 2) // keeps 2
	for gen := 1; gen <= 7; gen++ {
		kind := api.SnapshotCheckpoint
		if gen == 4 {
			kind = api.SnapshotReusable // not history: never pruned
		}
		mk("h", gen, kind)
	}
	if err := db.SetSnapshotPinned(ctx, "1", true); err != nil {
		t.Fatal(err)
	}
	// s3 is the state the machine is paused in; a child is made from s2.
	rec.State, rec.SnapshotID, rec.Slot = api.StatePaused, "3", -1
	if err := db.UpdateMachine(ctx, rec); err != nil {
		t.Fatal(err)
	}
	child := &store.Machine{ID: "kid", TeamID: "team", State: api.StateResuming, Template: "minimal", CPUCount: 1, MemoryMB: 64,
		ContainerID: "c-kid", AgentToken: "x", CreatedAt: time.Now(), RestoredFrom: "2"}
	if err := db.CreateMachine(ctx, child, 16); err != nil {
		t.Fatal(err)
	}
	if err := m.pruneLocked(ctx, "h"); err != nil {
		t.Fatal(err)
	}
	if got, want := readyIDs(t, db), []string{"1", "2", "3", "4", "6", "7"}; !slices.Equal(got, want) {
		t.Fatalf("after pruning to 2: %v, want %v (5 pruned)", got, want)
	}
	_, err := m.readySnapshot(ctx, "team", "5")
	if p := errdefs.Classify(err); p.Code != errdefs.CodeSnapshotNotFound || !strings.Contains(p.Message, "pruned") {
		t.Fatalf("restore of a pruned checkpoint: %+v", p)
	}
	// Unpinning 1 prunes it at once.
	if _, err := m.PinCheckpoint(ctx, "team", "h", "1", false); err != nil {
		t.Fatal(err)
	}
	if got, want := readyIDs(t, db), []string{"2", "3", "4", "6", "7"}; !slices.Equal(got, want) {
		t.Fatalf("after the unpin: %v, want %v", got, want)
	}
	if _, err := m.PinCheckpoint(ctx, "team", "h", "5", true); errdefs.Classify(err).Code != errdefs.CodeSnapshotNotFound {
		t.Fatalf("pin of a pruned checkpoint: %v", err)
	}

	// A machine without a retention of its own follows the server's: the
	// test manager's is 0, which keeps all; then 1.
	newMachine("hz", -1)
	for gen := 1; gen <= 3; gen++ {
		mk("hz", gen, api.SnapshotCheckpoint)
	}
	if err := m.pruneLocked(ctx, "hz"); err != nil {
		t.Fatal(err)
	}
	if got := readyIDs(t, db); len(got) != 8 {
		t.Fatalf("retention 0 (the server's default) pruned: %v", got)
	}
	m.cfg.CheckpointRetention = 1
	if err := m.pruneLocked(ctx, "hz"); err != nil {
		t.Fatal(err)
	}
	if got, want := readyIDs(t, db), []string{"2", "3", "4", "6", "7", "z3"}; !slices.Equal(got, want) {
		t.Fatalf("server default 1: %v, want %v", got, want)
	}
}

func readyIDs(t *testing.T, db *sqlstore.DB) []string {
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
