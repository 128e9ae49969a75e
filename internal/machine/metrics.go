package machine

import (
	"context"
	"sync"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/runtime"
	"nullspace.dev/nullspace/internal/store"
)

// Metrics: every running machine is sampled every Config.MetricsInterval
// (which also checks idle machines, see idle.go) from the
// host side only (its cgroup's counters, its veth's byte counts, its
// overlay directory), so sampling costs a few file reads per machine and
// nothing inside it. The last metricsWindow samples per machine are kept
// in memory; followers get each new sample.

// DefaultMetricsInterval is how often running machines are sampled.
const DefaultMetricsInterval = 5 * time.Second

// metricsWindow is how many samples per machine are kept (10 minutes).
const metricsWindow = 120

// statser is a driver that can read a container's counters.
type statser interface {
	Stats(id string) (runtime.Stats, error)
}

// counterer is a network that can count a slot's bytes.
type counterer interface {
	Counters(slot int) (rx, tx uint64, err error)
}

type metrics struct {
	mu      sync.Mutex
	samples map[string][]api.MetricSample // by machine id, oldest first
	lastCPU map[string]cpuMark
	waiters map[string]map[chan api.MetricSample]struct{}
}

type cpuMark struct {
	at    time.Time
	nanos uint64
}

func newMetrics() *metrics {
	return &metrics{samples: map[string][]api.MetricSample{}, lastCPU: map[string]cpuMark{},
		waiters: map[string]map[chan api.MetricSample]struct{}{}}
}

// RunMetrics samples the running machines until ctx ends.
func (m *Manager) RunMetrics(ctx context.Context) {
	t := time.NewTicker(m.cfg.MetricsInterval)
	defer t.Stop()
	for {
		m.SampleAll(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// SampleAll samples every running machine now (RunMetrics does it on its
// interval) and returns how many it sampled.
func (m *Manager) SampleAll(ctx context.Context) int {
	// Machines being snapshotted keep their samples and activity; only
	// running ones are sampled.
	recs, err := m.store.ListMachines(ctx, store.MachineFilter{States: []string{api.StateRunning, api.StateSnapshotting, api.StatePausing}, NodeID: m.cfg.Node})
	if err != nil {
		return 0
	}
	running := map[string]bool{}
	sampled := 0
	for _, rec := range recs {
		if rec.TeamID == buildTeam {
			continue
		}
		running[rec.ID] = true
		if rec.State != api.StateRunning {
			continue
		}
		sampled++
		now := time.Now()
		if s, ok := m.sample(rec, now); ok {
			m.metrics.add(rec.ID, s)
			m.activity.sawNet(rec.ID, s.NetRxBytes, s.NetTxBytes, now)
		}
		m.checkIdle(rec, now)
	}
	m.metrics.forget(running)
	m.activity.forget(running)
	return sampled
}

// sample measures one machine; ok is false when its counters cannot be read
// (it is stopping, or the driver cannot tell). Its disk is the machine's
// own: the blocks its overlay's file takes on the host, out of its limit.
func (m *Manager) sample(rec *store.Machine, now time.Time) (api.MetricSample, bool) {
	st, ok := m.driver.(statser)
	if !ok {
		return api.MetricSample{}, false
	}
	stats, err := st.Stats(rec.ContainerID)
	if err != nil {
		return api.MetricSample{}, false
	}
	s := api.MetricSample{Timestamp: now.UTC(), CPUCount: rec.CPUCount, MemUsed: stats.MemoryBytes,
		MemTotal: uint64(rec.MemoryMB) << 20}
	if stats.MemoryLimit > 0 && stats.MemoryLimit < s.MemTotal {
		s.MemTotal = stats.MemoryLimit
	}
	m.metrics.mu.Lock()
	prev, seen := m.metrics.lastCPU[rec.ID]
	m.metrics.lastCPU[rec.ID] = cpuMark{at: now, nanos: stats.CPUNanos}
	m.metrics.mu.Unlock()
	if !seen && !rec.StartedAt.IsZero() {
		// The first sample: the CPU used since the sandbox started.
		prev, seen = cpuMark{at: rec.StartedAt}, true
	}
	if seen && now.After(prev.at) && stats.CPUNanos >= prev.nanos && rec.CPUCount > 0 {
		s.CPUUsedPct = float64(stats.CPUNanos-prev.nanos) / float64(now.Sub(prev.at).Nanoseconds()) / float64(rec.CPUCount) * 100
	}
	if c, ok := m.net.(counterer); ok && rec.Slot >= 0 {
		s.NetRxBytes, s.NetTxBytes, _ = c.Counters(rec.Slot)
	}
	s.DiskUsed, s.DiskTotal = stats.DiskBytes, m.metricsDiskTotal(rec)
	return s, true
}

// metricsDiskTotal is a machine's disk_total: its own limit, in bytes.
func (m *Manager) metricsDiskTotal(rec *store.Machine) uint64 {
	return uint64(m.diskMB(rec.DiskMB)) << 20
}

func (ms *metrics) add(id string, s api.MetricSample) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	list := append(ms.samples[id], s)
	if len(list) > metricsWindow {
		list = list[len(list)-metricsWindow:]
	}
	ms.samples[id] = list
	for ch := range ms.waiters[id] {
		select {
		case ch <- s:
		default: // a slow follower misses a sample rather than stalling the sampler
		}
	}
}

// forget drops the samples of machines no longer running.
func (ms *metrics) forget(running map[string]bool) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	for id := range ms.samples {
		if !running[id] {
			delete(ms.samples, id)
			delete(ms.lastCPU, id)
		}
	}
}

// Metrics returns a machine's recent samples, oldest first.
func (m *Manager) Metrics(ctx context.Context, teamID, id string) ([]api.MetricSample, error) {
	rec, err := m.Get(ctx, teamID, id)
	if err != nil {
		return nil, err
	}
	m.metrics.mu.Lock()
	none := len(m.metrics.samples[id]) == 0
	m.metrics.mu.Unlock()
	if none && rec.State == api.StateRunning && rec.TeamID != buildTeam {
		// A machine created a moment ago has no sample until the next tick:
		// take its first now, so a running machine never shows none.
		if s, ok := m.sample(rec, time.Now()); ok {
			m.metrics.add(id, s)
		}
	}
	m.metrics.mu.Lock()
	defer m.metrics.mu.Unlock()
	return append([]api.MetricSample{}, m.metrics.samples[id]...), nil
}

// Monitor calls fn with each new sample of a machine until ctx ends or fn
// fails.
func (m *Manager) Monitor(ctx context.Context, teamID, id string, fn func(api.MetricSample) error) error {
	if _, err := m.Get(ctx, teamID, id); err != nil {
		return err
	}
	ch := make(chan api.MetricSample, 4)
	ms := m.metrics
	ms.mu.Lock()
	if ms.waiters[id] == nil {
		ms.waiters[id] = map[chan api.MetricSample]struct{}{}
	}
	ms.waiters[id][ch] = struct{}{}
	ms.mu.Unlock()
	defer func() {
		ms.mu.Lock()
		delete(ms.waiters[id], ch)
		if len(ms.waiters[id]) == 0 {
			delete(ms.waiters, id)
		}
		ms.mu.Unlock()
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case s := <-ch:
			if err := fn(s); err != nil {
				return err
			}
		}
	}
}
