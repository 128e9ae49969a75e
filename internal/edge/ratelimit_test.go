package edge

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/ratelimit"
)

const lineage2 = "mch_fedcba9876543210fedc"

// getFrom sends GET u to the edge from the loopback address src.
func (h *harness) getFrom(t *testing.T, src, u string) *http.Response {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c := &http.Client{
		Transport: &http.Transport{DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, h.srv.Listener.Addr().String())
		}},
		Timeout: 20 * time.Second,
	}
	resp, err := c.Get(u)
	if err != nil {
		t.Fatalf("GET %s from %s: %v", u, src, err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// wantRateLimited checks a 429 rate_limited answer with a Retry-After of
// whole seconds.
func wantRateLimited(t *testing.T, resp *http.Response) {
	t.Helper()
	e := wantError(t, resp, http.StatusTooManyRequests, errdefs.CodeRateLimited)
	if !e.Retryable || e.SuggestedAction == "" {
		t.Errorf("rate_limited error %+v: want retryable with a suggested action", e)
	}
	// 3 tokens at 0.01/s: the next one is about 100 s away.
	if ra := resp.Header.Get("Retry-After"); ra != "100" && ra != "99" {
		t.Errorf("Retry-After %q, want about 100 (seconds)", ra)
	}
}

// TestRateLimitPerMachine: a flood at one machine's URL is refused with
// 429 past the machine's burst, while another machine is served; requests
// that fail authorization do not spend the machine's budget.
func TestRateLimitPerMachine(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(echoPath), Config{RatePerMachine: ratelimit.Limit{Rate: 0.01, Burst: 3}})
	h.machines.set(Target{LineageID: lineage2, MachineID: lineage2, ContainerID: "ns9", State: api.StateRunning,
		IP: netip.MustParseAddr("127.0.0.1")})
	u1 := h.url(t)
	u2, err := h.edge.URL(lineage2, h.port, time.Time{}, false)
	if err != nil {
		t.Fatal(err)
	}
	// A forged signature for machine 1, many times: refused as such.
	forged := u1.URL[:len(u1.URL)-4] + "aaaa"
	for range 10 {
		wantError(t, h.get(t, forged+"/"), http.StatusForbidden, errdefs.CodeSignatureInvalid)
	}
	for i := range 3 {
		if resp := h.get(t, u1.URL+"/"); resp.StatusCode != 200 {
			t.Fatalf("request %d to machine 1 within its burst: %d", i, resp.StatusCode)
		}
	}
	wantRateLimited(t, h.get(t, u1.URL+"/"))
	for i := range 3 {
		if resp := h.get(t, u2.URL+"/"); resp.StatusCode != 200 {
			t.Fatalf("request %d to machine 2 while machine 1 is flooded: %d, want 200", i, resp.StatusCode)
		}
	}
	// A browser gets the page, with the same status and Retry-After.
	req, _ := http.NewRequest("GET", u1.OriginURL+"/", nil)
	req.Header.Set("Accept", "text/html")
	resp := h.do(t, req)
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" ||
		!strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("browser: %d %q %q, want 429 text/html with Retry-After", resp.StatusCode,
			resp.Header.Get("Content-Type"), resp.Header.Get("Retry-After"))
	}
}

// TestRateLimitPerSource: a flood from one address is refused with 429
// past its burst, whatever it asks for, while another address is served.
func TestRateLimitPerSource(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(echoPath), Config{RatePerSource: ratelimit.Limit{Rate: 0.01, Burst: 3}})
	u := h.url(t)
	for i := range 3 {
		if resp := h.getFrom(t, "127.0.0.1", u.URL+"/"); resp.StatusCode != 200 {
			t.Fatalf("request %d from 127.0.0.1 within its burst: %d", i, resp.StatusCode)
		}
	}
	wantRateLimited(t, h.getFrom(t, "127.0.0.1", u.URL+"/"))
	// Not a machine URL at all: refused the same, before anything else.
	wantRateLimited(t, h.getFrom(t, "127.0.0.1", "http://"+h.srv.Listener.Addr().String()+"/nothing"))
	for i := range 3 {
		if resp := h.getFrom(t, "127.0.0.2", u.URL+"/"); resp.StatusCode != 200 {
			t.Fatalf("request %d from 127.0.0.2 while 127.0.0.1 floods: %d, want 200", i, resp.StatusCode)
		}
	}
}
