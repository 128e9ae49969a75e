package sqlstore

import (
	"context"
	"fmt"
	"strings"
	"time"

	"nullspace.dev/nullspace/internal/store"
)

const auditColumns = `id, time, team_id, actor_team_id, actor_key_id, action, target, outcome, source, details`

// AppendAudit stores an entry.
func (s *DB) AppendAudit(ctx context.Context, e store.AuditEntry) error {
	_, err := s.c().exec(ctx, `INSERT INTO audit_log (`+auditColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		e.ID, at(e.Time), e.TeamID, e.ActorTeamID, e.ActorKeyID, e.Action, e.Target, e.Outcome, e.Source, e.Details)
	if err != nil {
		return fmt.Errorf("append audit entry: %w", err)
	}
	return nil
}

// ListAudit returns entries newest first (ids sort by time).
func (s *DB) ListAudit(ctx context.Context, f store.AuditFilter) ([]store.AuditEntry, error) {
	var where []string
	var args []any
	if f.TeamID != "" {
		where, args = append(where, "team_id = ?"), append(args, f.TeamID)
	}
	if f.Action != "" {
		where, args = append(where, "action = ?"), append(args, f.Action)
	}
	if f.Before != "" {
		where, args = append(where, "id < ?"), append(args, f.Before)
	}
	q := `SELECT ` + auditColumns + ` FROM audit_log`
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, " AND ")
	}
	limit := f.Limit
	if limit <= 0 || limit > 1000 {
		limit = 100
	}
	q += fmt.Sprintf(` ORDER BY id DESC LIMIT %d`, limit)
	return queryAll(ctx, s.c(), "list audit entries", q, args, func(r scanner) (store.AuditEntry, error) {
		var e store.AuditEntry
		err := r.Scan(&e.ID, timeDest{&e.Time}, &e.TeamID, &e.ActorTeamID, &e.ActorKeyID, &e.Action, &e.Target, &e.Outcome, &e.Source, &e.Details)
		return e, err
	})
}

// PruneAudit deletes entries past the age and count bounds.
func (s *DB) PruneAudit(ctx context.Context, before time.Time, keep int) (int64, error) {
	var n int64
	res, err := s.c().exec(ctx, `DELETE FROM audit_log WHERE time < ?`, at(before))
	if err != nil {
		return 0, fmt.Errorf("prune audit log: %w", err)
	}
	n, _ = res.RowsAffected()
	if keep > 0 {
		// The id of the oldest entry kept: everything before it goes.
		var cut string
		err := s.c().queryRow(ctx, fmt.Sprintf(`SELECT coalesce((SELECT id FROM audit_log ORDER BY id DESC LIMIT 1 OFFSET %d), '')`, keep-1)).Scan(&cut)
		if err != nil {
			return n, fmt.Errorf("prune audit log: %w", err)
		}
		if cut != "" {
			res, err := s.c().exec(ctx, `DELETE FROM audit_log WHERE id < ?`, cut)
			if err != nil {
				return n, fmt.Errorf("prune audit log: %w", err)
			}
			m, _ := res.RowsAffected()
			n += m
		}
	}
	return n, nil
}
