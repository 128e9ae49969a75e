package retention

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"
)

type fakeStore struct {
	endedBefore  time.Time
	eventsBefore time.Time
	keep         int
	notAfter     int64
	events       bool
	// idempotentBefore: every pass prunes the responses kept a day.
	idempotentBefore time.Time
	auditBefore      time.Time
	auditKeep        int
}

func (f *fakeStore) PruneAudit(_ context.Context, before time.Time, keep int) (int64, error) {
	f.auditBefore, f.auditKeep = before, keep
	return 0, nil
}

func (f *fakeStore) PruneEnded(_ context.Context, before time.Time) (int64, error) {
	f.endedBefore = before
	return 1, nil
}

func (f *fakeStore) PruneEvents(_ context.Context, before time.Time, keep int, notAfter int64) (int64, error) {
	f.events, f.eventsBefore, f.keep, f.notAfter = true, before, keep, notAfter
	return 2, nil
}

func (f *fakeStore) Cursor(context.Context, string) (int64, error) { return 42, nil }
func (f *fakeStore) PruneIdempotent(_ context.Context, before time.Time) (int64, error) {
	f.idempotentBefore = before
	return 0, nil
}

func TestPrune(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, tc := range []struct {
		name string
		cfg  Config
		want fakeStore
	}{
		{"everything", Config{Ended: 24 * time.Hour, EventsAge: time.Hour, EventsMax: 5, Consumer: "webhook", AuditAge: 48 * time.Hour, AuditMax: 7},
			fakeStore{endedBefore: now.Add(-24 * time.Hour), eventsBefore: now.Add(-time.Hour), keep: 5, notAfter: 42, events: true,
				auditBefore: now.Add(-48 * time.Hour), auditKeep: 7}},
		{"no consumer", Config{EventsMax: 5}, fakeStore{keep: 5, notAfter: 1<<63 - 1, events: true}},
		{"nothing", Config{}, fakeStore{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var f fakeStore
			Prune(t.Context(), tc.cfg, &f, log, now)
			tc.want.idempotentBefore = now.Add(-24 * time.Hour)
			if f != tc.want {
				t.Fatalf("got %+v, want %+v", f, tc.want)
			}
		})
	}
}
