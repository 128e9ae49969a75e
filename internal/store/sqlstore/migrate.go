package sqlstore

import (
	"context"
	"fmt"

	"nullspace.dev/nullspace/internal/errdefs"
)

// Schema migrations are versioned and only move forward. Each backend
// lists its steps; a step is applied in a transaction with the version it
// brings the database to, so a crash leaves the database at a version, not
// between two. A database newer than the binary is refused: an older
// binary would misread what a newer one wrote.
type schema struct {
	steps      []step
	version    func(ctx context.Context, c conn) (int, error)
	setVersion func(ctx context.Context, c conn, v int) error
	// prepare makes the version's own record where there is none yet.
	prepare func(ctx context.Context, c conn) error
}

type step struct {
	version int
	sql     string
}

// numbered makes steps 1, 2, ... of a list.
func numbered(sqls []string) []step {
	out := make([]step, len(sqls))
	for i, q := range sqls {
		out[i] = step{version: i + 1, sql: q}
	}
	return out
}

// latestVersion is the version the binary's steps bring a database to.
func (sc schema) latestVersion() int { return sc.steps[len(sc.steps)-1].version }

// migrate applies the steps the database has not had, one transaction
// each. Servers starting at once on one PostgreSQL database take turns
// (lockMigrate), and each reads the version again under the lock.
func migrate(ctx context.Context, s *DB, sc schema) error {
	latest := sc.latestVersion()
	for {
		done := false
		err := s.inTx(ctx, "migrate", func(c conn) error {
			if err := lockTx(ctx, c, lockMigrate); err != nil {
				return err
			}
			if sc.prepare != nil {
				if err := sc.prepare(ctx, c); err != nil {
					return err
				}
			}
			v, err := sc.version(ctx, c)
			if err != nil {
				return fmt.Errorf("read schema version: %w", err)
			}
			if v > latest {
				return errdefs.New(errdefs.ErrFailedPrecondition, errdefs.CodeFailedPrecondition,
					fmt.Sprintf("the database's schema is version %d, newer than this nullspace's (%d)", v, latest),
					"run the nullspace version that last opened this database, or a newer one (schemas only move forward)")
			}
			for _, st := range sc.steps {
				if st.version <= v {
					continue
				}
				if _, err := c.exec(ctx, st.sql); err != nil {
					return fmt.Errorf("migration %d: %w", st.version, err)
				}
				return sc.setVersion(ctx, c, st.version)
			}
			done = true
			return nil
		})
		if err != nil || done {
			return err
		}
	}
}
