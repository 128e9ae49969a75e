package placement

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/snapshot"
	"nullspace.dev/nullspace/internal/store"
)

type fixed struct {
	nodes []store.Node
	now   time.Time
}

func (f fixed) ListNodes(context.Context) ([]store.Node, time.Time, error) {
	return f.nodes, f.now, nil
}

var (
	now     = time.Date(2026, 12, 8, 0, 0, 0, 0, time.UTC)
	hostA   = mustJSON(snapshot.Host{RuntimeVersion: "r1", Platform: "systrap", Kernel: "6.1", CPUFeatures: []string{"avx2"}})
	hostOld = mustJSON(snapshot.Host{RuntimeVersion: "r0", Platform: "systrap", Kernel: "6.1", CPUFeatures: []string{"avx2"}})
)

func mustJSON(v any) json.RawMessage { b, _ := json.Marshal(v); return b }

func node(id string, mods ...func(*store.Node)) store.Node {
	n := store.Node{ID: id, State: store.NodeLive, PeerURL: "http://" + id, HeartbeatAt: now.Add(-time.Second), Host: hostA,
		Capacity: store.NodeCapacity{CPUs: 2, MemoryMB: 4096, CommittedMB: 0, Slots: 100, FreeSlots: 100}}
	for _, m := range mods {
		m(&n)
	}
	return n
}

func TestPlace(t *testing.T) {
	drained := func(n *store.Node) { n.Drained = true }
	dead := func(n *store.Node) { n.State = store.NodeDead }
	silent := func(n *store.Node) { n.HeartbeatAt = now.Add(-time.Minute) }
	full := func(n *store.Node) { n.Capacity.CommittedMB = 4000 }
	noSlots := func(n *store.Node) { n.Capacity.FreeSlots = 0 }
	oldRunsc := func(n *store.Node) { n.Host = hostOld }
	for _, tc := range []struct {
		name  string
		nodes []store.Node
		want  Want
		only  []string // the acceptable choices
		why   []string // for no choice: what the error says
	}{
		{"the only live node", []store.Node{node("a"), node("b", dead), node("c", drained)}, Want{MemoryMB: 64}, []string{"a"}, nil},
		{"silent nodes are not placed on", []store.Node{node("a", silent), node("b")}, Want{MemoryMB: 64}, []string{"b"}, nil},
		{"room: memory and slots", []store.Node{node("a", full), node("b", noSlots), node("c")}, Want{MemoryMB: 256}, []string{"c"}, nil},
		{"a wake prefers the last node", []store.Node{node("a"), node("b"), node("c")}, Want{MemoryMB: 64, Lineage: "l1", Prefer: "b"}, []string{"b"}, nil},
		{"but not when it is full", []store.Node{node("a"), node("b", full), node("c")}, Want{MemoryMB: 256, Lineage: "l1", Prefer: "b"}, []string{"a", "c"}, nil},
		{"a snapshot only where its host matches", []store.Node{node("a", oldRunsc), node("b")}, Want{MemoryMB: 64, Host: hostA}, []string{"b"}, nil},
		{"a snapshot whose files are on one node", []store.Node{node("a"), node("b")}, Want{MemoryMB: 64, Only: "a"}, []string{"a"}, nil},
		{"nowhere, with each reason", []store.Node{node("a", full), node("b", drained), node("c", oldRunsc)}, Want{MemoryMB: 256, Host: hostA},
			nil, []string{"a: 96 MiB free, 256 MiB asked", "b: drained", "c: cannot restore the snapshot: runsc version: it was written by r1 and this host runs r0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &Placer{Nodes: fixed{tc.nodes, now}, TTL: 15 * time.Second}
			for range 20 {
				got, err := p.Place(t.Context(), tc.want)
				if tc.only == nil {
					if !errors.Is(err, errdefs.ErrUnavailable) || errdefs.Classify(err).Code != errdefs.CodeCapacityExhausted || !errdefs.Classify(err).Retryable {
						t.Fatalf("got %v (%v), want a retryable capacity_exhausted", got.ID, err)
					}
					for _, w := range tc.why {
						if !strings.Contains(err.Error(), w) {
							t.Errorf("error %q does not say %q", err, w)
						}
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				ok := false
				for _, id := range tc.only {
					ok = ok || got.ID == id
				}
				if !ok {
					t.Fatalf("placed on %s, want one of %v", got.ID, tc.only)
				}
			}
		})
	}
}

// TestWakesConverge: every node places a lineage's wake on the same node,
// and different lineages spread.
func TestWakesConverge(t *testing.T) {
	nodes := []store.Node{node("a"), node("b"), node("c")}
	seen := map[string]int{}
	for i := range 300 {
		lineage := "mch_" + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + string(rune('a'+i/26))
		var first string
		for range 3 { // three nodes, each with its own placer
			p := &Placer{Nodes: fixed{nodes, now}, TTL: 15 * time.Second}
			got, err := p.Place(t.Context(), Want{MemoryMB: 64, Lineage: lineage})
			if err != nil {
				t.Fatal(err)
			}
			if first == "" {
				first = got.ID
			} else if got.ID != first {
				t.Fatalf("lineage %s placed on %s and %s", lineage, first, got.ID)
			}
		}
		seen[first]++
	}
	for _, n := range nodes {
		if seen[n.ID] < 50 {
			t.Fatalf("300 lineages over 3 nodes: %v", seen)
		}
	}
}

// TestCreatesSpread: best-of-2 over equal nodes spreads a burst of
// creates, and avoids a loaded node.
func TestCreatesSpread(t *testing.T) {
	busy := node("c", func(n *store.Node) { n.Capacity.CommittedMB = 3500; n.Capacity.Load = 1 })
	p := &Placer{Nodes: fixed{[]store.Node{node("a"), node("b"), busy}, now}, TTL: 15 * time.Second}
	seen := map[string]int{}
	for range 600 {
		got, err := p.Place(t.Context(), Want{MemoryMB: 64})
		if err != nil {
			t.Fatal(err)
		}
		seen[got.ID]++
	}
	if seen["a"] < 200 || seen["b"] < 200 || seen["c"] > 0 {
		t.Fatalf("600 creates: %v; want a and b about even, c (loaded) never chosen over an idle one", seen)
	}
}
