// Package retention deletes, periodically, the state that the server's
// retention policies no longer keep: the rows of machines that ended
// (killed or failed) longer ago than a window, and lifecycle events
// beyond an age or a count, never ones an event consumer (the webhook) has
// not been given yet. Nothing a live machine, a paused alias or a stored
// snapshot needs is in reach: checkpoint history is bounded by the machine
// manager itself (checkpoint retention).
package retention

import (
	"context"
	"log/slog"
	"time"

	"nullspace.dev/nullspace/internal/idempotency"
)

// Store is what retention deletes from.
type Store interface {
	PruneEnded(ctx context.Context, before time.Time) (int64, error)
	PruneEvents(ctx context.Context, before time.Time, keep int, notAfter int64) (int64, error)
	Cursor(ctx context.Context, name string) (int64, error)
	PruneIdempotent(ctx context.Context, before time.Time) (int64, error)
	PruneAudit(ctx context.Context, before time.Time, keep int) (int64, error)
}

// Config says what is kept.
type Config struct {
	// Interval between passes; default 10 minutes.
	Interval time.Duration
	// Ended keeps the rows of killed and failed machines this long after
	// they ended; 0 keeps them forever.
	Ended time.Duration
	// EventsAge keeps events this long; 0: no age bound.
	EventsAge time.Duration
	// EventsMax keeps at most this many of the newest events; 0: no bound.
	EventsMax int
	// Consumer, if set, is the cursor of an event consumer: events after
	// its position are kept whatever their age.
	Consumer string
	// AuditAge and AuditMax bound the audit log (0: no bound).
	AuditAge time.Duration
	AuditMax int
}

// Run prunes at once and then every interval until ctx ends.
func Run(ctx context.Context, cfg Config, db Store, logger *slog.Logger) {
	if cfg.Interval <= 0 {
		cfg.Interval = 10 * time.Minute
	}
	t := time.NewTicker(cfg.Interval)
	defer t.Stop()
	for {
		Prune(ctx, cfg, db, logger, time.Now())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Prune runs one pass as of now.
func Prune(ctx context.Context, cfg Config, db Store, logger *slog.Logger, now time.Time) {
	// Responses kept for Idempotency-Key retries, past their day.
	if n, err := db.PruneIdempotent(ctx, now.Add(-idempotency.DefaultTTL)); err != nil {
		logger.ErrorContext(ctx, "prune idempotent requests", "err", err)
	} else if n > 0 {
		logger.InfoContext(ctx, "deleted the responses kept for idempotent retries", "requests", n)
	}
	if cfg.Ended > 0 {
		n, err := db.PruneEnded(ctx, now.Add(-cfg.Ended))
		if err != nil {
			logger.ErrorContext(ctx, "prune ended machines", "err", err)
		} else if n > 0 {
			logger.InfoContext(ctx, "deleted the rows of ended machines", "machines", n, "ended_before", now.Add(-cfg.Ended))
		}
	}
	if cfg.AuditAge > 0 || cfg.AuditMax > 0 {
		before := time.Time{}
		if cfg.AuditAge > 0 {
			before = now.Add(-cfg.AuditAge)
		}
		if n, err := db.PruneAudit(ctx, before, cfg.AuditMax); err != nil {
			logger.ErrorContext(ctx, "prune audit log", "err", err)
		} else if n > 0 {
			logger.InfoContext(ctx, "deleted old audit log entries", "entries", n)
		}
	}
	if cfg.EventsAge <= 0 && cfg.EventsMax <= 0 {
		return
	}
	notAfter := int64(1<<63 - 1)
	if cfg.Consumer != "" {
		seq, err := db.Cursor(ctx, cfg.Consumer)
		if err != nil {
			logger.ErrorContext(ctx, "prune events: consumer position", "err", err)
			return
		}
		notAfter = seq
	}
	before := time.Time{}
	if cfg.EventsAge > 0 {
		before = now.Add(-cfg.EventsAge)
	}
	n, err := db.PruneEvents(ctx, before, cfg.EventsMax, notAfter)
	if err != nil {
		logger.ErrorContext(ctx, "prune events", "err", err)
	} else if n > 0 {
		logger.InfoContext(ctx, "deleted old events", "events", n)
	}
}
