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
// of running machines (no raw runsc counterpart: printed as they are
// measured and kept in the JSON); and stop and start, beside raw runsc's
// nearest equivalent in the same run (a stop keeps the disk, which a raw
// sandbox keeps only in a checkpoint: checkpoint, kill and delete; a start
// is a restore of it to the first exec).

const (
	metricLeaseSet     = "lease_schedule_10k"  // setting 10,000 deadlines
	metricLeaseFire    = "lease_fire_10k"      // firing 10,000 due deadlines
	metricLeaseRefresh = "lease_refresh_call"  // POST /v1/machines/{id}/timeout round trip
	metricSample       = "metrics_sample_cost" // sampling one running machine, host side
	sampledMachines    = 4                     // machines running while sampling is measured
	leases             = 10000
)

func measureLeases(ctx context.Context, cfg config, ns *nullspaceSide, raw *rawSide, res *results) error {
	fmt.Fprintf(os.Stderr, "bench: stop and start, %d iterations (raw runsc)\n", cfg.n)
	hc := hibernateCase{Label: labelIdle, MemoryMB: cfg.memoryMB}
	for i := range cfg.n {
		steps := []func() error{
			func() error { return ns.stopStart(ctx, hc, res) },
			func() error { return raw.stopStart(ctx, hc, res) },
		}
		if i%2 == 1 {
			steps[0], steps[1] = steps[1], steps[0]
		}
		for _, step := range steps {
			if err := step(); err != nil {
				return err
			}
		}
		progress(i+1, cfg.n)
	}

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

// stopStart measures one machine with a main process: stop, then start to
// its first command.
func (s *nullspaceSide) stopStart(ctx context.Context, hc hibernateCase, res *results) error {
	m, err := s.client.CreateMachine(ctx, api.CreateMachineRequest{Template: labelIdle, MemoryMB: hc.MemoryMB,
		Command: []string{"/bin/sleep", "1000000"}})
	if err != nil {
		return err
	}
	s.live[m.ID] = true
	if err := sleep(ctx, s.cfg.settle); err != nil {
		return err
	}
	stopped, err := s.timed("stop "+hc.Label, func() error {
		_, err := s.client.Stop(ctx, m.ID, nil)
		return err
	})
	if err != nil {
		return fmt.Errorf("stop machine %s: %w", m.ID, err)
	}
	res.addDuration(metricStop, sideNullspace, hc.Label, stopped)
	started, err := s.timed("start "+hc.Label, func() error {
		if _, err := s.client.Start(ctx, m.ID); err != nil {
			return fmt.Errorf("start machine %s: %w", m.ID, err)
		}
		return s.runTrue(ctx, m.ID)
	})
	if err != nil {
		return err
	}
	res.addDuration(metricStart, sideNullspace, hc.Label, started)
	return s.kill(ctx, &warmMachine{id: m.ID}, nil)
}

// stopStart is the raw counterpart: checkpoint (which stops the sandbox),
// kill and delete; then restore the image to the first exec.
func (r *rawSide) stopStart(ctx context.Context, hc hibernateCase, res *results) error {
	c, err := r.ready(ctx, hc)
	if err != nil {
		return err
	}
	image, took, deleted, err := r.checkpointRemove(ctx, c)
	if err != nil {
		return err
	}
	res.addDuration(metricStop, sideRaw, hc.Label, took+deleted)
	c2, restored, first, err := r.restore(ctx, image, hc.MemoryMB, false)
	if err != nil {
		return err
	}
	res.addDuration(metricStart, sideRaw, hc.Label, restored+first)
	if err := r.kill(ctx, c2, nil); err != nil {
		return err
	}
	return os.RemoveAll(image)
}
