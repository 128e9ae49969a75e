package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/store"
)

// AppendEvent stores an event and sets its sequence number. Numbers are
// given in commit order (see store.Events): SQLite's one writer commits
// each insert before the next begins; PostgreSQL takes the number from a
// counter row whose lock the appending transaction holds to its commit.
func (s *DB) AppendEvent(ctx context.Context, ev *api.Event) error {
	details, err := json.Marshal(nonNilAny(ev.Details))
	if err != nil {
		return fmt.Errorf("event details: %w", err)
	}
	const insert = `INSERT INTO events (seq, team_id, type, machine_id, time, cause, details) VALUES (?,?,?,?,?,?,?) RETURNING seq`
	if s.d.textTimes { // SQLite: seq is the rowid, given at insert
		return s.c().queryRow(ctx, insert, nil, ev.TeamID, ev.Type, ev.MachineID, at(ev.Time), ev.Cause, string(details)).Scan(&ev.Seq)
	}
	return s.inTx(ctx, "append event "+ev.Type, func(c conn) error {
		var seq int64
		if err := c.queryRow(ctx, `UPDATE event_seq SET n = n + 1 WHERE id = 1 RETURNING n`).Scan(&seq); err != nil {
			return err
		}
		if err := c.queryRow(ctx, insert, seq, ev.TeamID, ev.Type, ev.MachineID, at(ev.Time), ev.Cause, string(details)).Scan(&ev.Seq); err != nil {
			return err
		}
		return nil
	})
}

// ListEvents returns events matching f, by sequence number.
func (s *DB) ListEvents(ctx context.Context, f store.EventFilter) ([]api.Event, error) {
	var w where
	w.eq("team_id", f.TeamID)
	w.eq("machine_id", f.MachineID)
	w.in("type", f.Types)
	w.cond("seq > ?", f.After)
	limit := f.Limit
	if limit <= 0 {
		limit = 1000
	}
	return queryAll(ctx, s.c(), "list events", `SELECT seq, team_id, type, machine_id, time, cause, details FROM events`+w.sql()+
		fmt.Sprintf(" ORDER BY seq LIMIT %d", limit), w.args, func(r scanner) (api.Event, error) {
		var ev api.Event
		var details string
		if err := r.Scan(&ev.Seq, &ev.TeamID, &ev.Type, &ev.MachineID, timeDest{&ev.Time}, &ev.Cause, &details); err != nil {
			return ev, err
		}
		if err := json.Unmarshal([]byte(details), &ev.Details); err != nil {
			return ev, fmt.Errorf("event %d details: %w", ev.Seq, err)
		}
		return ev, nil
	})
}

// Cursor returns a consumer's position (0 if it has none).
func (s *DB) Cursor(ctx context.Context, name string) (int64, error) {
	var seq int64
	err := s.c().queryRow(ctx, `SELECT seq FROM cursors WHERE name = ?`, name).Scan(&seq)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("cursor %s: %w", name, err)
	}
	return seq, nil
}

// SetCursor records a consumer's position.
func (s *DB) SetCursor(ctx context.Context, name string, seq int64) error {
	if _, err := s.c().exec(ctx, `INSERT INTO cursors (name, seq) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET seq = excluded.seq`, name, seq); err != nil {
		return fmt.Errorf("set cursor %s: %w", name, err)
	}
	return nil
}

func nonNilAny(m map[string]any) map[string]any {
	if m == nil {
		return map[string]any{}
	}
	return m
}

// PruneEvents deletes the events older than before, and those beyond the
// newest keep (0: no count bound), but never one after notAfter (a
// consumer's position: events it has not been given yet stay). It returns
// how many it deleted.
func (s *DB) PruneEvents(ctx context.Context, before time.Time, keep int, notAfter int64) (int64, error) {
	var maxSeq int64
	if err := s.c().queryRow(ctx, `SELECT coalesce(max(seq), 0) FROM events`).Scan(&maxSeq); err != nil {
		return 0, fmt.Errorf("prune events: %w", err)
	}
	cond := `time < ?`
	args := []any{at(before)}
	if keep > 0 {
		cond = `(time < ? OR seq <= ?)`
		args = append(args, maxSeq-int64(keep))
	}
	res, err := s.c().exec(ctx, `DELETE FROM events WHERE `+cond+` AND seq <= ?`, append(args, notAfter)...)
	if err != nil {
		return 0, fmt.Errorf("prune events: %w", err)
	}
	return res.RowsAffected()
}
