package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store"
)

const idempotencyColumns = `team_id, key, route, request_hash, status, body, created_at`

func scanIdempotency(r scanner) (store.IdempotencyRecord, error) {
	var rec store.IdempotencyRecord
	var body string
	err := r.Scan(&rec.TeamID, &rec.Key, &rec.Route, &rec.RequestHash, &rec.Status, &body, timeDest{&rec.CreatedAt})
	rec.Body = []byte(body)
	return rec, err
}

// BeginIdempotent stores r unless a record of its key made at or after
// notBefore exists, which it returns. The insert is what decides between
// two requests with one key at once: the primary key lets one in.
func (s *DB) BeginIdempotent(ctx context.Context, r store.IdempotencyRecord, notBefore, staleBefore time.Time) (*store.IdempotencyRecord, error) {
	var existing *store.IdempotencyRecord
	err := s.inTx(ctx, "begin idempotent request", func(c conn) error {
		existing = nil
		if _, err := c.exec(ctx, `DELETE FROM idempotency_keys WHERE team_id = ? AND key = ?
			AND (created_at < ? OR (status = 0 AND created_at < ?))`,
			r.TeamID, r.Key, at(notBefore), at(staleBefore)); err != nil {
			return err
		}
		_, err := c.exec(ctx, `INSERT INTO idempotency_keys (`+idempotencyColumns+`) VALUES (?, ?, ?, ?, 0, '', ?)`,
			r.TeamID, r.Key, r.Route, r.RequestHash, at(r.CreatedAt))
		if !s.d.unique(err) {
			return err
		}
		return errIdempotencyTaken
	})
	if errors.Is(err, errIdempotencyTaken) {
		rec, gerr := s.GetIdempotent(ctx, r.TeamID, r.Key)
		if errors.Is(gerr, errdefs.ErrNotFound) {
			// Abandoned between the insert and the read: try once more.
			return s.BeginIdempotent(ctx, r, notBefore, staleBefore)
		}
		if gerr != nil {
			return nil, gerr
		}
		existing = rec
		err = nil
	}
	if err != nil {
		return nil, fmt.Errorf("begin idempotent request %s: %w", r.Key, err)
	}
	return existing, nil
}

// errIdempotencyTaken rolls back a transaction whose insert found the key
// taken (PostgreSQL aborts the transaction at the violation anyway).
var errIdempotencyTaken = errors.New("idempotency key taken")

// GetIdempotent returns a team's record of key.
func (s *DB) GetIdempotent(ctx context.Context, teamID, key string) (*store.IdempotencyRecord, error) {
	rec, err := scanIdempotency(s.c().queryRow(ctx, `SELECT `+idempotencyColumns+` FROM idempotency_keys WHERE team_id = ? AND key = ?`, teamID, key))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, errdefs.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("get idempotent request %s: %w", key, err)
	}
	return &rec, nil
}

// FinishIdempotent stores the response of a record in progress.
func (s *DB) FinishIdempotent(ctx context.Context, teamID, key string, status int, body []byte) error {
	_, err := s.c().exec(ctx, `UPDATE idempotency_keys SET status = ?, body = ? WHERE team_id = ? AND key = ? AND status = 0`,
		status, string(body), teamID, key)
	if err != nil {
		return fmt.Errorf("finish idempotent request %s: %w", key, err)
	}
	return nil
}

// AbandonIdempotent deletes a record in progress.
func (s *DB) AbandonIdempotent(ctx context.Context, teamID, key string) error {
	_, err := s.c().exec(ctx, `DELETE FROM idempotency_keys WHERE team_id = ? AND key = ? AND status = 0`, teamID, key)
	if err != nil {
		return fmt.Errorf("abandon idempotent request %s: %w", key, err)
	}
	return nil
}

// PruneIdempotent deletes the records made before before.
func (s *DB) PruneIdempotent(ctx context.Context, before time.Time) (int64, error) {
	res, err := s.c().exec(ctx, `DELETE FROM idempotency_keys WHERE created_at < ?`, at(before))
	if err != nil {
		return 0, fmt.Errorf("prune idempotent requests: %w", err)
	}
	n, _ := res.RowsAffected()
	return n, nil
}
