package httpapi

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/page"
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
	limit := page.MaxLimit // events have always come 1000 at a time by default
	if v := q.Get("limit"); v != "" {
		var err error
		if limit, err = page.Limit(v); err != nil {
			return err
		}
	}
	f.Limit = limit
	// next_token is the position after the last event of the previous
	// page, like after (which it overrides).
	scope := page.NewScope("events", team, f.MachineID, strings.Join(f.Types, ","))
	if pos, err := page.Decode(scope, q.Get("next_token"), 1); err != nil {
		return err
	} else if pos != nil {
		n, perr := strconv.ParseInt(pos[0], 10, 64)
		if perr != nil {
			return page.Malformed()
		}
		f.After = n
	}
	if q.Get("follow") != "true" {
		evs, err := s.events.List(r.Context(), f)
		if err != nil {
			return err
		}
		out := api.EventList{Events: evs}
		if out.Events == nil {
			out.Events = []api.Event{}
		}
		if len(evs) == limit {
			out.NextToken = page.Encode(scope, strconv.FormatInt(evs[len(evs)-1].Seq, 10))
		}
		writeJSON(w, http.StatusOK, out)
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
