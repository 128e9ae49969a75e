package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store"
)

// AddSSHKey stores a key. A key already registered, by any team, is an
// ssh_key_exists error: a key names the one team it signs in to.
func (s *DB) AddSSHKey(ctx context.Context, k store.SSHKey) error {
	return s.inTx(ctx, "add ssh key", func(c conn) error {
		// The team's row lock (PostgreSQL) makes the count and the insert
		// one step, so two adds at once cannot both pass the bound.
		if _, err := c.exec(ctx, `SELECT id FROM teams WHERE id = ?`+c.d.forUpdate, k.TeamID); err != nil {
			return err
		}
		var n int
		if err := c.queryRow(ctx, `SELECT count(*) FROM ssh_keys WHERE team_id = ?`, k.TeamID).Scan(&n); err != nil {
			return fmt.Errorf("count ssh keys: %w", err)
		}
		if n >= store.MaxSSHKeysPerTeam {
			return errdefs.New(errdefs.ErrResourceExhausted, errdefs.CodeResourceExhausted,
				fmt.Sprintf("the team has %d SSH keys, the most it may have", n), "remove keys no longer used with `nullspace ssh-key rm`")
		}
		_, err := c.exec(ctx, `INSERT INTO ssh_keys (id, team_id, name, fingerprint, public_key, created_at) VALUES (?, ?, ?, ?, ?, ?)`,
			k.ID, k.TeamID, k.Name, k.Fingerprint, k.PublicKey, at(k.CreatedAt))
		if c.d.unique(err) {
			return errdefs.New(errdefs.ErrFailedPrecondition, errdefs.CodeSSHKeyExists,
				fmt.Sprintf("the key %s is already registered", k.Fingerprint),
				"a key signs in to one team: use the registered key, or remove it first (`nullspace ssh-key ls`)")
		}
		return err
	})
}

// ListSSHKeys returns a team's keys, oldest first.
func (s *DB) ListSSHKeys(ctx context.Context, teamID string) ([]store.SSHKey, error) {
	return queryAll(ctx, s.c(), "list ssh keys", `SELECT id, team_id, name, fingerprint, public_key, created_at FROM ssh_keys
		WHERE team_id = ? ORDER BY created_at, id`, []any{teamID}, scanSSHKey)
}

// SSHKeyByFingerprint returns the key with this fingerprint, or an error
// matching errdefs.ErrNotFound.
func (s *DB) SSHKeyByFingerprint(ctx context.Context, fingerprint string) (store.SSHKey, error) {
	k, err := scanSSHKey(s.c().queryRow(ctx, `SELECT id, team_id, name, fingerprint, public_key, created_at FROM ssh_keys
		WHERE fingerprint = ?`, fingerprint))
	if errors.Is(err, sql.ErrNoRows) {
		return store.SSHKey{}, fmt.Errorf("ssh key %s: %w", fingerprint, errdefs.ErrNotFound)
	}
	return k, err
}

// DeleteSSHKey removes a team's key by id or fingerprint.
func (s *DB) DeleteSSHKey(ctx context.Context, teamID, idOrFingerprint string) error {
	res, err := s.c().exec(ctx, `DELETE FROM ssh_keys WHERE team_id = ? AND (id = ? OR fingerprint = ?)`,
		teamID, idOrFingerprint, idOrFingerprint)
	if err != nil {
		return fmt.Errorf("delete ssh key: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return errdefs.New(errdefs.ErrNotFound, errdefs.CodeSSHKeyNotFound, fmt.Sprintf("no SSH key %s", idOrFingerprint),
			"list the team's keys with GET /v1/ssh-keys or `nullspace ssh-key ls`")
	}
	return nil
}

func scanSSHKey(r scanner) (store.SSHKey, error) {
	var k store.SSHKey
	if err := r.Scan(&k.ID, &k.TeamID, &k.Name, &k.Fingerprint, &k.PublicKey, timeDest{&k.CreatedAt}); err != nil {
		return store.SSHKey{}, err
	}
	return k, nil
}
