package machine

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/agent/agentclient"
	"nullspace.dev/nullspace/internal/store"
)

// TestFollowMain: a follower that gets an error from the agent asks again;
// when the main process exits it records the exit, and a Wait blocked on
// the machine returns it; a cancelled follower records nothing.
func TestFollowMain(t *testing.T) {
	ctx := t.Context()
	m, _, _, db := newTestManager(t)
	rec := &store.Machine{ID: "mch_main", TeamID: "team", State: api.StateRunning, Template: "minimal", CPUCount: 1, MemoryMB: 64,
		ContainerID: "c-main", AgentToken: "tok", Command: []string{"/bin/job"}}
	if err := db.CreateMachine(ctx, rec, 16); err != nil {
		t.Fatal(err)
	}
	if err := db.SetMain(ctx, rec.ID, 7); err != nil {
		t.Fatal(err)
	}

	var calls atomic.Int32
	exit := make(chan struct{})
	agent := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/commands/7/wait" {
			t.Errorf("agent got %s %s", r.Method, r.URL.Path)
		}
		if calls.Add(1) == 1 {
			w.WriteHeader(http.StatusServiceUnavailable) // the follower must ask again
			json.NewEncoder(w).Encode(api.Error{Code: "unavailable", Message: "busy"})
			return
		}
		select {
		case <-exit:
		case <-r.Context().Done():
			return
		}
		json.NewEncoder(w).Encode(api.MainExit{ExitCode: 3, At: time.Now()})
	}))
	defer agent.Close()

	waited := make(chan api.MainExit, 1)
	go func() {
		e, err := m.Wait(ctx, "team", rec.ID)
		if err != nil {
			t.Errorf("wait: %v", err)
		}
		waited <- e
	}()
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.followMain(ctx, rec.ID, rec.TeamID, 7, agentclient.New(agent.URL, "tok", nil))
	}()
	time.Sleep(mainRetry + 200*time.Millisecond) // past the retry
	select {
	case e := <-waited:
		t.Fatalf("wait returned %+v before the main process exited", e)
	default:
	}
	close(exit)
	select {
	case e := <-waited:
		if e.ExitCode != 3 {
			t.Fatalf("wait = %+v, want exit code 3", e)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("wait did not return the recorded exit")
	}
	<-done
	if got, err := db.GetMachine(ctx, rec.ID); err != nil || got.MainExit == nil || got.MainExit.ExitCode != 3 {
		t.Fatalf("recorded exit: %+v, %v", got, err)
	}
	if n := calls.Load(); n != 2 {
		t.Fatalf("agent asked %d times, want 2 (one failure, one answer)", n)
	}

	// A follower cancelled before the exit records nothing.
	if err := db.SetMain(ctx, rec.ID, 8); err != nil {
		t.Fatal(err)
	}
	blocked := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }))
	defer blocked.Close()
	cctx, cancel := context.WithCancel(ctx)
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		m.followMain(cctx, rec.ID, rec.TeamID, 8, agentclient.New(blocked.URL, "tok", nil))
	}()
	cancel()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("a cancelled follower did not end")
	}
	if got, _ := db.GetMachine(ctx, rec.ID); got.MainExit != nil {
		t.Fatalf("a cancelled follower recorded %+v", got.MainExit)
	}
}
