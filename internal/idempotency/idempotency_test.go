package idempotency

import (
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store/sqlstore"
)

func newGuard(t *testing.T) (*Guard, *time.Time) {
	db, err := sqlstore.Open(t.Context(), filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	g := New(db)
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	g.now = func() time.Time { return now }
	g.Wait, g.poll = 200*time.Millisecond, 5*time.Millisecond
	return g, &now
}

func code(err error) string {
	if err == nil {
		return ""
	}
	return errdefs.Classify(err).Code
}

// TestReplay: the first request runs and its response is replayed to a
// retry with the same key and request, refused with another request, and
// kept for its team only and for a day.
func TestReplay(t *testing.T) {
	g, now := newGuard(t)
	ctx := t.Context()
	const route = "POST /v1/machines"
	body := []byte(`{"template":"base"}`)
	replay, done, err := g.Begin(ctx, "t", "k", route, body)
	if err != nil || replay != nil || done == nil {
		t.Fatalf("first: %v %v", replay, err)
	}
	done(201, []byte(`{"id":"mch_1"}`))
	replay, done, err = g.Begin(ctx, "t", "k", route, body)
	if err != nil || done != nil || replay == nil || replay.Status != 201 || string(replay.Body) != `{"id":"mch_1"}` {
		t.Fatalf("retry: %+v %v", replay, err)
	}
	_, _, err = g.Begin(ctx, "t", "k", route, []byte(`{"template":"minimal"}`))
	if p := errdefs.Classify(err); p.Code != errdefs.CodeIdempotencyKeyReused || p.Status != http.StatusUnprocessableEntity || p.Retryable {
		t.Fatalf("the key with another body: %+v", p)
	}
	_, _, err = g.Begin(ctx, "t", "k", "POST /v1/machines/mch_1/fork", body)
	if code(err) != errdefs.CodeIdempotencyKeyReused {
		t.Fatalf("the key on another route: %v", err)
	}
	if replay, done, err := g.Begin(ctx, "u", "k", route, body); err != nil || replay != nil || done == nil {
		t.Fatalf("another team's key: %v %v", replay, err)
	}
	*now = now.Add(DefaultTTL + time.Second)
	if replay, done, err := g.Begin(ctx, "t", "k", route, body); err != nil || replay != nil || done == nil {
		t.Fatalf("a day later the key is new: %v %v", replay, err)
	}
}

// TestForgotten: a 5xx, or a response too large to keep, is not kept: the
// retry runs again.
func TestForgotten(t *testing.T) {
	g, _ := newGuard(t)
	ctx := t.Context()
	for _, status := range []int{500, 503, 0} {
		_, done, err := g.Begin(ctx, "t", "k", "POST /x", nil)
		if err != nil || done == nil {
			t.Fatalf("begin: %v", err)
		}
		done(status, []byte("{}"))
	}
	rec := &Recorder{ResponseWriter: httptest.NewRecorder(), Max: 4}
	rec.WriteHeader(201)
	rec.Write([]byte("12345"))
	if status, body := rec.Result(); status != 0 || body != nil {
		t.Fatalf("an over-long response: %d %q, want it not kept", status, body)
	}
}

// TestWaitForFirst: a retry while the first runs waits for its response,
// and is told to retry (409, retryable) if it outlasts the wait.
func TestWaitForFirst(t *testing.T) {
	g, _ := newGuard(t)
	g.now = time.Now // the wait is measured on the clock
	ctx := t.Context()
	_, done, err := g.Begin(ctx, "t", "k", "POST /x", nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = g.Begin(ctx, "t", "k", "POST /x", nil)
	if p := errdefs.Classify(err); p.Code != errdefs.CodeIdempotencyKeyInProgress || !p.Retryable || p.RetryAfter <= 0 {
		t.Fatalf("a retry outlasting the wait: %+v", p)
	}
	g.Wait = 5 * time.Second
	go func() {
		time.Sleep(50 * time.Millisecond)
		done(200, []byte(`"ok"`))
	}()
	replay, _, err := g.Begin(ctx, "t", "k", "POST /x", nil)
	if err != nil || replay == nil || replay.Status != 200 {
		t.Fatalf("a retry while the first runs: %+v %v", replay, err)
	}
}

func TestKeys(t *testing.T) {
	g, _ := newGuard(t)
	for _, key := range []string{"", "has space", strings.Repeat("k", 256), "tab\t", "é"} {
		if _, _, err := g.Begin(t.Context(), "t", key, "POST /x", nil); code(err) != errdefs.CodeInvalidArgument {
			t.Errorf("key %q: %v, want invalid_argument", key, err)
		}
	}
	if _, _, err := g.Begin(t.Context(), "t", "0f1e-UUID_like.key:1", "POST /x", nil); err != nil {
		t.Errorf("a good key: %v", err)
	}
}

// TestRetryableNotKept: a refusal that says a retry may succeed (a rate, a
// busy machine) is not kept: the retry runs again rather than getting it
// for a day.
func TestRetryableNotKept(t *testing.T) {
	g, now := newGuard(t)
	ctx := t.Context()
	_, done, err := g.Begin(ctx, "t", "k", "POST /x", nil)
	if err != nil {
		t.Fatal(err)
	}
	done(429, []byte(`{"code":"quota_exceeded","retryable":true}`))
	*now = now.Add(time.Minute)
	if replay, done, err := g.Begin(ctx, "t", "k", "POST /x", nil); err != nil || replay != nil || done == nil {
		t.Fatalf("a retry after a retryable refusal: %+v %v, want to run again", replay, err)
	} else {
		done(404, []byte(`{"code":"snapshot_not_found","retryable":false}`))
	}
	if replay, _, err := g.Begin(ctx, "t", "k", "POST /x", nil); err != nil || replay == nil || replay.Status != 404 {
		t.Fatalf("a retry after a final refusal: %+v %v, want it replayed", replay, err)
	}
}

// TestStaleTakenOver: a request whose server died in the middle leaves
// its key in progress; once stale, a retry takes the key over.
func TestStaleTakenOver(t *testing.T) {
	g, _ := newGuard(t)
	base := time.Now()
	start := time.Now()
	g.now = func() time.Time { return base.Add(time.Since(start)) }
	ctx := t.Context()
	if _, done, err := g.Begin(ctx, "t", "k", "POST /x", nil); err != nil || done == nil {
		t.Fatal(err)
	} // never done: the server crashed
	base = base.Add(DefaultStale + time.Second)
	if replay, done, err := g.Begin(ctx, "t", "k", "POST /x", nil); err != nil || replay != nil || done == nil {
		t.Fatalf("a retry after the first went stale: %+v %v, want to run", replay, err)
	}
}
