package edge

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the edge's Prometheus collectors.
type metrics struct {
	requests    *prometheus.CounterVec
	duration    prometheus.Histogram
	wakes       *prometheus.CounterVec
	wakeSeconds prometheus.Histogram
	held        prometheus.Gauge
	heldTotal   prometheus.Counter
	websockets  prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nullspace_edge_requests_total",
			Help: "Requests to machine URLs, by HTTP status and by the edge's own code when it answered itself.",
		}, []string{"status", "code"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "nullspace_edge_request_duration_seconds",
			Help:    "Time from a request's arrival to the end of its answer (WebSockets: to their close).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2.5, 14),
		}),
		wakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nullspace_edge_wakes_total",
			Help: "Machines woken by traffic (one per lineage however many requests were held), by result.",
		}, []string{"result"}),
		wakeSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "nullspace_edge_wake_duration_seconds",
			Help:    "Duration of wakes by traffic (resume or start), server side.",
			Buckets: []float64{.05, .1, .15, .2, .3, .5, .75, 1, 2, 5, 10, 30},
		}),
		held: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nullspace_edge_held_requests",
			Help: "Requests held now while their machine wakes.",
		}),
		heldTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nullspace_edge_held_requests_total",
			Help: "Requests that were held while their machine woke.",
		}),
		websockets: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nullspace_edge_websockets_open",
			Help: "WebSocket connections open through the edge.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.duration, m.wakes, m.wakeSeconds, m.held, m.heldTotal, m.websockets)
	}
	return m
}

func (m *metrics) observe(status int, code string, d time.Duration) {
	m.requests.WithLabelValues(strconv.Itoa(status), code).Inc()
	m.duration.Observe(d.Seconds())
}
