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
// "duration" attributes by message, e.g. "machine network set up". They show
// where the server spends time beyond runsc.
type tapHandler struct {
	next  slog.Handler
	level slog.Level
	d     *durations
}

type durations struct {
	mu    sync.Mutex
	byMsg map[string][]float64 // ms
}

func newTapHandler(w io.Writer, level slog.Level) *tapHandler {
	return &tapHandler{
		next:  slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}),
		level: level,
		d:     &durations{byMsg: map[string][]float64{}},
	}
}

func (h *tapHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *tapHandler) Handle(ctx context.Context, r slog.Record) error {
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "duration" && a.Value.Kind() == slog.KindDuration {
			h.d.mu.Lock()
			h.d.byMsg[r.Message] = append(h.d.byMsg[r.Message], ms(a.Value.Duration()))
			h.d.mu.Unlock()
			return false
		}
		return true
	})
	if r.Level < h.level {
		return nil
	}
	return h.next.Handle(ctx, r)
}

func (h *tapHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &tapHandler{next: h.next.WithAttrs(as), level: h.level, d: h.d}
}

func (h *tapHandler) WithGroup(name string) slog.Handler {
	return &tapHandler{next: h.next.WithGroup(name), level: h.level, d: h.d}
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
