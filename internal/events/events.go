// Package events records lifecycle events in the store under a sequence
// number that only grows, lets clients list and follow them (a client that
// lost its stream resumes after the last sequence number it saw), and
// delivers them to a webhook signed with HMAC-SHA256, retried with backoff
// from a cursor kept in the store so that no event is lost while the
// endpoint is down.
package events

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/store"
)

// Log appends events and wakes their followers.
type Log struct {
	db     store.Events
	logger *slog.Logger

	mu      sync.Mutex
	waiters map[chan struct{}]struct{}
}

// New returns a log over db.
func New(db store.Events, logger *slog.Logger) *Log {
	return &Log{db: db, logger: logger, waiters: map[chan struct{}]struct{}{}}
}

// Emit records ev (its Seq and, if zero, Time are set). An event that cannot
// be stored is logged: the transition it reports has happened regardless.
func (l *Log) Emit(ctx context.Context, ev api.Event) {
	if ev.Time.IsZero() {
		ev.Time = time.Now().UTC()
	}
	if err := l.db.AppendEvent(context.WithoutCancel(ctx), &ev); err != nil {
		l.logger.ErrorContext(ctx, "record event", "type", ev.Type, "machine_id", ev.MachineID, "err", err)
		return
	}
	l.mu.Lock()
	for ch := range l.waiters {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	l.mu.Unlock()
}

// List returns the events matching f, by sequence number.
func (l *Log) List(ctx context.Context, f store.EventFilter) ([]api.Event, error) {
	return l.db.ListEvents(ctx, f)
}

// Follow calls fn for every event matching f, the stored ones first, then
// new ones as they come, until ctx ends or fn fails.
func (l *Log) Follow(ctx context.Context, f store.EventFilter, fn func(api.Event) error) error {
	wake := make(chan struct{}, 1)
	l.mu.Lock()
	l.waiters[wake] = struct{}{}
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		delete(l.waiters, wake)
		l.mu.Unlock()
	}()
	for {
		evs, err := l.db.ListEvents(ctx, f)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return err
		}
		for _, ev := range evs {
			if err := fn(ev); err != nil {
				return err
			}
			f.After = ev.Seq
		}
		if len(evs) > 0 {
			continue // there may be more than one page
		}
		select {
		case <-ctx.Done():
			return nil
		case <-wake:
		}
	}
}

// Webhook delivers every event to a URL, in order, at least once.
type Webhook struct {
	Log    *Log
	URL    string
	Secret string
	// Client sends the requests; default a client with a 10 s timeout.
	Client *http.Client
	// MaxBackoff bounds the wait between retries of a failed delivery.
	MaxBackoff time.Duration
	Logger     *slog.Logger
}

// WebhookCursor names the webhook's position in the store (retention
// keeps the events after it).
const WebhookCursor = "webhook"

const cursorName = WebhookCursor

// SignatureHeader carries "sha256=" and the hex HMAC-SHA256 of the body
// under the webhook secret.
const SignatureHeader = "X-Nullspace-Signature"

// Sign returns the signature header value of body.
func Sign(secret string, body []byte) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// Run delivers events from the stored cursor on until ctx ends. A delivery
// that fails (network error or a status other than 2xx) is retried with
// exponential backoff; later events wait for it.
func (w *Webhook) Run(ctx context.Context) {
	client := w.Client
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second}
	}
	maxBackoff := w.MaxBackoff
	if maxBackoff == 0 {
		maxBackoff = time.Minute
	}
	after, err := w.Log.db.Cursor(ctx, cursorName)
	if err != nil {
		w.Logger.ErrorContext(ctx, "webhook cursor", "err", err)
		return
	}
	err = w.Log.Follow(ctx, store.EventFilter{After: after}, func(ev api.Event) error {
		backoff := time.Second
		for {
			err := w.deliver(ctx, client, ev)
			if err == nil {
				return w.Log.db.SetCursor(context.WithoutCancel(ctx), cursorName, ev.Seq)
			}
			w.Logger.WarnContext(ctx, "webhook delivery failed; retrying", "seq", ev.Seq, "type", ev.Type, "in", backoff, "err", err)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, maxBackoff)
		}
	})
	if err != nil && ctx.Err() == nil {
		w.Logger.ErrorContext(ctx, "webhook stopped", "err", err)
	}
}

func (w *Webhook) deliver(ctx context.Context, client *http.Client, ev api.Event) error {
	body, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.URL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Nullspace-Event", ev.Type)
	req.Header.Set("X-Nullspace-Event-Seq", strconv.FormatInt(ev.Seq, 10))
	if w.Secret != "" {
		req.Header.Set(SignatureHeader, Sign(w.Secret, body))
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("status %s", resp.Status)
	}
	return nil
}
