// Package idempotency makes a request sent again with the same
// Idempotency-Key get the first one's response instead of doing it twice:
// a create retried after a dropped connection returns the machine the
// first made.
//
// A key is its team's. The first request with it is recorded in progress
// (the store lets exactly one in), runs, and its response is kept for TTL;
// a request with the key while it runs waits for it, up to Wait. A key
// sent with another request (method, path or body) is refused, since the
// caller would otherwise get an answer to a question it did not ask. A
// response of 5xx is not kept: the request did not happen, or not wholly,
// and the retry runs again.
package idempotency

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store"
)

// Header is the request header that carries the key; ReplayedHeader marks
// a response that is a replay.
const (
	Header         = "Idempotency-Key"
	ReplayedHeader = "Idempotent-Replayed"
)

// Defaults of Guard.
const (
	DefaultTTL  = 24 * time.Hour
	DefaultWait = 30 * time.Second
	// DefaultStale is longer than any request these routes serve (a
	// create or fork is bounded well under it).
	DefaultStale = 10 * time.Minute
	maxKeyLen    = 255
)

// Store is where requests and their responses are kept.
type Store interface {
	BeginIdempotent(ctx context.Context, r store.IdempotencyRecord, notBefore, staleBefore time.Time) (*store.IdempotencyRecord, error)
	GetIdempotent(ctx context.Context, teamID, key string) (*store.IdempotencyRecord, error)
	FinishIdempotent(ctx context.Context, teamID, key string, status int, body []byte) error
	AbandonIdempotent(ctx context.Context, teamID, key string) error
}

// Guard checks and records keyed requests.
type Guard struct {
	store Store
	// TTL is how long a response is kept; Wait how long a request waits
	// for the first with its key to finish; Stale how long a request may
	// stay in progress before a retry takes its key over (its server
	// crashed or restarted mid-request: nothing will finish it).
	TTL, Wait, Stale time.Duration
	poll             time.Duration
	now              func() time.Time
}

// New returns a guard over st with the defaults.
func New(st Store) *Guard {
	return &Guard{store: st, TTL: DefaultTTL, Wait: DefaultWait, Stale: DefaultStale, poll: 50 * time.Millisecond, now: time.Now}
}

// Response is a kept response.
type Response struct {
	Status int
	Body   []byte
}

// Begin checks the request (route is its method and path) with key.
// Either it returns the response to replay, or it lets the request in and
// returns done, which the caller calls with the response once it has one
// (a 5xx, or status 0 for none, forgets the request).
func (g *Guard) Begin(ctx context.Context, team, key, route string, body []byte) (*Response, func(status int, body []byte), error) {
	if err := checkKey(key); err != nil {
		return nil, nil, err
	}
	sum := sha256.Sum256(append([]byte(route+"\n"), body...))
	hash := hex.EncodeToString(sum[:])
	deadline := g.now().Add(g.Wait)
	for {
		now := g.now().UTC()
		rec := store.IdempotencyRecord{TeamID: team, Key: key, Route: route, RequestHash: hash, CreatedAt: now}
		first, err := g.store.BeginIdempotent(ctx, rec, now.Add(-g.TTL), now.Add(-g.Stale))
		if err != nil {
			return nil, nil, err
		}
		if first == nil {
			return nil, g.done(ctx, team, key), nil
		}
		if first.RequestHash != hash {
			return nil, nil, &errdefs.Error{Class: errdefs.ErrInvalidArgument, Code: errdefs.CodeIdempotencyKeyReused,
				Status:          http.StatusUnprocessableEntity,
				Message:         fmt.Sprintf("Idempotency-Key %q was sent with another request (%s) at %s", key, first.Route, first.CreatedAt.Format(time.RFC3339)),
				SuggestedAction: "use a new key for a new request; resend the same request to get its response"}
		}
		if first.Status != 0 {
			return &Response{Status: first.Status, Body: first.Body}, nil, nil
		}
		if !g.now().Before(deadline) {
			return nil, nil, &errdefs.Error{Class: errdefs.ErrConflict, Code: errdefs.CodeIdempotencyKeyInProgress,
				Message:         fmt.Sprintf("the first request with Idempotency-Key %q is still running", key),
				SuggestedAction: "retry with the same key in a moment to get its response", RetryAfter: time.Second}
		}
		select {
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		case <-time.After(g.poll):
		}
	}
}

// done keeps the response, or forgets the request on a 5xx. It writes with
// a context of its own: the client may be gone, and the response is what
// its retry needs.
func (g *Guard) done(ctx context.Context, team, key string) func(int, []byte) {
	return func(status int, body []byte) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if status == 0 || status >= 500 || retryable(status, body) {
			g.store.AbandonIdempotent(ctx, team, key)
			return
		}
		if err := g.store.FinishIdempotent(ctx, team, key, status, body); err != nil {
			// The retry then waits for a response that never comes and
			// is told to retry; abandoning lets it run again instead.
			g.store.AbandonIdempotent(ctx, team, key)
		}
	}
}

// retryable reports whether a refusal says that sending the request
// again may succeed (a rate, a busy lineage): keeping it would answer
// every retry with it for a day, so it is forgotten like a 5xx.
func retryable(status int, body []byte) bool {
	if status < 400 {
		return false
	}
	var e struct {
		Retryable bool `json:"retryable"`
	}
	return json.Unmarshal(body, &e) == nil && e.Retryable
}

func checkKey(key string) error {
	bad := len(key) == 0 || len(key) > maxKeyLen
	for i := 0; i < len(key) && !bad; i++ {
		bad = key[i] < 0x21 || key[i] > 0x7e
	}
	if bad {
		return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("Idempotency-Key must be 1 to %d printable ASCII characters without spaces", maxKeyLen),
			"send a UUID, for example")
	}
	return nil
}

// Recorder is an http.ResponseWriter that passes everything through and
// keeps the status and the body for Guard's done.
type Recorder struct {
	http.ResponseWriter
	Status int
	Body   []byte
	// Max bounds the kept body; a longer one is not kept (done gets
	// status 0: the request is forgotten, not half-kept).
	Max  int
	over bool
}

func (r *Recorder) WriteHeader(status int) {
	if r.Status == 0 {
		r.Status = status
	}
	r.ResponseWriter.WriteHeader(status)
}

func (r *Recorder) Write(b []byte) (int, error) {
	if r.Status == 0 {
		r.Status = http.StatusOK
	}
	if !r.over {
		if r.Max > 0 && len(r.Body)+len(b) > r.Max {
			r.over, r.Body = true, nil
		} else {
			r.Body = append(r.Body, b...)
		}
	}
	return r.ResponseWriter.Write(b)
}

// Result is what done should be given.
func (r *Recorder) Result() (int, []byte) {
	if r.over {
		return 0, nil
	}
	return r.Status, r.Body
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (r *Recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }
