package audit

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"nullspace.dev/nullspace/internal/store"
)

type memStore struct {
	mu      sync.Mutex
	entries []store.AuditEntry
}

func (m *memStore) AppendAudit(_ context.Context, e store.AuditEntry) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.entries = append(m.entries, e)
	return nil
}

func (m *memStore) ListAudit(context.Context, store.AuditFilter) ([]store.AuditEntry, error) {
	return nil, nil
}

func (m *memStore) wait(t *testing.T, n int) []store.AuditEntry {
	t.Helper()
	for range 200 {
		m.mu.Lock()
		got := append([]store.AuditEntry(nil), m.entries...)
		m.mu.Unlock()
		if len(got) >= n {
			return got
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("%d entries written, want %d", len(m.entries), n)
	return nil
}

// TestFold: a flood of refusals of one source, target and outcome is one
// entry, and one more that counts the rest once the minute is over;
// another source gets its own.
func TestFold(t *testing.T) {
	st := &memStore{}
	l := New(st, slog.New(slog.DiscardHandler))
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	l.now = func() time.Time { return now }
	denied := Entry{Target: "GET /v1/machines", Outcome: "unauthenticated", Source: "10.0.0.1"}
	for range 1000 {
		l.Denied(t.Context(), denied)
	}
	other := denied
	other.Source = "10.0.0.2"
	l.Denied(t.Context(), other)
	got := st.wait(t, 2)
	if len(got) != 2 || got[0].Action != RequestDenied || got[0].Outcome != "unauthenticated" {
		t.Fatalf("entries during the flood: %+v", got)
	}
	now = now.Add(foldWindow + time.Second)
	l.Flush(t.Context(), false)
	got = st.wait(t, 3)
	if len(got) != 3 || !strings.Contains(got[2].Details, `"folded":999`) || got[2].Source != "10.0.0.1" {
		t.Fatalf("entries after the minute: %+v", got)
	}
	if len(l.folds) != 0 {
		t.Fatalf("%d runs kept after the flush", len(l.folds))
	}
}

// TestRecord: a change is written at once with its actor and details, in
// order of time (ids sort by time).
func TestRecord(t *testing.T) {
	st := &memStore{}
	l := New(st, slog.New(slog.DiscardHandler))
	for i, a := range []string{KeyCreate, KeyRevoke} {
		if err := l.Record(t.Context(), Entry{TeamID: "t", ActorKeyID: "ak_1", Action: a, Target: "ak_2", Source: "127.0.0.1",
			Details: map[string]int{"i": i}}); err != nil {
			t.Fatal(err)
		}
	}
	got := st.wait(t, 2)
	if got[0].Outcome != "ok" || got[1].Details != `{"i":1}` || !(got[0].ID < got[1].ID) {
		t.Fatalf("entries %+v", got)
	}
	var nilLog *Log
	if err := nilLog.Record(t.Context(), Entry{Action: KeyCreate}); err != nil {
		t.Fatalf("a nil log: %v", err)
	}
}

type blockingStore struct{ release chan struct{} }

func (b *blockingStore) AppendAudit(ctx context.Context, e store.AuditEntry) error {
	select {
	case <-b.release:
	case <-ctx.Done():
	}
	return nil
}

func (b *blockingStore) ListAudit(context.Context, store.AuditFilter) ([]store.AuditEntry, error) {
	return nil, nil
}

// TestFloodBounded: refusals on paths and with keys of the client's
// choosing, from one source, are one entry; from many sources, a slow
// store costs a bounded queue, not a goroutine each.
func TestFloodBounded(t *testing.T) {
	st := &blockingStore{release: make(chan struct{})}
	defer close(st.release)
	l := New(st, slog.New(slog.DiscardHandler))
	before := runtime.NumGoroutine()
	for i := range 5000 {
		l.Denied(t.Context(), Entry{Source: "203.0.113.9", Target: fmt.Sprintf("GET /v1/machines/x%d", i),
			ActorKeyID: fmt.Sprintf("ns_%06x", i), Outcome: "unauthenticated"})
	}
	if n := len(l.folds); n != 1 {
		t.Fatalf("%d runs for one source and outcome, want 1", n)
	}
	for i := range 5000 {
		l.Denied(t.Context(), Entry{Source: fmt.Sprintf("10.0.%d.%d", i/256, i%256), Target: "GET /v1/machines", Outcome: "unauthenticated"})
	}
	if n := runtime.NumGoroutine() - before; n > 5 {
		t.Errorf("%d goroutines after 5000 refusals on a store that does not answer, want at most a writer", n)
	}
	if l.dropped == 0 {
		t.Error("no refusal dropped with the queue full")
	}
}
