package edge

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
)

// fakeMachines is a control-plane stand-in: lineages and their states,
// and a wake that takes wakeDelay and then makes the machine run.
type fakeMachines struct {
	mu        sync.Mutex
	targets   map[string]Target
	wakeDelay time.Duration
	wakeErr   error
	// wakeTo is the state a wake leaves the machine in (default running).
	wakeTo    string
	wakes     atomic.Int32
	routes    atomic.Int32
	touched   atomic.Int32
	wakeCtxOK atomic.Bool // the last wake's context was still alive at its end
	// forget is the edge's Forget: the manager calls it on every change.
	forget func(lineageID string)
	// onRoute runs inside Route, as a change racing a lookup would.
	onRoute func()
}

func (f *fakeMachines) Route(_ context.Context, id string) (Target, error) {
	f.routes.Add(1)
	if f.onRoute != nil {
		f.onRoute()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.targets[id]
	if !ok {
		return Target{}, errdefs.New(errdefs.ErrNotFound, errdefs.CodeMachineNotFound, "no such machine", "")
	}
	return t, nil
}

func (f *fakeMachines) Wake(ctx context.Context, id string, port int, resume bool) (Target, error) {
	f.wakes.Add(1)
	select {
	case <-time.After(f.wakeDelay):
	case <-ctx.Done():
		return Target{}, ctx.Err()
	}
	f.wakeCtxOK.Store(ctx.Err() == nil)
	if f.wakeErr != nil {
		return Target{}, f.wakeErr
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	t := f.targets[id]
	if resume {
		t.State = api.StateRunning
		if f.wakeTo != "" {
			t.State = f.wakeTo
		}
		t.ContainerID = "ns" + strconv.Itoa(int(f.wakes.Load())) // a new sandbox
	}
	f.targets[id] = t
	if f.forget != nil {
		f.forget(id)
	}
	return t, nil
}

func (f *fakeMachines) Touch(string) { f.touched.Add(1) }

func (f *fakeMachines) set(t Target) {
	f.mu.Lock()
	f.targets[t.LineageID] = t
	f.mu.Unlock()
	if f.forget != nil {
		f.forget(t.LineageID)
	}
}

const lineage = "mch_0123456789abcdef0123"

// harness is an edge in front of an upstream server on loopback, whose
// port is the machine port the URLs name.
type harness struct {
	edge     *Server
	srv      *httptest.Server
	machines *fakeMachines
	port     int
	domain   string
}

func newHarness(t testing.TB, upstream http.Handler, cfg Config) *harness {
	t.Helper()
	keys, err := OpenKeys(filepath.Join(t.TempDir(), "edge-secret"))
	if err != nil {
		t.Fatal(err)
	}
	port := 0
	if upstream != nil {
		up := httptest.NewServer(upstream)
		t.Cleanup(up.Close)
		port = up.Listener.Addr().(*net.TCPAddr).Port
	} else {
		// A port nothing listens on.
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		port = ln.Addr().(*net.TCPAddr).Port
		ln.Close()
	}
	fm := &fakeMachines{targets: map[string]Target{}}
	fm.set(Target{LineageID: lineage, MachineID: lineage, ContainerID: "ns0", State: api.StateRunning,
		IP: netip.MustParseAddr("127.0.0.1"), AutoResume: true})
	h := &harness{machines: fm, port: port}
	// The edge listens first so the domain can name its port.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.domain = "localhost:" + strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	cfg.Domain = h.domain
	cfg.PathBase = "http://" + ln.Addr().String()
	e, err := New(t.Context(), cfg, fm, keys, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	h.edge = e
	fm.forget = e.Forget
	h.srv = &httptest.Server{Listener: ln, Config: &http.Server{Handler: e}}
	h.srv.Start()
	t.Cleanup(h.srv.Close)
	return h
}

func (h *harness) url(t *testing.T) api.MachineURL {
	t.Helper()
	u, err := h.edge.URL(lineage, h.port, time.Time{}, false)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// get sends a request to an edge URL, reaching *.localhost hosts at the
// edge's address (as curl and browsers resolve them).
func (h *harness) do(t *testing.T, req *http.Request) *http.Response {
	t.Helper()
	c := &http.Client{
		Transport: &http.Transport{DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, h.srv.Listener.Addr().String())
		}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       20 * time.Second,
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func (h *harness) get(t *testing.T, u string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	return h.do(t, req)
}

// wantError checks an edge refusal's status, code and body.
func wantError(t *testing.T, resp *http.Response, status int, code string) api.Error {
	t.Helper()
	var e api.Error
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != status {
		t.Fatalf("status %d (%s), want %d %s", resp.StatusCode, b, status, code)
	}
	if err := json.Unmarshal(b, &e); err != nil {
		t.Fatalf("body %q is not the JSON error: %v", b, err)
	}
	if e.Code != code || e.Message == "" {
		t.Fatalf("error %+v, want code %s with a message", e, code)
	}
	if status == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") != "5" {
		t.Fatalf("503 with Retry-After %q, want 5", resp.Header.Get("Retry-After"))
	}
	return e
}

func echoPath(w http.ResponseWriter, r *http.Request) {
	fmt.Fprintf(w, "%s %s?%s host=%s xff=%s xfh=%s xfp=%s secret=%q", r.Method, r.URL.EscapedPath(), r.URL.RawQuery, r.Host,
		r.Header.Get("X-Forwarded-For"), r.Header.Get("X-Forwarded-Host"), r.Header.Get("X-Forwarded-Proto"), r.Header.Get("X-Hop"))
}

func TestURLForms(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(echoPath), Config{})
	u := h.url(t)
	if !strings.HasPrefix(u.URL, h.edge.cfg.PathBase+"/m/") || u.URL != u.PathURL {
		t.Fatalf("on a localhost domain url is the path form; got %+v", u)
	}
	if u.WSURL != "ws"+strings.TrimPrefix(u.URL, "http") {
		t.Fatalf("ws_url %q does not match url %q", u.WSURL, u.URL)
	}
	host := strings.TrimPrefix(u.OriginURL, "http://")
	lbl, _, _ := strings.Cut(host, ".")
	if len(lbl) > 63 || strings.ToLower(lbl) != lbl || strings.ContainsAny(lbl, "_.") {
		t.Fatalf("label %q is not a DNS label", lbl)
	}
	if strings.Contains(u.OriginURL, "mch_") {
		t.Fatalf("origin %q holds the underscore of the id", u.OriginURL)
	}
	exp := time.Now().Add(time.Hour)
	ue, err := h.edge.URL(lineage, 65535, exp, false)
	if err != nil {
		t.Fatal(err)
	}
	if l := strings.TrimPrefix(ue.PathURL, h.edge.cfg.PathBase+"/m/"); len(l) > 63 {
		t.Fatalf("longest label %q is %d bytes, over 63", l, len(l))
	}
	if ue.ExpiresAt == nil || ue.ExpiresAt.Unix() != exp.Unix() {
		t.Fatalf("expires_at %v, want %v", ue.ExpiresAt, exp)
	}
	for _, port := range []int{0, -1, 65536, AgentPort} {
		if _, err := h.edge.URL(lineage, port, time.Time{}, false); errdefs.Classify(err).Code != errdefs.CodePortNotAllowed {
			t.Errorf("URL of port %d: %v, want port_not_allowed", port, err)
		}
	}
	// Both forms reach the machine with the path and query appended.
	for _, base := range []string{u.URL, u.OriginURL} {
		resp := h.get(t, base+"/a/b%2Fc?q=1&r=x%20y")
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || !strings.HasPrefix(string(b), "GET /a/b%2Fc?q=1&r=x%20y ") {
			t.Fatalf("GET %s/a/b%%2Fc?q=1: %d %q", base, resp.StatusCode, b)
		}
		resp = h.get(t, base)
		b, _ = io.ReadAll(resp.Body)
		if !strings.HasPrefix(string(b), "GET /? ") {
			t.Fatalf("GET %s (no path): %q, want the root", base, b)
		}
	}
	if h.machines.touched.Load() == 0 {
		t.Fatal("requests through the edge did not count as activity")
	}
}

func TestForwardedHeaders(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(echoPath), Config{})
	u := h.url(t)
	req, _ := http.NewRequest(http.MethodGet, u.OriginURL+"/x", nil)
	req.Header.Set("Connection", "X-Hop")
	req.Header.Set("X-Hop", "must not pass")
	req.Header.Set("X-Forwarded-For", "203.0.113.7")
	resp := h.do(t, req)
	b, _ := io.ReadAll(resp.Body)
	got := string(b)
	host := strings.TrimPrefix(u.OriginURL, "http://")
	for _, want := range []string{"host=" + host, "xff=203.0.113.7, 127.0.0.1", "xfh=" + host, "xfp=http", `secret=""`} {
		if !strings.Contains(got, want) {
			t.Errorf("upstream saw %q, want %q in it", got, want)
		}
	}
}

func TestBrowserNavigationRedirectsToOrigin(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(echoPath), Config{})
	u := h.url(t)
	req, _ := http.NewRequest(http.MethodGet, u.URL+"/page?x=1", nil)
	req.Header.Set("Sec-Fetch-Mode", "navigate")
	req.Header.Set("Accept", "text/html")
	resp := h.do(t, req)
	if resp.StatusCode != http.StatusTemporaryRedirect || resp.Header.Get("Location") != u.OriginURL+"/page?x=1" {
		t.Fatalf("navigation to the path form: %d to %q, want 307 to %s/page?x=1", resp.StatusCode, resp.Header.Get("Location"), u.OriginURL)
	}
	// A forged URL is refused, not redirected.
	req, _ = http.NewRequest(http.MethodGet, forge(u.URL), nil)
	req.Header.Set("Sec-Fetch-Mode", "navigate")
	if resp := h.do(t, req); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("forged navigation: %d, want 403", resp.StatusCode)
	}
}

// forge flips the last character of the signature in a URL.
func forge(u string) string {
	last := u[len(u)-1]
	c := byte('a')
	if last == 'a' {
		c = 'b'
	}
	return u[:len(u)-1] + string(c)
}

func TestRefusalsWakeNothing(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(echoPath), Config{})
	h.machines.set(Target{LineageID: lineage, MachineID: lineage, State: api.StatePaused, AutoResume: true})
	other := "mch_ffffffffffffffffffff"
	h.machines.set(Target{LineageID: other, MachineID: other, State: api.StatePaused, AutoResume: true})
	base := h.edge.cfg.PathBase + "/m/"
	good := h.url(t)
	lbl := strings.TrimPrefix(good.PathURL, base)
	sig := lbl[strings.LastIndex(lbl, "-")+1:]
	expired, _ := h.edge.URL(lineage, h.port, time.Now().Add(-time.Minute), false)
	otherPort, _ := h.edge.URL(lineage, h.port+1, time.Time{}, false)
	otherMachine, _ := h.edge.URL(other, h.port, time.Time{}, false)
	lineageHex := strings.TrimPrefix(lineage, "mch_")
	for _, tc := range []struct {
		name   string
		url    string
		host   string // overrides the Host header
		status int
		code   string
	}{
		{"forged", forge(good.PathURL), "", 403, errdefs.CodeSignatureInvalid},
		{"truncated", good.PathURL[:len(good.PathURL)-3], "", 400, errdefs.CodeURLInvalid},
		{"expired", expired.PathURL, "", 403, errdefs.CodeURLExpired},
		{"expiry moved", base + fmt.Sprintf("%d-%s-%s-%s", h.port, lineageHex, strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 36), sigOf(expired.PathURL)), "", 403, errdefs.CodeSignatureInvalid},
		{"other port's signature", base + fmt.Sprintf("%d-%s-%s", h.port, lineageHex, sigOf(otherPort.PathURL)), "", 403, errdefs.CodeSignatureInvalid},
		{"other machine's signature", base + fmt.Sprintf("%d-%s-%s", h.port, lineageHex, sigOf(otherMachine.PathURL)), "", 403, errdefs.CodeSignatureInvalid},
		{"host naming another machine", good.OriginURL, strings.Replace(strings.TrimPrefix(good.OriginURL, "http://"), lineageHex, "ffffffffffffffffffff", 1), 403, errdefs.CodeSignatureInvalid},
		{"missing signature", base + fmt.Sprintf("%d-%s", h.port, lineageHex), "", 401, errdefs.CodeSignatureMissing},
		{"unknown machine unsigned", base + fmt.Sprintf("%d-%s", h.port, "eeeeeeeeeeeeeeeeeeee"), "", 401, errdefs.CodeSignatureMissing},
		{"port 0", base + fmt.Sprintf("0-%s-%s", lineageHex, sig), "", 400, errdefs.CodeURLInvalid},
		{"port 65536", base + fmt.Sprintf("65536-%s-%s", lineageHex, sig), "", 400, errdefs.CodePortNotAllowed},
		{"agent port", base + fmt.Sprintf("%d-%s-%s", AgentPort, lineageHex, sig), "", 400, errdefs.CodePortNotAllowed},
		{"malformed host", "http://" + h.domain + "/", "not_a-label.localhost", 400, errdefs.CodeURLInvalid},
		{"host under another domain", "http://" + h.domain + "/", fmt.Sprintf("%d-%s-%s.example.com", h.port, lineageHex, sig), 404, errdefs.CodeNotFound},
		{"malformed label", base + "8080-xyz", "", 400, errdefs.CodeURLInvalid},
		{"bare edge", "http://" + h.domain + "/", "", 404, errdefs.CodeNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(http.MethodGet, tc.url, nil)
			if err != nil {
				t.Fatal(err)
			}
			if tc.host != "" {
				req.Host = tc.host
			}
			wantError(t, h.do(t, req), tc.status, tc.code)
			if n := h.machines.wakes.Load(); n != 0 {
				t.Fatalf("a refused request woke the machine (%d wakes)", n)
			}
		})
	}
}

func sigOf(u string) string { return u[strings.LastIndex(u, "-")+1:] }

func TestPublicPorts(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(echoPath), Config{})
	u, _ := h.edge.URL(lineage, h.port, time.Time{}, true)
	if u.Public != true || strings.Count(strings.TrimPrefix(u.PathURL, h.edge.cfg.PathBase+"/m/"), "-") != 1 {
		t.Fatalf("public URL %+v carries a signature", u)
	}
	wantError(t, h.get(t, u.URL+"/x"), 401, errdefs.CodeSignatureMissing)
	h.machines.set(Target{LineageID: lineage, MachineID: lineage, ContainerID: "ns0", State: api.StateRunning,
		IP: netip.MustParseAddr("127.0.0.1"), PublicPorts: true})
	if resp := h.get(t, u.URL+"/x"); resp.StatusCode != 200 {
		t.Fatalf("public machine's unsigned URL: %d", resp.StatusCode)
	}
	// A signed URL works for a public machine too.
	if resp := h.get(t, h.url(t).URL+"/x"); resp.StatusCode != 200 {
		t.Fatalf("public machine's signed URL: %d", resp.StatusCode)
	}
}

func TestRotatedSecretRefusesOldURLs(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(echoPath), Config{})
	u := h.url(t)
	if resp := h.get(t, u.URL); resp.StatusCode != 200 {
		t.Fatalf("before rotation: %d", resp.StatusCode)
	}
	if err := RotateSecret(h.edge.keys.path); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(h.edge.keys.path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("secret mode %v, want 0600", fi.Mode().Perm())
	}
	h.edge.keys.mu.Lock()
	h.edge.keys.checked = time.Time{} // as if a second had passed
	h.edge.keys.mu.Unlock()
	wantError(t, h.get(t, u.URL), 403, errdefs.CodeSignatureInvalid)
	if resp := h.get(t, h.url(t).URL); resp.StatusCode != 200 {
		t.Fatalf("a URL issued after rotation: %d", resp.StatusCode)
	}
}

func TestContract503(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(echoPath), Config{})
	u := h.url(t)
	for _, tc := range []struct {
		state, code string
	}{
		{api.StatePaused, errdefs.CodePausedAutoResumeOff},
		{api.StateStopped, errdefs.CodeStoppedAutoResumeOff},
	} {
		h.machines.set(Target{LineageID: lineage, MachineID: lineage, State: tc.state, AutoResume: false})
		e := wantError(t, h.get(t, u.URL), 503, tc.code)
		if e.Retryable || e.SuggestedAction == "" {
			t.Fatalf("%s: %+v, want retryable false and a suggested action", tc.state, e)
		}
	}
	// A browser gets a page, with the same status and Retry-After.
	h.machines.set(Target{LineageID: lineage, MachineID: lineage, State: api.StatePaused, AutoResume: false})
	req, _ := http.NewRequest(http.MethodGet, u.URL, nil)
	req.Header.Set("Accept", "text/html,application/xhtml+xml")
	resp := h.do(t, req)
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") != "5" || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") ||
		!strings.Contains(string(b), errdefs.CodePausedAutoResumeOff) {
		t.Fatalf("browser: %d %q %q", resp.StatusCode, resp.Header, b)
	}
	h.machines.set(Target{LineageID: lineage, MachineID: lineage, State: api.StateFailed, Error: "its paused state was evicted"})
	if e := wantError(t, h.get(t, u.URL), 503, errdefs.CodeMachineFailed); e.Retryable || !strings.Contains(e.Message, "evicted") {
		t.Fatalf("failed machine: %+v", e)
	}
	h.machines.set(Target{LineageID: lineage, MachineID: lineage, State: api.StateKilled})
	wantError(t, h.get(t, u.URL), 404, errdefs.CodeMachineNotFound)
	if n := h.machines.wakes.Load(); n != 0 {
		t.Fatalf("%d wakes, want none", n)
	}
}

func TestWakeCoalescesConcurrentRequests(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(echoPath), Config{})
	h.machines.wakeDelay = 300 * time.Millisecond
	h.machines.set(Target{LineageID: lineage, MachineID: lineage, State: api.StatePaused, AutoResume: true,
		IP: netip.MustParseAddr("127.0.0.1")})
	u := h.url(t)
	const n = 200
	var wg sync.WaitGroup
	statuses := make([]int, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Get(u.URL + "/" + strconv.Itoa(i))
			if err != nil {
				t.Errorf("request %d: %v", i, err)
				return
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			statuses[i] = resp.StatusCode
			if resp.StatusCode == 200 && !strings.HasPrefix(string(b), "GET /"+strconv.Itoa(i)+"?") {
				t.Errorf("request %d got %q", i, b)
			}
		}()
	}
	wg.Wait()
	for i, s := range statuses {
		if s != 200 {
			t.Fatalf("request %d: status %d", i, s)
		}
	}
	if w := h.machines.wakes.Load(); w != 1 {
		t.Fatalf("%d wakes for %d concurrent requests, want 1", w, n)
	}
}

func TestWakeTimeoutAndClientGone(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(echoPath), Config{WakeTimeout: 200 * time.Millisecond})
	h.machines.wakeDelay = 700 * time.Millisecond
	h.machines.set(Target{LineageID: lineage, MachineID: lineage, State: api.StatePaused, AutoResume: true,
		IP: netip.MustParseAddr("127.0.0.1")})
	u := h.url(t)
	e := wantError(t, h.get(t, u.URL), 503, errdefs.CodeWakeTimeout)
	if !e.Retryable {
		t.Fatalf("wake timeout %+v is not retryable", e)
	}
	// The client is gone; the wake goes on and completes.
	time.Sleep(800 * time.Millisecond)
	if !h.machines.wakeCtxOK.Load() {
		t.Fatal("the wake's context was cancelled when its only client left")
	}
	if resp := h.get(t, u.URL); resp.StatusCode != 200 {
		t.Fatalf("after the wake: %d", resp.StatusCode)
	}
	if w := h.machines.wakes.Load(); w != 1 {
		t.Fatalf("%d wakes, want 1", w)
	}
}

func TestWakeFailures(t *testing.T) {
	for _, tc := range []struct {
		name      string
		err       error
		wakeTo    string
		status    int
		code      string
		retryable bool
	}{
		{"capacity", errdefs.New(errdefs.ErrResourceExhausted, errdefs.CodeResourceExhausted, "all 16 network slots are in use", ""), "", 503, errdefs.CodeWakeCapacity, true},
		{"incompatible", errdefs.New(errdefs.ErrFailedPrecondition, errdefs.CodeSnapshotIncompatible, "runsc version differs", ""), "", 503, errdefs.CodeWakeSnapshotUnusable, false},
		{"corrupt", errdefs.New(errdefs.ErrFailedPrecondition, errdefs.CodeSnapshotCorrupt, "checksum mismatch", ""), "", 503, errdefs.CodeWakeSnapshotUnusable, false},
		{"internal", errors.New("runsc restore: exit status 1 at /var/lib/secret/path"), "", 503, errdefs.CodeWakeFailed, true},
		{"killed while held", nil, api.StateKilled, 404, errdefs.CodeMachineNotFound, false},
		{"killed and gone", errdefs.New(errdefs.ErrNotFound, errdefs.CodeMachineNotFound, "gone", ""), "", 404, errdefs.CodeMachineNotFound, false},
		{"failed while held", nil, api.StateFailed, 503, errdefs.CodeMachineFailed, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, http.HandlerFunc(echoPath), Config{})
			h.machines.wakeErr, h.machines.wakeTo = tc.err, tc.wakeTo
			h.machines.set(Target{LineageID: lineage, MachineID: lineage, State: api.StatePaused, AutoResume: true})
			e := wantError(t, h.get(t, h.url(t).URL), tc.status, tc.code)
			if e.Retryable != tc.retryable {
				t.Fatalf("%+v: retryable %v, want %v", e, e.Retryable, tc.retryable)
			}
			if strings.Contains(e.Message, "/var/lib") {
				t.Fatalf("internal cause leaked: %q", e.Message)
			}
		})
	}
}

func TestHeldBody(t *testing.T) {
	sum := func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%x %d", sha256.Sum256(b), len(b))
	}
	h := newHarness(t, http.HandlerFunc(sum), Config{HoldBodyLimit: 1 << 16})
	h.machines.wakeDelay = 100 * time.Millisecond
	paused := Target{LineageID: lineage, MachineID: lineage, State: api.StatePaused, AutoResume: true, IP: netip.MustParseAddr("127.0.0.1")}
	h.machines.set(paused)
	u := h.url(t)
	body := bytes.Repeat([]byte("0123456789abcdef"), 1<<12) // exactly the limit
	// Chunked (no length): the edge learns the size by reading.
	resp, err := http.Post(u.URL+"/up", "application/octet-stream", io.MultiReader(bytes.NewReader(body)))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := fmt.Sprintf("%x %d", sha256.Sum256(body), len(body)); string(b) != want {
		t.Fatalf("held body arrived as %q, want %q", b, want)
	}
	h.machines.set(paused)
	resp, err = http.Post(u.URL+"/up", "application/octet-stream", bytes.NewReader(append(body, 'x')))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if e := wantError(t, resp, 503, errdefs.CodeWakeBodyTooLarge); !e.Retryable {
		t.Fatalf("%+v is not retryable", e)
	}
	// Once awake, a large chunked body streams.
	big := bytes.Repeat([]byte("z"), 4<<20)
	resp, err = http.Post(u.URL+"/up", "application/octet-stream", io.MultiReader(bytes.NewReader(big)))
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := fmt.Sprintf("%x %d", sha256.Sum256(big), len(big)); string(b) != want {
		t.Fatalf("streamed body arrived as %q", b)
	}
}

func TestPortNotListening(t *testing.T) {
	h := newHarness(t, nil, Config{})
	e := wantError(t, h.get(t, h.url(t).URL), 502, errdefs.CodePortNotListening)
	if !strings.Contains(e.Message, strconv.Itoa(h.port)) {
		t.Fatalf("message %q does not name the port", e.Message)
	}
}

func TestStreamingAndWebSocket(t *testing.T) {
	release := make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("/events", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		<-release
		fmt.Fprint(w, "data: second\n\n")
	})
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
		if err != nil {
			return
		}
		defer c.CloseNow()
		for {
			typ, b, err := c.Read(r.Context())
			if err != nil {
				return
			}
			c.Write(r.Context(), typ, append([]byte("echo:"), b...))
		}
	})
	mux.HandleFunc("/poll", func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(1500 * time.Millisecond) // a long poll answers late
		fmt.Fprint(w, "news")
	})
	h := newHarness(t, mux, Config{})
	u := h.url(t)

	if resp := h.get(t, u.URL+"/poll"); resp.StatusCode != 200 {
		t.Fatalf("long poll: %d", resp.StatusCode)
	} else if b, _ := io.ReadAll(resp.Body); string(b) != "news" {
		t.Fatalf("long poll: %q", b)
	}
	resp := h.get(t, u.URL+"/events")
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadString('\n')
	if err != nil || line != "data: first\n" {
		t.Fatalf("first event %q before the stream ends: %v", line, err)
	}
	close(release)
	rest, _ := io.ReadAll(br)
	if !strings.Contains(string(rest), "data: second") {
		t.Fatalf("rest of the stream: %q", rest)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, u.WSURL+"/ws", nil)
	if err != nil {
		t.Fatalf("websocket through the edge: %v", err)
	}
	defer c.CloseNow()
	if err := c.Write(ctx, websocket.MessageText, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	_, b, err := c.Read(ctx)
	if err != nil || string(b) != "echo:hi" {
		t.Fatalf("websocket echo %q, %v", b, err)
	}
	c.Close(websocket.StatusNormalClosure, "")
}

func TestParseLabel(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{"8080-0123456789abcdef0123", true},
		{"8080-0123456789abcdef0123-" + strings.Repeat("a", 24), true},
		{"8080-0123456789abcdef0123-tv2v5s-" + strings.Repeat("a", 24), true},
		{"08080-0123456789abcdef0123", false},
		{"+8080-0123456789abcdef0123", false},
		{"8080-0123456789abcdef012", false},
		{"8080-0123456789abcdef012g", false},
		{"8080-0123456789abcdef0123-" + strings.Repeat("a", 23), false},
		{"8080-0123456789abcdef0123--" + strings.Repeat("a", 24), false},
		{"8080-0123456789abcdef0123-x-y-z", false},
		{"", false},
		{"8080", false},
	} {
		if _, err := parseLabel(tc.in); (err == nil) != tc.ok {
			t.Errorf("parseLabel(%q): %v, want ok=%v", tc.in, err, tc.ok)
		}
	}
	if _, err := url.Parse("http://" + strings.Repeat("a", 59) + ".localhost"); err != nil {
		t.Fatal(err)
	}
}

func TestWakeRetriesDialWhileServerBoots(t *testing.T) {
	h := newHarness(t, nil, Config{})
	ip := netip.MustParseAddr("127.0.0.1")
	// A started machine boots afresh: its server comes up after the wake.
	h.machines.set(Target{LineageID: lineage, MachineID: lineage, State: api.StateStopped, AutoResume: true, IP: ip})
	go func() {
		time.Sleep(800 * time.Millisecond)
		ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(h.port))
		if err != nil {
			return
		}
		srv := &http.Server{Handler: http.HandlerFunc(echoPath)}
		t.Cleanup(func() { srv.Close() })
		srv.Serve(ln)
	}()
	if resp := h.get(t, h.url(t).URL+"/up"); resp.StatusCode != 200 {
		t.Fatalf("started machine whose server comes up 0.8 s later: %d", resp.StatusCode)
	}
	// A resumed one has its sockets back at once: nothing listening on
	// another port is said within seconds, not at the end of the window.
	h.machines.set(Target{LineageID: lineage, MachineID: lineage, State: api.StatePaused, AutoResume: true, IP: ip})
	u, _ := h.edge.URL(lineage, h.port+1, time.Time{}, false)
	start := time.Now()
	wantError(t, h.get(t, u.URL), 502, errdefs.CodePortNotListening)
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("port_not_listening after a resume took %v", d)
	}
}

func TestRouteCache(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(echoPath), Config{})
	u := h.url(t)
	for range 10 {
		if resp := h.get(t, u.URL); resp.StatusCode != 200 {
			t.Fatalf("running: %d", resp.StatusCode)
		}
	}
	if n := h.machines.routes.Load(); n != 1 {
		t.Fatalf("%d store lookups for 10 requests to a running machine, want 1", n)
	}
	// A state change the manager reports is seen by the next request.
	h.machines.set(Target{LineageID: lineage, MachineID: lineage, State: api.StatePaused, AutoResume: false})
	wantError(t, h.get(t, u.URL), 503, errdefs.CodePausedAutoResumeOff)
	// A route read while a change happened is not kept.
	h.machines.set(Target{LineageID: lineage, MachineID: lineage, ContainerID: "ns9", State: api.StateRunning,
		IP: netip.MustParseAddr("127.0.0.1")})
	h.machines.onRoute = func() { h.edge.Forget("mch_ffffffffffffffffffff") }
	before := h.machines.routes.Load()
	for range 3 {
		if resp := h.get(t, u.URL); resp.StatusCode != 200 {
			t.Fatalf("running again: %d", resp.StatusCode)
		}
	}
	if n := h.machines.routes.Load() - before; n != 3 {
		t.Fatalf("%d lookups for 3 requests whose reads raced a change, want 3 (none cached)", n)
	}
}

func TestGatePacesNewConnections(t *testing.T) {
	var g gates
	var releases []func()
	for range newConnsPerMachine {
		r, err := g.acquire(t.Context(), "ns1")
		if err != nil {
			t.Fatal(err)
		}
		releases = append(releases, r)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if _, err := g.acquire(ctx, "ns1"); err == nil {
		t.Fatalf("slot %d of one machine was granted, want at most %d unanswered", newConnsPerMachine+1, newConnsPerMachine)
	}
	if r, err := g.acquire(t.Context(), "ns2"); err != nil {
		t.Fatalf("another machine's slot: %v", err)
	} else {
		r()
	}
	got := make(chan func())
	go func() {
		r, _ := g.acquire(context.Background(), "ns1")
		got <- r
	}()
	releases[0]()
	releases[0]() // releasing twice frees one slot
	last := <-got
	for _, r := range append(releases[1:], last) {
		r()
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.m) != 0 {
		t.Fatalf("%d idle gates kept, want none", len(g.m))
	}
}

// rawDo sends raw bytes (framing http.Client never writes) to the edge and
// returns its answer.
func (h *harness) rawDo(t *testing.T, raw string) (*http.Response, []byte) {
	t.Helper()
	c, err := net.Dial("tcp", h.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("read the answer: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

// TestBadInput: the edge's fuzz findings of issue 21. Headers over the
// limit get the JSON 431, a body the client breaks is the client's 400
// (not the machine's 502), held or streamed, and X-Real-Ip is the address
// the edge saw.
func TestBadInput(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			return
		}
		fmt.Fprintf(w, "real-ip=%s xff=%s", r.Header.Get("X-Real-Ip"), r.Header.Get("X-Forwarded-For"))
	}), Config{})
	u := h.url(t)
	pathURL, err := url.Parse(u.URL)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("headers over the limit", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodGet, u.URL+"/x", nil)
		req.Header.Set("Cookie", strings.Repeat("a", MaxHeaderBytes+1))
		resp := h.do(t, req)
		wantError(t, resp, http.StatusRequestHeaderFieldsTooLarge, errdefs.CodeHeadersTooLarge)
		// Just under the limit passes.
		req.Header.Set("Cookie", strings.Repeat("a", MaxHeaderBytes-1024))
		if resp := h.do(t, req); resp.StatusCode != 200 {
			t.Fatalf("headers under the limit: %d, want 200", resp.StatusCode)
		}
	})

	t.Run("spoofed X-Real-Ip", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodGet, u.URL+"/x", nil)
		req.Header.Set("X-Real-Ip", "203.0.113.9")
		req.Header.Set("X-Forwarded-For", "203.0.113.9")
		resp := h.do(t, req)
		b, _ := io.ReadAll(resp.Body)
		if want := "real-ip=127.0.0.1 xff=203.0.113.9, 127.0.0.1"; string(b) != want {
			t.Fatalf("machine saw %q, want %q", b, want)
		}
	})

	malformed := "POST " + pathURL.Path + "/up HTTP/1.1\r\nHost: " + pathURL.Host +
		"\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\nzz\r\n"
	t.Run("malformed chunk streamed", func(t *testing.T) {
		resp, b := h.rawDo(t, malformed)
		if resp.StatusCode != 400 || !strings.Contains(string(b), errdefs.CodeInvalidArgument) {
			t.Fatalf("got %d %s, want 400 invalid_argument", resp.StatusCode, b)
		}
	})
	t.Run("malformed chunk held", func(t *testing.T) {
		h.machines.wakeDelay = 50 * time.Millisecond
		h.machines.set(Target{LineageID: lineage, MachineID: lineage, State: api.StatePaused, AutoResume: true, IP: netip.MustParseAddr("127.0.0.1")})
		resp, b := h.rawDo(t, malformed)
		if resp.StatusCode != 400 || !strings.Contains(string(b), errdefs.CodeInvalidArgument) {
			t.Fatalf("got %d %s, want 400 invalid_argument", resp.StatusCode, b)
		}
	})
}
