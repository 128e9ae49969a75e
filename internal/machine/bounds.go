package machine

import (
	"context"
	"errors"
	"fmt"
	"time"

	"nullspace.dev/nullspace/internal/errdefs"
)

// Deadlines of everything a lifecycle operation waits for outside the
// process. A machine's agent or its sandbox can stop answering (a wedged
// machine, a network slot taken by another server): no call into them may
// wait for ever, or the operation would hold its lineage lock for ever.
// Variables, not constants, so that tests can shorten them.
var (
	// hookBudget bounds a machine's on_pause (or on_resume) hooks
	// together; the agent kills the hook still running at that point.
	hookBudget = 30 * time.Second
	// agentSlack is what an agent call may take beyond the work it was
	// asked to do (a sync of the filesystems, a reply on a busy machine).
	agentSlack = 10 * time.Second
	// freezeTimeout bounds freezing or thawing a sandbox.
	freezeTimeout = 15 * time.Second
	// startMainTimeout bounds starting a machine's main process.
	startMainTimeout = 15 * time.Second
)

// prepareTimeout bounds the pre-pause call into the agent: its hooks
// (whose own budget is hookBudget, enforced inside the machine) and the
// filesystem sync that follows.
func prepareTimeout(hooks []string) time.Duration {
	if len(hooks) == 0 {
		return agentSlack
	}
	return hookBudget + agentSlack
}

// runscTimeout bounds a checkpoint or a restore by runsc: a minute, plus
// time to write or read the machine's memory at a pessimistic 50 MB/s
// (measured: 256 MB of live data in ~1 s).
func runscTimeout(memoryMB int) time.Duration {
	return time.Minute + time.Duration(memoryMB)*20*time.Millisecond
}

// wrapInterrupted is deferred by an operation holding a preemptible lock
// (ctx is the operation's): whatever step a kill or the shutdown cut short,
// the operation's error says so, instead of "context canceled".
func wrapInterrupted(ctx context.Context, id, what string, err *error) {
	*err = interrupted(ctx, id, what, *err)
}

// interrupted turns the error of an operation whose context was preempted
// (a kill, the server's shutdown) or ran out of time into a public error
// that says what happened; other errors are returned as they are.
func interrupted(ctx context.Context, id, what string, err error) error {
	if err == nil {
		return nil
	}
	switch cause := preemptCause(ctx); {
	case errors.Is(cause, errKilled):
		return errdefs.Wrap(err, errdefs.ErrConflict, errdefs.CodeMachineNotRunning,
			fmt.Sprintf("the %s of machine %s was cancelled: the machine was killed meanwhile", what, id),
			"create a new machine")
	case errors.Is(cause, errShutdown):
		return errdefs.Wrap(err, errdefs.ErrUnavailable, errdefs.CodeUnavailable,
			fmt.Sprintf("the %s of machine %s was cancelled: the server is shutting down", what, id),
			"retry when the server is back")
	case errors.Is(cause, context.DeadlineExceeded) || errors.Is(err, context.DeadlineExceeded):
		return errdefs.Wrap(err, errdefs.ErrDeadlineExceeded, errdefs.CodeDeadlineExceeded,
			fmt.Sprintf("the %s of machine %s did not finish in time: the machine did not answer", what, id),
			"retry; if it keeps failing, kill the machine (its last checkpoint can be restored into a new one)")
	}
	return err
}

// preemptCause is why ctx ended. A preempt cancels the operation's own
// context at once but the contexts made from it (opCtx among them) through
// context.AfterFunc, a moment later: an operation that fails on the first
// may return before the second knows, so the first is asked.
func preemptCause(ctx context.Context) error {
	if pre, _ := ctx.Value(preemptKey{}).(context.Context); pre != nil && pre.Err() != nil {
		if cause := context.Cause(pre); errors.Is(cause, errKilled) || errors.Is(cause, errShutdown) {
			return cause
		}
	}
	return context.Cause(ctx)
}

// killTimeout bounds freeing a killed machine's sandbox, network and files.
var killTimeout = time.Minute
