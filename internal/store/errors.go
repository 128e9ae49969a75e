package store

import (
	"fmt"

	"nullspace.dev/nullspace/internal/errdefs"
)

// ConflictError is a compare-and-set write that lost: the machine's row
// was written by someone else after the writer read it (its version moved
// on). It matches errdefs.ErrConflict. Within one server the locks of the
// machine manager make this a bug; between servers it is the fence.
type ConflictError struct {
	ID string
	// Want is the version the writer read; Have the row's version now.
	Want, Have int64
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("machine %s was changed by another operation (version %d, not %d): read it again", e.ID, e.Have, e.Want)
}

// Is makes a ConflictError match errdefs.ErrConflict.
func (e *ConflictError) Is(target error) bool { return target == errdefs.ErrConflict }
