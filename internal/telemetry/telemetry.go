// Package telemetry exposes the server's own metrics in the Prometheus text
// format: machines by state, lifecycle latencies, API errors by code, and
// the snapshot storage used.
package telemetry

import (
	"context"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics holds the server's collectors.
type Metrics struct {
	registry  *prometheus.Registry
	lifecycle *prometheus.HistogramVec
	errors    *prometheus.CounterVec
}

// Stats is what the metrics read of the store at every scrape.
type Stats interface {
	CountMachines(ctx context.Context) (map[string]int, error)
	SnapshotBytes(ctx context.Context) (int64, error)
	SnapshotBytesByKind(ctx context.Context) (map[string]int64, error)
}

// New returns the metrics of a server whose state is in db.
func New(db Stats) *Metrics {
	m := &Metrics{
		registry: prometheus.NewRegistry(),
		lifecycle: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "nullspace_lifecycle_duration_seconds",
			Help:    "Duration of successful lifecycle operations (create, pause, resume, snapshot, restore), server side.",
			Buckets: []float64{.025, .05, .1, .15, .2, .3, .5, .75, 1, 2, 5, 10, 30},
		}, []string{"op"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nullspace_api_errors_total",
			Help: "API requests that failed, by public error code.",
		}, []string{"code"}),
	}
	m.registry.MustRegister(m.lifecycle, m.errors, &stateCollector{db: db},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Observe records the duration of a successful lifecycle operation.
func (m *Metrics) Observe(op string, d time.Duration) {
	m.lifecycle.WithLabelValues(op).Observe(d.Seconds())
}

// CountError records a failed API request.
func (m *Metrics) CountError(code string) {
	m.errors.WithLabelValues(code).Inc()
}

// Registry is where other parts (the edge) register their collectors.
func (m *Metrics) Registry() prometheus.Registerer { return m.registry }

// Handler serves the metrics.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{})
}

// stateCollector reads the machine counts and snapshot storage from the
// store at every scrape.
type stateCollector struct{ db Stats }

var (
	machinesDesc  = prometheus.NewDesc("nullspace_machines", "Machines by state.", []string{"state"}, nil)
	snapshotsDesc = prometheus.NewDesc("nullspace_snapshot_storage_bytes", "Bytes of committed snapshots.", nil, nil)
	byKindDesc    = prometheus.NewDesc("nullspace_snapshot_storage_bytes_by_kind", "Bytes of committed snapshots by kind (hibernate, checkpoint, snapshot, disk).", []string{"kind"}, nil)
)

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- machinesDesc
	ch <- snapshotsDesc
	ch <- byKindDesc
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if counts, err := c.db.CountMachines(ctx); err == nil {
		for state, n := range counts {
			ch <- prometheus.MustNewConstMetric(machinesDesc, prometheus.GaugeValue, float64(n), state)
		}
	}
	if n, err := c.db.SnapshotBytes(ctx); err == nil {
		ch <- prometheus.MustNewConstMetric(snapshotsDesc, prometheus.GaugeValue, float64(n))
	}
	if byKind, err := c.db.SnapshotBytesByKind(ctx); err == nil {
		for kind, n := range byKind {
			ch <- prometheus.MustNewConstMetric(byKindDesc, prometheus.GaugeValue, float64(n), kind)
		}
	}
}
