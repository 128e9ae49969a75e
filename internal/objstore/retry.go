package objstore

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"time"
)

// Backoff is how WithRetry retries a transient failure: Attempts tries in
// all, waiting Base, 2×Base, ... up to Max between them, each wait
// jittered down by up to half so that two hosts do not retry in step.
type Backoff struct {
	Attempts int
	Base     time.Duration
	Max      time.Duration
}

// DefaultBackoff rides out a store restarting or throttling for about half
// a minute (0.5+1+2+4+8+8+8 s at most) before calling it unavailable.
var DefaultBackoff = Backoff{Attempts: 8, Base: 500 * time.Millisecond, Max: 8 * time.Second}

// WithRetry wraps r so that every call is retried with backoff while it
// fails transiently (see Transient), and a store still failing after the
// last attempt gives Unavailable. Waits select on ctx.Done, so a cancelled
// context ends the retries at once with ctx's error. A Get is retried
// until it returns a reader; reading that reader is not. Retries are
// logged at warn level on log (nil discards).
func WithRetry(r Remote, b Backoff, log *slog.Logger) Remote {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if b.Attempts < 1 {
		b.Attempts = 1
	}
	return &retrying{r: r, b: b, log: log}
}

type retrying struct {
	r   Remote
	b   Backoff
	log *slog.Logger
}

var _ Remote = (*retrying)(nil)

// do runs fn until it succeeds, fails for good, or the attempts run out.
func (r *retrying) do(ctx context.Context, what string, fn func() error) error {
	wait := r.b.Base
	for attempt := 1; ; attempt++ {
		err := fn()
		if err == nil || !IsTransient(err) {
			return err
		}
		if ctxErr := ctx.Err(); ctxErr != nil {
			return fmt.Errorf("%s: %w", what, ctxErr)
		}
		if attempt >= r.b.Attempts {
			return Unavailable(what, err)
		}
		d := wait - rand.N(wait/2+1)
		r.log.WarnContext(ctx, "object store failed; retrying", "op", what, "attempt", attempt, "in", d, "err", err)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%s: %w", what, ctx.Err())
		case <-t.C:
		}
		wait = min(2*wait, r.b.Max)
	}
}

func (r *retrying) Put(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	first := true
	return r.do(ctx, "put "+key, func() error {
		if !first {
			if _, err := body.Seek(0, io.SeekStart); err != nil {
				return fmt.Errorf("put %s: rewind body for a retry: %w", key, err)
			}
		}
		first = false
		return r.r.Put(ctx, key, body, size)
	})
}

func (r *retrying) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	var rc io.ReadCloser
	err := r.do(ctx, "get "+key, func() (err error) {
		rc, err = r.r.Get(ctx, key)
		return err
	})
	return rc, err
}

func (r *retrying) Stat(ctx context.Context, key string) (Info, error) {
	var info Info
	err := r.do(ctx, "stat "+key, func() (err error) {
		info, err = r.r.Stat(ctx, key)
		return err
	})
	return info, err
}

// List restarts a listing that failed part way after the last key it
// delivered, so fn never sees a key twice. An error from fn is returned as
// it is, never retried.
func (r *retrying) List(ctx context.Context, prefix string, fn func(Info) error) error {
	var last string
	err := r.do(ctx, "list "+prefix, func() error {
		var fnErr error
		err := r.r.List(ctx, prefix, func(info Info) error {
			if last != "" && info.Key <= last {
				return nil
			}
			last = info.Key
			fnErr = fn(info)
			return fnErr
		})
		if fnErr != nil {
			return &stopError{fnErr}
		}
		return err
	})
	if s, ok := err.(*stopError); ok {
		return s.err
	}
	return err
}

// stopError carries fn's error out of a retried List; it has no Unwrap so
// that a transient error fn happened to return is not retried.
type stopError struct{ err error }

func (e *stopError) Error() string { return e.err.Error() }

func (r *retrying) Delete(ctx context.Context, key string) error {
	return r.do(ctx, "delete "+key, func() error { return r.r.Delete(ctx, key) })
}
