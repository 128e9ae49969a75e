package sqlstore

import (
	"context"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"time"
)

// PutSecret stores value as the secret name, set at at, unless the stored
// one was set at the same time or later; it returns the secret stored
// after it, and when that was set.
func (s *DB) PutSecret(ctx context.Context, name string, value []byte, at time.Time) ([]byte, time.Time, error) {
	err := s.inTx(ctx, "put secret "+name, func(c conn) error {
		old, stored, err := secret(ctx, c, name, true)
		if err != nil {
			return err
		}
		enc := base64.StdEncoding.EncodeToString(value)
		switch {
		case old == nil:
			_, err = c.exec(ctx, `INSERT INTO cluster_secrets (name, value, updated_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING`, name, enc, optAt(at))
		case at.Truncate(time.Microsecond).After(stored):
			_, err = c.exec(ctx, `UPDATE cluster_secrets SET value = ?, updated_at = ? WHERE name = ?`, enc, optAt(at), name)
		}
		return err
	})
	if err != nil {
		return nil, time.Time{}, err
	}
	return s.Secret(ctx, name)
}

// Secret returns the stored secret name and when it was set; nil if there
// is none (a stored one is never nil, even when empty).
func (s *DB) Secret(ctx context.Context, name string) ([]byte, time.Time, error) {
	return secret(ctx, s.c(), name, false)
}

func secret(ctx context.Context, c conn, name string, lock bool) ([]byte, time.Time, error) {
	q := `SELECT value, updated_at FROM cluster_secrets WHERE name = ?`
	if lock {
		q += c.d.forUpdate
	}
	var v string
	var at time.Time
	err := c.queryRow(ctx, q, name).Scan(&v, timeDest{&at})
	if errors.Is(err, sql.ErrNoRows) {
		return nil, time.Time{}, nil
	}
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("secret %s: %w", name, err)
	}
	b, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("secret %s: %w", name, err)
	}
	return b, at, nil
}
