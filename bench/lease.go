package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"sync"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/lease"
)

// The issue-4 measurements: the cost of the lease scheduler with 10,000
// leases, of a lease refresh through the API, and of sampling the metrics
// of running machines. They have no raw runsc counterpart; they are
// printed as they are measured and kept in the JSON.

const (
	metricLeaseSet     = "lease_schedule_10k"  // setting 10,000 deadlines
	metricLeaseFire    = "lease_fire_10k"      // firing 10,000 due deadlines
	metricLeaseRefresh = "lease_refresh_call"  // POST /v1/machines/{id}/timeout round trip
	metricSample       = "metrics_sample_cost" // sampling one running machine, host side
	sampledMachines    = 4                     // machines running while sampling is measured
	leases             = 10000
)

func measureLeases(ctx context.Context, cfg config, ns *nullspaceSide, res *results) error {
	fmt.Fprintf(os.Stderr, "bench: lease scheduler (%d leases), lease refresh and metrics sampling, %d iterations\n", leases, cfg.n)
	for range cfg.n {
		set, fire := schedulerCost()
		res.addDuration(metricLeaseSet, sideNullspace, "-", set)
		res.addDuration(metricLeaseFire, sideNullspace, "-", fire)
	}
	var ids []string
	for range sampledMachines {
		id, err := ns.ready(ctx, hibernateCase{Label: labelIdle, MemoryMB: cfg.memoryMB})
		if err != nil {
			return err
		}
		ids = append(ids, id)
	}
	for range cfg.n {
		start := time.Now()
		if _, err := ns.client.SetTimeout(ctx, ids[0], time.Hour, api.TimeoutDestroy); err != nil {
			return err
		}
		res.addDuration(metricLeaseRefresh, sideNullspace, labelIdle, time.Since(start))
		start = time.Now()
		n := ns.inst.Manager.SampleAll(ctx)
		if n < sampledMachines {
			return fmt.Errorf("sampled %d machines, want at least %d", n, sampledMachines)
		}
		res.addDuration(metricSample, sideNullspace, labelIdle, time.Since(start)/time.Duration(n))
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
	for _, id := range ids {
		if _, err := ns.client.KillMachine(ctx, id); err != nil {
			return err
		}
		delete(ns.live, id)
	}
	p50 := func(metric, label string) time.Duration {
		s := res.get(metric, sideNullspace, label)
		if s == nil {
			return 0
		}
		vals := append([]float64(nil), s.Samples...)
		sort.Float64s(vals)
		return time.Duration(vals[len(vals)/2] * float64(time.Millisecond))
	}
	sample := p50(metricSample, labelIdle)
	fmt.Printf("\nLeases and metrics (issue 4), p50 of %d:\n", cfg.n)
	fmt.Printf("  lease scheduler: %s leases set in %v (%v each), all fired in %v\n", strconv.Itoa(leases),
		p50(metricLeaseSet, "-"), p50(metricLeaseSet, "-")/leases, p50(metricLeaseFire, "-"))
	fmt.Printf("  lease refresh (POST .../timeout) round trip: %v\n", p50(metricLeaseRefresh, labelIdle))
	fmt.Printf("  metrics sampling: %v per running machine per sample, %.4f%% of one CPU at one sample every 5 s\n",
		sample, float64(sample)/float64(5*time.Second)*100)
	return nil
}

// schedulerCost sets 10,000 deadlines due within a millisecond and waits
// for all of them to fire.
func schedulerCost() (set, fire time.Duration) {
	var wg sync.WaitGroup
	wg.Add(leases)
	s := lease.New(func(string) { wg.Done() })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	due := time.Now().Add(50 * time.Millisecond)
	start := time.Now()
	for i := range leases {
		s.Set("mch_"+strconv.Itoa(i), due)
	}
	set = time.Since(start)
	go s.Run(ctx)
	time.Sleep(time.Until(due))
	start = time.Now()
	wg.Wait()
	return set, time.Since(start)
}
