package telemetry

import (
	"context"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"nullspace.dev/nullspace/internal/usage"
)

type noStats struct{}

func (noStats) CountMachines(context.Context) (map[string]int, error)         { return nil, nil }
func (noStats) SnapshotBytes(context.Context) (int64, error)                  { return 0, nil }
func (noStats) SnapshotBytesByKind(context.Context) (map[string]int64, error) { return nil, nil }

type fakeUsage struct{ rows []usage.Row }

func (f *fakeUsage) Usage(context.Context, string, time.Time, time.Time, usage.GroupBy) ([]usage.Row, error) {
	return f.rows, nil
}

// TestUsageCounters: each team's figures are exported as counters, and a
// figure that goes down (the clock stepped back) keeps the last one.
func TestUsageCounters(t *testing.T) {
	src := &fakeUsage{rows: []usage.Row{{TeamID: "a", VCPUSeconds: 10, MemoryGiBSeconds: 5, StorageGiBSeconds: 2, Creates: 1}}}
	m := New(noStats{})
	m.CountUsage(src)
	time.Sleep(time.Millisecond)
	scrape := func() string {
		rec := httptest.NewRecorder()
		m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		b, _ := io.ReadAll(rec.Body)
		return string(b)
	}
	out := scrape()
	for _, want := range []string{`nullspace_usage_vcpu_seconds_total{team="a"} 10`, `nullspace_usage_memory_gib_seconds_total{team="a"} 5`,
		`nullspace_usage_storage_gib_seconds_total{team="a"} 2`, `nullspace_usage_creates_total{team="a"} 1`} {
		if !strings.Contains(out, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	src.rows = []usage.Row{{TeamID: "a", VCPUSeconds: 8, MemoryGiBSeconds: 6, Creates: 1}}
	out = scrape()
	for _, want := range []string{`nullspace_usage_vcpu_seconds_total{team="a"} 10`, `nullspace_usage_memory_gib_seconds_total{team="a"} 6`,
		`nullspace_usage_storage_gib_seconds_total{team="a"} 2`} {
		if !strings.Contains(out, want) {
			t.Errorf("after a step back, metrics lack %s", want)
		}
	}
}
