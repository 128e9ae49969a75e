package machine

import (
	"context"
	"maps"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/store"
)

// EventSink records lifecycle events (internal/events.Log).
type EventSink interface {
	Emit(ctx context.Context, ev api.Event)
}

type causeKey struct{}

// withCause marks what drives the operations done with ctx, for their
// events: "timeout", "reconcile", "sandbox_exit", "edge". Calls from the
// API are "api".
func withCause(ctx context.Context, cause string) context.Context {
	return context.WithValue(ctx, causeKey{}, cause)
}

func causeOf(ctx context.Context) string {
	if c, ok := ctx.Value(causeKey{}).(string); ok {
		return c
	}
	return "api"
}

type detailsKey struct{}

// withDetails adds details to every machine event emitted with ctx (the
// edge's port on the events of a wake by traffic).
func withDetails(ctx context.Context, details map[string]any) context.Context {
	return context.WithValue(ctx, detailsKey{}, details)
}

// emit records an event about rec. Template build machines emit none.
func (m *Manager) emit(ctx context.Context, typ string, rec *store.Machine, details map[string]any) {
	if m.cfg.Events == nil || rec.TeamID == buildTeam {
		return
	}
	if extra, ok := ctx.Value(detailsKey{}).(map[string]any); ok {
		merged := make(map[string]any, len(details)+len(extra))
		maps.Copy(merged, extra)
		maps.Copy(merged, details)
		details = merged
	}
	m.cfg.Events.Emit(ctx, api.Event{Type: typ, TeamID: rec.TeamID, MachineID: rec.ID, Cause: causeOf(ctx), Details: details})
}

// emitSnapshot records an event about sn.
func (m *Manager) emitSnapshot(ctx context.Context, typ string, sn *store.Snapshot) {
	m.emitSnapshotDetails(ctx, typ, sn, nil)
}

// emitSnapshotDetails is emitSnapshot with more details.
func (m *Manager) emitSnapshotDetails(ctx context.Context, typ string, sn *store.Snapshot, more map[string]any) {
	if m.cfg.Events == nil {
		return
	}
	details := map[string]any{"snapshot_id": sn.ID, "kind": sn.Kind, "size_bytes": sn.SizeBytes}
	maps.Copy(details, more)
	m.cfg.Events.Emit(ctx, api.Event{Type: typ, TeamID: sn.TeamID, MachineID: sn.MachineID, Cause: causeOf(ctx), Details: details})
}

// observe reports the duration of a successful lifecycle operation.
func (m *Manager) observe(op string, start time.Time) {
	if m.cfg.Observe != nil {
		m.cfg.Observe(op, time.Since(start))
	}
}
