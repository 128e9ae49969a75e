package sqlstore

import (
	"context"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
)

// ShareSecret stores value as the secret name unless one is stored
// already, and returns the stored one: the first server to offer a secret
// sets it for all.
func (s *DB) ShareSecret(ctx context.Context, name string, value []byte) ([]byte, error) {
	if _, err := s.c().exec(ctx, `INSERT INTO cluster_secrets (name, value) VALUES (?, ?) ON CONFLICT DO NOTHING`,
		name, base64.StdEncoding.EncodeToString(value)); err != nil {
		return nil, fmt.Errorf("share secret %s: %w", name, err)
	}
	return s.Secret(ctx, name)
}

// Secret returns the stored secret name, or nil if there is none.
func (s *DB) Secret(ctx context.Context, name string) ([]byte, error) {
	var v string
	err := s.c().queryRow(ctx, `SELECT value FROM cluster_secrets WHERE name = ?`, name).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("secret %s: %w", name, err)
	}
	b, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		return nil, fmt.Errorf("secret %s: %w", name, err)
	}
	return b, nil
}
