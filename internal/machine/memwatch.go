package machine

import (
	"context"
	"sync"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/agent/agentclient"
	"nullspace.dev/nullspace/internal/store"
)

// Out of memory inside a machine. gVisor has no OOM killer of its own, and
// when the host's memory cgroup kills any process of a systrap sandbox the
// whole sandbox dies, with every unsaved state of the machine. So the host
// watches each running sandbox's memory in its cgroup (what it cannot
// reclaim: the sentry's anonymous memory and the machine's memory file, a
// memfd) and, when it nears the cgroup's limit, asks the agent to kill the
// process with the largest resident set (POST /lifecycle/reclaim), as
// Linux's OOM killer would. The watch costs the machine nothing: one read of
// a cgroup file on the host, as often as the fastest filler could use up
// what is left (every 250 ms when far from the limit, down to 5 ms). A
// watcher inside the machine cost it 13 ms of CPU a second while idle
// (every wake of a Go program is a burst of system calls under systrap).
// The driver gives the cgroup headroom above memory_mb (runtime/gvisor).

const (
	// fillBytesPerMS is the fastest a machine's process fills memory here,
	// with margin: python appending 16 MiB strings measured 1.5 GB/s.
	fillBytesPerMS = 2 << 20
	memMinInterval = 5 * time.Millisecond
	memMaxInterval = 250 * time.Millisecond
	// reclaimTimeout bounds the call into the agent.
	reclaimTimeout = 2 * time.Second
	// reclaimSettle is how long a killed process's memory takes to come
	// back (measured ~100 ms) before the next kill may follow.
	reclaimSettle = 300 * time.Millisecond
)

// memoryPressurer is a driver that reads a sandbox's unreclaimable memory
// and its limit (0: none) from its cgroup.
type memoryPressurer interface {
	MemoryPressure(id string) (used, limit uint64, err error)
}

// memGuard is how far below its limit a sandbox's memory must stay: 1/32
// of the limit, and at least what the fastest filler takes in two of the
// shortest intervals.
func memGuard(limit uint64) uint64 {
	return max(limit/32, 2*fillBytesPerMS*uint64(memMinInterval/time.Millisecond))
}

// memInterval is how long the watch may wait with free bytes left before
// the guard: as long as the fastest filler needs to use them up.
func memInterval(free uint64) time.Duration {
	return min(max(time.Duration(free/fillBytesPerMS)*time.Millisecond, memMinInterval), memMaxInterval)
}

// memWatch holds the running machines' memory watches.
type memWatch struct {
	mu      sync.Mutex
	follows map[string]context.CancelFunc // by machine id
	wg      sync.WaitGroup
}

// watchMemory starts or stops watching rec's memory to match its state;
// setState calls it after every transition.
func (m *Manager) watchMemory(rec *store.Machine) {
	mp, ok := m.driver.(memoryPressurer)
	if !ok {
		return
	}
	want := rec.State == api.StateRunning || rec.State == api.StateSnapshotting
	w := &m.memWatch
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.follows == nil {
		w.follows = map[string]context.CancelFunc{}
	}
	cancel, following := w.follows[rec.ID]
	switch {
	case want && !following && m.root.Err() == nil:
		ip, err := m.guestAddr(rec)
		if err != nil {
			return
		}
		ctx, cancel := context.WithCancel(m.root)
		w.follows[rec.ID] = cancel
		agent := agentclient.New(m.agentURL(ip), rec.AgentToken, nil)
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			m.followMemory(ctx, rec.ID, rec.ContainerID, mp, agent)
		}()
	case !want && following:
		cancel()
		delete(w.follows, rec.ID)
	}
}

// followMemory watches one sandbox until ctx ends.
func (m *Manager) followMemory(ctx context.Context, id, containerID string, mp memoryPressurer, agent *agentclient.Client) {
	log := m.logger.With("machine_id", id)
	wait := memMaxInterval
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		used, limit, err := mp.MemoryPressure(containerID)
		if err != nil || limit == 0 {
			wait = memMaxInterval // gone (the watch ends with its state), or no limit
			continue
		}
		threshold := limit - min(memGuard(limit), limit)
		if used < threshold {
			wait = memInterval(threshold - used)
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, reclaimTimeout)
		res, err := agent.Reclaim(rctx)
		cancel()
		if err != nil {
			log.WarnContext(ctx, "out of memory: the agent did not reclaim", "used_bytes", used, "limit_bytes", limit, "err", err)
		} else {
			log.WarnContext(ctx, "out of memory: killed the largest process", "pid", res.PID, "command", res.Command,
				"rss_bytes", res.RSSBytes, "used_bytes", used, "limit_bytes", limit)
		}
		wait = reclaimSettle
	}
}

// stopMemoryWatch ends every watch (server shutdown) and waits for them.
func (m *Manager) stopMemoryWatch() {
	w := &m.memWatch
	w.mu.Lock()
	for id, cancel := range w.follows {
		cancel()
		delete(w.follows, id)
	}
	w.mu.Unlock()
	w.wg.Wait()
}
