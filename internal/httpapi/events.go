package httpapi

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store"
)

// listEvents lists the team's lifecycle events after a sequence number,
// or with follow=true streams them (NDJSON, or SSE when asked) as they come.
func (s *Server) listEvents(w http.ResponseWriter, r *http.Request, team string) error {
	q := r.URL.Query()
	f := store.EventFilter{TeamID: team, MachineID: q.Get("machine_id")}
	if t := q.Get("type"); t != "" {
		f.Types = strings.Split(t, ",")
	}
	if v := q.Get("after"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
				"after must be a sequence number (0 or more), got "+strconv.Quote(v), "pass the seq of the last event you saw")
		}
		f.After = n
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
				"limit must be 1 to 1000, got "+strconv.Quote(v), "fix limit")
		}
		f.Limit = n
	}
	if q.Get("follow") != "true" {
		evs, err := s.events.List(r.Context(), f)
		if err != nil {
			return err
		}
		if evs == nil {
			evs = []api.Event{}
		}
		writeJSON(w, http.StatusOK, api.EventList{Events: evs})
		return nil
	}
	write := startStream(w, r)
	return s.events.Follow(r.Context(), f, func(ev api.Event) error {
		return write(ev, strconv.FormatInt(ev.Seq, 10))
	})
}

// startStream sends the headers of an NDJSON stream (SSE when the client
// asks) and returns a function that writes one flushed event.
func startStream(w http.ResponseWriter, r *http.Request) func(v any, id string) error {
	sse := strings.Contains(r.Header.Get("Accept"), "text/event-stream")
	if sse {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
	} else {
		w.Header().Set("Content-Type", "application/x-ndjson")
	}
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	if flusher != nil {
		flusher.Flush()
	}
	return func(v any, id string) error {
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		if sse {
			prefix := "data: "
			if id != "" {
				prefix = "id: " + id + "\ndata: "
			}
			b = append(append([]byte(prefix), b...), '\n', '\n')
		} else {
			b = append(b, '\n')
		}
		if _, err := w.Write(b); err != nil {
			return nil // the client went away; its context ends the stream
		}
		if flusher != nil {
			flusher.Flush()
		}
		return nil
	}
}
