package telemetry

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"nullspace.dev/nullspace/internal/usage"
)

// UsageSource is every team's usage over a range (the machine manager).
type UsageSource interface {
	Usage(ctx context.Context, teamID string, from, to time.Time, by usage.GroupBy) ([]usage.Row, error)
}

// CountUsage exports the usage of each team since this process started,
// as counters: integrated at every scrape from the usage ledger (closed
// spans, and the open ones until now), so that a machine running for
// hours counts while it runs. Each team's counters only grow within a
// process: a figure below the last one exported (the clock stepped back)
// keeps the last one. Servers sharing a store each export the whole
// store's usage since their own start: aggregate them with max, not sum.
func (m *Metrics) CountUsage(src UsageSource) {
	m.registry.MustRegister(&usageCollector{src: src, since: time.Now().UTC(), last: map[string]usage.Row{}})
}

type usageCollector struct {
	src   UsageSource
	since time.Time
	mu    sync.Mutex
	last  map[string]usage.Row // by team
}

var usageDescs = []struct {
	desc  *prometheus.Desc
	value func(usage.Row) float64
}{
	{prometheus.NewDesc("nullspace_usage_vcpu_seconds_total", "vCPU-seconds of running machines, by team, since the server started.", []string{"team"}, nil),
		func(r usage.Row) float64 { return r.VCPUSeconds }},
	{prometheus.NewDesc("nullspace_usage_memory_gib_seconds_total", "GiB-seconds of memory of running machines, by team, since the server started.", []string{"team"}, nil),
		func(r usage.Row) float64 { return r.MemoryGiBSeconds }},
	{prometheus.NewDesc("nullspace_usage_storage_gib_seconds_total", "GiB-seconds of stored snapshots (paused states, stopped disks, snapshots, checkpoints), by team, since the server started.", []string{"team"}, nil),
		func(r usage.Row) float64 { return r.StorageGiBSeconds }},
	{prometheus.NewDesc("nullspace_usage_creates_total", "Machines created (creates, forks, creates from snapshots), by team, since the server started.", []string{"team"}, nil),
		func(r usage.Row) float64 { return float64(r.Creates) }},
	{prometheus.NewDesc("nullspace_usage_resumes_total", "Paused machines resumed, by team, since the server started.", []string{"team"}, nil),
		func(r usage.Row) float64 { return float64(r.Resumes) }},
	{prometheus.NewDesc("nullspace_usage_egress_bytes_total", "Bytes sent by machines, by team, since the server started.", []string{"team"}, nil),
		func(r usage.Row) float64 { return float64(r.EgressBytes) }},
}

func (c *usageCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range usageDescs {
		ch <- d.desc
	}
}

func (c *usageCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	now := time.Now().UTC()
	c.mu.Lock()
	defer c.mu.Unlock()
	if now.After(c.since) {
		if rows, err := c.src.Usage(ctx, "", c.since, now, usage.GroupBy{Team: true}); err == nil {
			for _, r := range rows {
				c.last[r.TeamID] = atLeast(r, c.last[r.TeamID])
			}
		}
	}
	for team, r := range c.last {
		for _, d := range usageDescs {
			ch <- prometheus.MustNewConstMetric(d.desc, prometheus.CounterValue, d.value(r), team)
		}
	}
}

// atLeast is r with each figure raised to prev's if it is below it.
func atLeast(r, prev usage.Row) usage.Row {
	r.VCPUSeconds = max(r.VCPUSeconds, prev.VCPUSeconds)
	r.MemoryGiBSeconds = max(r.MemoryGiBSeconds, prev.MemoryGiBSeconds)
	r.StorageGiBSeconds = max(r.StorageGiBSeconds, prev.StorageGiBSeconds)
	r.RunningSeconds = max(r.RunningSeconds, prev.RunningSeconds)
	r.Creates = max(r.Creates, prev.Creates)
	r.Resumes = max(r.Resumes, prev.Resumes)
	r.EgressBytes = max(r.EgressBytes, prev.EgressBytes)
	return r
}
