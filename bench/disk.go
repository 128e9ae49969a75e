package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"

	"nullspace.dev/nullspace/api"
)

// The issue-24 measurement: the cost of the disk limit on a write-heavy
// command. `dd if=/dev/zero of=/root/big bs=1M count=1024`, without and
// with conv=fsync, in the same run, interleaved:
//
//   - raw runsc with the unlimited overlay (--overlay2=root:dir=..., what
//     every machine had before disk_mb);
//   - raw runsc with the overlay limited to 2 GiB (...,size=2048m, what the
//     server gives a machine of disk_mb 2048);
//   - a Nullspace machine of disk_mb 2048, through the API (its command
//     round trip is in the figure, ~a few ms).
//
// Each case gets a fresh sandbox per iteration (started untimed); only dd
// is timed. 1 GiB per sample is slow on a small host, so the suite runs
// at most diskIterations of them whatever -n says.

const (
	metricDiskDD      = "disk_dd_1g"       // dd of 1 GiB, bs=1M
	metricDiskDDFsync = "disk_dd_1g_fsync" // the same with conv=fsync
	diskLimitMB       = 2048
	diskIterations    = 5
	labelUnlimited    = "overlay unlimited"
	labelLimited      = "overlay size=2048m"
	labelDiskMB       = "disk_mb=2048"
)

var ddArgs = []string{"dd", "if=/dev/zero", "of=/root/big", "bs=1M", "count=1024"}

func measureDisk(ctx context.Context, cfg config, ns *nullspaceSide, raw *rawSide, res *results) error {
	n := min(cfg.n, diskIterations)
	fmt.Fprintf(os.Stderr, "bench: dd of 1 GiB under the disk limit, %d iterations (raw runsc unlimited and limited, a machine of disk_mb %d)\n", n, diskLimitMB)
	for i := range n {
		steps := []func() error{
			func() error { return raw.ddCase(ctx, "", labelUnlimited, res) },
			func() error { return raw.ddCase(ctx, fmt.Sprintf(",size=%dm", diskLimitMB), labelLimited, res) },
			func() error { return ns.ddCase(ctx, res) },
		}
		if i%2 == 1 {
			slices.Reverse(steps)
		}
		for _, step := range steps {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := step(); err != nil {
				return err
			}
		}
		progress(i+1, n)
	}
	return nil
}

// ddCase times dd in a fresh raw sandbox whose overlay flag ends with
// size (empty: unlimited).
func (r *rawSide) ddCase(ctx context.Context, size, label string, res *results) error {
	c, err := r.prepare(ctx, r.cfg.memoryMB)
	if err != nil {
		return err
	}
	r.live[c.id] = c
	if err := r.runsc.RunLogged(ctx, "root:dir="+filepath.Join(c.dir, "overlay")+size, c.log(),
		"run", "--detach", "--bundle="+filepath.Join(c.dir, "bundle"), c.id); err != nil {
		return err
	}
	for _, m := range []struct {
		metric string
		extra  []string
	}{{metricDiskDD, nil}, {metricDiskDDFsync, []string{"conv=fsync"}}} {
		start := time.Now()
		if err := r.runsc.RunLogged(ctx, "", c.log(), append(append([]string{"exec", c.id}, ddArgs...), m.extra...)...); err != nil {
			return fmt.Errorf("dd in raw sandbox (%s): %w", label, err)
		}
		res.addDuration(m.metric, sideRaw, label, time.Since(start))
		if err := r.runsc.RunLogged(ctx, "", c.log(), "exec", c.id, "rm", "/root/big"); err != nil {
			return err
		}
	}
	return r.kill(ctx, c, nil)
}

// ddCase times dd in a fresh machine of disk_mb diskLimitMB.
func (s *nullspaceSide) ddCase(ctx context.Context, res *results) error {
	m, err := s.client.CreateMachine(ctx, api.CreateMachineRequest{
		Template: "minimal", CPUCount: s.cfg.cpus, MemoryMB: s.cfg.memoryMB, DiskMB: diskLimitMB,
	})
	if err != nil {
		return fmt.Errorf("create machine of disk_mb %d: %w", diskLimitMB, err)
	}
	s.live[m.ID] = true
	for _, c := range []struct {
		metric string
		extra  []string
	}{{metricDiskDD, nil}, {metricDiskDDFsync, []string{"conv=fsync"}}} {
		start := time.Now()
		if _, err := s.run(ctx, m.ID, append(slices.Clone(ddArgs), c.extra...)...); err != nil {
			return err
		}
		res.addDuration(c.metric, sideNullspace, labelDiskMB, time.Since(start))
		if _, err := s.run(ctx, m.ID, "rm", "/root/big"); err != nil {
			return err
		}
	}
	return s.kill(ctx, &warmMachine{id: m.ID, template: "minimal"}, nil)
}

// printDisk prints the disk limit's cost, when the disk suite ran.
func (r *results) printDisk(w io.Writer) {
	unlimited := r.get(metricDiskDD, sideRaw, labelUnlimited)
	if unlimited == nil {
		return
	}
	p50 := func(s *series) float64 {
		if s == nil {
			return 0
		}
		v := slices.Clone(s.Samples)
		slices.Sort(v)
		return percentile(v, .5)
	}
	fmt.Fprintln(w, "\nDisk limit (issue 24), p50 of dd if=/dev/zero bs=1M count=1024 inside, fresh sandbox each:")
	for _, m := range []struct{ metric, name string }{{metricDiskDD, "dd 1 GiB"}, {metricDiskDDFsync, "dd 1 GiB conv=fsync"}} {
		base := p50(r.get(m.metric, sideRaw, labelUnlimited))
		limited := p50(r.get(m.metric, sideRaw, labelLimited))
		machine := p50(r.get(m.metric, sideNullspace, labelDiskMB))
		fmt.Fprintf(w, "  %s: raw %s %.0f ms, raw %s %.0f ms (%.2fx), machine %s %.0f ms (%.2fx)\n",
			m.name, labelUnlimited, base, labelLimited, limited, ratio(limited, base), labelDiskMB, machine, ratio(machine, base))
	}
}
