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
// ("(resume idle) machine restored: agent"). A second server's records
// get its prefix ("[postgres+s3] ") before the message.
//
// It also keeps, by snapshot id, what the server logged when a snapshot
// became durable in the object store and when one was fetched from it
// (the store suite's upload sizes and fetch times).
type tapHandler struct {
	next   slog.Handler
	level  slog.Level
	kind   string // the logger's "kind" attribute
	prefix string
	d      *durations
}

type durations struct {
	mu      sync.Mutex
	phase   string
	byMsg   map[string][]float64 // ms
	uploads map[string]uploadStat
	fetches map[string]time.Duration // snapshot id → took
}

// The server's messages the tap reads the object store's numbers from
// (internal/machine/upload.go).
const (
	msgDurable = "snapshot durable in the object store"
	msgFetched = "snapshot fetched from the object store"
)

// uploadStat is one snapshot's upload, as logged.
type uploadStat struct {
	Bytes          int64         `json:"bytes"`           // the snapshot's files
	Chunks         int64         `json:"chunks"`          // chunks its manifest names
	ChunksUploaded int64         `json:"chunks_uploaded"` // of those, put (not already in the store)
	BytesUploaded  int64         `json:"bytes_uploaded"`  // compressed bytes put
	Took           time.Duration `json:"took"`
}

func newTapHandler(w io.Writer, level slog.Level) *tapHandler {
	return &tapHandler{
		next:  slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}),
		level: level,
		d:     &durations{byMsg: map[string][]float64{}, uploads: map[string]uploadStat{}, fetches: map[string]time.Duration{}},
	}
}

// forServer returns a handler for a second server's records: their
// durations are kept under "[name] message" and their lines carry
// server=name; the output and the durations are h's.
func (h *tapHandler) forServer(name string) *tapHandler {
	return &tapHandler{next: h.next.WithAttrs([]slog.Attr{slog.String("server", name)}), level: h.level, kind: h.kind,
		prefix: "[" + name + "] ", d: h.d}
}

// upload returns the logged upload of snapshot id, if it is done.
func (h *tapHandler) upload(id string) (uploadStat, bool) {
	h.d.mu.Lock()
	defer h.d.mu.Unlock()
	st, ok := h.d.uploads[id]
	return st, ok
}

// fetch returns how long the logged fetch of snapshot id took, if it ran.
func (h *tapHandler) fetch(id string) (time.Duration, bool) {
	h.d.mu.Lock()
	defer h.d.mu.Unlock()
	took, ok := h.d.fetches[id]
	return took, ok
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
	var (
		snapshotID string
		up         uploadStat
	)
	r.Attrs(func(a slog.Attr) bool {
		switch {
		case a.Key == "kind" && a.Value.Kind() == slog.KindString:
			kind = a.Value.String()
		case a.Value.Kind() == slog.KindDuration:
			keys = append(keys, a.Key)
			vals = append(vals, ms(a.Value.Duration()))
			if a.Key == "took" {
				up.Took = a.Value.Duration()
			}
		case a.Key == "snapshot_id":
			snapshotID = a.Value.String()
		case a.Key == "bytes":
			up.Bytes = intValue(a.Value)
		case a.Key == "chunks":
			up.Chunks = intValue(a.Value)
		case a.Key == "chunks_uploaded":
			up.ChunksUploaded = intValue(a.Value)
		case a.Key == "bytes_uploaded":
			up.BytesUploaded = intValue(a.Value)
		}
		return true
	})
	if snapshotID != "" && (r.Message == msgDurable || r.Message == msgFetched) {
		h.d.mu.Lock()
		if r.Message == msgDurable {
			h.d.uploads[snapshotID] = up
		} else {
			h.d.fetches[snapshotID] = up.Took
		}
		h.d.mu.Unlock()
	}
	if len(keys) > 0 {
		msg := h.prefix + r.Message
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
	return &tapHandler{next: h.next.WithAttrs(as), level: h.level, kind: kind, prefix: h.prefix, d: h.d}
}

func (h *tapHandler) WithGroup(name string) slog.Handler {
	return &tapHandler{next: h.next.WithGroup(name), level: h.level, kind: h.kind, prefix: h.prefix, d: h.d}
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

// intValue reads an integer attribute, whichever integer kind it was
// logged as.
func intValue(v slog.Value) int64 {
	switch v.Kind() {
	case slog.KindInt64:
		return v.Int64()
	case slog.KindUint64:
		return int64(v.Uint64())
	}
	return 0
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
