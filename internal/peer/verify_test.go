package peer_test

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"nullspace.dev/nullspace/internal/peer"
)

var (
	testKey  = bytes.Repeat([]byte{0x5a}, 32)
	otherKey = bytes.Repeat([]byte{0xa5}, 32)
	t0       = time.UnixMilli(1_800_000_000_000)
)

func at(t time.Time) func() time.Time { return func() time.Time { return t } }

// signedRequest is a request as the peer listener of n1 receives it, signed
// by signer for node to.
func signedRequest(signer *peer.Client, to string) *http.Request {
	r := httptest.NewRequest(http.MethodPost, "/v1/machines/m1/files/a%2Fb?path=%2Ftmp%2Fx+y&n=1", strings.NewReader("body"))
	r.Host = "api.example.com"
	signer.Sign(r, to, peer.RouteAPI, "203.0.113.7")
	return r
}

func TestVerify(t *testing.T) {
	n2 := &peer.Client{Self: "n2", Key: testKey, Now: at(t0)}
	setHeader := func(name, value string) func(*http.Request) {
		return func(r *http.Request) { r.Header.Set(name, value) }
	}
	tests := []struct {
		name   string
		signer *peer.Client
		to     string
		tamper func(*http.Request)
		want   string // substring of the refusal; "" means accepted
		status int
	}{
		{name: "valid", want: ""},
		{name: "no peer headers", tamper: func(r *http.Request) {
			for k := range r.Header {
				if strings.HasPrefix(k, "X-Nullspace-Peer-") {
					r.Header.Del(k)
				}
			}
		}, want: "peer request has no X-Nullspace-Peer-From header"},
		{name: "missing signature", tamper: func(r *http.Request) { r.Header.Del("X-Nullspace-Peer-Signature") },
			want: `peer request from node "n2" has no X-Nullspace-Peer-Signature header`},
		{name: "missing nonce", tamper: func(r *http.Request) { r.Header.Del("X-Nullspace-Peer-Nonce") },
			want: "has no X-Nullspace-Peer-Nonce header"},
		{name: "garbled time", tamper: setHeader("X-Nullspace-Peer-Time", "yesterday"),
			want: "garbled X-Nullspace-Peer-Time header: want unix milliseconds"},
		{name: "garbled nonce", tamper: setHeader("X-Nullspace-Peer-Nonce", "xyz"),
			want: "garbled X-Nullspace-Peer-Nonce header: want 32 hex digits"},
		{name: "garbled signature", tamper: setHeader("X-Nullspace-Peer-Signature", "not hex"),
			want: "garbled X-Nullspace-Peer-Signature header: want 64 hex digits"},
		{name: "forged signature", tamper: setHeader("X-Nullspace-Peer-Signature", hex.EncodeToString(make([]byte, 32))),
			want: `peer request from node "n2" has a wrong signature: the nodes do not share the cluster key`},
		{name: "wrong key", signer: &peer.Client{Self: "n2", Key: otherKey, Now: at(t0)},
			want: "has a wrong signature"},
		{name: "wrong to", to: "n3",
			want: `peer request from node "n2" was meant for node "n3" but reached node "n1"`},
		{name: "tampered to", tamper: setHeader("X-Nullspace-Peer-To", "n1x"), want: "has a wrong signature"},
		{name: "tampered from", tamper: setHeader("X-Nullspace-Peer-From", "n9"),
			want: `peer request from node "n9" has a wrong signature`},
		{name: "tampered path", tamper: func(r *http.Request) { r.RequestURI = "/v1/machines/m2/files/a%2Fb?path=%2Ftmp%2Fx+y&n=1" },
			want: "has a wrong signature"},
		{name: "tampered query", tamper: func(r *http.Request) { r.RequestURI = "/v1/machines/m1/files/a%2Fb?path=%2Fetc&n=1" },
			want: "has a wrong signature"},
		{name: "tampered method", tamper: func(r *http.Request) { r.Method = http.MethodDelete },
			want: "has a wrong signature"},
		{name: "tampered host", tamper: func(r *http.Request) { r.Host = "evil.example.com" },
			want: "has a wrong signature"},
		{name: "tampered route", tamper: setHeader("X-Nullspace-Peer-Route", peer.RouteRelay),
			want: "has a wrong signature"},
		{name: "tampered client addr", tamper: setHeader("X-Nullspace-Peer-Client", "198.51.100.1"),
			want: "has a wrong signature"},
		{name: "tampered time", tamper: setHeader("X-Nullspace-Peer-Time", "1800000000001"),
			want: "has a wrong signature"},
		{name: "tampered nonce", tamper: setHeader("X-Nullspace-Peer-Nonce", strings.Repeat("0", 32)),
			want: "has a wrong signature"},
		{name: "line break", tamper: func(r *http.Request) { r.Header["X-Nullspace-Peer-Route"] = []string{"api\nx"} },
			want: "header with a line break"},
		{name: "stale", signer: &peer.Client{Self: "n2", Key: testKey, Now: at(t0.Add(-75 * time.Second))},
			want: `peer request from node "n2" is 75s old, outside the 60s window: check the nodes' clocks`},
		{name: "future", signer: &peer.Client{Self: "n2", Key: testKey, Now: at(t0.Add(61500 * time.Millisecond))},
			want: `peer request from node "n2" is dated 61.5s ahead of this node's clock, outside the 60s window`},
		{name: "edge of the window", signer: &peer.Client{Self: "n2", Key: testKey, Now: at(t0.Add(-60 * time.Second))},
			want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := &peer.Verifier{Self: "n1", Key: testKey, Now: at(t0)}
			signer := tt.signer
			if signer == nil {
				signer = n2
			}
			to := tt.to
			if to == "" {
				to = "n1"
			}
			r := signedRequest(signer, to)
			if tt.tamper != nil {
				tt.tamper(r)
			}
			o, err := v.Verify(r)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Verify: %v, want accepted", err)
				}
				if want := (peer.Origin{From: "n2", Route: peer.RouteAPI, ClientAddr: "203.0.113.7"}); o != want {
					t.Errorf("origin %+v, want %+v", o, want)
				}
				return
			}
			var re *peer.RefusedError
			if !errors.As(err, &re) {
				t.Fatalf("Verify: %v, want a *RefusedError with %q", err, tt.want)
			}
			if re.Status != http.StatusUnauthorized || re.Code != peer.CodePeerUnauthenticated || re.Retryable {
				t.Errorf("refusal %d %s retryable=%v, want 401 peer_unauthenticated not retryable", re.Status, re.Code, re.Retryable)
			}
			if !strings.Contains(re.Message, tt.want) {
				t.Errorf("message %q, want it to hold %q", re.Message, tt.want)
			}
			if bytes.Contains([]byte(re.Message), testKey) {
				t.Errorf("message %q holds the key", re.Message)
			}
		})
	}
}

func TestVerifyReplay(t *testing.T) {
	n2 := &peer.Client{Self: "n2", Key: testKey, Now: at(t0)}
	v := &peer.Verifier{Self: "n1", Key: testKey, Now: at(t0)}
	r := signedRequest(n2, "n1")
	if _, err := v.Verify(r); err != nil {
		t.Fatalf("first Verify: %v", err)
	}
	_, err := v.Verify(r)
	if err == nil || !strings.Contains(err.Error(), `peer request from node "n2" reuses nonce `+r.Header.Get("X-Nullspace-Peer-Nonce")+": a replay") {
		t.Fatalf("second Verify: %v, want a replay refusal", err)
	}
	// Another request with its own nonce passes.
	if _, err := v.Verify(signedRequest(n2, "n1")); err != nil {
		t.Fatalf("Verify of a new request: %v", err)
	}
}

// TestVerifyReplayAfterClockStep: a nonce forgotten once its window ended
// is not accepted again when the clock steps back into that window.
func TestVerifyReplayAfterClockStep(t *testing.T) {
	now := t0
	v := &peer.Verifier{Self: "n1", Key: testKey, Now: func() time.Time { return now }}
	old := signedRequest(&peer.Client{Self: "n2", Key: testKey, Now: at(t0)}, "n1")
	if _, err := v.Verify(old); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	now = t0.Add(61 * time.Second) // prunes old's nonce
	if _, err := v.Verify(signedRequest(&peer.Client{Self: "n2", Key: testKey, Now: at(now)}, "n1")); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	now = t0.Add(30 * time.Second) // the clock is corrected back
	_, err := v.Verify(old)
	if err == nil || !strings.Contains(err.Error(), "older than the window (this node's clock stepped back)") {
		t.Fatalf("replay after a clock step: %v, want refused as stale", err)
	}
}

func TestVerifyNonceCacheFull(t *testing.T) {
	now := t0
	v := &peer.Verifier{Self: "n1", Key: testKey, Now: func() time.Time { return now }, MaxNonces: 2}
	n2 := &peer.Client{Self: "n2", Key: testKey, Now: func() time.Time { return now }}
	for i := range 2 {
		if _, err := v.Verify(signedRequest(n2, "n1")); err != nil {
			t.Fatalf("Verify %d: %v", i, err)
		}
	}
	_, err := v.Verify(signedRequest(n2, "n1"))
	var re *peer.RefusedError
	if !errors.As(err, &re) || re.Status != http.StatusServiceUnavailable || re.Code != peer.CodePeerOverloaded || !re.Retryable {
		t.Fatalf("Verify with a full cache: %v, want 503 peer_overloaded, retryable", err)
	}
	// Once the first nonces leave the window there is room again.
	now = now.Add(61 * time.Second)
	if _, err := v.Verify(signedRequest(n2, "n1")); err != nil {
		t.Fatalf("Verify after the window: %v", err)
	}
}

func TestMiddleware(t *testing.T) {
	var got struct {
		called bool
		origin peer.Origin
		ok     bool
		header http.Header
	}
	h := (&peer.Verifier{Self: "n1", Key: testKey}).Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.called = true
		got.origin, got.ok = peer.FromContext(r.Context())
		got.header = r.Header.Clone()
	}))

	t.Run("accepted", func(t *testing.T) {
		got.called = false
		r := signedRequest(&peer.Client{Self: "n2", Key: testKey}, "n1")
		r.Header.Set("X-Other", "kept")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != http.StatusOK || !got.called {
			t.Fatalf("status %d, handler called %v; want 200 and called", w.Code, got.called)
		}
		if want := (peer.Origin{From: "n2", Route: peer.RouteAPI, ClientAddr: "203.0.113.7"}); !got.ok || got.origin != want {
			t.Errorf("FromContext = %+v, %v; want %+v, true", got.origin, got.ok, want)
		}
		for k := range got.header {
			if strings.HasPrefix(strings.ToLower(k), "x-nullspace-peer-") {
				t.Errorf("handler saw header %s, want every X-Nullspace-Peer-* header stripped", k)
			}
		}
		if got.header.Get("X-Other") != "kept" {
			t.Errorf("X-Other = %q, want other headers kept", got.header.Get("X-Other"))
		}
	})

	t.Run("refused", func(t *testing.T) {
		got.called = false
		r := signedRequest(&peer.Client{Self: "n2", Key: otherKey}, "n1")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if got.called {
			t.Fatal("handler called for a refused request")
		}
		if w.Code != http.StatusUnauthorized {
			t.Fatalf("status %d, want 401", w.Code)
		}
		var body map[string]any
		if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
			t.Fatalf("body %q: %v", w.Body, err)
		}
		if body["code"] != "peer_unauthenticated" || body["retryable"] != false ||
			!strings.Contains(body["message"].(string), "wrong signature") {
			t.Errorf("body %v, want peer_unauthenticated, not retryable, naming the wrong signature", body)
		}
	})

	t.Run("public request has no origin", func(t *testing.T) {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		if o, ok := peer.FromContext(r.Context()); ok {
			t.Errorf("FromContext of a public request = %+v, true; want false", o)
		}
	})
}
