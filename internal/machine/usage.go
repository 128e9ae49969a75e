package machine

import (
	"context"
	"fmt"
	"time"

	"nullspace.dev/nullspace/internal/store"
	"nullspace.dev/nullspace/internal/usage"
)

// Usage: the store keeps the ledger of runs, storage spans, creates and
// resumes itself, in the transactions of the transitions (store.Usage).
// What only the manager knows is the bytes a machine sent, read from its
// veth: recorded when the execution lets its network go (release), and
// taken from the latest sample for a machine still running.

// Usage is a team's usage ("": every team's) over [from, to), grouped by.
func (m *Manager) Usage(ctx context.Context, teamID string, from, to time.Time, by usage.GroupBy) ([]usage.Row, error) {
	recs, err := m.store.ListUsage(ctx, store.UsageFilter{TeamID: teamID, From: from, To: to})
	if err != nil {
		return nil, fmt.Errorf("usage of team %s: %w", teamID, err)
	}
	now := time.Now().UTC()
	recs = append(recs, m.runningEgress(recs, now)...)
	rep := usage.Summarize(recs, from, to, now, by)
	for _, r := range rep.Backwards {
		m.logger.WarnContext(ctx, "a usage span ends before it starts (the clock stepped back): it counts zero",
			"kind", r.Kind, "machine_id", r.MachineID, "snapshot_id", r.SnapshotID, "started_at", r.StartedAt, "ended_at", r.EndedAt)
	}
	return rep.Rows, nil
}

// runningEgress is the bytes sent so far by the executions of recs still
// running (open runs), from their latest sample, as of now.
func (m *Manager) runningEgress(recs []store.UsageRecord, now time.Time) []store.UsageRecord {
	m.metrics.mu.Lock()
	defer m.metrics.mu.Unlock()
	var out []store.UsageRecord
	for _, r := range recs {
		if r.Kind != store.UsageRun || !r.EndedAt.IsZero() {
			continue
		}
		samples := m.metrics.samples[r.MachineID]
		if len(samples) == 0 || samples[len(samples)-1].NetTxBytes == 0 {
			continue
		}
		out = append(out, store.UsageRecord{Kind: store.UsageEgress, TeamID: r.TeamID, MachineID: r.MachineID, LineageID: r.LineageID,
			StartedAt: now, EndedAt: now, Bytes: int64(samples[len(samples)-1].NetTxBytes)})
	}
	return out
}

// recordEgress records the bytes rec's execution sent, read from its veth
// before the network goes. A failure is logged: it loses a count, never
// a machine.
func (m *Manager) recordEgress(ctx context.Context, rec *store.Machine) {
	c, ok := m.net.(counterer)
	if !ok || rec.Slot < 0 || rec.StartedAt.IsZero() {
		return
	}
	_, tx, err := c.Counters(rec.Slot)
	if err != nil || tx == 0 {
		return
	}
	now := time.Now().UTC()
	r := store.UsageRecord{ID: fmt.Sprintf("egress:%s:%d", rec.ID, rec.StartedAt.UnixMicro()), Kind: store.UsageEgress,
		TeamID: rec.TeamID, MachineID: rec.ID, LineageID: rec.LineageID, StartedAt: now, EndedAt: now, Bytes: int64(tx)}
	if err := m.store.AppendUsage(ctx, r); err != nil {
		m.logger.ErrorContext(ctx, "record the bytes a machine sent", "machine_id", rec.ID, "err", err)
	}
}
