package machine

import (
	"context"
	"fmt"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/store"
	"nullspace.dev/nullspace/internal/template"
)

// buildTeam owns the machines that run template build steps. No API key
// belongs to it, so no user sees or touches them.
const buildTeam = "system:build"

// buildStepTimeout bounds one template build step.
const buildStepTimeout = 30 * time.Minute

var _ template.StepRunner = (*Manager)(nil)

// RunSteps boots a machine straight on rootfs (no overlay: changes land in
// rootfs), runs each step with /bin/sh -c and kills the machine. It is
// recorded like any machine, so a server crash mid-build is cleaned up by
// Reconcile.
func (m *Manager) RunSteps(ctx context.Context, rootfs, workdir string, env map[string]string, steps []string) (err error) {
	rec := &store.Machine{
		ID:            newMachineID(),
		TeamID:        buildTeam,
		State:         api.StateCreating,
		Template:      "(template build)",
		CPUCount:      m.cfg.MaxCPU,
		MemoryMB:      min(2048, m.cfg.MaxMemoryMB),
		AllowInternet: m.cfg.AllowInternet,
		ContainerID:   newContainerID(),
		AgentToken:    randomHex(32),
		CreatedAt:     time.Now().UTC(),
	}
	unlock, err := m.lock(ctx, rec.ID)
	if err != nil {
		return err
	}
	defer unlock()
	if err := m.admit(ctx, rec, true, func() error { return m.store.CreateMachine(ctx, rec, m.net.Slots()) }); err != nil {
		return err
	}
	defer func() {
		if rec.State == api.StateCreating {
			if uerr := m.undoCreate(ctx, rec); uerr != nil {
				m.logger.ErrorContext(ctx, "clean up build machine", "machine_id", rec.ID, "err", uerr)
			}
			return
		}
		if kerr := m.killLocked(ctx, rec); kerr != nil && err == nil {
			err = kerr
		}
	}()
	agent, err := m.boot(ctx, rec, rootfs, true, api.Template{Workdir: workdir, Env: env})
	if err != nil {
		return fmt.Errorf("boot build machine: %w", err)
	}
	if err := m.setState(ctx, rec, api.StateRunning); err != nil {
		return err
	}
	for i, step := range steps {
		m.logger.InfoContext(ctx, "template build step", "step", i+1, "of", len(steps), "cmd", step)
		res, err := agent.Run(ctx, api.RunCommandRequest{Shell: step, Cwd: workdir, Env: env,
			TimeoutMS: buildStepTimeout.Milliseconds()})
		if err != nil {
			return fmt.Errorf("step %d: %w", i+1, err)
		}
		if res.ExitCode != 0 {
			return &template.StepError{Index: i, Step: step, ExitCode: res.ExitCode, Output: res.Stdout + res.Stderr}
		}
	}
	return nil
}
