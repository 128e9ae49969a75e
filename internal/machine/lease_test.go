package machine

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/runtime"
	"nullspace.dev/nullspace/internal/store"
	"nullspace.dev/nullspace/internal/store/sqlstore"
)

func ms(d time.Duration) *int64 { v := d.Milliseconds(); return &v }

// TestValidateLease: defaults, bounds, and the auto_resume rule at create.
func TestValidateLease(t *testing.T) {
	for _, tc := range []struct {
		name     string
		req      api.CreateMachineRequest
		code     string
		wantMS   int64
		wantPlcy string
	}{
		{name: "defaults", req: api.CreateMachineRequest{}, wantMS: 300000, wantPlcy: api.TimeoutDestroy},
		{name: "long window", req: api.CreateMachineRequest{TimeoutMS: ms(1000 * time.Hour)}, wantMS: (1000 * time.Hour).Milliseconds(), wantPlcy: api.TimeoutDestroy},
		{name: "a year", req: api.CreateMachineRequest{TimeoutMS: &[]int64{api.MaxDurationMS}[0]}, wantMS: api.MaxDurationMS, wantPlcy: api.TimeoutDestroy},
		{name: "over a year", req: api.CreateMachineRequest{TimeoutMS: &[]int64{api.MaxDurationMS + 1}[0]}, code: errdefs.CodeInvalidArgument},
		// Seen on a live server: 10^13 ms overflowed the deadline, which
		// destroyed the machine within 2.5 s.
		{name: "overflowing", req: api.CreateMachineRequest{TimeoutMS: &[]int64{10_000_000_000_000}[0]}, code: errdefs.CodeInvalidArgument},
		{name: "hibernate means pause", req: api.CreateMachineRequest{OnTimeout: "hibernate"}, wantMS: 300000, wantPlcy: api.TimeoutPause},
		{name: "pause with auto_resume", req: api.CreateMachineRequest{OnTimeout: "pause", AutoResume: true}, wantMS: 300000, wantPlcy: api.TimeoutPause},
		{name: "stop", req: api.CreateMachineRequest{OnTimeout: "stop"}, wantMS: 300000, wantPlcy: api.TimeoutStop},
		// The edge starts a stopped machine with auto_resume as it
		// resumes a paused one: its id stays.
		{name: "stop with auto_resume", req: api.CreateMachineRequest{OnTimeout: "stop", AutoResume: true}, wantMS: 300000, wantPlcy: api.TimeoutStop},
		{name: "too short", req: api.CreateMachineRequest{TimeoutMS: ms(10 * time.Millisecond)}, code: errdefs.CodeInvalidArgument},
		{name: "zero", req: api.CreateMachineRequest{TimeoutMS: ms(0)}, code: errdefs.CodeInvalidArgument},
		{name: "unknown policy", req: api.CreateMachineRequest{OnTimeout: "explode"}, code: errdefs.CodeInvalidArgument},
		{name: "auto_resume with destroy", req: api.CreateMachineRequest{AutoResume: true}, code: errdefs.CodeAutoResumeNeedsPause},
		{name: "auto_resume with explicit destroy", req: api.CreateMachineRequest{OnTimeout: "destroy", AutoResume: true}, code: errdefs.CodeAutoResumeNeedsPause},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := tc.req
			err := validateLease(&req)
			if tc.code != "" {
				if got := errdefs.Classify(err).Code; got != tc.code {
					t.Fatalf("err = %v (code %s), want code %s", err, got, tc.code)
				}
				return
			}
			if err != nil || *req.TimeoutMS != tc.wantMS || req.OnTimeout != tc.wantPlcy {
				t.Fatalf("got %v, %d ms, %q; want %d ms, %q", err, *req.TimeoutMS, req.OnTimeout, tc.wantMS, tc.wantPlcy)
			}
		})
	}
}

// TestLeaseOf: a running lease counts down and clamps at 0; a paused one
// shows the window it will get and no deadline.
func TestLeaseOf(t *testing.T) {
	now := time.Now()
	running := &store.Machine{TimeoutMS: 60000, OnTimeout: api.TimeoutPause, Deadline: now.Add(20 * time.Second)}
	l := LeaseOf(running, now)
	if l.TimeoutAt == nil || l.RemainingMS != 20000 || l.TimeoutAction != api.TimeoutHibernate || l.TimeoutMS != 60000 {
		t.Fatalf("running lease = %+v", l)
	}
	if l := LeaseOf(running, now.Add(time.Minute)); l.RemainingMS != 0 {
		t.Fatalf("past deadline remaining = %d, want 0", l.RemainingMS)
	}
	paused := &store.Machine{TimeoutMS: 60000, OnTimeout: api.TimeoutDestroy}
	if l := LeaseOf(paused, now); l.TimeoutAt != nil || l.RemainingMS != 60000 || l.TimeoutAction != api.TimeoutDestroy {
		t.Fatalf("paused lease = %+v", l)
	}
	stops := &store.Machine{TimeoutMS: 60000, OnTimeout: api.TimeoutStop, Deadline: now.Add(time.Second)}
	if l := LeaseOf(stops, now); l.TimeoutAction != api.TimeoutStop {
		t.Fatalf("stop-on-timeout lease action = %s, want stop", l.TimeoutAction)
	}
}

// TestValidateLeaseMessages: a refused policy says which ones there are.
func TestValidateLeaseMessages(t *testing.T) {
	req := api.CreateMachineRequest{OnTimeout: "nap"}
	p := errdefs.Classify(validateLease(&req))
	if !strings.Contains(p.SuggestedAction, `"stop"`) || !strings.Contains(p.SuggestedAction, `"pause"`) {
		t.Fatalf("unknown on_timeout: %q / %q, want the policies named", p.Message, p.SuggestedAction)
	}
	req = api.CreateMachineRequest{OnTimeout: "destroy", AutoResume: true}
	if p := errdefs.Classify(validateLease(&req)); !strings.Contains(p.SuggestedAction, `"stop"`) {
		t.Fatalf("auto_resume with destroy: %q / %q, want stop offered", p.Message, p.SuggestedAction)
	}
}

// addLeased stores a running machine with a container and a deadline.
func addLeased(t *testing.T, m *Manager, d *fakeDriver, id string, deadline time.Time, autoResume bool) *store.Machine {
	t.Helper()
	rec := &store.Machine{ID: id, TeamID: "team", State: api.StateRunning, Template: "minimal", CPUCount: 1, MemoryMB: 64,
		ContainerID: "c-" + id, AgentToken: "x", CreatedAt: time.Now(), TimeoutMS: 60000, OnTimeout: api.TimeoutDestroy,
		Deadline: deadline, AutoResume: autoResume}
	if autoResume {
		rec.OnTimeout = api.TimeoutPause
	}
	if err := m.store.CreateMachine(t.Context(), rec, 16); err != nil {
		t.Fatal(err)
	}
	d.containers[rec.ContainerID] = runtime.StatusRunning
	return rec
}

// TestSetTimeout: a refresh moves the deadline to the window from now and
// echoes it; destroy on an auto-resumable machine is refused.
func TestSetTimeout(t *testing.T) {
	ctx := t.Context()
	m, d, _, db := newTestManager(t)
	addLeased(t, m, d, "a", time.Now().Add(time.Second), false)
	rec, err := m.SetTimeout(ctx, "team", "a", api.SetTimeoutRequest{TimeoutMS: (10 * time.Hour).Milliseconds(), TimeoutAction: "hibernate"})
	if err != nil {
		t.Fatal(err)
	}
	if left := time.Until(rec.Deadline); left < 9*time.Hour || rec.OnTimeout != api.TimeoutPause {
		t.Fatalf("after refresh: deadline in %v, on_timeout %s", left, rec.OnTimeout)
	}
	if at, ok := m.leases.Deadline("a"); !ok || !at.Equal(rec.Deadline) {
		t.Fatalf("scheduled %v %v, want %v", at, ok, rec.Deadline)
	}
	stored, _ := db.GetMachine(ctx, "a")
	if !stored.Deadline.Equal(rec.Deadline) {
		t.Fatalf("stored deadline %v, want %v", stored.Deadline, rec.Deadline)
	}

	addLeased(t, m, d, "auto", time.Now().Add(time.Minute), true)
	_, err = m.SetTimeout(ctx, "team", "auto", api.SetTimeoutRequest{TimeoutMS: 60000, TimeoutAction: "destroy"})
	if errdefs.Classify(err).Code != errdefs.CodeAutoResumeNeedsPause {
		t.Fatalf("destroy on auto-resumable: %v", err)
	}
	rec, err = m.SetTimeout(ctx, "team", "auto", api.SetTimeoutRequest{TimeoutMS: 60000, TimeoutAction: "stop"})
	if err != nil || rec.OnTimeout != api.TimeoutStop {
		t.Fatalf("stop on auto-resumable: %+v, %v; want on_timeout stop", rec, err)
	}
	if stored, _ := db.GetMachine(ctx, "auto"); stored.OnTimeout != api.TimeoutStop {
		t.Fatalf("stored on_timeout after timeout_action stop = %s", stored.OnTimeout)
	}
	for _, bad := range []api.SetTimeoutRequest{{TimeoutMS: 10}, {TimeoutMS: 60000, TimeoutAction: "nap"}} {
		if _, err := m.SetTimeout(ctx, "team", "a", bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Fatalf("SetTimeout(%+v) = %v, want invalid argument", bad, err)
		}
	}
}

// TestExpireDestroys: leases found at start that passed while the server
// was down fire at once; racing expiries and a kill make exactly one
// transition; a refreshed lease does not fire.
func TestExpireDestroys(t *testing.T) {
	ctx := t.Context()
	m, d, _, db := newTestManager(t)
	addLeased(t, m, d, "past", time.Now().Add(-time.Hour), false)
	addLeased(t, m, d, "later", time.Now().Add(time.Hour), false)
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { m.RunLeases(runCtx); close(done) }()
	defer func() { cancel(); <-done }()
	waitState(t, db, "past", api.StateKilled)
	if rec, _ := db.GetMachine(ctx, "later"); rec.State != api.StateRunning {
		t.Fatalf("machine with a lease in an hour is %s", rec.State)
	}

	// Two expiries and a kill race on one machine whose lease passed.
	addLeased(t, m, d, "race", time.Now().Add(-time.Second), false)
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() { defer wg.Done(); m.expire("race") }()
	}
	wg.Add(1)
	go func() { defer wg.Done(); m.Kill(ctx, "team", "race") }()
	wg.Wait()
	if rec, _ := db.GetMachine(ctx, "race"); rec.State != api.StateKilled {
		t.Fatalf("raced machine is %s", rec.State)
	}
	if _, ok := d.containers["c-race"]; ok {
		t.Fatal("raced machine's container is left")
	}

	// A refresh that lands before the expiry looks wins.
	addLeased(t, m, d, "refreshed", time.Now().Add(-time.Second), false)
	if _, err := m.SetTimeout(ctx, "team", "refreshed", api.SetTimeoutRequest{TimeoutMS: 60000}); err != nil {
		t.Fatal(err)
	}
	m.expire("refreshed")
	if rec, _ := db.GetMachine(ctx, "refreshed"); rec.State != api.StateRunning {
		t.Fatalf("refreshed machine is %s", rec.State)
	}
}

// TestExpireStops: a stop-on-timeout machine whose lease passed is stopped
// as POST .../stop stops it: its processes are ended through the agent, its
// files kept in a disk snapshot, its sandbox and deadline gone, the same id
// stopped. An ephemeral one keeps nothing: it is destroyed.
func TestExpireStops(t *testing.T) {
	ctx := t.Context()
	port, calls := recordingAgent(t)
	m, d, db := newHangManager(t, port)
	for id, persistence := range map[string]string{"s": api.PersistencePersistent, "eph": api.PersistenceEphemeral} {
		rec := &store.Machine{ID: id, TeamID: "team", State: api.StateRunning, Template: "minimal", CPUCount: 1, MemoryMB: 64,
			ContainerID: "c-" + id, AgentToken: "x", CreatedAt: time.Now(), TimeoutMS: 60000, OnTimeout: api.TimeoutStop,
			Deadline: time.Now().Add(-time.Second), Persistence: persistence}
		if err := db.CreateMachine(ctx, rec, 16); err != nil {
			t.Fatal(err)
		}
		d.containers[rec.ContainerID] = runtime.StatusRunning
	}

	m.expire("s")
	got, _ := db.GetMachine(ctx, "s")
	if got.State != api.StateStopped || got.SnapshotID == "" || !got.Deadline.IsZero() {
		t.Fatalf("after its lease: %s on %q, deadline %v; want stopped on a disk, no deadline", got.State, got.SnapshotID, got.Deadline)
	}
	if sn, err := db.GetSnapshot(ctx, got.SnapshotID); err != nil || sn.Kind != api.SnapshotDisk {
		t.Fatalf("snapshot of the stopped machine: %+v, %v; want kind disk", sn, err)
	}
	if !slices.Contains(calls(), "/lifecycle/stop") {
		t.Fatalf("agent calls %v: the processes were not ended", calls())
	}
	if _, ok := d.containers["c-s"]; ok {
		t.Fatal("the stopped machine's container is left")
	}
	if ev := eventOf(t, db, "s", api.EventMachineTimeout); ev["on_timeout"] != api.TimeoutStop {
		t.Fatalf("timeout event %v, want on_timeout stop", ev)
	}
	evs, err := db.ListEvents(ctx, store.EventFilter{MachineID: "s"})
	if err != nil || len(evs) == 0 || evs[len(evs)-1].Type != api.EventMachineStopped || evs[len(evs)-1].Cause != "timeout" {
		t.Fatalf("events of the lease-stopped machine: %+v, %v; want machine.stopped with cause timeout last", evs, err)
	}

	m.expire("eph")
	if got, _ := db.GetMachine(ctx, "eph"); got.State != api.StateKilled {
		t.Fatalf("ephemeral stop-on-timeout machine after its lease: %s, want killed", got.State)
	}
}

func waitState(t *testing.T, db *sqlstore.DB, id, state string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		rec, err := db.GetMachine(t.Context(), id)
		if err == nil && rec.State == state {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("machine %s: %+v, %v; want state %s", id, rec, err, state)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestValidatePersistence: the default, the policies, and ephemeral without
// auto_resume.
func TestValidatePersistence(t *testing.T) {
	for _, tc := range []struct {
		req  api.CreateMachineRequest
		want string // policy, or the error code
	}{
		{api.CreateMachineRequest{}, api.PersistencePersistent},
		{api.CreateMachineRequest{Persistence: "sticky"}, api.PersistenceSticky},
		{api.CreateMachineRequest{Persistence: "ephemeral"}, api.PersistenceEphemeral},
		{api.CreateMachineRequest{Persistence: "forever"}, errdefs.CodeInvalidArgument},
		{api.CreateMachineRequest{Persistence: "ephemeral", AutoResume: true, OnTimeout: "pause"}, errdefs.CodeInvalidArgument},
	} {
		req := tc.req
		err := validatePersistence(&req)
		got := req.Persistence
		if err != nil {
			got = errdefs.Classify(err).Code
		}
		if got != tc.want {
			t.Errorf("validatePersistence(%+v) = %q, want %q", tc.req, got, tc.want)
		}
	}
	eph := &store.Machine{TimeoutMS: 1000, OnTimeout: api.TimeoutPause, Persistence: api.PersistenceEphemeral}
	if l := LeaseOf(eph, time.Now()); l.TimeoutAction != api.TimeoutDestroy {
		t.Errorf("ephemeral pause-on-timeout lease action = %s, want destroy", l.TimeoutAction)
	}
}
