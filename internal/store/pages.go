package store

import "time"

// MachinePageQuery selects a page of a team's machines.
type MachinePageQuery struct {
	TeamID   string
	States   []string
	Template string
	// Metadata pairs must all match (through the machine_metadata index).
	Metadata map[string]string
	// Aliases lists every execution id, oldest first; without it one row
	// per machine: its lineage's latest execution, ordered by when the
	// machine was first created (a resume does not move it).
	Aliases bool
	// Desc lists newest first (the E2B list's default); otherwise oldest
	// first. The same index serves both: SQLite walks it backwards.
	Desc bool
	// CreatedFrom and CreatedBefore bound the sort key's time (inclusive
	// and exclusive); zero: unbounded.
	CreatedFrom, CreatedBefore time.Time
	// After is the position to start after (MachineCursor of the previous
	// page's last row, in the same order); zero: from the start.
	After MachineCursor
	Limit int
}

// MachineCursor is a position in a machine list: the sort key of a row.
type MachineCursor struct {
	Time time.Time // lineage_created, or created_at with Aliases
	ID   string    // lineage_id, or id with Aliases
}

// IsZero reports whether c is the start of the list.
func (c MachineCursor) IsZero() bool { return c.ID == "" }

// CursorOf returns the position of m in a list of the given kind.
func CursorOf(m *Machine, aliases bool) MachineCursor {
	if aliases {
		return MachineCursor{Time: m.CreatedAt, ID: m.ID}
	}
	return MachineCursor{Time: m.LineageCreated, ID: m.LineageID}
}

// LineageSummary is what a list shows of a machine's lineage beside one of
// its executions.
type LineageSummary struct {
	LatestID string
	// PausedAliases counts the lineage's earlier executions that are
	// paused aliases (ids that connect still resumes from).
	PausedAliases int
	// SnapshotBytes is what the lineage's committed snapshots take on disk.
	SnapshotBytes int64
}

// SnapshotPageQuery selects a page of committed snapshots.
type SnapshotPageQuery struct {
	TeamID    string
	MachineID string
	LineageID string
	Kinds     []string
	States    []string
	// Name selects the snapshot of that name ("": any).
	Name string
	// ByGeneration orders by generation (a lineage's history); otherwise
	// by creation.
	ByGeneration bool
	After        SnapshotCursor
	Limit        int
}

// SnapshotCursor is a position in a snapshot list.
type SnapshotCursor struct {
	Created    time.Time
	Generation int
	ID         string
}

// SnapshotCursorOf returns the position of sn in a list of that order.
func SnapshotCursorOf(sn *Snapshot, byGeneration bool) SnapshotCursor {
	if byGeneration {
		return SnapshotCursor{Generation: sn.Generation, ID: sn.ID}
	}
	return SnapshotCursor{Created: sn.CreatedAt, ID: sn.ID}
}
