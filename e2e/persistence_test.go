package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
)

// TestPersistence: over the snapshot budget (6 MiB for the e2e server) the
// paused states and stopped disks of sticky machines are evicted oldest
// first, and an evicted machine says so; persistent ones are never evicted;
// an ephemeral machine cannot be paused and is destroyed where it would be.
func TestPersistence(t *testing.T) {
	killAll() // only this test's snapshots count against the budget
	// 3.3 MB of random bytes in memory: each paused state is over half the
	// 6 MiB budget whatever an idle machine's state compresses to.
	const ballast = "head -c 3300000 /dev/urandom > /dev/shm/ballast"
	a := newMachine(t, api.CreateMachineRequest{Template: "minimal", Persistence: api.PersistenceSticky})
	if a.Persistence != api.PersistenceSticky {
		t.Fatalf("persistence = %q", a.Persistence)
	}
	run(t, a.ID, ballast)
	pause(t, a.ID)
	b := newMachine(t, api.CreateMachineRequest{Template: "minimal", Persistence: api.PersistenceSticky})
	run(t, b.ID, ballast)
	pause(t, b.ID)
	evicted := waitState(t, a.ID, api.StateFailed, 10*time.Second)
	if !strings.Contains(evicted.Error, "evicted") {
		t.Fatalf("evicted machine's error = %q", evicted.Error)
	}
	_, err := env.client.Connect(t.Context(), a.ID)
	wantCode(t, err, "machine_not_running")
	if !strings.Contains(err.Error(), "evicted") {
		t.Fatalf("connect to an evicted machine: %v", err)
	}
	if st := getMachine(t, b.ID).State; st != api.StatePaused {
		t.Fatalf("newer sticky machine is %s", st)
	}

	c := newMachine(t, api.CreateMachineRequest{Template: "minimal"})
	run(t, c.ID, "echo kept > /root/keep.txt; "+ballast)
	pause(t, c.ID)
	waitState(t, b.ID, api.StateFailed, 10*time.Second)
	r, err := env.client.Connect(t.Context(), c.ID)
	if err != nil {
		t.Fatalf("persistent machine after evictions: %v", err)
	}
	t.Cleanup(func() { env.client.KillMachine(context.Background(), r.ID) })
	if got := run(t, r.ID, "cat /root/keep.txt"); got != "kept\n" {
		t.Fatalf("persistent machine's file = %q", got)
	}

	e := newMachine(t, api.CreateMachineRequest{Template: "minimal", Persistence: api.PersistenceEphemeral,
		TimeoutMS: ptr(int64(2000)), OnTimeout: api.TimeoutPause})
	_, err = env.client.Pause(t.Context(), e.ID)
	wantCode(t, err, "machine_ephemeral")
	waitState(t, e.ID, api.StateKilled, 10*time.Second)
	snaps, err := env.client.ListSnapshots(t.Context(), e.ID, "")
	if err != nil || len(snaps) != 0 {
		t.Fatalf("snapshots of an ephemeral machine: %+v, %v", snaps, err)
	}
	_, err = env.client.CreateMachine(t.Context(), api.CreateMachineRequest{Template: "minimal", Persistence: "forever"})
	wantCode(t, err, "invalid_argument")

	for _, id := range []string{a.ID, b.ID, r.ID} {
		env.client.KillMachine(t.Context(), id)
	}

	// A sticky machine's stopped disk is evicted like a paused state.
	killAll()
	s1 := newMachine(t, api.CreateMachineRequest{Template: "minimal", Persistence: api.PersistenceSticky})
	stopMachine(t, s1.ID, 0)
	for range 2 {
		p := newMachine(t, api.CreateMachineRequest{Template: "minimal", Persistence: api.PersistenceSticky})
		run(t, p.ID, ballast)
		pause(t, p.ID)
	}
	evicted = waitState(t, s1.ID, api.StateFailed, 10*time.Second)
	if !strings.Contains(evicted.Error, "stopped disk") {
		t.Fatalf("evicted stopped machine's error = %q", evicted.Error)
	}
	_, err = env.client.Start(t.Context(), s1.ID)
	wantCode(t, err, "machine_not_running")
	killAll()
	assertNoLeftovers(t)
}
