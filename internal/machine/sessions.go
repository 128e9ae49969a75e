package machine

import (
	"context"
	"sync"

	"nullspace.dev/nullspace/api"
)

// Calls into a running machine (proxied streams, terminal sessions, SSH
// sessions) hold connections to its agent. When the machine stops
// running (a pause, a stop, a kill) those connections would hang until
// TCP gave up, since the sandbox and its network go without a word; so
// they are ended, and their clients reconnect and learn the new state.

// sessions are the contexts of calls into running machines.
type sessions struct {
	mu   sync.Mutex
	next uint64
	by   map[string]map[uint64]context.CancelFunc
}

// WhileRunning returns a context that also ends when machine id stops
// running; call done when the call is over.
func (m *Manager) WhileRunning(ctx context.Context, id string) (_ context.Context, done func()) {
	ctx, cancel := context.WithCancel(ctx)
	s := &m.sessions
	s.mu.Lock()
	if s.by == nil {
		s.by = map[string]map[uint64]context.CancelFunc{}
	}
	if s.by[id] == nil {
		s.by[id] = map[uint64]context.CancelFunc{}
	}
	s.next++
	n := s.next
	s.by[id][n] = cancel
	s.mu.Unlock()
	return ctx, func() {
		cancel()
		s.mu.Lock()
		delete(s.by[id], n)
		if len(s.by[id]) == 0 {
			delete(s.by, id)
		}
		s.mu.Unlock()
	}
}

// end ends the calls into a machine that no longer runs.
func (s *sessions) end(id, state string) {
	if state == api.StateRunning || state == api.StateSnapshotting {
		return
	}
	s.mu.Lock()
	calls := s.by[id]
	delete(s.by, id)
	s.mu.Unlock()
	for _, cancel := range calls {
		cancel()
	}
}
