package machine

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store"
)

// snapshotNameRe is what a snapshot name may be: E2B's template-name
// alphabet (a snapshot name is a template name to its SDKs), starting with
// a letter or digit, at most 128 characters as E2B allows.
var snapshotNameRe = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,127}$`)

// snapshotIDPrefix starts every snapshot id (newSnapshotID); no name may,
// so that wherever a snapshot id is accepted a name is too, unambiguously.
const snapshotIDPrefix = "snp_"

// checkSnapshotName returns an invalid_argument error if name cannot name
// a snapshot.
func checkSnapshotName(name string) error {
	if !snapshotNameRe.MatchString(name) || strings.HasPrefix(name, snapshotIDPrefix) {
		return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("snapshot name %q is invalid", name),
			"use 1 to 128 lower-case letters, digits, '-' or '_', starting with a letter or digit and not with snp_ (snapshot ids start so)")
	}
	return nil
}

// snapshotByIDOrName returns a team's snapshot by id or, failing that, by
// name: names never look like ids (checkSnapshotName), so a value is one
// or the other.
func (m *Manager) snapshotByIDOrName(ctx context.Context, teamID, idOrName string) (*store.Snapshot, error) {
	sn, err := m.store.GetSnapshot(ctx, idOrName)
	if errors.Is(err, errdefs.ErrNotFound) && checkSnapshotName(idOrName) == nil {
		return m.store.GetSnapshotByName(ctx, teamID, idOrName)
	}
	return sn, err
}

// nameFree fails with snapshot_name_exists if the team has a snapshot of
// that name: a check before the machine is touched, so that a taken name
// is refused at once. The unique index decides a race.
func (m *Manager) nameFree(ctx context.Context, teamID, name string) error {
	_, err := m.store.GetSnapshotByName(ctx, teamID, name)
	switch {
	case err == nil:
		return store.SnapshotNameTaken(name)
	case errors.Is(err, errdefs.ErrNotFound):
		return nil
	}
	return err
}
