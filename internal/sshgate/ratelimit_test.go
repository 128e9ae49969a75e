package sshgate

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/edge"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/ratelimit"
)

// rateHarness is a gateway with cfg's rate limits in front of two paused
// machines of team_a, without auto_resume (a session on one reaches it and
// ends at once with the edge's code).
type rateHarness struct {
	gate *Server
	addr string
}

func newRateHarness(t *testing.T, cfg Config) *rateHarness {
	t.Helper()
	fm := &fakeMachines{machines: map[string]fakeMachine{
		"mch_a": {team: "team_a", target: edge.Target{LineageID: "mch_a", MachineID: "mch_a", State: api.StatePaused}},
		"mch_b": {team: "team_a", target: edge.Target{LineageID: "mch_b", MachineID: "mch_b", State: api.StatePaused}},
	}}
	cfg.DataDir = t.TempDir()
	gate, err := New(t.Context(), cfg, fm, NewKeys(&memKeys{}), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gate.Serve(ln)
	t.Cleanup(func() { ln.Close() })
	return &rateHarness{gate: gate, addr: ln.Addr().String()}
}

// dial signs in to machine from the loopback address src with a token.
func (h *rateHarness) dial(src, machine string) (*ssh.Client, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	nc, err := d.Dial("tcp", h.addr)
	if err != nil {
		return nil, err
	}
	tok := h.gate.Tokens().Issue("team_a", machine, time.Now().Add(time.Minute))
	c, chans, reqs, err := ssh.NewClientConn(nc, h.addr, &ssh.ClientConfig{User: machine,
		Auth: []ssh.AuthMethod{ssh.Password(tok)}, HostKeyCallback: ssh.FixedHostKey(h.gate.HostKey())})
	if err != nil {
		nc.Close()
		return nil, err
	}
	return ssh.NewClient(c, chans, reqs), nil
}

// reachMachine runs a session, which must get to the machine (that
// answers, paused without auto_resume, with the edge's code).
func reachMachine(t *testing.T, c *ssh.Client) {
	t.Helper()
	s, err := c.NewSession()
	if err != nil {
		t.Fatalf("new session: %v", err)
	}
	defer s.Close()
	var stderr bytes.Buffer
	s.Stderr = &stderr
	err = s.Run("true")
	var ee *ssh.ExitError
	if !errors.As(err, &ee) || !strings.Contains(stderr.String(), errdefs.CodePausedAutoResumeOff) {
		t.Fatalf("session: %v, stderr %q; want the machine's answer", err, stderr.String())
	}
}

// TestRateLimitSessionsPerMachine: past a machine's burst its new
// sessions are refused with rate_limited (on any connection), while
// another machine's are served.
func TestRateLimitSessionsPerMachine(t *testing.T) {
	h := newRateHarness(t, Config{RatePerMachine: ratelimit.Limit{Rate: 0.01, Burst: 2}})
	a1, err := h.dial("127.0.0.1", "mch_a")
	if err != nil {
		t.Fatal(err)
	}
	defer a1.Close()
	reachMachine(t, a1)
	reachMachine(t, a1)
	// A new connection does not get a new budget.
	a2, err := h.dial("127.0.0.1", "mch_a")
	if err != nil {
		t.Fatal(err)
	}
	defer a2.Close()
	for _, c := range []*ssh.Client{a1, a2} {
		_, err := c.NewSession()
		var oce *ssh.OpenChannelError
		if !errors.As(err, &oce) || oce.Reason != ssh.ResourceShortage || !strings.Contains(oce.Message, errdefs.CodeRateLimited) ||
			!strings.Contains(oce.Message, "retry in 100s") {
			t.Fatalf("a session past the burst: %v, want resource shortage, rate_limited, retry in 100s", err)
		}
	}
	b, err := h.dial("127.0.0.1", "mch_b")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	reachMachine(t, b)
	reachMachine(t, b)
}

// TestRateLimitConnectionsPerSource: past an address's burst its new
// connections are closed before the key exchange, with the reason, while
// another address signs in.
func TestRateLimitConnectionsPerSource(t *testing.T) {
	h := newRateHarness(t, Config{RatePerSource: ratelimit.Limit{Rate: 0.01, Burst: 2}})
	for i := range 2 {
		c, err := h.dial("127.0.0.1", "mch_a")
		if err != nil {
			t.Fatalf("connection %d within the burst: %v", i, err)
		}
		c.Close()
	}
	start := time.Now()
	if c, err := h.dial("127.0.0.1", "mch_a"); err == nil {
		c.Close()
		t.Fatal("a connection past the burst signed in")
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("refused after %v, want at once", d)
	}
	nc, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.1")}}).Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	nc.SetDeadline(time.Now().Add(5 * time.Second))
	line, _ := io.ReadAll(nc)
	nc.Close()
	if !strings.HasPrefix(string(line), "nullspace: rate_limited: too many new SSH connections") || !strings.HasSuffix(string(line), "\r\n") {
		t.Errorf("refusal %q, want one line naming rate_limited", line)
	}
	for i := range 2 {
		c, err := h.dial("127.0.0.2", "mch_a")
		if err != nil {
			t.Fatalf("connection %d from another address: %v", i, err)
		}
		reachMachine(t, c)
		c.Close()
	}
}
