package machine

import (
	"context"
	"net/netip"

	"nullspace.dev/nullspace/internal/store"
)

// Waking by traffic: the edge (internal/edge) routes public requests by
// lineage. It reads where a lineage's latest execution is with LineageHead
// (never waking it) and, for a paused or stopped machine with auto_resume,
// calls Wake, which takes the lineage lock like Connect (so an API connect
// and any number of requests make one resume) and resumes or starts it.

// LineageHead returns the latest execution of a lineage, whatever its team
// (the edge has checked the URL's signature), read-only.
func (m *Manager) LineageHead(ctx context.Context, lineageID string) (*store.Machine, error) {
	return m.lineageHead(ctx, lineageID)
}

// Wake waits for the lifecycle operation a lineage is in, if any, and when
// resume is set brings its latest execution to running: resumed if paused,
// started if stopped (the events name cause, "edge" or "ssh", and carry
// details, such as the port). It returns the latest execution as it then
// is, in any state.
func (m *Manager) Wake(ctx context.Context, lineageID string, resume bool, cause string, details map[string]any) (_ *store.Machine, err error) {
	ctx = withCause(ctx, cause)
	if details != nil {
		ctx = withDetails(ctx, details)
	}
	ctx, unlock, err := m.lockOp(ctx, lineageKey(lineageID))
	if err != nil {
		return nil, err
	}
	defer unlock()
	defer wrapInterrupted(ctx, lineageID, "wake", &err)
	if !resume {
		return m.lineageHead(ctx, lineageID)
	}
	return m.wakeLocked(ctx, lineageID)
}

// GuestIP returns the address a machine that holds a network slot answers on.
func (m *Manager) GuestIP(rec *store.Machine) (netip.Addr, error) {
	return m.guestAddr(rec)
}
