package agent

import (
	"errors"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

// prSetChildSubreaper is PR_SET_CHILD_SUBREAPER from <linux/prctl.h>.
const prSetChildSubreaper = 36

// reaper owns wait4(-1) for the whole OS process. Waiting for any child is a
// process-wide act (it would steal exits from anyone else waiting), so there
// is exactly one reaper per process, shared by every Agent in it; nothing
// else in the process may wait for children (no exec.Cmd.Wait).
//
// As PID 1 it also collects orphans the kernel reparents to init; when not
// PID 1 (tests), the process becomes a child subreaper so orphans of its
// commands come to it the same way.
type reaper struct {
	once sync.Once
	log  *slog.Logger

	// mu is held across fork+exec and registration (see start), so an exit
	// reaped right after the fork always finds its callback.
	mu      sync.Mutex
	waiters map[int]func(syscall.WaitStatus)
}

var procReaper = &reaper{waiters: make(map[int]func(syscall.WaitStatus))}

// ensureRunning starts the reaper loop once per process.
func (r *reaper) ensureRunning(log *slog.Logger) error {
	var err error
	r.once.Do(func() {
		r.log = log.With("component", "reaper")
		if os.Getpid() != 1 {
			_, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0)
			if errno != 0 {
				err = os.NewSyscallError("prctl PR_SET_CHILD_SUBREAPER", errno)
				return
			}
		}
		sigc := make(chan os.Signal, 1)
		signal.Notify(sigc, syscall.SIGCHLD)
		go r.loop(sigc)
	})
	return err
}

// start runs spawn (which forks) with the table locked and registers onExit
// for the pid it returns. onExit is called once, from the reaper goroutine,
// with the exit status.
func (r *reaper) start(spawn func() (int, error), onExit func(syscall.WaitStatus)) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	pid, err := spawn()
	if err != nil {
		return 0, err
	}
	r.waiters[pid] = onExit
	return pid, nil
}

func (r *reaper) loop(sigc <-chan os.Signal) {
	// SIGCHLD is the trigger; the slow tick is a backstop that costs nothing
	// and guards against a lost signal in an unusual kernel (gVisor is one).
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		r.reapAll()
		select {
		case <-sigc:
		case <-tick.C:
		}
	}
}

// reapAll collects every child that has exited. Signals coalesce, so one
// SIGCHLD may stand for many exits: loop until none is left.
func (r *reaper) reapAll() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil || pid <= 0 { // ECHILD: no children; 0: none exited
			return
		}
		// A pid is unique until reaped, and it was reaped just now; a new
		// child could reuse it only after the kernel wraps around the pid
		// space between these two lines, which is not a practical concern.
		r.mu.Lock()
		onExit := r.waiters[pid]
		delete(r.waiters, pid)
		r.mu.Unlock()
		if onExit == nil {
			r.log.Debug("reaped orphan", "pid", pid, "status", int(ws))
			continue
		}
		onExit(ws)
	}
}
