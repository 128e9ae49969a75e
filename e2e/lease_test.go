package e2e

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/client"
)

func ptr[T any](v T) *T { return &v }

// waitState polls a machine until it reaches state.
func waitState(t *testing.T, id, state string, within time.Duration) *api.Machine {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		m := getMachine(t, id)
		if m.State == state {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("machine %s is %s after %v, want %s", id, m.State, within, state)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestTimeoutDestroy: a machine whose lease ends is destroyed, and shows
// its deadline until then.
func TestTimeoutDestroy(t *testing.T) {
	m := newMachine(t, api.CreateMachineRequest{Template: "minimal", TimeoutMS: ptr(int64(2000))})
	if m.TimeoutMS != 2000 || m.TimeoutAt == nil || m.RemainingMS > 2000 || m.RemainingMS < 1000 || m.TimeoutAction != api.TimeoutDestroy {
		t.Fatalf("new machine's lease: %d ms, at %v, %d ms left, %s", m.TimeoutMS, m.TimeoutAt, m.RemainingMS, m.TimeoutAction)
	}
	// get_info never renews.
	first := getMachine(t, m.ID).TimeoutAt
	time.Sleep(200 * time.Millisecond)
	if again := getMachine(t, m.ID).TimeoutAt; again == nil || !again.Equal(*first) {
		t.Fatalf("get moved the deadline: %v then %v", first, again)
	}
	waitState(t, m.ID, api.StateKilled, 10*time.Second)
	evs, err := env.client.ListEvents(t.Context(), client.EventQuery{MachineID: m.ID,
		Types: []string{api.EventMachineTimeout, api.EventMachineKilled}})
	if err != nil || len(evs) != 2 || evs[0].Type != api.EventMachineTimeout || evs[1].Cause != "timeout" {
		t.Fatalf("events of the timed-out machine: %+v, %v", evs, err)
	}
	assertNoLeftovers(t)
}

// TestTimeoutPause: at the end of its lease a pause-on-timeout machine is
// hibernated; its lease does not run while paused; connect resumes it with
// its own window, files intact.
func TestTimeoutPause(t *testing.T) {
	m := newMachine(t, api.CreateMachineRequest{Template: "minimal", TimeoutMS: ptr(int64(3000)),
		OnTimeout: api.TimeoutPause, AutoResume: true})
	run(t, m.ID, "echo kept > /root/keep.txt")
	paused := waitState(t, m.ID, api.StatePaused, 15*time.Second)
	if paused.SnapshotID == "" || paused.TimeoutAt != nil || paused.RemainingMS != 3000 || !paused.AutoResume {
		t.Fatalf("paused by its lease: snapshot %q, at %v, %d ms left, auto_resume %v", paused.SnapshotID, paused.TimeoutAt, paused.RemainingMS, paused.AutoResume)
	}
	// The lease is frozen: the machine stays paused, not destroyed.
	time.Sleep(4 * time.Second)
	if st := getMachine(t, m.ID).State; st != api.StatePaused {
		t.Fatalf("paused machine became %s while its lease was frozen", st)
	}
	start := time.Now()
	r, err := env.client.Connect(t.Context(), m.ID)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.client.KillMachine(context.Background(), r.ID) })
	if r.TimeoutMS != 3000 || r.TimeoutAt == nil || r.TimeoutAt.Before(start.Add(2*time.Second)) {
		t.Fatalf("resumed machine's lease: %d ms, at %v (resumed at %v); want its own 3 s window from the resume", r.TimeoutMS, r.TimeoutAt, start)
	}
	if got := run(t, r.ID, "cat /root/keep.txt"); got != "kept\n" {
		t.Fatalf("file after the timeout pause = %q", got)
	}
	// Keep it alive past its original window, then let it pause again.
	if _, err := env.client.SetTimeout(t.Context(), r.ID, time.Minute, ""); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3500 * time.Millisecond)
	if st := getMachine(t, r.ID).State; st != api.StateRunning {
		t.Fatalf("refreshed machine is %s", st)
	}
	if _, err := env.client.SetTimeout(t.Context(), m.ID, 2*time.Second, api.TimeoutHibernate); err != nil {
		t.Fatal(err)
	}
	waitState(t, r.ID, api.StatePaused, 15*time.Second)
	if _, err := env.client.KillMachine(t.Context(), m.ID); err != nil {
		t.Fatal(err)
	}
	assertNoLeftovers(t)
}

// TestTimeoutStop: at the end of its lease a stop-on-timeout machine is
// stopped under its own id (the lease's filesystem-only pause, E2B's
// keepMemory false): files kept, no deadline while stopped; start boots it
// afresh, without the process that ran before, with its window anew.
func TestTimeoutStop(t *testing.T) {
	m := newMachine(t, api.CreateMachineRequest{Template: "minimal", TimeoutMS: ptr(int64(600_000)), OnTimeout: api.TimeoutStop})
	if m.OnTimeout != api.TimeoutStop || m.TimeoutAction != api.TimeoutStop {
		t.Fatalf("new machine: on_timeout %q, timeout_action %q; want stop", m.OnTimeout, m.TimeoutAction)
	}
	run(t, m.ID, "echo kept > /root/keep.txt")
	bg, err := env.client.StartCommand(t.Context(), m.ID, api.RunCommandRequest{Shell: "sleep 1000", Background: true})
	if err != nil {
		t.Fatal(err)
	}
	// A 1 s window from now, once the file and the process are there; the
	// refresh keeps the action.
	if l, err := env.client.SetTimeout(t.Context(), m.ID, time.Second, ""); err != nil || l.TimeoutAction != api.TimeoutStop {
		t.Fatalf("refresh: %+v, %v; want timeout_action stop", l, err)
	}
	s := waitState(t, m.ID, api.StateStopped, 30*time.Second)
	if s.SnapshotID == "" || s.TimeoutAt != nil || s.RemainingMS != 1000 {
		t.Fatalf("stopped by its lease: snapshot %q, at %v, %d ms left; want a disk, no deadline, the 1 s window", s.SnapshotID, s.TimeoutAt, s.RemainingMS)
	}
	evs, err := env.client.ListEvents(t.Context(), client.EventQuery{MachineID: m.ID,
		Types: []string{api.EventMachineTimeout, api.EventMachineStopped}})
	if err != nil || len(evs) != 2 || evs[0].Type != api.EventMachineTimeout || evs[1].Cause != "timeout" {
		t.Fatalf("events of the lease-stopped machine: %+v, %v", evs, err)
	}
	// A refresh of a stopped machine sets the window its start gets,
	// without starting it.
	if l, err := env.client.SetTimeout(t.Context(), m.ID, 10*time.Minute, ""); err != nil || l.TimeoutAt != nil || getMachine(t, m.ID).State != api.StateStopped {
		t.Fatalf("refresh of the stopped machine: %+v, %v; want it left stopped", l, err)
	}
	r, err := env.client.Start(t.Context(), m.ID)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() { env.client.KillMachine(context.Background(), m.ID) })
	if r.ID != m.ID || r.State != api.StateRunning {
		t.Fatalf("started: %s %s, want %s running", r.ID, r.State, m.ID)
	}
	if got := run(t, m.ID, "cat /root/keep.txt"); got != "kept\n" {
		t.Fatalf("file after the lease's stop = %q, want kept", got)
	}
	procs, err := env.client.ListProcesses(t.Context(), m.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range procs {
		if p.PID == bg || strings.Contains(strings.Join(p.Cmd, " "), "sleep 1000") {
			t.Fatalf("process %+v survived the lease's stop", p)
		}
	}
	if out := run(t, m.ID, `for f in /proc/[0-9]*/cmdline; do tr '\0' ' ' < $f; echo; done | grep -c 'sleep 10[0]0' || true`); strings.TrimSpace(out) != "0" {
		t.Fatalf("processes running sleep 1000 after start: %s, want 0", out)
	}
	// The lease stops it again after a start.
	if _, err := env.client.SetTimeout(t.Context(), m.ID, time.Second, ""); err != nil {
		t.Fatal(err)
	}
	waitState(t, m.ID, api.StateStopped, 30*time.Second)
	if _, err := env.client.KillMachine(t.Context(), m.ID); err != nil {
		t.Fatal(err)
	}
	assertNoLeftovers(t)
}

// TestSetTimeout: the refresh echoes the lease, info shows the same, and the
// auto_resume rules are enforced at create and on refresh.
func TestSetTimeout(t *testing.T) {
	m := newMachine(t, api.CreateMachineRequest{Template: "minimal"})
	if m.TimeoutMS != 300000 || m.OnTimeout != api.TimeoutDestroy {
		t.Fatalf("default lease: %d ms, %s", m.TimeoutMS, m.OnTimeout)
	}
	before := time.Now()
	l, err := env.client.SetTimeout(t.Context(), m.ID, 10*time.Hour, api.TimeoutHibernate)
	if err != nil {
		t.Fatal(err)
	}
	if l.TimeoutMS != (10*time.Hour).Milliseconds() || l.TimeoutAction != api.TimeoutHibernate || l.TimeoutAt == nil ||
		l.TimeoutAt.Before(before.Add(10*time.Hour)) || l.RemainingMS < (10*time.Hour-time.Minute).Milliseconds() {
		t.Fatalf("lease echo: %+v", l)
	}
	info := getMachine(t, m.ID)
	if info.TimeoutAt == nil || !info.TimeoutAt.Equal(*l.TimeoutAt) || info.TimeoutAction != api.TimeoutHibernate {
		t.Fatalf("info after refresh: at %v, action %s; lease said %v", info.TimeoutAt, info.TimeoutAction, l.TimeoutAt)
	}

	// The CLI takes seconds and prints the lease.
	code, out, errOut := nullspace(t, "", "--json", "machine", "timeout", m.ID, "90", "--action", "destroy")
	var cl api.Lease
	if code != 0 || json.Unmarshal([]byte(out), &cl) != nil || cl.TimeoutMS != 90000 || cl.TimeoutAction != api.TimeoutDestroy {
		t.Fatalf("nullspace machine timeout: %d %q %q", code, out, errOut)
	}

	_, err = env.client.CreateMachine(t.Context(), api.CreateMachineRequest{Template: "minimal", AutoResume: true})
	wantCode(t, err, "auto_resume_requires_pause")
	_, err = env.client.CreateMachine(t.Context(), api.CreateMachineRequest{Template: "minimal", TimeoutMS: ptr(int64(5))})
	wantCode(t, err, "invalid_argument")
	a := newMachine(t, api.CreateMachineRequest{Template: "minimal", OnTimeout: api.TimeoutPause, AutoResume: true})
	_, err = env.client.SetTimeout(t.Context(), a.ID, time.Minute, api.TimeoutDestroy)
	wantCode(t, err, "auto_resume_requires_pause")
	if l, err := env.client.SetTimeout(t.Context(), a.ID, time.Minute, ""); err != nil || l.TimeoutAction != api.TimeoutHibernate {
		t.Fatalf("refresh keeping the action: %+v, %v", l, err)
	}
	code, _, errOut = nullspace(t, "", "machine", "create", "--template", "minimal", "--auto-resume")
	if code == 0 || !strings.Contains(errOut, "auto_resume_requires_pause") {
		t.Fatalf("CLI create --auto-resume without pause: %d %q", code, errOut)
	}
}

// TestLeaseAcrossRestart: deadlines live in the store. One that passed
// while the server was down fires as soon as it is back; one still ahead
// keeps its deadline.
func TestLeaseAcrossRestart(t *testing.T) {
	short := newMachine(t, api.CreateMachineRequest{Template: "minimal", TimeoutMS: ptr(int64(3000))})
	long := newMachine(t, api.CreateMachineRequest{Template: "minimal", TimeoutMS: ptr(int64(120000))})
	if err := env.inst.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(4 * time.Second) // short's deadline passes while the server is down
	if err := restartServer(); err != nil {
		t.Fatalf("restart: %v", err)
	}
	waitState(t, short.ID, api.StateKilled, 10*time.Second)
	after := getMachine(t, long.ID)
	if after.State != api.StateRunning || after.TimeoutAt == nil || !after.TimeoutAt.Equal(*long.TimeoutAt) {
		t.Fatalf("long lease after the restart: %s, at %v; want running, at %v", after.State, after.TimeoutAt, long.TimeoutAt)
	}
	evs, err := env.client.ListEvents(t.Context(), client.EventQuery{MachineID: short.ID, Types: []string{api.EventMachineTimeout}})
	if err != nil || len(evs) != 1 {
		t.Fatalf("timeout events of the machine that expired while the server was down: %+v, %v", evs, err)
	}
}

// TestLeaseRacesPause: a manual pause sent at the moment the lease pauses
// the machine: exactly one pause happens.
func TestLeaseRacesPause(t *testing.T) {
	m := newMachine(t, api.CreateMachineRequest{Template: "minimal", TimeoutMS: ptr(int64(2000)), OnTimeout: api.TimeoutPause})
	time.Sleep(time.Until(m.TimeoutAt.Add(-20 * time.Millisecond)))
	_, err := env.client.Pause(t.Context(), m.ID)
	if err != nil {
		wantCode(t, err, "conflict") // the lease's pause was under way
	}
	waitState(t, m.ID, api.StatePaused, 15*time.Second)
	time.Sleep(time.Second) // a second pause, if there were one, would be done
	snaps, err := env.client.ListSnapshots(t.Context(), m.ID, api.SnapshotHibernate)
	if err != nil || len(snaps) != 1 {
		t.Fatalf("hibernate snapshots after a racing pause and lease: %+v, %v", snaps, err)
	}
	evs, err := env.client.ListEvents(t.Context(), client.EventQuery{MachineID: m.ID, Types: []string{api.EventMachinePaused}})
	if err != nil || len(evs) != 1 {
		t.Fatalf("paused events: %+v, %v", evs, err)
	}
	if _, err := env.client.KillMachine(t.Context(), m.ID); err != nil {
		t.Fatal(err)
	}
}
