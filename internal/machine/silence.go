package machine

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/agent/agentclient"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store"
)

// Machines that stop answering. A sandbox can stay up while its agent no
// longer answers (the machine's network was taken, the agent is wedged):
// every call into it then fails, and a pause driven by its lease would be
// tried for ever. The watch probes each running machine's agent every
// probeInterval; one that has not answered for AgentSilence is failed
// (agent_unresponsive) and its resources freed. A lease that cannot pause
// its machine maxLeasePauses times in a row fails it too (pause_failed).

const (
	// DefaultAgentSilence is how long a running machine's agent may go
	// without answering before the machine is failed. Generous: a machine
	// busy with a CPU-bound load on a 2-core host answers in milliseconds,
	// a wedged one never.
	DefaultAgentSilence = 2 * time.Minute
	// probeInterval is how often each running machine's agent is probed:
	// four probes within DefaultAgentSilence. A probe wakes the agent,
	// which under systrap costs the machine ~7 ms of CPU; every 30 s that
	// is 0.2 ms a second of an idle machine.
	probeInterval = 30 * time.Second
	// probeTimeout bounds one probe.
	probeTimeout = 5 * time.Second
	// maxLeasePauses is how many pauses in a row a lease may fail before
	// its machine is failed: a machine that can be neither paused nor left
	// running past its lease ends, with its last checkpoint suggested.
	maxLeasePauses = 3
	// leasePauseRetry is how soon a lease tries a failed pause again.
	leasePauseRetry = 30 * time.Second
)

// silence records, per machine id, since when its agent has not answered
// and how many lease-driven pauses failed in a row.
type silence struct {
	mu         sync.Mutex
	since      map[string]time.Time
	pauseFails map[string]int
}

func newSilence() *silence {
	return &silence{since: map[string]time.Time{}, pauseFails: map[string]int{}}
}

// probed records a probe of id's agent; it returns how long the agent has
// been silent (0 when it answered).
func (s *silence) probed(id string, answered bool, now time.Time) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if answered {
		delete(s.since, id)
		return 0
	}
	first, ok := s.since[id]
	if !ok {
		s.since[id] = now
		return 0
	}
	return now.Sub(first)
}

// pauseFailed counts a failed lease pause of id and returns the count.
func (s *silence) pauseFailed(id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pauseFails[id]++
	return s.pauseFails[id]
}

// forget drops what is recorded of id (it no longer runs, or a pause
// succeeded).
func (s *silence) forget(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.since, id)
	delete(s.pauseFails, id)
}

// keep drops the records of machines not in ids (they stopped running).
func (s *silence) keep(ids map[string]bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id := range s.since {
		if !ids[id] {
			delete(s.since, id)
		}
	}
}

// probeAgents asks the agent of each machine in recs whether it answers,
// concurrently, and fails the machines silent for longer than AgentSilence.
func (m *Manager) probeAgents(ctx context.Context, recs []*store.Machine) {
	ids := make(map[string]bool, len(recs))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for _, rec := range recs {
		ids[rec.ID] = true
		ip, err := m.guestAddr(rec)
		if err != nil {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			pctx, cancel := context.WithTimeout(ctx, probeTimeout)
			_, err := agentclient.New(m.agentURL(ip), rec.AgentToken, nil).Health(pctx)
			cancel()
			if ctx.Err() != nil {
				return
			}
			silent := m.silence.probed(rec.ID, err == nil, time.Now())
			if silent < m.cfg.AgentSilence {
				return
			}
			msg := fmt.Sprintf("the machine's agent did not answer for %s while its sandbox ran", silent.Round(time.Second))
			if ferr := m.fail(withCause(ctx, "watch"), rec, api.FailureAgentUnresponsive, msg); ferr != nil {
				m.logger.ErrorContext(ctx, "fail a silent machine", "machine_id", rec.ID, "err", ferr)
			}
			m.silence.forget(rec.ID)
		}()
	}
	wg.Wait()
	m.silence.keep(ids)
}

// pauseFailed handles a lease-driven pause (or stop: what is "pauses" or
// "stops") of rec that failed with err; the caller holds rec's lineage and
// machine locks. The pause is tried again later, unless it failed
// maxLeasePauses times in a row: then the machine fails. A pause cancelled
// by a kill or the shutdown is left alone.
func (m *Manager) pauseFailed(ctx context.Context, rec *store.Machine, what string, err error) {
	log := m.logger.With("machine_id", rec.ID, "action", what)
	// A stop has ended the processes before it could fail: the machine
	// runs on without them.
	act, runs := "pause", "the machine keeps running"
	if what == "stops" {
		act, runs = "stop", "the machine keeps running, its processes ended,"
	}
	if cause := preemptCause(ctx); errors.Is(cause, errKilled) || errors.Is(cause, errShutdown) || m.root.Err() != nil {
		log.InfoContext(ctx, act+" at the end of the lease cancelled", "cause", cause)
		return
	}
	n := m.silence.pauseFailed(rec.ID)
	if n < maxLeasePauses {
		log.ErrorContext(ctx, act+" at the end of the lease failed; "+runs+" and is tried again",
			"attempt", n, "retry_in", leasePauseRetry, "err", err)
		m.leases.Set(rec.ID, time.Now().Add(leasePauseRetry))
		return
	}
	cur, gerr := m.store.GetMachine(context.WithoutCancel(ctx), rec.ID)
	if gerr != nil || cur.State != api.StateRunning {
		return
	}
	msg := fmt.Sprintf("its lease ended and %d %s in a row failed (last: %s)", n, what, errdefs.Classify(err).Message)
	if ferr := m.failFrom(ctx, cur, api.FailurePauseFailed, msg); ferr != nil {
		log.ErrorContext(ctx, "fail a machine whose lease could not end it", "err", ferr)
	}
	m.silence.forget(rec.ID)
}
