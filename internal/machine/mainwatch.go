package machine

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/agent/agentclient"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store"
)

// The main process is followed from the host: while a machine whose main
// process has not exited runs, one request waits at its agent
// (GET /commands/{pid}/wait). When it answers, the exit is recorded, the
// machine shows it, machine.exited is emitted and waiters are woken. The
// request is started when the machine starts running and cancelled when it
// stops (pause, stop, kill, restore), so it never reaches a frozen or gone
// sandbox. Its connection sends no TCP keep-alive probes: a machine nobody
// talks to stays idle (idle suspend counts the bytes on its interface).

// mainRetry is how soon a follower asks again after a failed wait.
const mainRetry = time.Second

// mainWatch holds the followers of the running machines' main processes.
type mainWatch struct {
	http *http.Client

	// mu guards root, follows and exited.
	mu sync.Mutex
	// root is cancelled when the manager stops following (server shutdown).
	root    context.Context
	stop    context.CancelFunc
	follows map[string]*follower // by machine id
	wg      sync.WaitGroup
	// exited is closed, and replaced, whenever an exit is recorded.
	exited chan struct{}
}

func newMainWatch() *mainWatch {
	root, stop := context.WithCancel(context.Background())
	return &mainWatch{
		http: &http.Client{Transport: &http.Transport{
			Proxy:       nil,
			DialContext: (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: -1}).DialContext,
		}},
		root: root, stop: stop, follows: map[string]*follower{}, exited: make(chan struct{}),
	}
}

// follower is one machine's follower; it leaves follows when it ends.
type follower struct{ cancel context.CancelFunc }

// watchMain starts or stops following rec's main process to match its
// state; setState calls it after every transition.
func (m *Manager) watchMain(rec *store.Machine) {
	w := m.mainWatch
	want := (rec.State == api.StateRunning || rec.State == api.StateSnapshotting) && rec.MainPID > 0 && rec.MainExit == nil
	w.mu.Lock()
	defer w.mu.Unlock()
	f, following := w.follows[rec.ID]
	switch {
	case want && !following && w.root.Err() == nil:
		ip, err := m.guestAddr(rec)
		if err != nil {
			return
		}
		ctx, cancel := context.WithCancel(w.root)
		f := &follower{cancel: cancel}
		w.follows[rec.ID] = f
		agent := agentclient.New(m.agentURL(ip), rec.AgentToken, w.http)
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			defer w.forget(rec.ID, f)
			m.followMain(ctx, rec.ID, rec.TeamID, rec.MainPID, agent)
		}()
	case !want && following:
		w.forgetLocked(rec.ID, f)
	}
}

// followMain waits at the agent for main process pid of machine id to exit
// and records how it did, until ctx ends.
func (m *Manager) followMain(ctx context.Context, id, teamID string, pid int, agent *agentclient.Client) {
	for {
		exit, err := agent.Wait(ctx, pid)
		if err == nil {
			m.mainExited(ctx, id, teamID, pid, exit)
			return
		}
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errdefs.ErrNotFound) {
			m.logger.WarnContext(ctx, "the agent does not know the main process", "machine_id", id, "pid", pid, "err", err)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(mainRetry):
		}
	}
}

// mainExited records the exit of a machine's main process, emits
// machine.exited and wakes the waiters.
func (m *Manager) mainExited(ctx context.Context, id, teamID string, pid int, exit api.MainExit) {
	ctx = context.WithoutCancel(ctx)
	recorded, err := m.store.SetMainExit(ctx, id, pid, &exit)
	if err != nil || !recorded {
		if err != nil {
			m.logger.ErrorContext(ctx, "record the main process's exit", "machine_id", id, "err", err)
		}
		return
	}
	m.logger.InfoContext(ctx, "main process exited", "machine_id", id, "pid", pid, "exit_code", exit.ExitCode, "signal", exit.Signal)
	m.emit(ctx, api.EventMachineExited, &store.Machine{ID: id, TeamID: teamID},
		map[string]any{"pid": pid, "exit_code": exit.ExitCode, "signal": exit.Signal})
	w := m.mainWatch
	w.mu.Lock()
	close(w.exited)
	w.exited = make(chan struct{})
	w.mu.Unlock()
}

// forget ends follower f of machine id and takes it out of follows, unless
// another follower has taken its place.
func (w *mainWatch) forget(id string, f *follower) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.forgetLocked(id, f)
}

func (w *mainWatch) forgetLocked(id string, f *follower) {
	f.cancel()
	if w.follows[id] == f {
		delete(w.follows, id)
	}
}

// exitedChan returns a channel closed at the next recorded exit.
func (w *mainWatch) exitedChan() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.exited
}

// RunMainWatch follows the main processes of the machines running now
// (after a restart), and of those that start running, until ctx ends; then
// it ends every follower.
func (m *Manager) RunMainWatch(ctx context.Context) {
	recs, err := m.store.ListMachines(ctx, store.MachineFilter{States: []string{api.StateRunning}, NodeID: m.cfg.Node})
	if err != nil {
		m.logger.ErrorContext(ctx, "load main processes", "err", err)
	}
	for _, rec := range recs {
		m.watchMain(rec)
		m.watchMemory(rec)
	}
	<-ctx.Done()
	w := m.mainWatch
	w.mu.Lock()
	w.stop()
	w.follows = map[string]*follower{}
	w.mu.Unlock()
	w.wg.Wait()
}
