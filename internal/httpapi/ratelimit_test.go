package httpapi

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/access"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/ratelimit"
	"nullspace.dev/nullspace/internal/telemetry"
)

// fixedKeys is an Authenticator of fixed keys.
type fixedKeys map[string]access.Principal

func (k fixedKeys) Authenticate(_ context.Context, key string) (*access.Principal, error) {
	if p, ok := k[key]; ok {
		return &p, nil
	}
	return nil, errdefs.ErrUnauthenticated
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// TestRateLimit: a key over its rate gets 429 rate_limited with
// Retry-After while other keys, of its team or another, are served; a
// request refused for its scope spends a token; public routes and
// unauthenticated requests do not; the bucket refills.
func TestRateLimit(t *testing.T) {
	clock := &fakeClock{t: time.Now()}
	lim := ratelimit.New(ratelimit.Config{Default: ratelimit.Limit{Rate: 0.5, Burst: 2}, Now: clock.Now})
	read := access.Scopes{access.MachinesRead}
	auth := fixedKeys{
		"key-a":  {TeamID: "team-a", KeyID: "key_a", Scopes: read},
		"key-a2": {TeamID: "team-a", KeyID: "key_a2", Scopes: read},
		"key-b":  {TeamID: "team-b", KeyID: "key_b", Scopes: read},
	}
	logger := slog.New(slog.DiscardHandler)
	s := New(nil, noTemplates{}, noTemplates{}, auth, nil, telemetry.New(nil), nil, logger, "test").WithRateLimit(lim)
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)

	do := func(method, path, key string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, nil)
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}
	if resp := do("GET", "/v1/templates", "key-a"); resp.StatusCode != 200 {
		t.Fatalf("first request of key a: %d, want 200", resp.StatusCode)
	}
	// Without templates:write: refused for its scope, and counted.
	if resp := do("POST", "/v1/templates", "key-a"); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("a build with a read-only key: %d, want 403", resp.StatusCode)
	}
	resp := do("GET", "/v1/templates", "key-a")
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("request past the burst: %d, want 429", resp.StatusCode)
	}
	if ra := resp.Header.Get("Retry-After"); ra != "2" {
		t.Errorf("Retry-After %q, want \"2\" (a token at 0.5/s)", ra)
	}
	var e api.Error
	if err := json.NewDecoder(resp.Body).Decode(&e); err != nil || e.Code != errdefs.CodeRateLimited || !e.Retryable || e.SuggestedAction == "" {
		t.Errorf("body %+v (%v), want code rate_limited, retryable, with a suggested action", e, err)
	}

	for _, key := range []string{"key-a2", "key-b"} {
		if resp := do("GET", "/v1/templates", key); resp.StatusCode != 200 {
			t.Errorf("%s while key a is limited: %d, want 200", key, resp.StatusCode)
		}
	}
	for range 5 {
		if resp := do("GET", "/v1/health", ""); resp.StatusCode != 200 {
			t.Fatalf("public route while limited: %d, want 200", resp.StatusCode)
		}
		if resp := do("GET", "/v1/templates", "wrong"); resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("a wrong key: %d, want 401", resp.StatusCode)
		}
	}
	clock.Advance(1500 * time.Millisecond)
	if resp := do("GET", "/v1/templates", "key-a"); resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "1" {
		t.Errorf("0.5 s before the next token: %d, Retry-After %q; want 429, \"1\"", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	clock.Advance(500 * time.Millisecond)
	if resp := do("GET", "/v1/templates", "key-a"); resp.StatusCode != 200 {
		t.Errorf("after the refill: %d, want 200", resp.StatusCode)
	}
}

// TestRetryAfterFromError: an error with its own retry-after sends it
// (rounded up); other 429s and 503s keep the default.
func TestRetryAfterFromError(t *testing.T) {
	s := New(nil, noTemplates{}, noTemplates{}, fixedKeys{}, nil, telemetry.New(nil), nil, slog.New(slog.DiscardHandler), "test")
	for _, tt := range []struct {
		err  error
		want string
	}{
		{errdefs.RateLimited("requests", 1200*time.Millisecond), "2"},
		{errdefs.RateLimited("requests", time.Millisecond), "1"},
		{errdefs.ErrResourceExhausted, retryAfter},
		{errdefs.ErrUnavailable, retryAfter},
		{errdefs.ErrNotFound, ""},
	} {
		w := httptest.NewRecorder()
		s.writeError(w, httptest.NewRequest("GET", "/", nil), tt.err)
		if got := w.Header().Get("Retry-After"); got != tt.want {
			t.Errorf("%v: Retry-After %q, want %q", tt.err, got, tt.want)
		}
	}
}
