// Package audit records who changed keys, teams, quotas and policy, and
// which requests were refused: who, what, when, from where, and how it
// ended. The operator reads it (GET /v1/audit); retention bounds it.
//
// Refusals come from outside and can come fast (a client with a bad key
// in a loop, on paths of its choosing), so they are folded: one entry per
// source, outcome and team (of a valid key) a minute (the first's target
// and key stand for the rest), and the next says how many it stood for; a flood costs a map
// entry, not a write per request. Their writes go through one writer with
// a bounded queue: a slow store drops entries (counted in the log), never
// piles up goroutines.
package audit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"nullspace.dev/nullspace/internal/store"
)

// Actions.
const (
	KeyCreate     = "key.create"
	KeyRevoke     = "key.revoke"
	TeamCreate    = "team.create"
	TeamDelete    = "team.delete"
	QuotaSet      = "quota.set"
	RequestDenied = "request.denied"
)

// foldWindow is how long refusals of one source, target and outcome share
// an entry.
const foldWindow = time.Minute

// maxFolds bounds the refusals being folded (a flood of sources).
const maxFolds = 10000

// queueLen bounds the refusals waiting to be written.
const queueLen = 1024

// Store is where entries go.
type Store interface {
	AppendAudit(ctx context.Context, e store.AuditEntry) error
	ListAudit(ctx context.Context, f store.AuditFilter) ([]store.AuditEntry, error)
}

// Log writes audit entries.
type Log struct {
	store Store
	log   *slog.Logger
	now   func() time.Time

	mu      sync.Mutex
	folds   map[string]*fold
	dropped int // refusals not written: the queue was full

	queue      chan store.AuditEntry
	startQueue sync.Once
}

type fold struct {
	entry store.AuditEntry
	n     int
	until time.Time
}

// New returns a log over st.
func New(st Store, logger *slog.Logger) *Log {
	return &Log{store: st, log: logger, now: time.Now, folds: map[string]*fold{}, queue: make(chan store.AuditEntry, queueLen)}
}

// Entry is what a caller records.
type Entry struct {
	TeamID, ActorTeamID, ActorKeyID string
	Action, Target, Outcome, Source string
	Details                         any // marshalled to JSON; nil for none
}

// Record writes e now. A write that fails is logged, and the error
// returned: the change it records has been made, so callers log it rather
// than undo the change.
func (l *Log) Record(ctx context.Context, e Entry) error {
	if l == nil {
		return nil
	}
	rec := l.entry(e)
	if err := l.store.AppendAudit(context.WithoutCancel(ctx), rec); err != nil {
		l.log.ErrorContext(ctx, "audit entry not written", "action", e.Action, "target", e.Target, "err", err)
		return fmt.Errorf("audit %s: %w", e.Action, err)
	}
	return nil
}

// Denied records a refused request, folded with the others of its
// source, target and outcome in the last minute.
func (l *Log) Denied(ctx context.Context, e Entry) {
	if l == nil {
		return
	}
	e.Action = RequestDenied
	now := l.now()
	// The team of a valid key is the server's to say, not the client's:
	// a refusal of one team's key is not folded into another team's.
	key := e.Source + "\x00" + e.Outcome + "\x00" + e.TeamID
	l.mu.Lock()
	defer l.mu.Unlock()
	if f, ok := l.folds[key]; ok && now.Before(f.until) {
		f.n++
		return
	}
	if len(l.folds) >= maxFolds {
		l.flushLocked(ctx, now, true)
	}
	l.folds[key] = &fold{entry: l.entry(e), n: 1, until: now.Add(foldWindow)}
	// The first of a run is written at once; those folded into it are
	// counted on its successor entry (or at Flush).
	l.write(ctx, l.folds[key].entry)
}

// Flush writes a count of the refusals folded since each run's first
// entry, for the runs whose window has ended (all of them with all).
func (l *Log) Flush(ctx context.Context, all bool) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.flushLocked(ctx, l.now(), all)
}

func (l *Log) flushLocked(ctx context.Context, now time.Time, all bool) {
	if l.dropped > 0 {
		l.log.WarnContext(ctx, "audit entries of refused requests dropped: the store is slower than they come", "dropped", l.dropped)
		l.dropped = 0
	}
	for k, f := range l.folds {
		if !all && now.Before(f.until) {
			continue
		}
		if f.n > 1 {
			e := f.entry
			e.ID, e.Time = newID(now), now.UTC()
			e.Details = fmt.Sprintf(`{"folded":%d,"since":%q}`, f.n-1, f.entry.Time.Format(time.RFC3339))
			l.write(ctx, e)
		}
		delete(l.folds, k)
	}
}

// write queues e for the writer; with the queue full, e is dropped and
// counted (the caller holds l.mu).
func (l *Log) write(ctx context.Context, e store.AuditEntry) {
	l.startQueue.Do(func() { go l.writer(context.WithoutCancel(ctx)) })
	select {
	case l.queue <- e:
	default:
		l.dropped++
	}
}

// writer appends the queued entries, one at a time.
func (l *Log) writer(ctx context.Context) {
	for e := range l.queue {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if err := l.store.AppendAudit(wctx, e); err != nil {
			l.log.WarnContext(wctx, "audit entry of a refused request not written", "err", err)
		}
		cancel()
	}
}

// Run flushes folded refusals every window until ctx ends.
func (l *Log) Run(ctx context.Context) {
	t := time.NewTicker(foldWindow)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			l.Flush(context.WithoutCancel(ctx), true)
			return
		case <-t.C:
			l.Flush(ctx, false)
		}
	}
}

// List returns entries newest first.
func (l *Log) List(ctx context.Context, f store.AuditFilter) ([]store.AuditEntry, error) {
	return l.store.ListAudit(ctx, f)
}

func (l *Log) entry(e Entry) store.AuditEntry {
	now := l.now()
	rec := store.AuditEntry{ID: newID(now), Time: now.UTC().Truncate(time.Microsecond), TeamID: e.TeamID, ActorTeamID: e.ActorTeamID,
		ActorKeyID: e.ActorKeyID, Action: e.Action, Target: e.Target, Outcome: e.Outcome, Source: e.Source}
	if rec.Outcome == "" {
		rec.Outcome = "ok"
	}
	if e.Details != nil {
		if b, err := json.Marshal(e.Details); err == nil {
			rec.Details = string(b)
		}
	}
	return rec
}

// newID sorts by time: the time in nanoseconds, in fixed-width hex, then
// random bits for entries of one instant.
func newID(t time.Time) string {
	b := make([]byte, 4)
	rand.Read(b)
	return fmt.Sprintf("aud_%016x%s", t.UnixNano(), hex.EncodeToString(b))
}
