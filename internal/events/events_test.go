package events

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/store"
	"nullspace.dev/nullspace/internal/store/sqlstore"
)

func newLog(t *testing.T) *Log {
	t.Helper()
	db, err := sqlstore.Open(t.Context(), filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return New(db, slog.New(slog.NewTextHandler(io.Discard, nil)))
}

func emit(l *Log, typ, machine string) {
	l.Emit(context.Background(), api.Event{Type: typ, TeamID: "t", MachineID: machine, Cause: "api"})
}

// TestFollowResume: a follower gets the stored events, then new ones as
// they come; one that reconnects after a sequence number gets only the
// later ones, filters included.
func TestFollowResume(t *testing.T) {
	l := newLog(t)
	emit(l, api.EventMachineCreated, "a")
	emit(l, api.EventMachineCreated, "b")
	ctx, cancel := context.WithCancel(t.Context())
	got := make(chan api.Event, 10)
	done := make(chan error, 1)
	go func() {
		done <- l.Follow(ctx, store.EventFilter{TeamID: "t"}, func(ev api.Event) error { got <- ev; return nil })
	}()
	recv := func() api.Event {
		select {
		case ev := <-got:
			return ev
		case <-time.After(5 * time.Second):
			t.Fatal("no event")
			return api.Event{}
		}
	}
	if a, b := recv(), recv(); a.Seq != 1 || b.Seq != 2 || a.MachineID != "a" {
		t.Fatalf("stored events: %+v %+v", a, b)
	}
	emit(l, api.EventMachineKilled, "a")
	if ev := recv(); ev.Seq != 3 || ev.Type != api.EventMachineKilled {
		t.Fatalf("live event: %+v", ev)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// Reconnect after seq 1, only machine a.
	evs, err := l.List(t.Context(), store.EventFilter{TeamID: "t", MachineID: "a", After: 1})
	if err != nil || len(evs) != 1 || evs[0].Seq != 3 {
		t.Fatalf("resume after 1 for machine a: %+v, %v", evs, err)
	}
	evs, _ = l.List(t.Context(), store.EventFilter{TeamID: "other"})
	if len(evs) != 0 {
		t.Fatalf("another team sees %+v", evs)
	}
}

// TestWebhook: deliveries are signed, in order, retried while the endpoint
// fails, and resume from the stored cursor after a restart: an event
// emitted while the webhook was down is delivered, and an acknowledged one
// is not delivered again.
func TestWebhook(t *testing.T) {
	l := newLog(t)
	var mu sync.Mutex
	var seqs []int64
	failures := 2
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if r.Header.Get(SignatureHeader) != Sign("s3cret", body) {
			t.Errorf("bad signature %q", r.Header.Get(SignatureHeader))
		}
		mu.Lock()
		defer mu.Unlock()
		if failures > 0 {
			failures--
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		var ev api.Event
		json.Unmarshal(body, &ev)
		seqs = append(seqs, ev.Seq)
	}))
	defer srv.Close()
	delivered := func(n int) []int64 {
		deadline := time.Now().Add(10 * time.Second)
		for {
			mu.Lock()
			out := append([]int64(nil), seqs...)
			mu.Unlock()
			if len(out) >= n || time.Now().After(deadline) {
				return out
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	run := func() context.CancelFunc {
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		wh := &Webhook{Log: l, URL: srv.URL, Secret: "s3cret", MaxBackoff: 50 * time.Millisecond, Logger: l.logger}
		go func() { wh.Run(ctx); close(done) }()
		return func() { cancel(); <-done }
	}
	emit(l, api.EventMachineCreated, "a")
	emit(l, api.EventMachinePaused, "a")
	stop := run()
	if got := delivered(2); len(got) != 2 || got[0] != 1 || got[1] != 2 {
		t.Fatalf("delivered %v, want [1 2] after two failures", got)
	}
	stop()
	emit(l, api.EventMachineResumed, "a") // while the webhook is down
	stop = run()
	defer stop()
	// At least once: an event whose answer was cut off by the stop may come
	// again, never one acknowledged before it, and never out of order.
	got := delivered(3)
	for i := 1; i < len(got); i++ {
		if got[i] < got[i-1] {
			t.Fatalf("delivered out of order: %v", got)
		}
	}
	if len(got) < 3 || got[0] != 1 || got[1] != 2 || got[len(got)-1] != 3 || len(got) > 4 {
		t.Fatalf("after a restart delivered %v, want 1, 2 (maybe twice), 3", got)
	}
}
