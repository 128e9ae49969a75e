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

// CreateTeam stores a team.
func (s *DB) CreateTeam(ctx context.Context, t store.Team) error {
	_, err := s.c().exec(ctx, `INSERT INTO teams (id, name, created_at) VALUES (?, ?, ?)`, t.ID, t.Name, at(t.CreatedAt))
	if err != nil {
		return fmt.Errorf("create team %s: %w", t.Name, err)
	}
	return nil
}

// CountTeams returns how many teams exist.
func (s *DB) CountTeams(ctx context.Context) (int, error) {
	var n int
	if err := s.c().queryRow(ctx, `SELECT count(*) FROM teams`).Scan(&n); err != nil {
		return 0, fmt.Errorf("count teams: %w", err)
	}
	return n, nil
}

// AddAPIKey stores the hash of an API key for a team.
func (s *DB) AddAPIKey(ctx context.Context, teamID, hash, prefix string, now time.Time) error {
	_, err := s.c().exec(ctx, `INSERT INTO api_keys (hash, team_id, prefix, created_at) VALUES (?, ?, ?, ?)`,
		hash, teamID, prefix, at(now))
	if err != nil {
		return fmt.Errorf("add api key: %w", err)
	}
	return nil
}

// TeamByKeyHash returns the team owning the API key with this hash.
func (s *DB) TeamByKeyHash(ctx context.Context, hash string) (string, error) {
	var team string
	err := s.c().queryRow(ctx, `SELECT team_id FROM api_keys WHERE hash = ?`, hash).Scan(&team)
	if errors.Is(err, sql.ErrNoRows) {
		return "", errdefs.ErrUnauthenticated
	}
	if err != nil {
		return "", fmt.Errorf("look up api key: %w", err)
	}
	return team, nil
}
