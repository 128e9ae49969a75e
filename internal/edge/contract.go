package edge

import (
	"context"
	"net/http"
	"time"

	"nullspace.dev/nullspace/internal/errdefs"
)

// The wake contract for other front doors (the SSH gateway, the E2B
// compatibility layer): the same decisions and stable codes as the edge's
// 503 answers, as errors.

// Waker is what Bring needs of the machines: where a lineage is, and a
// wake.
type Waker interface {
	Route(ctx context.Context, lineageID string) (Target, error)
	Wake(ctx context.Context, lineageID string, resume bool) (Target, error)
}

// MaxWake bounds a wake started by Bring, which runs on when its caller
// stops waiting so that a client giving up does not abort a resume half-way.
const MaxWake = 5 * time.Minute

// Bring returns the lineage's running execution: at once if it runs, after
// a wake if it is paused or stopped with auto_resume (bounded by window),
// or a contract error with the edge's stable code. The wake runs on bg.
// waking, if set, is called before a wake is waited for.
func Bring(ctx, bg context.Context, w Waker, lineageID string, window time.Duration, waking func(Target)) (Target, error) {
	t, err := w.Route(ctx, lineageID)
	if err != nil {
		return Target{}, WakeError(lineageID, err)
	}
	hold, err := Decide(t, false)
	if err != nil || !hold {
		return t, err
	}
	if waking != nil {
		waking(t)
	}
	type result struct {
		t   Target
		err error
	}
	ch := make(chan result, 1)
	go func() {
		wctx, cancel := context.WithTimeout(bg, MaxWake)
		defer cancel()
		t, err := w.Wake(wctx, lineageID, t.AutoResume)
		ch <- result{t, err}
	}()
	timer := time.NewTimer(window)
	defer timer.Stop()
	select {
	case r := <-ch:
		if r.err != nil {
			return Target{}, WakeError(lineageID, r.err)
		}
		_, err := Decide(r.t, true)
		return r.t, err
	case <-timer.C:
		return Target{}, WakeTimeoutError(lineageID, window)
	case <-ctx.Done():
		return Target{}, ctx.Err()
	}
}

// Decide says what to do with a new session for t: forward it (nil, false),
// hold it until a wake or the operation in progress ends (nil, true), or
// refuse it with a contract error. woken says a wake has already been
// waited for.
func Decide(t Target, woken bool) (hold bool, err error) {
	f, v := triage(t, woken)
	switch v {
	case toForward:
		return false, nil
	case toHold:
		return true, nil
	}
	return false, f.err()
}

// WakeError is the contract error for a lineage whose lookup or wake
// failed with err.
func WakeError(lineageID string, err error) error {
	return wakeFailure(lineageID, err).err()
}

// WakeTimeoutError is the contract error for a wake not done within window.
func WakeTimeoutError(lineageID string, window time.Duration) error {
	return wakeTimeout(label{LineageID: lineageID}, window).err()
}

func (f refusal) err() error {
	class := errdefs.ErrUnavailable
	if f.Status == http.StatusNotFound {
		class = errdefs.ErrNotFound
	}
	e := errdefs.New(class, f.Code, f.Message, f.Action)
	e.Final = !f.Retryable
	return e
}
