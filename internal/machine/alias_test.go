package machine

import (
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
)

// TestAliasActsOnLatest: a call on a paused alias (an id its lineage moved
// on from) acts on the lineage's latest execution. A pause through the
// alias pauses the latest execution and answers its new snapshot (it used
// to answer the alias's old snapshot while the machine ran on); a kill
// through the alias, even racing a connect, ends the machine.
func TestAliasActsOnLatest(t *testing.T) {
	ctx := t.Context()
	m, d, db := newHangManager(t, healthyAgent(t))
	if err := os.WriteFile(filepath.Join(m.cfg.AgentDir, "nullspace-agent"), nil, 0o755); err != nil { // resumes check it
		t.Fatal(err)
	}
	addLeased(t, m, d, "a", time.Now().Add(time.Hour), false)
	first, err := m.Pause(ctx, "team", "a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := m.Connect(ctx, "team", "a")
	if err != nil {
		t.Fatal(err)
	}
	sn, err := m.Pause(ctx, "team", "a") // through the alias
	if err != nil {
		t.Fatal(err)
	}
	if sn.ID == first.ID || sn.MachineID != b.ID {
		t.Fatalf("pause through the alias answered %s of %s; want a new snapshot of the latest execution %s", sn.ID, sn.MachineID, b.ID)
	}
	if got, _ := db.GetMachine(ctx, b.ID); got.State != api.StatePaused {
		t.Fatalf("latest execution after a pause through the alias: %s, want paused", got.State)
	}
	if _, err := m.AgentEndpoint(ctx, "team", "a"); errdefs.Classify(err).Code != errdefs.CodeMachineNotRunning {
		t.Fatalf("agent calls through the alias of a paused machine: %v, want machine_not_running", err)
	}

	// A kill and a connect race on the alias: whichever runs first, the
	// machine ends killed (it used to survive, resumed, with the kill
	// answered 200).
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); m.Connect(ctx, "team", "a") }()
	go func() { defer wg.Done(); m.Kill(ctx, "team", "a") }()
	wg.Wait()
	head, err := m.lineageHead(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if head.State != api.StateKilled {
		t.Fatalf("after kill racing connect on the alias, the latest execution %s is %s, want killed", head.ID, head.State)
	}
	for _, id := range []string{"a", b.ID} {
		if got, _ := db.GetMachine(ctx, id); got.State != api.StateKilled {
			t.Fatalf("%s after the kill: %s, want killed", id, got.State)
		}
	}
}
