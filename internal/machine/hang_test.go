package machine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/events"
	"nullspace.dev/nullspace/internal/store"
	"nullspace.dev/nullspace/internal/store/sqlstore"
)

// silentAgent is an agent that accepts connections and never answers:
// what a wedged machine, or one whose network another server took, looks
// like from the host. It returns the port.
func silentAgent(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c) // read nothing, answer nothing
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().(*net.TCPAddr).Port
}

// healthyAgent answers every call with {"ok":true}, as an agent's /health.
func healthyAgent(t *testing.T) int {
	port, _ := recordingAgent(t)
	return port
}

// recordingAgent is healthyAgent, and the paths it was called on, in order.
func recordingAgent(t *testing.T) (int, func() []string) {
	t.Helper()
	var mu sync.Mutex
	var paths []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		paths = append(paths, r.URL.Path)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"ok":true}`)
	}))
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	n, _ := strconv.Atoi(port)
	return n, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), paths...)
	}
}

// newHangManager is newTestManager with the agent at port and events
// recorded.
func newHangManager(t *testing.T, port int) (*Manager, *fakeDriver, *sqlstore.DB) {
	t.Helper()
	m, d, _, db := newManagerWith(t, func(cfg *Config, db *sqlstore.DB) {
		cfg.AgentPort = port
		cfg.Events = events.New(db, slog.New(slog.NewTextHandler(io.Discard, nil)))
	})
	t.Cleanup(func() { m.Shutdown(context.Background()) })
	return m, d, db
}

// shorten sets *v to d for the test.
func shorten(t *testing.T, v *time.Duration, d time.Duration) {
	old := *v
	*v = d
	t.Cleanup(func() { *v = old })
}

// within runs fn and fails the test if it takes longer than limit.
func within[T any](t *testing.T, limit time.Duration, what string, fn func() (T, error)) (T, error) {
	t.Helper()
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := fn()
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		return r.v, r.err
	case <-time.After(limit):
		t.Fatalf("%s did not return within %s", what, limit)
	}
	var zero T
	return zero, errors.New("unreachable")
}

// eventOf returns the details of the newest event of type typ about id.
func eventOf(t *testing.T, db *sqlstore.DB, id, typ string) map[string]any {
	t.Helper()
	evs, err := db.ListEvents(t.Context(), store.EventFilter{MachineID: id})
	if err != nil {
		t.Fatal(err)
	}
	for i := len(evs) - 1; i >= 0; i-- {
		if evs[i].Type == typ {
			return evs[i].Details
		}
	}
	t.Fatalf("no %s event of machine %s in %d events", typ, id, len(evs))
	return nil
}

// TestPauseWithSilentAgent: a pause (the lease's, or an API call) whose
// agent accepts and never answers does not wait for it: the pre-pause call
// gives up at its deadline and the checkpoint is taken without the hooks;
// the event says the hooks were skipped. The machine ends paused, never
// stays pausing.
func TestPauseWithSilentAgent(t *testing.T) {
	shorten(t, &agentSlack, 200*time.Millisecond)
	m, d, db := newHangManager(t, silentAgent(t))
	rec := addLeased(t, m, d, "a", time.Now().Add(time.Hour), false)
	rec.Hooks = api.Hooks{OnPause: []string{"sync"}}
	shorten(t, &hookBudget, 100*time.Millisecond)

	sn, err := within(t, 5*time.Second, "pause", func() (*store.Snapshot, error) { return m.Pause(t.Context(), "team", "a") })
	if err != nil {
		t.Fatalf("pause with a silent agent: %v", err)
	}
	got, _ := db.GetMachine(t.Context(), "a")
	if got.State != api.StatePaused || got.SnapshotID != sn.ID {
		t.Fatalf("after the pause: %s on %s, want paused on %s", got.State, got.SnapshotID, sn.ID)
	}
	if ev := eventOf(t, db, "a", api.EventMachinePaused); ev["hooks_skipped"] == nil {
		t.Fatalf("paused event %v does not say the hooks were skipped", ev)
	}

	// The lease's pause does the same.
	addLeased(t, m, d, "b", time.Now().Add(-time.Second), true)
	within(t, 5*time.Second, "lease expiry", func() (struct{}, error) { m.expire("b"); return struct{}{}, nil })
	if got, _ := db.GetMachine(t.Context(), "b"); got.State != api.StatePaused {
		t.Fatalf("lease-paused machine with a silent agent is %s, want paused", got.State)
	}
}

// TestKillWins: a kill cancels a pause in flight, which is undone, and
// completes within seconds; the pause answers that the machine was killed.
// The pause hangs in runsc's checkpoint, or in its call into an agent that
// accepts and never answers (with deadlines far longer than the test).
func TestKillWins(t *testing.T) {
	for _, hang := range []string{"runsc", "agent"} {
		t.Run(hang, func(t *testing.T) { testKillWins(t, hang) })
	}
}

// hangingPause is a manager whose pauses hang, in runsc's checkpoint
// ("runsc") or in the call into an agent that accepts and never answers
// ("agent"), with deadlines far longer than a test; and the function that
// waits until a pause of machine id hangs there.
func hangingPause(t *testing.T, hang string) (*Manager, *fakeDriver, *sqlstore.DB, func(id string)) {
	shorten(t, &agentSlack, time.Hour)
	port := healthyAgent(t)
	if hang == "agent" {
		port = silentAgent(t)
	}
	m, d, db := newHangManager(t, port)
	started := make(chan struct{}, 1)
	if hang == "runsc" {
		d.checkpoint = func(ctx context.Context) error {
			started <- struct{}{}
			<-ctx.Done() // a checkpoint that would never end
			return ctx.Err()
		}
	}
	return m, d, db, func(id string) {
		if hang == "runsc" {
			<-started
			return
		}
		waitState(t, db, id, api.StatePausing) // then in the agent call
		time.Sleep(50 * time.Millisecond)
	}
}

func testKillWins(t *testing.T, hang string) {
	m, d, db, hanging := hangingPause(t, hang)
	addLeased(t, m, d, "a", time.Now().Add(time.Hour), false)
	paused := make(chan error, 1)
	go func() {
		_, err := m.Pause(context.Background(), "team", "a")
		paused <- err
	}()
	hanging("a")

	if _, err := within(t, 5*time.Second, "kill during a hanging pause", func() (*store.Machine, error) {
		return m.Kill(t.Context(), "team", "a")
	}); err != nil {
		t.Fatalf("kill: %v", err)
	}
	if err := <-paused; errdefs.Classify(err).Code != errdefs.CodeMachineNotRunning {
		t.Fatalf("the preempted pause answered %v (%s), want machine_not_running", err, errdefs.Classify(err).Code)
	}
	if got, _ := db.GetMachine(t.Context(), "a"); got.State != api.StateKilled {
		t.Fatalf("after the kill: %s, want killed", got.State)
	}
	if _, ok := d.containers["c-a"]; ok {
		t.Fatal("the killed machine's container is left")
	}
}

// TestLockWaitsWithContext: a caller waiting for a lineage that another
// operation holds gives up when its context ends.
func TestLockWaitsWithContext(t *testing.T) {
	m, _, _, _ := newTestManager(t)
	unlock, err := m.lock(t.Context(), lineageKey("l"))
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if _, err := m.lock(ctx, lineageKey("l")); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("lock of a held lineage after the caller's deadline: %v, want a conflict", err)
	}
	if _, err := m.Connect(ctx, "team", "nope"); errdefs.Classify(err).Code != errdefs.CodeMachineNotFound {
		t.Fatalf("connect of an unknown machine: %v", err)
	}
}

// TestPreemptedAtOnce: an operation that fails the moment a kill preempts
// it (on a context made from its own, which a preempt cancels first) says
// it was killed, never an internal error, however late the goroutine that
// cancels its outer context runs. CI saw the 500 in TestPruneRaces.
func TestPreemptedAtOnce(t *testing.T) {
	m, _, _, _ := newTestManager(t)
	for i := range 200 {
		key := lineageKey(fmt.Sprint("l", i))
		opCtx, unlock, err := m.lockOp(t.Context(), key)
		if err != nil {
			t.Fatal(err)
		}
		inner, stop := preemptible(context.WithoutCancel(opCtx))
		done := m.preempt(key, errKilled)
		<-inner.Done()
		err = interrupted(opCtx, "m", "checkpoint", context.Cause(inner))
		if got := errdefs.Classify(err).Code; got != errdefs.CodeMachineNotRunning {
			t.Fatalf("try %d: an operation preempted by a kill answered %v (%s), want machine_not_running", i, err, got)
		}
		stop()
		unlock()
		done()
	}
}

// TestShutdownBounded: the manager's shutdown cancels a lease's pause that
// hangs in runsc, or in an agent that never answers (the machine keeps
// running), and returns at once.
func TestShutdownBounded(t *testing.T) {
	for _, hang := range []string{"runsc", "agent"} {
		t.Run(hang, func(t *testing.T) { testShutdownBounded(t, hang) })
	}
}

func testShutdownBounded(t *testing.T, hang string) {
	m, d, db, hanging := hangingPause(t, hang)
	addLeased(t, m, d, "a", time.Now().Add(-time.Second), true)
	m.background(func() { m.expire("a") })
	hanging("a")
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if _, err := within(t, 3*time.Second, "shutdown", func() (struct{}, error) { return struct{}{}, m.Shutdown(ctx) }); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if got, _ := db.GetMachine(t.Context(), "a"); got.State != api.StateRunning {
		t.Fatalf("machine whose pause the shutdown cancelled is %s, want running", got.State)
	}
	// Nothing starts after the shutdown.
	if _, err := m.Pause(t.Context(), "team", "a"); errdefs.Classify(err).Code != errdefs.CodeUnavailable {
		t.Fatalf("pause after shutdown: %v, want unavailable", err)
	}
}

// TestSilentMachineFails: a running machine whose agent has not answered
// for AgentSilence fails with reason agent_unresponsive and an event, its
// resources freed; one that answers is left alone.
func TestSilentMachineFails(t *testing.T) {
	m, d, db := newHangManager(t, silentAgent(t))
	m.cfg.AgentSilence = 100 * time.Millisecond
	rec := addLeased(t, m, d, "a", time.Now().Add(time.Hour), false)
	m.probeAgents(t.Context(), []*store.Machine{rec}) // first silence
	time.Sleep(150 * time.Millisecond)
	m.probeAgents(t.Context(), []*store.Machine{rec})
	got, _ := db.GetMachine(t.Context(), "a")
	if got.State != api.StateFailed || got.FailureReason != api.FailureAgentUnresponsive || got.Error == "" {
		t.Fatalf("silent machine: %s %q %q, want failed agent_unresponsive", got.State, got.FailureReason, got.Error)
	}
	if ev := eventOf(t, db, "a", api.EventMachineFailed); ev["reason"] != api.FailureAgentUnresponsive {
		t.Fatalf("failed event %v, want reason agent_unresponsive", ev)
	}
	if _, ok := d.containers["c-a"]; ok {
		t.Fatal("the failed machine's container is left")
	}

	m2, d2, db2 := newHangManager(t, healthyAgent(t))
	m2.cfg.AgentSilence = time.Nanosecond
	rec2 := addLeased(t, m2, d2, "b", time.Now().Add(time.Hour), false)
	m2.probeAgents(t.Context(), []*store.Machine{rec2})
	m2.probeAgents(t.Context(), []*store.Machine{rec2})
	if got, _ := db2.GetMachine(t.Context(), "b"); got.State != api.StateRunning {
		t.Fatalf("machine whose agent answers is %s", got.State)
	}
}

// TestLeasePauseGivesUp: a lease whose pause (or stop) fails (runsc refuses the
// checkpoint) tries again, and after maxLeasePauses failures in a row the
// machine fails with reason pause_failed, naming its last checkpoint,
// instead of being tried every 30 s for ever.
func TestLeasePauseGivesUp(t *testing.T) {
	for _, onTimeout := range []string{api.TimeoutPause, api.TimeoutStop} {
		t.Run(onTimeout, func(t *testing.T) { testLeasePauseGivesUp(t, onTimeout) })
	}
}

func testLeasePauseGivesUp(t *testing.T, onTimeout string) {
	m, d, db := newHangManager(t, healthyAgent(t))
	rec := addLeased(t, m, d, "a", time.Now().Add(time.Hour), true)
	if _, err := m.Checkpoint(t.Context(), "team", "a"); err != nil { // the last good state
		t.Fatal(err)
	}
	d.checkpoint = func(context.Context) error { return errors.New("runsc: checkpoint failed") }
	rec, err := db.GetMachine(t.Context(), "a") // the checkpoint wrote it
	if err != nil {
		t.Fatal(err)
	}
	rec.Deadline = time.Now().Add(-time.Second)
	rec.OnTimeout = onTimeout
	if err := db.UpdateMachine(t.Context(), rec); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= maxLeasePauses; i++ {
		m.expire("a")
		got, _ := db.GetMachine(t.Context(), "a")
		if want := api.StateRunning; i < maxLeasePauses && got.State != want {
			t.Fatalf("after %d failed lease pauses: %s, want %s", i, got.State, want)
		}
		got.Deadline = time.Now().Add(-time.Second) // the retry is due
		db.UpdateMachine(t.Context(), got)
	}
	got, _ := db.GetMachine(t.Context(), "a")
	if got.State != api.StateFailed || got.FailureReason != api.FailurePauseFailed {
		t.Fatalf("after %d failed lease pauses: %s %q, want failed pause_failed", maxLeasePauses, got.State, got.FailureReason)
	}
	if want := map[string]string{api.TimeoutPause: "pauses", api.TimeoutStop: "stops"}[onTimeout]; !strings.Contains(got.Error, want) {
		t.Fatalf("failure %q does not say the lease's %s failed", got.Error, want)
	}
	if ev := eventOf(t, db, "a", api.EventMachineFailed); ev["last_checkpoint"] == nil {
		t.Fatalf("failed event %v does not name the last checkpoint", ev)
	}
}

// TestKillDuringResume: a kill cancels a connect's resume in flight (here
// runsc's restore hangs): the resume is undone, nothing of it is left, the
// connect answers that the machine was killed (not an internal error), and
// the machine ends killed.
func TestKillDuringResume(t *testing.T) {
	m, d, db := newHangManager(t, healthyAgent(t))
	if err := os.WriteFile(filepath.Join(m.cfg.AgentDir, "nullspace-agent"), nil, 0o755); err != nil { // resumes check it
		t.Fatal(err)
	}
	addLeased(t, m, d, "a", time.Now().Add(time.Hour), false)
	if _, err := m.Pause(t.Context(), "team", "a"); err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{}, 1)
	d.restore = func(ctx context.Context) error {
		started <- struct{}{}
		<-ctx.Done() // a restore that would never end
		return ctx.Err()
	}
	connected := make(chan error, 1)
	go func() {
		_, err := m.Connect(context.Background(), "team", "a")
		connected <- err
	}()
	<-started
	if _, err := within(t, 5*time.Second, "kill during a hanging resume", func() (*store.Machine, error) {
		return m.Kill(t.Context(), "team", "a")
	}); err != nil {
		t.Fatalf("kill: %v", err)
	}
	if err := <-connected; errdefs.Classify(err).Code != errdefs.CodeMachineNotRunning {
		t.Fatalf("the preempted connect answered %v (%s), want machine_not_running", err, errdefs.Classify(err).Code)
	}
	recs, _ := db.ListMachines(t.Context(), store.MachineFilter{LineageID: "a"})
	for _, r := range recs {
		if r.State != api.StateKilled {
			t.Errorf("machine %s of the lineage is %s after the kill, want killed", r.ID, r.State)
		}
	}
	if len(d.containers) != 0 {
		t.Errorf("containers left: %v", d.containers)
	}
}
