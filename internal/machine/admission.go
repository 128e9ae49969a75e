package machine

import (
	"context"
	"fmt"
	"net/http"
	"sync"

	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store"
)

// Admission control. Every sandbox is given its memory_mb as a cgroup
// limit; gVisor takes host memory as the machine touches it, so a host can
// run more than it has if not every machine uses all it was given, but not
// without bound. The memory committed to sandboxes (machines that hold a
// network slot, and spares) may reach the host's memory times
// MemoryOvercommit; a create, resume, start, fork child or restore that
// would pass it is refused at once with 503 capacity_exhausted (retryable,
// Retry-After), as is one that finds no free network slot.

// DefaultMemoryOvercommit is the default ratio of memory committed to
// sandboxes to the host's memory.
const DefaultMemoryOvercommit = 1.5

// admission serializes the operations that give a machine (or a spare) a
// network slot, so that each sees what the others committed.
type admission struct {
	mu sync.Mutex
}

// admit runs take, which gives rec a network slot in the store (from then
// on the store counts its memory as committed, and it counts against its
// team's quotas), if the host has room for it and its team is within its
// quotas (quota.go; create says rec begins a lineage); otherwise it
// refuses with capacity_exhausted or quota_exceeded. A "no free slot" from
// take becomes capacity_exhausted too. Spares make room: when a machine
// does not fit, or finds no slot, the idle spares are removed and it is
// tried again.
func (m *Manager) admit(ctx context.Context, rec *store.Machine, create bool, take func() error) error {
	m.admission.mu.Lock()
	defer m.admission.mu.Unlock()
	if err := m.checkQuota(ctx, rec, create); err != nil {
		return err
	}
	err := m.admitLocked(ctx, rec.MemoryMB, take)
	if errdefs.Classify(err).Code != errdefs.CodeCapacityExhausted || m.spares.drain(ctx) == 0 {
		return err
	}
	return m.admitLocked(ctx, rec.MemoryMB, take)
}

// admitQuota is admit for a machine that takes over a spare, whose memory
// and slot are committed already: only its team's quotas are checked.
func (m *Manager) admitQuota(ctx context.Context, rec *store.Machine, create bool, take func() error) error {
	m.admission.mu.Lock()
	defer m.admission.mu.Unlock()
	if err := m.checkQuota(ctx, rec, create); err != nil {
		return err
	}
	return take()
}

// admitSpare is admit for a spare, which never removes other spares: a
// spare is made only where a machine would fit. A spare is no team's.
func (m *Manager) admitSpare(ctx context.Context, memMB int, take func() error) error {
	m.admission.mu.Lock()
	defer m.admission.mu.Unlock()
	return m.admitLocked(ctx, memMB, take)
}

func (m *Manager) admitLocked(ctx context.Context, memMB int, take func() error) error {
	committed, err := m.store.CommittedMemoryMB(ctx)
	if err != nil {
		return err
	}
	if limit := m.memoryLimitMB(); committed+int64(memMB) > limit {
		return capacityExhausted(fmt.Sprintf("this host has committed %d MiB of its %d MiB for machines (%d MiB of memory, overcommit %.2g); %d MiB more do not fit",
			committed, limit, m.cfg.HostMemoryMB, m.cfg.MemoryOvercommit, memMB))
	}
	return slotsExhausted(take())
}

// memoryLimitMB is how much memory may be committed to sandboxes.
func (m *Manager) memoryLimitMB() int64 {
	return int64(float64(m.cfg.HostMemoryMB) * m.cfg.MemoryOvercommit)
}

// capacityExhausted is the error of an operation the host has no room for.
func capacityExhausted(msg string) error {
	return &errdefs.Error{Class: errdefs.ErrUnavailable, Code: errdefs.CodeCapacityExhausted, Message: msg,
		SuggestedAction: "retry after the Retry-After delay; pause or kill machines you do not need, or ask the operator for a larger --memory-overcommit or --network-cidr",
		Status:          http.StatusServiceUnavailable}
}

// slotsExhausted turns the store's "no free network slot" into
// capacity_exhausted.
func slotsExhausted(err error) error {
	if err == nil || errdefs.Classify(err).Code != errdefs.CodeResourceExhausted {
		return err
	}
	return capacityExhausted(errdefs.Classify(err).Message + ": this host runs as many machines as its address pool allows")
}
