package machine

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store"
)

// Quotas. Each team may hold so many machines with a sandbox, so many
// vCPUs and MiB of memory among them, so many bytes of snapshots, and may
// begin so many lineages a minute. A request over a limit is refused
// before anything is made, with 429 quota_exceeded naming the limit and
// the use.
//
// The check runs under the admission lock, with the store write that
// gives the machine its slot (admit): two creates of one team cannot both
// pass a check that only one of them fits. Machines that hold a slot are
// what the store counts, so a machine is counted from the moment it is
// admitted until its sandbox is gone.

// rateWindow is the window of CreatesPerMinute.
const rateWindow = time.Minute

// Quota names, as errors and GET /v1/quotas name them.
const (
	QuotaRunningMachines  = "running_machines"
	QuotaVCPUs            = "vcpus"
	QuotaMemoryMB         = "memory_mb"
	QuotaSnapshotBytes    = "snapshot_bytes"
	QuotaCreatesPerMinute = "creates_per_minute"
)

// TeamQuota is a team's limits in force (its own, else the defaults; zero
// is no limit) and its use.
func (m *Manager) TeamQuota(ctx context.Context, teamID string) (store.Quota, store.TeamUsage, error) {
	own, err := m.store.GetQuota(ctx, teamID)
	if err != nil {
		return store.Quota{}, store.TeamUsage{}, err
	}
	q := effectiveQuota(own, m.cfg.Quota)
	u, err := m.store.TeamUsage(ctx, teamID, time.Now().Add(-rateWindow))
	return q, u, err
}

// SetQuota replaces a team's own limits (store.DefaultQuota: none).
func (m *Manager) SetQuota(ctx context.Context, teamID string, q store.Quota) error {
	return m.store.SetQuota(ctx, teamID, q)
}

// effectiveQuota takes each of own's limits that is set (>= 0), else
// def's.
func effectiveQuota(own, def store.Quota) store.Quota {
	pick := func(o, d int64) int64 {
		if o >= 0 {
			return o
		}
		return max(d, 0)
	}
	return store.Quota{
		RunningMachines:  pick(own.RunningMachines, def.RunningMachines),
		VCPUs:            pick(own.VCPUs, def.VCPUs),
		MemoryMB:         pick(own.MemoryMB, def.MemoryMB),
		SnapshotBytes:    pick(own.SnapshotBytes, def.SnapshotBytes),
		CreatesPerMinute: pick(own.CreatesPerMinute, def.CreatesPerMinute),
		APIRate:          pick(own.APIRate, def.APIRate),
		APIBurst:         pick(own.APIBurst, def.APIBurst),
	}
}

// checkQuota refuses rec, about to be given a sandbox, if its team would
// pass a limit; create says it begins a lineage (a create, a child or a
// fork; not a resume or a start). The caller holds the admission lock.
// A template build's machine is the server's, not a team's: not counted.
func (m *Manager) checkQuota(ctx context.Context, rec *store.Machine, create bool) error {
	if rec.TeamID == "" || rec.TeamID == buildTeam {
		return nil
	}
	q, u, err := m.TeamQuota(ctx, rec.TeamID)
	if err != nil {
		return err
	}
	over := func(name string, limit, used, adding int64) error {
		if limit == 0 || used+adding <= limit {
			return nil
		}
		return quotaExceeded(rec.TeamID, name, limit, used, adding)
	}
	for _, c := range []struct {
		name                string
		limit, used, adding int64
	}{
		{QuotaRunningMachines, q.RunningMachines, u.RunningMachines, 1},
		{QuotaVCPUs, q.VCPUs, u.VCPUs, int64(rec.CPUCount)},
		{QuotaMemoryMB, q.MemoryMB, u.MemoryMB, int64(rec.MemoryMB)},
	} {
		if err := over(c.name, c.limit, c.used, c.adding); err != nil {
			return err
		}
	}
	if create {
		err := over(QuotaCreatesPerMinute, q.CreatesPerMinute, u.Creates, 1)
		var e *errdefs.Error
		if errors.As(err, &e) {
			// The oldest create of the window leaves it then.
			e.RetryAfter = max(time.Until(u.FirstCreate.Add(rateWindow)), time.Second)
		}
		return err
	}
	return nil
}

// checkStorage refuses a snapshot the team asks for (pause, snapshot,
// checkpoint) once its snapshots hold its storage quota. The size of a
// snapshot is known only once taken, so the one that crosses the limit
// is kept; the next is refused. Pauses by a lease or idle suspend are
// not refused: the alternative would lose the machine's state.
func (m *Manager) checkStorage(ctx context.Context, teamID string) error {
	q, u, err := m.TeamQuota(ctx, teamID)
	if err != nil {
		return err
	}
	if q.SnapshotBytes > 0 && u.SnapshotBytes >= q.SnapshotBytes {
		return quotaExceeded(teamID, QuotaSnapshotBytes, q.SnapshotBytes, u.SnapshotBytes, 0)
	}
	return nil
}

func quotaExceeded(team, name string, limit, used, adding int64) error {
	action := "pause or kill machines you do not need, or ask the operator to raise the quota (nullspace quota set)"
	retryable := false
	switch name {
	case QuotaSnapshotBytes:
		action = "delete snapshots or checkpoints you do not need (nullspace snapshot rm), or ask the operator to raise the quota"
	case QuotaCreatesPerMinute:
		action = "retry after the Retry-After delay, or ask the operator to raise the quota"
		retryable = true
	}
	msg := fmt.Sprintf("team %s is at its %s quota: limit %d, in use %d", team, name, limit, used)
	if adding > 1 {
		msg += fmt.Sprintf(", this request needs %d more", adding)
	}
	return &errdefs.Error{Class: errdefs.ErrResourceExhausted, Code: errdefs.CodeQuotaExceeded, Status: http.StatusTooManyRequests,
		Message: msg, SuggestedAction: action, Final: !retryable,
		Quota: &errdefs.QuotaDetail{Name: name, Limit: limit, Used: used}}
}
