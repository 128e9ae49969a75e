package sshgate

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/edge"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store"
)

func TestParsePublicKey(t *testing.T) {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer, _ := ssh.NewSignerFromKey(priv)
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))
	for _, tc := range []struct {
		name, in string
		ok       bool
	}{
		{"plain", line, true},
		{"comment", line + " me@laptop", true},
		{"padded", "  " + line + " me\n", true},
		{"empty", "", false},
		{"two lines", line + "\n" + line, false},
		{"garbage", "ssh-ed25519 not-base64", false},
		{"options", `command="ls" ` + line, false},
		{"private", "-----BEGIN OPENSSH PRIVATE KEY-----", false},
	} {
		key, fp, _, err := ParsePublicKey(tc.in)
		if tc.ok != (err == nil) {
			t.Errorf("%s: err %v, want ok=%v", tc.name, err, tc.ok)
			continue
		}
		if err != nil {
			if errdefs.Classify(err).Code != errdefs.CodeSSHKeyInvalid {
				t.Errorf("%s: code %s, want ssh_key_invalid", tc.name, errdefs.Classify(err).Code)
			}
			continue
		}
		if key != line || fp != ssh.FingerprintSHA256(signer.PublicKey()) {
			t.Errorf("%s: key %q fp %q", tc.name, key, fp)
		}
	}
}

func TestTokens(t *testing.T) {
	dir := t.TempDir()
	k, err := openTokens(dir + "/secret")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tok := k.Issue("team_a", "mch_1", now.Add(time.Minute))
	if c, err := k.verify(tok, now); err != nil || c.Team != "team_a" || c.Lineage != "mch_1" {
		t.Fatalf("verify: %+v, %v", c, err)
	}
	if _, err := k.verify(tok, now.Add(2*time.Minute)); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("an expired token: %v", err)
	}
	// Reopened, the secret is the same; another secret refuses the token.
	if k2, _ := openTokens(dir + "/secret"); k2 == nil {
		t.Fatal("reopen")
	} else if _, err := k2.verify(tok, now); err != nil {
		t.Errorf("after reopening: %v", err)
	}
	os.Chmod(dir+"/secret", 0o644)
	if _, err := openTokens(dir + "/secret"); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("a secret others may read: %v", err)
	}
	other, _ := openTokens(t.TempDir() + "/secret")
	if _, err := other.verify(tok, now); err == nil {
		t.Error("a token of another secret was accepted")
	}
	payload, sig, _ := strings.Cut(strings.TrimPrefix(tok, tokenPrefix), ".")
	forged := k.Issue("team_b", "mch_1", now.Add(time.Minute))
	forgedPayload, _, _ := strings.Cut(strings.TrimPrefix(forged, tokenPrefix), ".")
	for _, bad := range []string{"", "nsk_apikey", tokenPrefix + payload, tokenPrefix + forgedPayload + "." + sig} {
		if _, err := k.verify(bad, now); err == nil {
			t.Errorf("token %q accepted", bad)
		}
	}
}

// memKeys is a KeyStore in memory.
type memKeys struct {
	mu   sync.Mutex
	keys []store.SSHKey
}

func (m *memKeys) AddSSHKey(_ context.Context, k store.SSHKey) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.keys = append(m.keys, k)
	return nil
}

func (m *memKeys) ListSSHKeys(_ context.Context, team string) ([]store.SSHKey, error) {
	return nil, nil
}

func (m *memKeys) SSHKeyByFingerprint(_ context.Context, fp string) (store.SSHKey, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, k := range m.keys {
		if k.Fingerprint == fp {
			return k, nil
		}
	}
	return store.SSHKey{}, errdefs.ErrNotFound
}

func (m *memKeys) DeleteSSHKey(context.Context, string, string) error { return nil }

// fakeMachines knows machines by id, each with a team and a state; it
// never runs anything (the real sessions are e2e's TestSSH).
type fakeMachines struct {
	machines map[string]fakeMachine
	woken    chan string
}

type fakeMachine struct {
	team   string
	target edge.Target
}

func (f *fakeMachines) Lineage(_ context.Context, team, id string) (string, error) {
	m, ok := f.machines[id]
	if !ok || m.team != team {
		return "", errdefs.ErrNotFound
	}
	return m.target.LineageID, nil
}

func (f *fakeMachines) Route(_ context.Context, lineage string) (edge.Target, error) {
	return f.machines[lineage].target, nil
}

func (f *fakeMachines) Wake(ctx context.Context, lineage string, resume bool) (edge.Target, error) {
	f.woken <- lineage
	<-ctx.Done() // never wakes: the session's window ends first
	return edge.Target{}, ctx.Err()
}

func (f *fakeMachines) Agent(context.Context, string, string) (Agent, error) {
	return nil, errors.New("no agents here")
}

func (f *fakeMachines) Touch(string) {}

func (f *fakeMachines) WhileRunning(ctx context.Context, _ string) (context.Context, func()) {
	return ctx, func() {}
}

func newSigner(t *testing.T) ssh.Signer {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestSignInAndRefusals: through a real SSH handshake, a registered key
// signs in to its own team's machines only, with the reason shown as a
// banner; a token signs in to its machine only; a session on a paused
// machine without auto_resume fails with the edge's code on stderr and
// status 255, and one on an auto-resumable machine whose wake does not
// finish gets machine_wake_timeout.
func TestSignInAndRefusals(t *testing.T) {
	keys := &memKeys{}
	mine, theirs, stranger := newSigner(t), newSigner(t), newSigner(t)
	keys.AddSSHKey(t.Context(), store.SSHKey{ID: "key_1", TeamID: "team_a", Fingerprint: ssh.FingerprintSHA256(mine.PublicKey())})
	keys.AddSSHKey(t.Context(), store.SSHKey{ID: "key_2", TeamID: "team_b", Fingerprint: ssh.FingerprintSHA256(theirs.PublicKey())})
	fm := &fakeMachines{woken: make(chan string, 4), machines: map[string]fakeMachine{
		"mch_paused": {team: "team_a", target: edge.Target{LineageID: "mch_paused", MachineID: "mch_paused", State: api.StatePaused}},
		"mch_auto":   {team: "team_a", target: edge.Target{LineageID: "mch_auto", MachineID: "mch_auto", State: api.StatePaused, AutoResume: true}},
		"mch_b":      {team: "team_b", target: edge.Target{LineageID: "mch_b", MachineID: "mch_b", State: api.StatePaused}},
	}}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	gate, err := New(t.Context(), Config{DataDir: t.TempDir(), WakeTimeout: 300 * time.Millisecond,
		AuthFreeFailures: 100}, fm, NewKeys(keys), logger) // the refusals below are not throttled (TestThrottle)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gate.Serve(ln)
	t.Cleanup(func() { ln.Close() })

	dial := func(user string, auth ssh.AuthMethod) (*ssh.Client, string, error) {
		var banner bytes.Buffer
		c, err := ssh.Dial("tcp", ln.Addr().String(), &ssh.ClientConfig{User: user, Auth: []ssh.AuthMethod{auth},
			HostKeyCallback: ssh.FixedHostKey(gate.HostKey()), Timeout: 5 * time.Second,
			BannerCallback: func(msg string) error { banner.WriteString(msg); return nil }})
		return c, banner.String(), err
	}
	for _, tc := range []struct {
		name, user string
		key        ssh.Signer
		banner     string // "" : no banner
	}{
		{"unknown key", "mch_paused", stranger, ""},
		{"another team's machine", "mch_b", mine, "machine_not_found"},
		{"no such machine", "mch_nope", mine, "machine_not_found"},
		{"a user name that is no id", "root", mine, "the user name is the machine's id"},
		{"the other team's key", "mch_paused", theirs, "machine_not_found"},
	} {
		c, banner, err := dial(tc.user, ssh.PublicKeys(tc.key))
		if err == nil {
			c.Close()
			t.Errorf("%s: signed in", tc.name)
			continue
		}
		if !strings.Contains(banner, tc.banner) || (tc.banner == "" && banner != "") {
			t.Errorf("%s: banner %q, want %q", tc.name, banner, tc.banner)
		}
	}

	tokens := gate.Tokens()
	for _, tc := range []struct {
		name, user, token, banner string
	}{
		{"another machine's token", "mch_auto", tokens.Issue("team_a", "mch_paused", time.Now().Add(time.Minute)), "is for machine mch_paused"},
		{"expired", "mch_paused", tokens.Issue("team_a", "mch_paused", time.Now().Add(-time.Second)), "expired"},
		{"an API key", "mch_paused", "nsk_0123456789", "not an SSH token"},
		{"another team's", "mch_paused", tokens.Issue("team_b", "mch_paused", time.Now().Add(time.Minute)), "machine_not_found"},
	} {
		c, banner, err := dial(tc.user, ssh.Password(tc.token))
		if err == nil {
			c.Close()
			t.Errorf("%s: signed in", tc.name)
			continue
		}
		if !strings.Contains(banner, tc.banner) {
			t.Errorf("%s: banner %q, want %q", tc.name, banner, tc.banner)
		}
	}

	session := func(c *ssh.Client) (string, int) {
		t.Helper()
		s, err := c.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		var stderr bytes.Buffer
		s.Stderr = &stderr
		err = s.Run("true")
		var ee *ssh.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("run: %v, want an exit status", err)
		}
		return stderr.String(), ee.ExitStatus()
	}
	c, _, err := dial("mch_paused", ssh.PublicKeys(mine))
	if err != nil {
		t.Fatal(err)
	}
	stderr, code := session(c)
	c.Close()
	if code != 255 || !strings.Contains(stderr, errdefs.CodePausedAutoResumeOff) {
		t.Errorf("paused without auto_resume: %d %q", code, stderr)
	}
	c, _, err = dial("mch_auto", ssh.Password(tokens.Issue("team_a", "mch_auto", time.Now().Add(time.Minute))))
	if err != nil {
		t.Fatal(err)
	}
	stderr, code = session(c)
	c.Close()
	if code != 255 || !strings.Contains(stderr, errdefs.CodeWakeTimeout) {
		t.Errorf("a wake beyond the window: %d %q", code, stderr)
	}
	if got := <-fm.woken; got != "mch_auto" {
		t.Errorf("woke %s", got)
	}
}

// TestThrottle: failed sign-ins past the free ones are answered later and
// later, and past the lockout an address is refused even with the right
// token, while the same token from another address still signs in.
func TestThrottle(t *testing.T) {
	fm := &fakeMachines{machines: map[string]fakeMachine{
		"mch_a": {team: "team_a", target: edge.Target{LineageID: "mch_a", MachineID: "mch_a", State: api.StatePaused}},
	}}
	gate, err := New(t.Context(), Config{DataDir: t.TempDir(), AuthFreeFailures: 2, AuthLockoutFailures: 5,
		AuthBaseDelay: 200 * time.Millisecond, AuthMaxDelay: time.Second, AuthFailureWindow: time.Minute},
		fm, NewKeys(&memKeys{}), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gate.Serve(ln)
	t.Cleanup(func() { ln.Close() })
	good := gate.Tokens().Issue("team_a", "mch_a", time.Now().Add(time.Minute))
	bad := gate.Tokens().Issue("team_a", "mch_other", time.Now().Add(time.Minute))

	// signIn tries one password from the local address from and says how
	// long the refusal took (0 and the banner on success).
	signIn := func(from, password string) (time.Duration, string, error) {
		var banner bytes.Buffer
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
		nc, err := d.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		start := time.Now()
		c, chans, reqs, err := ssh.NewClientConn(nc, ln.Addr().String(), &ssh.ClientConfig{User: "mch_a",
			Auth: []ssh.AuthMethod{ssh.Password(password)}, HostKeyCallback: ssh.FixedHostKey(gate.HostKey()),
			BannerCallback: func(msg string) error { banner.WriteString(msg); return nil }})
		took := time.Since(start)
		if err == nil {
			ssh.NewClient(c, chans, reqs).Close()
		}
		return took, banner.String(), err
	}

	var took []time.Duration
	for range 5 {
		d, _, err := signIn("127.0.0.1", bad)
		if err == nil {
			t.Fatal("a wrong token signed in")
		}
		took = append(took, d)
	}
	// Free, free, then 200 ms, 400 ms, 800 ms.
	for i, want := range []time.Duration{0, 0, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond} {
		if took[i] < want || want == 0 && took[i] > 150*time.Millisecond {
			t.Errorf("failure %d answered after %v, want %v", i+1, took[i], want)
		}
	}
	// Locked out: the right token is refused at once, with the reason.
	d, banner, err := signIn("127.0.0.1", good)
	if err == nil || !strings.Contains(banner, "too many failed sign-ins") || d > 150*time.Millisecond {
		t.Fatalf("the right token from a locked-out address: %v after %v, banner %q; want refused at once with the reason", err, d, banner)
	}
	// Another address is not locked out (but the user's failures slow its
	// wrong tries, not its right one).
	if d, banner, err := signIn("127.0.0.2", good); err != nil || d > 150*time.Millisecond {
		t.Fatalf("the right token from another address: %v after %v (banner %q), want signed in at once", err, d, banner)
	}
	if d, _, err := signIn("127.0.0.2", bad); err == nil || d < time.Second {
		t.Fatalf("a wrong token for a user with 5 failures from another address: %v after %v, want refused after 1s", err, d)
	}
}
