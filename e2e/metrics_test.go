package e2e

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
)

// TestMetrics: samples of a running machine show its memory, disk and
// network, and its CPU rising under a busy loop; the Monitor streams new
// samples.
func TestMetrics(t *testing.T) {
	m := newMachine(t, api.CreateMachineRequest{Template: "minimal", CPUCount: 1})
	// Asked at once, before the sampler's first tick: one sample, taken now.
	first, err := env.client.Metrics(t.Context(), m.ID)
	if err != nil || len(first) == 0 || first[0].MemUsed == 0 {
		t.Fatalf("metrics of a machine just created: %v, %+v", err, first)
	}
	run(t, m.ID, "dd if=/dev/zero of=/root/blob bs=1M count=8 && sync")
	// Idle: a sample whose CPU window (the sampler's interval, 500 ms
	// here) began after dd had ended; the first one showing the file can
	// still count dd's CPU on a loaded host.
	ddDone := time.Now()
	idle := waitSample(t, m.ID, func(s api.MetricSample) bool {
		return s.DiskUsed >= 8<<20 && s.Timestamp.After(ddDone.Add(2*env.cfg.MetricsInterval))
	})
	if idle.CPUCount != 1 || idle.MemUsed == 0 || idle.MemTotal != 512<<20 || idle.DiskTotal == 0 || idle.NetRxBytes == 0 || idle.NetTxBytes == 0 {
		t.Fatalf("sample of an idle machine: %+v", idle)
	}
	if idle.CPUUsedPct > 50 {
		t.Fatalf("idle machine uses %.1f%% CPU", idle.CPUUsedPct)
	}
	run(t, m.ID, "(while :; do :; done) >/dev/null 2>&1 &")
	busy := waitSample(t, m.ID, func(s api.MetricSample) bool { return s.CPUUsedPct > 50 })
	t.Logf("cpu idle %.1f%%, busy %.1f%%", idle.CPUUsedPct, busy.CPUUsedPct)

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	var got []api.MetricSample
	done := errors.New("enough")
	err = env.client.Monitor(ctx, m.ID, func(s api.MetricSample) error {
		got = append(got, s)
		if len(got) == 2 {
			return done
		}
		return nil
	})
	if !errors.Is(err, done) || !got[1].Timestamp.After(got[0].Timestamp) {
		t.Fatalf("monitor: %v, %+v", err, got)
	}
	code, out, errOut := nullspace(t, "", "metrics", m.ID)
	if code != 0 || len(out) == 0 {
		t.Fatalf("nullspace metrics: %d %q %q", code, out, errOut)
	}
}

// waitSample waits for a sample of id for which ok holds.
func waitSample(t *testing.T, id string, ok func(api.MetricSample) bool) api.MetricSample {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		samples, err := env.client.Metrics(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		if n := len(samples); n > 0 && ok(samples[n-1]) {
			return samples[n-1]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no matching sample of %s: %+v", id, samples)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// TestPrometheus: the server's /metrics shows machines by state, lifecycle
// latencies and API errors by code.
func TestPrometheus(t *testing.T) {
	newMachine(t, api.CreateMachineRequest{Template: "minimal"})
	if _, err := env.client.GetMachine(t.Context(), "mch_00000000000000000000"); err == nil {
		t.Fatal("getting a missing machine succeeded")
	}
	// On the API's address, only with an operator key.
	get := func(url, key string) (int, string) {
		t.Helper()
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if status, _ := get("http://"+env.inst.Addr+"/metrics", ""); status != http.StatusUnauthorized {
		t.Fatalf("/metrics without a key: %d, want 401", status)
	}
	_, k, _ := otherTeam(t)
	if status, _ := get("http://"+env.inst.Addr+"/metrics", k.Key); status != http.StatusForbidden {
		t.Fatalf("/metrics with a team's key: %d, want 403", status)
	}
	status, body := get("http://"+env.inst.Addr+"/metrics", env.key)
	if status != http.StatusOK {
		t.Fatalf("/metrics with the operator's key: %d %s", status, body)
	}
	// --metrics-addr serves the same without a key.
	if status, keyless := get("http://"+env.inst.MetricsAddr+"/metrics", ""); status != http.StatusOK ||
		!strings.Contains(keyless, "nullspace_machines{") {
		t.Fatalf("/metrics on --metrics-addr: %d %.200s", status, keyless)
	}
	for _, want := range []string{
		`nullspace_machines{state="running"}`,
		`nullspace_lifecycle_duration_seconds_count{op="create"}`,
		`nullspace_api_errors_total{code="machine_not_found"}`,
		`nullspace_snapshot_storage_bytes`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics has no %s", want)
		}
	}
}
