package main

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"time"
)

// tapHandler is the server's log handler: it prints records at or above
// level to w and keeps, from every record (debug included), the values of
// its duration attributes by message. They show where the server spends
// time beyond runsc. A "duration" attribute is kept under the message, e.g.
// "machine network set up"; any other, under "message: key", e.g. "machine
// restored: runsc_restore". A record from a logger with a "kind" attribute
// gets it in brackets ("checkpoint taken [hibernate]: window"), and one
// logged during a phase of the benchmark gets the phase in front
// ("(resume idle) machine restored: agent").
type tapHandler struct {
	next  slog.Handler
	level slog.Level
	kind  string // the logger's "kind" attribute
	d     *durations
}

type durations struct {
	mu    sync.Mutex
	phase string
	byMsg map[string][]float64 // ms
}

func newTapHandler(w io.Writer, level slog.Level) *tapHandler {
	return &tapHandler{
		next:  slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}),
		level: level,
		d:     &durations{byMsg: map[string][]float64{}},
	}
}

// setPhase names the records logged from now on; "" for none. The benchmark
// runs one operation at a time, so the phase is the operation's.
func (h *tapHandler) setPhase(phase string) {
	h.d.mu.Lock()
	h.d.phase = phase
	h.d.mu.Unlock()
}

func (h *tapHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *tapHandler) Handle(ctx context.Context, r slog.Record) error {
	kind := h.kind
	var keys []string
	var vals []float64
	r.Attrs(func(a slog.Attr) bool {
		switch {
		case a.Key == "kind" && a.Value.Kind() == slog.KindString:
			kind = a.Value.String()
		case a.Value.Kind() == slog.KindDuration:
			keys = append(keys, a.Key)
			vals = append(vals, ms(a.Value.Duration()))
		}
		return true
	})
	if len(keys) > 0 {
		msg := r.Message
		if kind != "" {
			msg += " [" + kind + "]"
		}
		h.d.mu.Lock()
		if h.d.phase != "" {
			msg = "(" + h.d.phase + ") " + msg
		}
		for i, k := range keys {
			name := msg
			if k != "duration" {
				name += ": " + k
			}
			h.d.byMsg[name] = append(h.d.byMsg[name], vals[i])
		}
		h.d.mu.Unlock()
	}
	if r.Level < h.level {
		return nil
	}
	return h.next.Handle(ctx, r)
}

func (h *tapHandler) WithAttrs(as []slog.Attr) slog.Handler {
	kind := h.kind
	for _, a := range as {
		if a.Key == "kind" && a.Value.Kind() == slog.KindString {
			kind = a.Value.String()
		}
	}
	return &tapHandler{next: h.next.WithAttrs(as), level: h.level, kind: kind, d: h.d}
}

func (h *tapHandler) WithGroup(name string) slog.Handler {
	return &tapHandler{next: h.next.WithGroup(name), level: h.level, kind: h.kind, d: h.d}
}

// summary summarizes the durations seen, by message.
func (h *tapHandler) summary() map[string]summary {
	h.d.mu.Lock()
	defer h.d.mu.Unlock()
	out := map[string]summary{}
	for msg, v := range h.d.byMsg {
		out[msg] = summarize(v)
	}
	return out
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
