package e2bcompat

import (
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/ratelimit"
)

// TestRateLimit: a key past its rate gets E2B's 429 with Retry-After
// while another key is served; health is not limited.
func TestRateLimit(t *testing.T) {
	s, err := New(t.Context(), Config{DataDir: t.TempDir(), Domain: "localhost:7701", WakeTimeout: time.Second},
		newFake(), keys{"key-a": "team-a", "key-b": "team-b"}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	s.WithRateLimit(ratelimit.New(ratelimit.Config{Default: ratelimit.Limit{Rate: 0.01, Burst: 2}}))
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	for i := range 2 {
		if resp := call(t, srv, "key-a", "GET", "/v2/sandboxes", "", nil); resp.StatusCode != 200 {
			t.Fatalf("call %d within the burst: %d", i, resp.StatusCode)
		}
	}
	var e errorBody
	resp := call(t, srv, "key-a", "GET", "/v2/sandboxes", "", &e)
	if resp.StatusCode != 429 || e.Code != 429 || e.ErrorCode != errdefs.CodeRateLimited || !strings.Contains(e.Message, "Retry-After") {
		t.Errorf("past the burst: %d %+v; want 429 rate_limited saying when to retry", resp.StatusCode, e)
	}
	if ra := resp.Header.Get("Retry-After"); ra != "100" && ra != "99" {
		t.Errorf("Retry-After %q, want about 100 (a token at 0.01/s)", ra)
	}
	if resp := call(t, srv, "key-b", "GET", "/v2/sandboxes", "", nil); resp.StatusCode != 200 {
		t.Errorf("another key: %d, want 200", resp.StatusCode)
	}
	if resp := call(t, srv, "", "GET", "/health", "", nil); resp.StatusCode != 200 {
		t.Errorf("health: %d, want 200", resp.StatusCode)
	}
}
