package storetest

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store"
)

// RunNodes runs the tests of the cluster's nodes: membership, fencing and
// the reap of a dead node. open returns a new handle on one fresh database
// each time it is called within a subtest (a node each); RunNodes closes
// them.
func RunNodes(t *testing.T, open func(t *testing.T) func() store.Store) {
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, open func() store.Store)
	}{
		{"JoinFenceAndReap", testJoinFenceAndReap},
		{"FencedWriteRacesDeclareDead", testFencedWriteRace},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var handles []store.Store
			mk := open(t)
			t.Cleanup(func() {
				for _, h := range handles {
					h.Close()
				}
			})
			tc.run(t, func() store.Store {
				h := mk()
				handles = append(handles, h)
				return h
			})
		})
	}
}

func join(t *testing.T, s store.Store, id string) *store.Node {
	t.Helper()
	s.SetNode(id)
	n, err := s.JoinNode(t.Context(), store.Node{ID: id, PeerURL: "http://" + id + ":7946", Host: []byte(`{"platform":"systrap"}`),
		Capacity: store.NodeCapacity{CPUs: 2, MemoryMB: 1024, Slots: 10, FreeSlots: 10}})
	if err != nil {
		t.Fatalf("join %s: %v", id, err)
	}
	return n
}

// testJoinFenceAndReap: nodes join at increasing epochs, slots are a
// node's own, a dead node's executions are reaped by kind, and its
// writes, and those of an epoch it rejoined past, are fenced.
func testJoinFenceAndReap(t *testing.T, open func() store.Store) {
	ctx := t.Context()
	a, b := open(), open()
	if n := join(t, a, "na"); n.Epoch != 1 || n.State != store.NodeLive || n.Capacity.Slots != 10 || string(n.Host) != `{"platform":"systrap"}` {
		t.Fatalf("first join: %+v", n)
	}
	join(t, b, "nb")
	fa, fb := newFixture(t, a), newFixture(t, b)

	running := fa.machine("m-run", "t", "", api.StateRunning)
	creating := fa.machine("m-new", "t", "", api.StateCreating)
	paused := fa.machine("m-paused", "t", "", api.StatePaused, func(m *store.Machine) { m.Slot = -1 })
	resuming := fa.machine("m-resume", "t", "m-paused", api.StateResuming)
	starting := fa.machine("m-start", "t", "", api.StateStarting)
	killing := fa.machine("m-kill", "t", "", api.StateKilling)
	other := fb.machine("m-other", "t", "", api.StateRunning)
	if running.Slot != 0 || other.Slot != 0 || running.NodeID != "na" || other.NodeID != "nb" {
		t.Fatalf("slots are per node: na's first %d (node %q), nb's first %d (node %q); want 0 and 0", running.Slot, running.NodeID, other.Slot, other.NodeID)
	}
	if got := fb.get("m-run"); got.NodeID != "na" {
		t.Fatalf("m-run read back with node %q, want na", got.NodeID)
	}
	mine, err := b.ListMachines(ctx, store.MachineFilter{NodeID: "na"})
	must(t, err)
	if got := ids(mine, func(m *store.Machine) string { return m.ID }); len(got) != 6 || slices.Contains(got, "m-other") {
		t.Fatalf("na's machines: %v", got)
	}

	losses, err := b.DeclareDead(ctx, time.Hour, "test")
	must(t, err)
	if len(losses) != 0 {
		t.Fatalf("no node is an hour late, but %d were declared dead", len(losses))
	}
	time.Sleep(1100 * time.Millisecond)
	_, err = b.Heartbeat(ctx, store.NodeCapacity{CPUs: 2, FreeSlots: 3})
	must(t, err)
	losses, err = b.DeclareDead(ctx, time.Second, "missed heartbeats")
	must(t, err)
	if len(losses) != 1 || losses[0].Node.ID != "na" || losses[0].Node.State != store.NodeDead || len(losses[0].Machines) != 5 {
		t.Fatalf("declared dead: %+v", losses)
	}
	byID := map[string]store.ReapedMachine{}
	for _, r := range losses[0].Machines {
		byID[r.Machine.ID] = r
	}
	if r := byID[resuming.ID]; !r.Deleted || r.From != api.StateResuming {
		t.Errorf("resuming execution: %+v, want deleted", r)
	}
	if r := byID[creating.ID]; !r.Deleted {
		t.Errorf("creating machine: %+v, want deleted", r)
	}
	for id, want := range map[string]string{running.ID: api.StateFailed, starting.ID: api.StateStopped, killing.ID: api.StateKilled, paused.ID: api.StatePaused, other.ID: api.StateRunning} {
		if got := fb.get(id); got.State != want {
			t.Errorf("%s after the reap: %s, want %s", id, got.State, want)
		}
	}
	if got := fb.get(running.ID); got.FailureReason != api.FailureNodeLost || got.Slot != -1 || got.EndedAt.IsZero() {
		t.Errorf("failed machine: reason %q, slot %d, ended %v", got.FailureReason, got.Slot, got.EndedAt)
	}
	if head, err := b.LineageHead(ctx, paused.ID); err != nil || head.ID != paused.ID || !head.Latest {
		t.Errorf("the undone resume's paused source is not its lineage's head again: %v %+v", err, head)
	}
	if _, err := b.GetMachine(ctx, creating.ID); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("undone create: %v, want not found", err)
	}

	// The dead node's writes fail, whatever they are.
	_, err = a.Heartbeat(ctx, store.NodeCapacity{})
	checkErr(t, "heartbeat of a dead node", err, errdefs.ErrUnavailable, errdefs.CodeNodeFenced)
	p := fa.get(paused.ID)
	p.TimeoutMS = 5
	checkErr(t, "write of a dead node", a.UpdateMachine(ctx, p), errdefs.ErrUnavailable, errdefs.CodeNodeFenced)
	checkErr(t, "insert of a dead node", a.CreateMachine(ctx, &store.Machine{ID: "late", TeamID: "t", State: api.StateCreating, CreatedAt: now()}, slots),
		errdefs.ErrUnavailable, errdefs.CodeNodeFenced)
	checkErr(t, "spare of a dead node", a.CreateSpare(ctx, &store.Spare{MachineID: "sp", ContainerID: "c", Shape: "{}", CreatedAt: now()}, slots),
		errdefs.ErrUnavailable, errdefs.CodeNodeFenced)

	// The node rejoins at the next epoch (a restart): the new handle
	// writes, the old epoch's does not.
	c := open()
	if n := join(t, c, "na"); n.Epoch != 2 || n.State != store.NodeLive {
		t.Fatalf("rejoin: %+v", n)
	}
	p = newFixture(t, c).get(paused.ID)
	p.TimeoutMS = 6
	must(t, c.UpdateMachine(ctx, p))
	checkErr(t, "write of an epoch rejoined past", a.UpdateMachine(ctx, fa.get(paused.ID)), errdefs.ErrUnavailable, errdefs.CodeNodeFenced)

	// Drained stays drained across a rejoin; leaving ends the fence.
	n, err := b.SetNodeDrained(ctx, "na", true)
	must(t, err)
	if !n.Drained {
		t.Fatalf("drain: %+v", n)
	}
	d := open()
	if n := join(t, d, "na"); !n.Drained || n.Epoch != 3 {
		t.Fatalf("a drained node's rejoin: %+v", n)
	}
	must(t, d.LeaveNode(ctx, "shutdown"))
	checkErr(t, "write of a node that left", d.UpdateMachine(ctx, newFixture(t, d).get(paused.ID)), errdefs.ErrUnavailable, errdefs.CodeNodeFenced)
	nodes, dbNow, err := b.ListNodes(ctx)
	must(t, err)
	if len(nodes) != 2 || nodes[0].ID != "na" || nodes[0].State != store.NodeLeft || nodes[1].ID != "nb" || nodes[1].State != store.NodeLive || nodes[1].Capacity.FreeSlots != 3 {
		t.Fatalf("nodes: %+v", nodes)
	}
	if age := dbNow.Sub(nodes[1].HeartbeatAt); age < 0 || age > time.Minute {
		t.Fatalf("nb's heartbeat is %s old by the database's clock", age)
	}
	_, err = b.GetNode(ctx, "nx")
	checkErr(t, "unknown node", err, errdefs.ErrNotFound, errdefs.CodeNodeNotFound)
}

// testFencedWriteRace: a node writing as fast as it can while another
// declares it dead leaves no execution of it live: each of its writes
// landed before the declaration (and was reaped) or failed.
func testFencedWriteRace(t *testing.T, open func() store.Store) {
	ctx := t.Context()
	a, b := open(), open()
	join(t, a, "na")
	time.Sleep(1100 * time.Millisecond)
	join(t, b, "nb")
	done := make(chan error, 1)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			m := &store.Machine{ID: fmt.Sprintf("race-%d", i), TeamID: "t", State: api.StateRunning, CreatedAt: now()}
			if err := a.CreateMachine(ctx, m, 100000); err != nil {
				done <- err
				return
			}
		}
	}()
	time.Sleep(50 * time.Millisecond)
	losses, err := b.DeclareDead(ctx, time.Second, "race")
	must(t, err)
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("na's writes go on 30 s after it was declared dead: they are not fenced")
	}
	checkErr(t, "na's write after it was declared dead", err, errdefs.ErrUnavailable, errdefs.CodeNodeFenced)
	if len(losses) != 1 || len(losses[0].Machines) == 0 {
		t.Fatalf("declared dead: %+v", losses)
	}
	live, err := b.ListMachines(ctx, store.MachineFilter{NodeID: "na", States: store.LiveStates})
	must(t, err)
	if len(live) != 0 {
		t.Fatalf("%d executions of the dead node are still live, e.g. %s (%s)", len(live), live[0].ID, live[0].State)
	}
}
