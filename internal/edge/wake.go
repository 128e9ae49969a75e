package edge

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"nullspace.dev/nullspace/internal/errdefs"
)

// Waking a machine on traffic. The first request for a paused lineage
// starts one wake (Machines.Wake, which takes the lineage lock connect
// takes); every request that arrives while it runs joins it instead of
// starting another. The wake runs under the server's context, so a client
// that gives up does not cancel it for the others. Each request is held
// for at most WakeTimeout, its body buffered up to HoldBodyLimit, and is
// then forwarded to the woken execution, or answered with the 503
// contract.

// resumedDialRetry is how long a refused connection is retried after a
// resume. A resumed machine's listening sockets come back with its memory,
// so its server is reachable at once or not at all; a started machine boots
// afresh, and its server gets the rest of the wake window to come up.
const resumedDialRetry = 2 * time.Second

// maxWake bounds one wake, whoever waits for it: a wake that hangs must not
// keep later requests joining it forever.
const maxWake = 5 * time.Minute

// hold waits for the lineage of req to run (waking it if resume is set;
// booting says the wake is a fresh boot) and returns the target, or
// answers the request and returns false.
func (s *Server) hold(w http.ResponseWriter, r *http.Request, req *request, resume, booting bool) (Target, bool) {
	l := req.label
	s.metrics.held.Inc()
	s.metrics.heldTotal.Inc()
	defer s.metrics.held.Dec()
	window := time.NewTimer(s.cfg.WakeTimeout)
	defer window.Stop()
	windowEnd := time.Now().Add(s.cfg.WakeTimeout)

	// The body is read while the machine wakes (a request holds no more
	// than HoldBodyLimit of it), so that it can be sent on at once.
	var body chan bodyResult
	if r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0 {
		body = make(chan bodyResult, 1)
		go func() { body <- readBody(r.Body, s.cfg.HoldBodyLimit) }()
	}

	key := l.LineageID
	if !resume {
		key = "wait:" + key // waiting without waking is a call of its own
	}
	ch := s.wakes.DoChan(key, func() (any, error) {
		ctx, cancel := context.WithTimeout(s.bg, maxWake)
		defer cancel()
		start := time.Now()
		t, err := s.machines.Wake(ctx, l.LineageID, l.Port, resume)
		result := "ok"
		if err != nil {
			result = "error"
		}
		if resume {
			s.metrics.wakes.WithLabelValues(result).Inc()
			s.metrics.wakeSeconds.Observe(time.Since(start).Seconds())
		}
		return t, err
	})
	res, ok := await(s, w, r, req, window, ch)
	if !ok {
		return Target{}, false
	}
	if res.Err != nil {
		s.refuseErr(w, r, req, l, res.Err)
		return Target{}, false
	}
	t := res.Val.(Target)
	if f, v := triage(t, true); v != toForward {
		s.refuse(w, r, req, f)
		return Target{}, false
	}
	if body != nil {
		b, ok := await(s, w, r, req, window, body)
		if !ok {
			return Target{}, false
		}
		if b.tooLarge {
			s.refuse(w, r, req, unavailable(errdefs.CodeWakeBodyTooLarge,
				fmt.Sprintf("the request body is larger than the %d bytes held while machine %s wakes", s.cfg.HoldBodyLimit, l.LineageID),
				true, "retry after the Retry-After delay: once the machine is awake, bodies of any size stream through"))
			return Target{}, false
		}
		if b.err != nil {
			if r.Context().Err() == nil {
				s.refuse(w, r, req, bodyRefusal(b.err))
			} else {
				req.code = "client_gone"
			}
			return Target{}, false
		}
		r.Body = io.NopCloser(bytes.NewReader(b.data))
		r.ContentLength = int64(len(b.data))
		r.TransferEncoding = nil
	}
	req.woken = true
	req.retryDialUntil = windowEnd
	if soon := time.Now().Add(resumedDialRetry); !booting && soon.Before(windowEnd) {
		req.retryDialUntil = soon
	}
	return t, true
}

// await waits for ch while the wake window is open and the client is
// still there; otherwise it answers the request (the wake timeout) and
// returns false.
func await[T any](s *Server, w http.ResponseWriter, r *http.Request, req *request, window *time.Timer, ch <-chan T) (T, bool) {
	var zero T
	select {
	case v := <-ch:
		return v, true
	case <-window.C:
		s.refuse(w, r, req, wakeTimeout(req.label, s.cfg.WakeTimeout))
		return zero, false
	case <-r.Context().Done():
		req.code = "client_gone"
		return zero, false
	}
}

type bodyResult struct {
	data     []byte
	tooLarge bool
	err      error
}

func readBody(body io.Reader, limit int64) bodyResult {
	b, err := io.ReadAll(io.LimitReader(body, limit+1))
	if err != nil {
		return bodyResult{err: err}
	}
	if int64(len(b)) > limit {
		return bodyResult{tooLarge: true}
	}
	return bodyResult{data: b}
}

func wakeTimeout(l label, window time.Duration) refusal {
	return unavailable(errdefs.CodeWakeTimeout,
		fmt.Sprintf("machine %s is waking up but was not ready within %s", l.LineageID, window), true,
		"retry after the Retry-After delay; the wake goes on")
}

// refuseErr answers a request whose lookup or wake failed.
func (s *Server) refuseErr(w http.ResponseWriter, r *http.Request, req *request, l label, err error) {
	s.refuse(w, r, req, wakeFailure(l.LineageID, err))
	if !errors.Is(err, errdefs.ErrNotFound) {
		s.logger.WarnContext(r.Context(), "edge wake failed", "lineage_id", l.LineageID, "port", l.Port, "err", err)
	}
}

// wakeFailure is the refusal for a lineage whose lookup or wake failed.
func wakeFailure(lineageID string, err error) refusal {
	p := errdefs.Classify(err)
	switch {
	case errors.Is(err, errdefs.ErrNotFound):
		return notFound(lineageID)
	case errors.Is(err, errdefs.ErrResourceExhausted) || p.Code == errdefs.CodeCapacityExhausted:
		return unavailable(errdefs.CodeWakeCapacity,
			fmt.Sprintf("machine %s cannot be woken now: the server is out of capacity (%s)", lineageID, p.Message), true,
			"retry after the Retry-After delay")
	case p.Code == errdefs.CodeSnapshotIncompatible || p.Code == errdefs.CodeSnapshotCorrupt || p.Code == errdefs.CodeSnapshotNotFound:
		return unavailable(errdefs.CodeWakeSnapshotUnusable,
			fmt.Sprintf("machine %s cannot be woken: %s", lineageID, p.Message), false,
			"create a new machine; this machine's saved state cannot be restored here")
	default:
		msg := fmt.Sprintf("machine %s could not be woken", lineageID)
		if p.Code != errdefs.CodeInternal {
			msg += ": " + p.Message
		}
		return unavailable(errdefs.CodeWakeFailed, msg, true, "retry after the Retry-After delay")
	}
}
