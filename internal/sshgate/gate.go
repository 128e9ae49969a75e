// Package sshgate is the SSH gateway of `nullspace serve --ssh-addr`:
// `ssh <machine-id>@host -p PORT` opens a shell (or runs a command) in that
// machine, waking a paused machine with auto_resume on the way in like the
// edge does for HTTP, and refusing with the edge's stable codes otherwise.
//
// Sign-in is by a public key registered for the team (Keys) or by a
// short-lived token (Tokens) as the password. Sessions are the agent's
// commands: a PTY request makes a terminal command, and the session is
// joined to it by internal/terminal, like the API's WebSocket attach.
package sshgate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/edge"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/ratelimit"
	"nullspace.dev/nullspace/internal/terminal"
)

// Files under the data directory.
const (
	HostKeyFile     = "ssh-host-key"
	TokenSecretFile = "ssh-token-secret"
)

// Config configures the gateway.
type Config struct {
	// DataDir holds the host key and the token secret.
	DataDir string
	// WakeTimeout bounds how long a session waits for its machine to wake
	// (the edge's window).
	WakeTimeout time.Duration
	// HandshakeTimeout bounds a connection's key exchange and sign-in.
	HandshakeTimeout time.Duration

	// The sign-in throttle (throttle.go), over failures within
	// AuthFailureWindow (default 10 min) of one another: past
	// AuthFreeFailures (5) from one address or for one user name, each
	// failure is answered after a delay doubling from AuthBaseDelay
	// (250 ms) up to AuthMaxDelay (8 s); past AuthLockoutFailures (20)
	// from one address, it is refused at once until the window has passed
	// since its last failure. One connection has at most 6 tries.
	AuthFreeFailures, AuthLockoutFailures int
	AuthBaseDelay, AuthMaxDelay           time.Duration
	AuthFailureWindow                     time.Duration

	// RatePerSource limits the new connections of one client address (an
	// IPv6 client's /64): past it a connection is closed before the key
	// exchange, with one line saying why (`ssh -v` shows it).
	// RatePerMachine limits the new sessions (shells, commands) on one
	// machine, over all connections: past it a session channel is refused
	// with rate_limited, which OpenSSH prints ("open failed"). Sessions,
	// not connections, are what reach a machine, and one connection
	// (OpenSSH's ControlMaster) can carry many. Zero: no limit.
	RatePerSource, RatePerMachine ratelimit.Limit
}

// Agent is what a session needs of a machine's agent (an
// *agentclient.Client).
type Agent interface {
	terminal.Agent
	Start(ctx context.Context, req api.RunCommandRequest) (api.CommandStarted, error)
	Signal(ctx context.Context, pid int, signal string) error
}

// Machines is what the gateway needs of the machine manager.
type Machines interface {
	// Lineage returns the lineage of a machine (any of its execution ids)
	// of team, or a machine_not_found error.
	Lineage(ctx context.Context, team, id string) (string, error)
	// Route returns where a lineage's latest execution is, never waking it.
	Route(ctx context.Context, lineageID string) (edge.Target, error)
	// Wake waits for the operation a lineage is in and, when resume is
	// set, resumes or starts its latest execution.
	Wake(ctx context.Context, lineageID string, resume bool) (edge.Target, error)
	// Agent returns the agent of a running execution.
	Agent(ctx context.Context, team, machineID string) (Agent, error)
	// Touch records activity (idle_timeout counts it).
	Touch(machineID string)
	// WhileRunning returns a context that also ends when the machine
	// stops running (a pause: its sandbox goes without a word).
	WhileRunning(ctx context.Context, machineID string) (context.Context, func())
}

// Server is the SSH gateway.
type Server struct {
	cfg      Config
	machines Machines
	keys     *Keys
	tokens   *Tokens
	ssh      *ssh.ServerConfig
	hostKey  ssh.PublicKey
	logger   *slog.Logger
	bg       context.Context
	throttle *throttle
	// perSource and perMachine are Config's rate limits (nil: none).
	perSource, perMachine *ratelimit.Limiter

	wg sync.WaitGroup // connections
}

// New makes the gateway; bg ends every session when cancelled.
func New(bg context.Context, cfg Config, machines Machines, keys *Keys, logger *slog.Logger) (*Server, error) {
	signer, err := loadHostKey(filepath.Join(cfg.DataDir, HostKeyFile))
	if err != nil {
		return nil, err
	}
	tokens, err := openTokens(filepath.Join(cfg.DataDir, TokenSecretFile))
	if err != nil {
		return nil, err
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 20 * time.Second
	}
	if cfg.AuthFreeFailures <= 0 {
		cfg.AuthFreeFailures = DefaultAuthFreeFailures
	}
	if cfg.AuthLockoutFailures <= 0 {
		cfg.AuthLockoutFailures = DefaultAuthLockoutFailures
	}
	if cfg.AuthBaseDelay <= 0 {
		cfg.AuthBaseDelay = DefaultAuthBaseDelay
	}
	if cfg.AuthMaxDelay <= 0 {
		cfg.AuthMaxDelay = DefaultAuthMaxDelay
	}
	if cfg.AuthFailureWindow <= 0 {
		cfg.AuthFailureWindow = DefaultAuthFailureWindow
	}
	s := &Server{cfg: cfg, machines: machines, keys: keys, tokens: tokens, hostKey: signer.PublicKey(),
		logger: logger, bg: bg, throttle: newThrottle(cfg),
		perSource:  ratelimit.New(ratelimit.Config{Default: cfg.RatePerSource}),
		perMachine: ratelimit.New(ratelimit.Config{Default: cfg.RatePerMachine})}
	s.ssh = &ssh.ServerConfig{
		ServerVersion: "SSH-2.0-Nullspace",
		MaxAuthTries:  6,
		PublicKeyCallback: func(conn ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			return s.throttled(conn, func() (*ssh.Permissions, error) { return s.publicKeyAuth(conn, key) })
		},
		PasswordCallback: func(conn ssh.ConnMetadata, password []byte) (*ssh.Permissions, error) {
			return s.throttled(conn, func() (*ssh.Permissions, error) { return s.tokenAuth(conn, password) })
		},
	}
	s.ssh.AddHostKey(signer)
	return s, nil
}

// Tokens issues the gateway's sign-in tokens.
func (s *Server) Tokens() *Tokens { return s.tokens }

// HostKey is the gateway's public host key.
func (s *Server) HostKey() ssh.PublicKey { return s.hostKey }

// Permission extensions a sign-in leaves for the sessions.
const (
	extTeam    = "nullspace-team"
	extLineage = "nullspace-lineage"
	extVia     = "nullspace-via" // key:<id> or token
)

// throttled runs a sign-in check under the throttle: refused at once
// while the address is locked out, answered late when it fails past the
// free failures.
func (s *Server) throttled(conn ssh.ConnMetadata, check func() (*ssh.Permissions, error)) (*ssh.Permissions, error) {
	addr := conn.RemoteAddr().String()
	if host, _, err := net.SplitHostPort(addr); err == nil {
		addr = host
	}
	if d := s.throttle.locked(addr); d > 0 {
		return nil, banner(fmt.Sprintf("too many failed sign-ins from %s: retry in %s", addr, d.Round(time.Second)))
	}
	perms, err := check()
	if err == nil {
		s.throttle.succeeded(addr)
		return perms, nil
	}
	if d := s.throttle.failed(addr, conn.User()); d > 0 {
		s.logger.Info("ssh sign-in failures throttled", "remote", addr, "user", conn.User(), "delay", d)
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-s.bg.Done():
		}
	}
	return nil, err
}

// publicKeyAuth signs a registered key in to its team's machine named by
// the user name.
func (s *Server) publicKeyAuth(conn ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
	ctx, cancel := context.WithTimeout(s.bg, 10*time.Second)
	defer cancel()
	k, err := s.keys.byFingerprint(ctx, ssh.FingerprintSHA256(key))
	if err != nil {
		return nil, fmt.Errorf("key %s is not registered", ssh.FingerprintSHA256(key))
	}
	lineage, err := s.lineage(ctx, k.TeamID, conn.User())
	if err != nil {
		return nil, err
	}
	return &ssh.Permissions{Extensions: map[string]string{extTeam: k.TeamID, extLineage: lineage, extVia: "key:" + k.ID}}, nil
}

// tokenAuth signs in with a token as the password: it must be for the
// machine the user name names.
func (s *Server) tokenAuth(conn ssh.ConnMetadata, password []byte) (*ssh.Permissions, error) {
	claims, err := s.tokens.verify(string(password), time.Now())
	if err != nil {
		return nil, banner(err.Error())
	}
	ctx, cancel := context.WithTimeout(s.bg, 10*time.Second)
	defer cancel()
	lineage, err := s.lineage(ctx, claims.Team, conn.User())
	if err != nil {
		return nil, err
	}
	if lineage != claims.Lineage {
		return nil, banner(fmt.Sprintf("the SSH token is for machine %s, not %s", claims.Lineage, conn.User()))
	}
	return &ssh.Permissions{Extensions: map[string]string{extTeam: claims.Team, extLineage: lineage, extVia: "token"}}, nil
}

// lineage resolves the user name to a lineage of team; a refusal is shown
// to the client (OpenSSH prints banners) with its stable code.
func (s *Server) lineage(ctx context.Context, team, user string) (string, error) {
	l, err := s.machines.Lineage(ctx, team, user)
	if err == nil {
		return l, nil
	}
	if errors.Is(err, errdefs.ErrNotFound) {
		return "", banner(fmt.Sprintf("%s: no machine %q in your team: the user name is the machine's id (ssh mch_...@host)",
			errdefs.CodeMachineNotFound, user))
	}
	s.logger.Warn("ssh sign-in: look up machine", "user", user, "err", err)
	return "", banner(fmt.Sprintf("%s: %s", errdefs.CodeInternal, "could not look the machine up; retry"))
}

func banner(msg string) error {
	return &ssh.BannerError{Err: errors.New(msg), Message: "nullspace: " + msg + "\r\n"}
}

// Serve accepts connections on ln until it is closed.
func (s *Server) Serve(ln net.Listener) error {
	for {
		nc, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			return err
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serveConn(nc)
		}()
	}
}

// Wait waits for the connections to end: they end with bg (each session
// tells its client first); the commands go on in the machines.
func (s *Server) Wait() {
	s.wg.Wait()
}

func (s *Server) serveConn(nc net.Conn) {
	defer nc.Close()
	if ok, after := s.perSource.Allow(ratelimit.SourceKey(nc.RemoteAddr().String())); !ok {
		// Before the key exchange, the server may send lines other than
		// its version (RFC 4253 4.2): the reason, for ssh -v and nc.
		s.logger.Debug("ssh connection rate limited", "remote", nc.RemoteAddr())
		nc.SetWriteDeadline(time.Now().Add(time.Second))
		fmt.Fprintf(nc, "nullspace: %s: too many new SSH connections from your address: retry in %ss\r\n",
			errdefs.CodeRateLimited, ratelimit.RetryAfterSeconds(after))
		return
	}
	nc.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	sc, chans, reqs, err := ssh.NewServerConn(nc, s.ssh)
	if err != nil {
		s.logger.Debug("ssh handshake", "remote", nc.RemoteAddr(), "err", err)
		return
	}
	nc.SetDeadline(time.Time{})
	defer sc.Close()
	ext := sc.Permissions.Extensions
	log := s.logger.With("remote", nc.RemoteAddr().String(), "lineage_id", ext[extLineage], "via", ext[extVia])
	log.Info("ssh connection")
	go ssh.DiscardRequests(reqs) // keepalives get "no"; nothing global is offered

	// The connection ends when the client leaves, or with the server:
	// once its sessions have told their clients so.
	ctx, cancel := context.WithCancel(s.bg)
	defer cancel()
	var active atomic.Int32
	var sessions sync.WaitGroup
	go func() {
		<-ctx.Done()
		if active.Load() == 0 {
			sc.Close()
		}
	}()
	for nch := range chans {
		if nch.ChannelType() != "session" {
			nch.Reject(ssh.UnknownChannelType, fmt.Sprintf("%s channels are not supported: only sessions (shells and commands)", nch.ChannelType()))
			continue
		}
		if ok, after := s.perMachine.Allow(ext[extLineage]); !ok {
			log.Debug("ssh session rate limited")
			nch.Reject(ssh.ResourceShortage, fmt.Sprintf("%s: too many new sessions on machine %s: retry in %ss",
				errdefs.CodeRateLimited, ext[extLineage], ratelimit.RetryAfterSeconds(after)))
			continue
		}
		ch, creqs, err := nch.Accept()
		if err != nil {
			continue
		}
		active.Add(1)
		sessions.Add(1)
		go func() {
			defer sessions.Done()
			sess := &session{gate: s, ch: ch, reqs: creqs, team: ext[extTeam], lineage: ext[extLineage], log: log}
			sess.serve(ctx)
			if active.Add(-1) == 0 && ctx.Err() != nil {
				sc.Close()
			}
		}()
	}
	cancel()
	sessions.Wait()
}
