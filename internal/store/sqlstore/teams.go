package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store"
)

// CreateTeam stores a team; the name is unique among teams not deleted
// (the teams_name index).
func (s *DB) CreateTeam(ctx context.Context, t store.Team) error {
	_, err := s.c().exec(ctx, `INSERT INTO teams (id, name, created_at) VALUES (?, ?, ?)`, t.ID, t.Name, at(t.CreatedAt))
	if s.d.unique(err) {
		return errdefs.Wrap(err, errdefs.ErrConflict, errdefs.CodeTeamExists,
			fmt.Sprintf("a team named %q exists", t.Name), "choose another name")
	}
	if err != nil {
		return fmt.Errorf("create team %s: %w", t.Name, err)
	}
	return nil
}

const teamColumns = `id, name, created_at, deleted_at`

func scanTeam(r scanner) (store.Team, error) {
	var t store.Team
	err := r.Scan(&t.ID, &t.Name, timeDest{&t.CreatedAt}, timeDest{&t.DeletedAt})
	return t, err
}

// GetTeam returns a team that is not deleted.
func (s *DB) GetTeam(ctx context.Context, id string) (*store.Team, error) {
	t, err := scanTeam(s.c().queryRow(ctx, `SELECT `+teamColumns+` FROM teams WHERE id = ? AND deleted_at IS NULL`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, teamNotFound(id)
	}
	if err != nil {
		return nil, fmt.Errorf("get team %s: %w", id, err)
	}
	return &t, nil
}

func teamNotFound(id string) error {
	return errdefs.New(errdefs.ErrNotFound, errdefs.CodeTeamNotFound, fmt.Sprintf("team %s not found", id),
		"list teams with GET /v1/teams")
}

// ListTeams returns the teams that are not deleted, oldest first.
func (s *DB) ListTeams(ctx context.Context) ([]store.Team, error) {
	return queryAll(ctx, s.c(), "list teams",
		`SELECT `+teamColumns+` FROM teams WHERE deleted_at IS NULL ORDER BY created_at, id`, nil, scanTeam)
}

// DeleteTeam marks a team deleted, revokes its API keys and removes its
// SSH keys, in one transaction: no key of a deleted team authenticates,
// and its public keys may be registered again by another team.
func (s *DB) DeleteTeam(ctx context.Context, id string, now time.Time) error {
	return s.inTx(ctx, "delete team "+id, func(c conn) error {
		res, err := c.exec(ctx, `UPDATE teams SET deleted_at = ? WHERE id = ? AND deleted_at IS NULL`, at(now), id)
		if err != nil {
			return err
		}
		if !exactlyOne(res) {
			return teamNotFound(id)
		}
		if _, err = c.exec(ctx, `UPDATE api_keys SET revoked_at = ? WHERE team_id = ? AND revoked_at IS NULL`, at(now), id); err != nil {
			return err
		}
		_, err = c.exec(ctx, `DELETE FROM ssh_keys WHERE team_id = ?`, id)
		return err
	})
}

// CountTeams returns how many teams exist, deleted ones included (a
// server bootstraps its first team only into an empty database).
func (s *DB) CountTeams(ctx context.Context) (int, error) {
	var n int
	if err := s.c().queryRow(ctx, `SELECT count(*) FROM teams`).Scan(&n); err != nil {
		return 0, fmt.Errorf("count teams: %w", err)
	}
	return n, nil
}

const keyColumns = `id, team_id, hash, prefix, name, scopes, created_at, last_used_at, expires_at, revoked_at`

func scanKey(r scanner) (store.APIKey, error) {
	var k store.APIKey
	var scopes string
	err := r.Scan(&k.ID, &k.TeamID, &k.Hash, &k.Prefix, &k.Name, &scopes, timeDest{&k.CreatedAt},
		timeDest{&k.LastUsedAt}, timeDest{&k.ExpiresAt}, timeDest{&k.RevokedAt})
	k.Scopes = strings.Fields(scopes)
	return k, err
}

// AddAPIKey stores a key's hash.
func (s *DB) AddAPIKey(ctx context.Context, k store.APIKey) error {
	_, err := s.c().exec(ctx, `INSERT INTO api_keys (`+keyColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		k.ID, k.TeamID, k.Hash, k.Prefix, k.Name, strings.Join(k.Scopes, " "), at(k.CreatedAt),
		nullAt(k.LastUsedAt), nullAt(k.ExpiresAt), nullAt(k.RevokedAt))
	if err != nil {
		return fmt.Errorf("add api key: %w", err)
	}
	return nil
}

// ListAPIKeys returns a team's keys, oldest first.
func (s *DB) ListAPIKeys(ctx context.Context, teamID string) ([]store.APIKey, error) {
	return queryAll(ctx, s.c(), "list api keys",
		`SELECT `+keyColumns+` FROM api_keys WHERE team_id = ? ORDER BY created_at, id`, []any{teamID}, scanKey)
}

// GetAPIKey returns a key by id.
func (s *DB) GetAPIKey(ctx context.Context, id string) (*store.APIKey, error) {
	k, err := scanKey(s.c().queryRow(ctx, `SELECT `+keyColumns+` FROM api_keys WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, errdefs.New(errdefs.ErrNotFound, errdefs.CodeKeyNotFound, fmt.Sprintf("API key %s not found", id),
			"list keys with GET /v1/keys")
	}
	if err != nil {
		return nil, fmt.Errorf("get api key %s: %w", id, err)
	}
	return &k, nil
}

// APIKeyByHash returns the key with this hash.
func (s *DB) APIKeyByHash(ctx context.Context, hash string) (*store.APIKey, error) {
	k, err := scanKey(s.c().queryRow(ctx, `SELECT `+keyColumns+` FROM api_keys WHERE hash = ?`, hash))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, errdefs.ErrUnauthenticated
	}
	if err != nil {
		return nil, fmt.Errorf("look up api key: %w", err)
	}
	return &k, nil
}

// RevokeAPIKey revokes a key; a revoked key keeps its first revocation time.
func (s *DB) RevokeAPIKey(ctx context.Context, id string, now time.Time) error {
	if _, err := s.GetAPIKey(ctx, id); err != nil {
		return err
	}
	_, err := s.c().exec(ctx, `UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL`, at(now), id)
	if err != nil {
		return fmt.Errorf("revoke api key %s: %w", id, err)
	}
	return nil
}

// TouchAPIKey records a use of the key.
func (s *DB) TouchAPIKey(ctx context.Context, id string, now time.Time) error {
	_, err := s.c().exec(ctx, `UPDATE api_keys SET last_used_at = ? WHERE id = ?`, at(now), id)
	if err != nil {
		return fmt.Errorf("touch api key %s: %w", id, err)
	}
	return nil
}

// GetQuota returns a team's own limits.
func (s *DB) GetQuota(ctx context.Context, teamID string) (store.Quota, error) {
	q := store.DefaultQuota
	err := s.c().queryRow(ctx, `SELECT running_machines, vcpus, memory_mb, snapshot_bytes, creates_per_minute, api_rate, api_burst
		FROM team_quotas WHERE team_id = ?`, teamID).Scan(&q.RunningMachines, &q.VCPUs, &q.MemoryMB, &q.SnapshotBytes, &q.CreatesPerMinute,
		&q.APIRate, &q.APIBurst)
	if errors.Is(err, sql.ErrNoRows) {
		return store.DefaultQuota, nil
	}
	if err != nil {
		return q, fmt.Errorf("get quota of team %s: %w", teamID, err)
	}
	return q, nil
}

// SetQuota replaces a team's own limits, in one statement (two callers at
// once both succeed; the last one's limits stand).
func (s *DB) SetQuota(ctx context.Context, teamID string, q store.Quota) error {
	_, err := s.c().exec(ctx, `INSERT INTO team_quotas (team_id, running_machines, vcpus, memory_mb, snapshot_bytes, creates_per_minute, api_rate, api_burst)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (team_id) DO UPDATE SET running_machines = excluded.running_machines, vcpus = excluded.vcpus,
			memory_mb = excluded.memory_mb, snapshot_bytes = excluded.snapshot_bytes, creates_per_minute = excluded.creates_per_minute,
			api_rate = excluded.api_rate, api_burst = excluded.api_burst`,
		teamID, q.RunningMachines, q.VCPUs, q.MemoryMB, q.SnapshotBytes, q.CreatesPerMinute, q.APIRate, q.APIBurst)
	if err != nil {
		return fmt.Errorf("set quota of team %s: %w", teamID, err)
	}
	return nil
}

// TeamUsage is what a team holds, in one statement (one snapshot of the
// database on either backend).
func (s *DB) TeamUsage(ctx context.Context, teamID string, since time.Time) (store.TeamUsage, error) {
	var u store.TeamUsage
	err := s.c().queryRow(ctx, `SELECT
		(SELECT count(*) FROM machines WHERE team_id = ? AND slot >= 0),
		(SELECT CAST(coalesce(sum(cpu_count), 0) AS BIGINT) FROM machines WHERE team_id = ? AND slot >= 0),
		(SELECT CAST(coalesce(sum(memory_mb), 0) AS BIGINT) FROM machines WHERE team_id = ? AND slot >= 0),
		(SELECT CAST(coalesce(sum(size_bytes), 0) AS BIGINT) FROM snapshots WHERE team_id = ? AND state = 'ready'),
		(SELECT count(*) FROM machines WHERE team_id = ? AND created_at >= ? AND lineage_seq = 1),
		(SELECT min(created_at) FROM machines WHERE team_id = ? AND created_at >= ? AND lineage_seq = 1)`,
		teamID, teamID, teamID, teamID, teamID, at(since), teamID, at(since)).Scan(&u.RunningMachines, &u.VCPUs, &u.MemoryMB,
		&u.SnapshotBytes, &u.Creates, timeDest{&u.FirstCreate})
	if err != nil {
		return u, fmt.Errorf("usage of team %s: %w", teamID, err)
	}
	return u, nil
}
