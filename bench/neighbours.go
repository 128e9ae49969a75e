package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"nullspace.dev/nullspace/api"
)

// The issue-24 measurement of a noisy neighbour: the exec round trip of a
// quiet machine, alone and while another machine on the host runs a fork
// bomb (up to its process limit), fills its disk (past its disk_mb), or
// writes output without end. Each noise gets a fresh noisy machine; the
// quiet one is the same throughout.
const (
	metricNeighbourExec = "neighbour_exec" // the quiet machine's exec round trip, labelled by the noise
	neighbourSamples    = 40               // per -n unit
	neighbourDiskMB     = 256
)

var neighbourNoises = []struct{ label, shell string }{
	{"alone", ""},
	{"fork bomb", "f() { f | f & }; f"},
	{"disk fill", "while true; do dd if=/dev/zero of=/root/fill.$RANDOM bs=1M count=64 2>/dev/null || sleep 0.1; done"},
	{"output flood", "yes nullspace"},
}

func measureNeighbours(ctx context.Context, cfg config, ns *nullspaceSide, res *results) error {
	fmt.Fprintln(os.Stderr, "bench: noisy neighbours: a quiet machine's exec round trip beside a fork bomb, a disk fill, an output flood")
	quiet, err := ns.client.CreateMachine(ctx, api.CreateMachineRequest{Template: "minimal", CPUCount: 1, MemoryMB: 256})
	if err != nil {
		return err
	}
	defer ns.client.KillMachine(context.WithoutCancel(ctx), quiet.ID)
	for i, noise := range neighbourNoises {
		var noisyID string
		if noise.shell != "" {
			noisy, err := ns.client.CreateMachine(ctx, api.CreateMachineRequest{Template: "minimal", CPUCount: 1, MemoryMB: 256, DiskMB: neighbourDiskMB})
			if err != nil {
				return err
			}
			noisyID = noisy.ID
			if _, err := ns.client.StartCommand(ctx, noisy.ID, api.RunCommandRequest{Shell: noise.shell}); err != nil {
				ns.client.KillMachine(context.WithoutCancel(ctx), noisy.ID)
				return err
			}
			time.Sleep(2 * time.Second) // the noise at full strength
		}
		for range cfg.n * neighbourSamples {
			start := time.Now()
			r, err := ns.client.RunCommand(ctx, quiet.ID, api.RunCommandRequest{Cmd: []string{"true"}})
			if err != nil {
				return fmt.Errorf("exec beside %s: %w", noise.label, err)
			}
			if r.ExitCode != 0 {
				return fmt.Errorf("exec beside %s: exit %d", noise.label, r.ExitCode)
			}
			res.addDuration(metricNeighbourExec, sideNullspace, noise.label, time.Since(start))
		}
		if noisyID != "" {
			if _, err := ns.client.KillMachine(context.WithoutCancel(ctx), noisyID); err != nil {
				return fmt.Errorf("kill the machine of %s: %w", noise.label, err)
			}
		}
		progress(i+1, len(neighbourNoises))
	}
	return nil
}
