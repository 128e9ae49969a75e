package e2e

import (
	"context"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/client"
)

// TestIdleSuspend: a machine with an idle timeout stays running while API
// calls reach it or packets go through its interface, is paused once
// neither happens for the timeout, records a machine.idle event, and
// wakes with connect.
func TestIdleSuspend(t *testing.T) {
	m := newMachine(t, api.CreateMachineRequest{Template: "minimal", IdleTimeoutMS: 2000})
	if m.IdleTimeoutMS != 2000 {
		t.Fatalf("idle_timeout_ms = %d", m.IdleTimeoutMS)
	}
	run(t, m.ID, "echo kept > /root/keep.txt")
	// API calls keep it awake.
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(400 * time.Millisecond) {
		run(t, m.ID, "true")
	}
	if st := getMachine(t, m.ID).State; st != api.StateRunning {
		t.Fatalf("machine with API calls is %s", st)
	}
	// Packets through its interface keep it awake: a loop that knocks on
	// the host side of its veth (refused at once by the firewall).
	run(t, m.ID, `gw=$(awk '/nameserver/{print $2}' /etc/resolv.conf); (i=0; while [ $i -lt 15 ]; do nc -w 1 $gw 9 </dev/null; sleep 0.2; i=$((i+1)); done) >/dev/null 2>&1 &`)
	time.Sleep(3 * time.Second)
	if st := getMachine(t, m.ID).State; st != api.StateRunning {
		t.Fatalf("machine with network traffic is %s", st)
	}
	// Nothing: it is paused.
	paused := waitState(t, m.ID, api.StatePaused, 20*time.Second)
	if paused.SnapshotID == "" {
		t.Fatalf("idle machine paused without a snapshot: %+v", paused)
	}
	evs, err := env.client.ListEvents(t.Context(), client.EventQuery{MachineID: m.ID, Types: []string{api.EventMachineIdle, api.EventMachinePaused}})
	if err != nil || len(evs) != 2 || evs[0].Type != api.EventMachineIdle || evs[1].Cause != "idle" {
		t.Fatalf("events of the idle machine: %+v, %v", evs, err)
	}
	r, err := env.client.Connect(t.Context(), m.ID)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.client.KillMachine(context.Background(), r.ID) })
	if got := run(t, r.ID, "cat /root/keep.txt"); got != "kept\n" {
		t.Fatalf("file after idle suspend = %q", got)
	}
	if r.IdleTimeoutMS != 2000 {
		t.Fatalf("resumed machine's idle_timeout_ms = %d", r.IdleTimeoutMS)
	}
	if _, err := env.client.KillMachine(t.Context(), m.ID); err != nil {
		t.Fatal(err)
	}
	assertNoLeftovers(t)
}
