package machine

import (
	"context"
	"fmt"
)

// background runs fn, an operation of the manager's own (a lease expiry, an
// idle pause, a budget eviction), in a goroutine that Shutdown waits for.
// After Shutdown it does not run.
func (m *Manager) background(fn func()) {
	if m.root.Err() != nil {
		return
	}
	m.bg.Add(1)
	go func() {
		defer m.bg.Done()
		fn()
	}()
}

// Shutdown stops the manager's own operations and cancels every lifecycle
// operation in flight (each is undone: a pause in progress leaves its
// machine running), then waits for them until ctx ends. Machines keep
// running; the next start adopts them.
func (m *Manager) Shutdown(ctx context.Context) error {
	m.stopRoot()
	m.preemptAll(errShutdown)
	done := make(chan struct{})
	go func() {
		m.bg.Wait()
		m.stopMemoryWatch()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("shut down the machine manager: operations still running: %w", context.Cause(ctx))
	}
}
