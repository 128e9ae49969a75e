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

// AppendEvent stores an event and sets its sequence number.
func (s *DB) AppendEvent(ctx context.Context, ev *api.Event) error {
	details, err := json.Marshal(nonNilAny(ev.Details))
	if err != nil {
		return fmt.Errorf("event details: %w", err)
	}
	res, err := s.db.ExecContext(ctx, `INSERT INTO events (team_id, type, machine_id, time, cause, details) VALUES (?,?,?,?,?,?)`,
		ev.TeamID, ev.Type, ev.MachineID, formatTime(ev.Time), ev.Cause, string(details))
	if err != nil {
		return fmt.Errorf("append event %s: %w", ev.Type, err)
	}
	ev.Seq, err = res.LastInsertId()
	return err
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
	return queryAll(ctx, s.db, "list events", `SELECT seq, team_id, type, machine_id, time, cause, details FROM events`+w.sql()+
		fmt.Sprintf(" ORDER BY seq LIMIT %d", limit), w.args, func(r scanner) (api.Event, error) {
		var ev api.Event
		var t, details string
		if err := r.Scan(&ev.Seq, &ev.TeamID, &ev.Type, &ev.MachineID, &t, &ev.Cause, &details); err != nil {
			return ev, err
		}
		ev.Time = parseTime(t)
		if err := json.Unmarshal([]byte(details), &ev.Details); err != nil {
			return ev, fmt.Errorf("event %d details: %w", ev.Seq, err)
		}
		return ev, nil
	})
}

// Cursor returns a consumer's position (0 if it has none).
func (s *DB) Cursor(ctx context.Context, name string) (int64, error) {
	var seq int64
	err := s.db.QueryRowContext(ctx, `SELECT seq FROM cursors WHERE name = ?`, name).Scan(&seq)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	return seq, err
}

// SetCursor records a consumer's position.
func (s *DB) SetCursor(ctx context.Context, name string, seq int64) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO cursors (name, seq) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET seq = excluded.seq`, name, seq)
	return err
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
	if err := s.db.QueryRowContext(ctx, `SELECT coalesce(max(seq), 0) FROM events`).Scan(&maxSeq); err != nil {
		return 0, fmt.Errorf("prune events: %w", err)
	}
	cond := `time < ?`
	args := []any{formatTime(before)}
	if keep > 0 {
		cond = `(time < ? OR seq <= ?)`
		args = append(args, maxSeq-int64(keep))
	}
	res, err := s.db.ExecContext(ctx, `DELETE FROM events WHERE `+cond+` AND seq <= ?`, append(args, notAfter)...)
	if err != nil {
		return 0, fmt.Errorf("prune events: %w", err)
	}
	return res.RowsAffected()
}
