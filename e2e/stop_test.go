package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/client"
)

// mainScript counts its boots in /root/boots.log and, on SIGTERM, notes it
// in /root/term.log and exits 7. /root/trapped says its trap is set.
var mainScript = []string{"/bin/sh", "-c",
	"echo boot >> /root/boots.log; trap 'echo term >> /root/term.log; exit 7' TERM; touch /root/trapped; while :; do sleep 1; done"}

// waitTrapped waits until a main process has set its signal trap (it
// touches /root/trapped), so that a signal sent next meets it.
func waitTrapped(t *testing.T, id string) {
	t.Helper()
	run(t, id, "for i in $(seq 100); do [ -f /root/trapped ] && rm /root/trapped && exit 0; sleep 0.1; done; exit 1")
}

func stopMachine(t *testing.T, id string, grace time.Duration) *api.Machine {
	t.Helper()
	m, err := env.client.Stop(t.Context(), id, &grace)
	if err != nil {
		t.Fatalf("stop %s: %v", id, err)
	}
	if m.State != api.StateStopped {
		t.Fatalf("stop %s: state %s, want stopped", id, m.State)
	}
	return m
}

// TestStopStart: stop ends every process (the main one with SIGTERM, which
// it handles) and drops memory (/dev/shm), keeps the files, and holds no
// sandbox, slot or lease deadline; start boots the same id from its disk,
// runs the main process again, restarts the lease and drops the disk
// snapshot; wait returns the main process's exit.
func TestStopStart(t *testing.T) {
	from := lastSeq(t)
	m := newMachine(t, api.CreateMachineRequest{Template: "minimal", Command: mainScript, TimeoutMS: ptr(int64(600_000))})
	if m.MainPID <= 0 || len(m.Command) != 3 || m.Exit != nil {
		t.Fatalf("new machine's main process: pid %d, command %q, exit %+v", m.MainPID, m.Command, m.Exit)
	}
	waitTrapped(t, m.ID)
	run(t, m.ID, "echo kept > /root/keep.txt && echo gone > /dev/shm/mem.txt")
	bg, err := env.client.StartCommand(t.Context(), m.ID, api.RunCommandRequest{Shell: "sleep 1000", Background: true})
	if err != nil {
		t.Fatal(err)
	}

	s := stopMachine(t, m.ID, 10*time.Second)
	if s.ID != m.ID || s.IP != "" || s.MainPID != 0 || s.TimeoutAt != nil || s.RemainingMS != 600_000 {
		t.Fatalf("stopped machine: id %s, ip %q, main pid %d, timeout_at %v, remaining %d ms (want the whole window)",
			s.ID, s.IP, s.MainPID, s.TimeoutAt, s.RemainingMS)
	}
	if s.Exit == nil || s.Exit.ExitCode != 7 {
		t.Fatalf("main process exit after a stop = %+v, want exit code 7 (its TERM trap)", s.Exit)
	}
	exit, err := env.client.Wait(t.Context(), m.ID, 0)
	if err != nil || exit.ExitCode != 7 {
		t.Fatalf("wait on a stopped machine = %+v, %v; want exit code 7", exit, err)
	}
	disks, err := env.client.ListSnapshots(t.Context(), m.ID, api.SnapshotDisk)
	if err != nil || len(disks) != 1 || disks[0].ID != s.SnapshotID {
		t.Fatalf("disk snapshots of the stopped machine: %+v, %v (snapshot_id %s)", disks, err, s.SnapshotID)
	}
	_, err = env.client.RunCommand(t.Context(), m.ID, api.RunCommandRequest{Shell: "true"})
	wantCode(t, err, "machine_not_running")
	if !strings.Contains(err.Error(), "start") {
		t.Errorf("a command on a stopped machine should say to start it: %v", err)
	}
	if again := stopMachine(t, m.ID, 0); again.SnapshotID != s.SnapshotID {
		t.Fatalf("stopping a stopped machine made a new disk: %s, was %s", again.SnapshotID, s.SnapshotID)
	}
	_, err = env.client.CreateMachine(t.Context(), api.CreateMachineRequest{SnapshotID: s.SnapshotID})
	wantCode(t, err, "snapshot_wrong_kind")
	assertNoLeftovers(t) // a stopped machine holds nothing on the host

	r, err := env.client.Start(t.Context(), m.ID)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	if r.ID != m.ID || r.State != api.StateRunning || r.MainPID <= 0 || r.Exit != nil || r.TimeoutAt == nil {
		t.Fatalf("started machine: id %s, state %s, main pid %d, exit %+v, timeout_at %v", r.ID, r.State, r.MainPID, r.Exit, r.TimeoutAt)
	}
	if got := run(t, m.ID, "cat /root/keep.txt /root/term.log /root/boots.log"); got != "kept\nterm\nboot\nboot\n" {
		t.Fatalf("files after start = %q, want the file, one term and two boots", got)
	}
	if got := run(t, m.ID, "ls /dev/shm"); got != "" {
		t.Fatalf("/dev/shm after start = %q, want empty (memory is dropped)", got)
	}
	procs, err := env.client.ListProcesses(t.Context(), m.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range procs {
		if p.PID == bg || (p.Running && p.PID != r.MainPID && strings.Contains(strings.Join(p.Cmd, " "), "sleep 1000")) {
			t.Fatalf("process %+v survived the stop", p)
		}
	}
	if out := run(t, m.ID, `for f in /proc/[0-9]*/cmdline; do tr '\0' ' ' < $f; echo; done | grep -c 'sleep 10[0]0' || true`); strings.TrimSpace(out) != "0" {
		t.Fatalf("processes running sleep 1000 after start: %s, want 0", out)
	}
	disks, err = env.client.ListSnapshots(t.Context(), m.ID, api.SnapshotDisk)
	if err != nil || len(disks) != 0 {
		t.Fatalf("disk snapshots after start: %+v, %v; want none", disks, err)
	}

	// wait blocks while the main process runs, and returns when it exits.
	waitTrapped(t, m.ID)
	_, err = env.client.Wait(t.Context(), m.ID, 300*time.Millisecond)
	wantCode(t, err, "deadline_exceeded")
	done := make(chan struct{})
	var werr error
	go func() {
		defer close(done)
		exit, werr = env.client.Wait(context.Background(), m.ID, 0)
	}()
	if err := env.client.Signal(t.Context(), m.ID, r.MainPID, "SIGTERM"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("wait did not return after the main process exited")
	}
	if werr != nil || exit.ExitCode != 7 {
		t.Fatalf("wait = %+v, %v; want exit code 7", exit, werr)
	}
	if info := getMachine(t, m.ID); info.State != api.StateRunning || info.Exit == nil || info.Exit.ExitCode != 7 {
		t.Fatalf("after the main process exited: state %s, exit %+v (the machine keeps running)", info.State, info.Exit)
	}

	// A main process that ignores SIGTERM is killed when the grace ends.
	stubborn := newMachine(t, api.CreateMachineRequest{Template: "minimal",
		Command: []string{"/bin/sh", "-c", "trap '' TERM; touch /root/trapped; while :; do sleep 1; done"}})
	waitTrapped(t, stubborn.ID)
	t0 := time.Now()
	st := stopMachine(t, stubborn.ID, 500*time.Millisecond)
	if st.Exit == nil || st.Exit.Signal != "SIGKILL" || st.Exit.ExitCode != 137 {
		t.Fatalf("exit of a main process that ignores SIGTERM = %+v, want SIGKILL (137)", st.Exit)
	}
	if took := time.Since(t0); took > 20*time.Second {
		t.Fatalf("stop took %v", took)
	}

	// The events, in order.
	evs, err := env.client.ListEvents(t.Context(), client.EventQuery{After: from, MachineID: m.ID})
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, ev := range evs {
		if !strings.HasPrefix(ev.Type, "snapshot.") { // the disk snapshot's, and its upload's with an object store
			types = append(types, ev.Type)
		}
	}
	want := []string{api.EventMachineCreated, api.EventMachineStopped, api.EventMachineStarted, api.EventMachineExited}
	if strings.Join(types, " ") != strings.Join(want, " ") {
		t.Fatalf("events of the machine: %v, want %v", types, want)
	}

	// Kill works on a stopped machine and drops its disk.
	if _, err := env.client.KillMachine(t.Context(), stubborn.ID); err != nil {
		t.Fatal(err)
	}
	if disks, _ := env.client.ListSnapshots(t.Context(), stubborn.ID, ""); len(disks) != 0 {
		t.Fatalf("snapshots of a killed stopped machine: %+v", disks)
	}
	env.client.KillMachine(t.Context(), m.ID)
	assertNoLeftovers(t)
}

// TestStopRules: the refusals and edge cases of stop, start, wait and the
// main process.
func TestStopRules(t *testing.T) {
	plain := newMachine(t, api.CreateMachineRequest{Template: "minimal"})
	_, err := env.client.Wait(t.Context(), plain.ID, 0)
	wantCode(t, err, "machine_has_no_command")

	eph := newMachine(t, api.CreateMachineRequest{Template: "minimal", Persistence: api.PersistenceEphemeral})
	_, err = env.client.Stop(t.Context(), eph.ID, nil)
	wantCode(t, err, "machine_ephemeral")

	bad := time.Hour
	_, err = env.client.Stop(t.Context(), plain.ID, &bad)
	wantCode(t, err, "invalid_argument")

	// A command that cannot start fails the create, leaving nothing.
	_, err = env.client.CreateMachine(t.Context(), api.CreateMachineRequest{Template: "minimal", Command: []string{"/no/such/binary"}})
	wantCode(t, err, "command_not_found")
	_, err = env.client.CreateMachine(t.Context(), api.CreateMachineRequest{Template: "minimal", Command: []string{""}})
	wantCode(t, err, "invalid_argument")

	// connect starts a stopped machine (same id); a paused one cannot be
	// stopped; the main process survives a pause and wait follows the
	// lineage to the resumed id.
	m := newMachine(t, api.CreateMachineRequest{Template: "minimal", Command: mainScript})
	stopMachine(t, m.ID, time.Second)
	c, err := env.client.Connect(t.Context(), m.ID)
	if err != nil || c.ID != m.ID || c.State != api.StateRunning {
		t.Fatalf("connect to a stopped machine = %+v, %v; want it started under the same id", c, err)
	}
	pause(t, m.ID)
	_, err = env.client.Stop(t.Context(), m.ID, nil)
	wantCode(t, err, "machine_not_running")
	r, err := env.client.Connect(t.Context(), m.ID)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.client.KillMachine(context.Background(), r.ID) })
	if r.MainPID != c.MainPID {
		t.Fatalf("main pid after resume = %d, was %d", r.MainPID, c.MainPID)
	}
	waitTrapped(t, r.ID)
	if err := env.client.Signal(t.Context(), r.ID, r.MainPID, "SIGTERM"); err != nil {
		t.Fatal(err)
	}
	exit, err := env.client.Wait(t.Context(), m.ID, 30*time.Second) // the paused alias
	if err != nil || exit.ExitCode != 7 {
		t.Fatalf("wait through the alias = %+v, %v; want exit code 7", exit, err)
	}

	// A main process that exits on its own, with nobody waiting: the
	// machine shows its exit, and a stop keeps it.
	quick := newMachine(t, api.CreateMachineRequest{Template: "minimal", Command: []string{"/bin/sh", "-c", "exit 4"}})
	deadline := time.Now().Add(20 * time.Second)
	for getMachine(t, quick.ID).Exit == nil {
		if time.Now().After(deadline) {
			t.Fatal("the exit of the main process does not show in machine info")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if st := stopMachine(t, quick.ID, time.Second); st.Exit == nil || st.Exit.ExitCode != 4 || st.Exit.Signal != "" {
		t.Fatalf("stopped machine whose main process had exited: exit %+v, want code 4", st.Exit)
	}
	if exit, err := env.client.Wait(t.Context(), quick.ID, 0); err != nil || exit.ExitCode != 4 {
		t.Fatalf("wait on it = %+v, %v; want exit code 4", exit, err)
	}

	// Following the main process and waiting for it send no packets: an
	// idle machine with a waiter is suspended all the same, and the wait
	// goes on through the pause.
	idle := newMachine(t, api.CreateMachineRequest{Template: "minimal", Command: mainScript, IdleTimeoutMS: 2000})
	waitTrapped(t, idle.ID)
	waited := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		exit, err := env.client.Wait(ctx, idle.ID, 0)
		if err == nil && exit.ExitCode != 7 {
			err = fmt.Errorf("exit %+v, want code 7", exit)
		}
		waited <- err
	}()
	waitState(t, idle.ID, api.StatePaused, 30*time.Second)
	woken, err := env.client.Connect(t.Context(), idle.ID)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.client.KillMachine(context.Background(), woken.ID) })
	if err := env.client.Signal(t.Context(), woken.ID, woken.MainPID, "SIGTERM"); err != nil {
		t.Fatal(err)
	}
	if err := <-waited; err != nil {
		t.Fatalf("wait through an idle suspend: %v", err)
	}

	// A killed machine has no exit to wait for.
	k := newMachine(t, api.CreateMachineRequest{Template: "minimal", Command: mainScript})
	env.client.KillMachine(t.Context(), k.ID)
	_, err = env.client.Wait(t.Context(), k.ID, 0)
	wantCode(t, err, "machine_not_running")
	for _, id := range []string{plain.ID, eph.ID, r.ID, quick.ID, woken.ID} {
		env.client.KillMachine(t.Context(), id)
	}
	assertNoLeftovers(t)
}
