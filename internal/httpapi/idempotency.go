package httpapi

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strconv"

	"nullspace.dev/nullspace/internal/idempotency"
	"nullspace.dev/nullspace/internal/reqbody"
)

// WithIdempotency makes the routes marked Idempotent honour an
// Idempotency-Key header through g.
func (s *Server) WithIdempotency(g *idempotency.Guard) *Server {
	s.idem = g
	return s
}

// serveIdempotent serves a keyed request: the first with its key runs
// and its response is kept; a retry gets that response again, marked
// Idempotent-Replayed. The first runs to its end even if its client goes
// away, so that the retry finds its result rather than a half-made
// machine.
func (s *Server) serveIdempotent(w http.ResponseWriter, r *http.Request, team string, rt Route) {
	rb := reqbody.New(http.MaxBytesReader(nil, r.Body, MaxBodyBytes))
	body, err := io.ReadAll(rb)
	if err != nil {
		if rb.Err != nil {
			err = reqbody.Error(rb.Err)
		}
		s.writeError(w, r, err)
		return
	}
	key := r.Header.Get(idempotency.Header)
	replay, done, err := s.idem.Begin(r.Context(), team, key, r.Method+" "+r.URL.Path, body)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if replay != nil {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set(idempotency.ReplayedHeader, "true")
		w.Header().Set("Content-Length", strconv.Itoa(len(replay.Body)))
		w.WriteHeader(replay.Status)
		w.Write(replay.Body)
		return
	}
	rec := &idempotency.Recorder{ResponseWriter: w, Max: MaxBodyBytes}
	finished := false
	defer func() {
		if !finished {
			done(0, nil) // the handler panicked: forget the request, so a retry runs
		}
	}()
	r = r.WithContext(context.WithoutCancel(r.Context()))
	r.Body = io.NopCloser(bytes.NewReader(body))
	if err := rt.Handler(rec, r, team); err != nil {
		s.writeError(rec, r, err)
	}
	done(rec.Result())
	finished = true
}
