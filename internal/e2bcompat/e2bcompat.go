// Package e2bcompat is the E2B-compatible API of `nullspace serve
// --e2b-compat`: E2B's REST control plane (POST /sandboxes, GET
// /v2/sandboxes, connect, pause, ...) and, on the same listener, its
// in-machine API (envd: the Connect RPCs and /files, package envd), so that
// E2B's unmodified SDKs drive Nullspace machines.
//
// A request that names a sandbox with the E2b-Sandbox-Id header (which the
// SDKs send with every envd call when E2B_SANDBOX_URL is set) goes to envd;
// every other request is the control plane. An E2B sandbox id is the
// machine's lineage id without its mch_ prefix: stable across pause and
// resume, and free of '-' and '_', which E2B's hosts split on.
//
// Everything here is a translation onto the manager and the machines'
// agents the Nullspace API uses; no state of its own beyond the envd
// access-token secret.
package e2bcompat

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/access"
	"nullspace.dev/nullspace/internal/agent/agentclient"
	"nullspace.dev/nullspace/internal/atomicfile"
	"nullspace.dev/nullspace/internal/audit"
	"nullspace.dev/nullspace/internal/e2bcompat/envd"
	"nullspace.dev/nullspace/internal/edge"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/machine"
	"nullspace.dev/nullspace/internal/ratelimit"
	"nullspace.dev/nullspace/internal/store"
)

// TokenSecretFile, under the data directory, signs envd access tokens.
const TokenSecretFile = "e2b-token-secret"

// EnvdVersion is the envd version reported to the SDKs. They switch
// features on by it (default user, octet-stream uploads, recursive
// watches, file metadata 0.6.2, watch events with their entry 0.6.3,
// allow_network_mounts 0.6.4); this is the newest whose features are
// served.
const EnvdVersion = "0.6.4"

// Config configures the compatibility layer.
type Config struct {
	// DataDir holds the access-token secret.
	DataDir string
	// Domain is the edge's domain (with its port), reported as the
	// sandboxes' domain so that the SDKs' getHost(port) reaches a port
	// through the edge; empty without an edge.
	Domain string
	// AllowInternet says the server lets machines reach the internet: the
	// SDKs ask for it on every create by default, so without it the ask is
	// ignored rather than refused.
	AllowInternet bool
	// WakeTimeout bounds how long an envd call waits for a paused machine
	// with auto-resume to wake (the edge's window).
	WakeTimeout time.Duration
}

// Machines is what the layer needs of the machine manager.
type Machines interface {
	Create(ctx context.Context, team string, req api.CreateMachineRequest) (*store.Machine, error)
	ListPage(ctx context.Context, team string, f machine.ListFilter, after store.MachineCursor, limit int) ([]*store.Machine, bool, error)
	Kill(ctx context.Context, team, id string) (*store.Machine, error)
	Pause(ctx context.Context, team, id string) (*store.Snapshot, error)
	Stop(ctx context.Context, team, id string, grace time.Duration) (*store.Machine, error)
	Connect(ctx context.Context, team, id string) (*store.Machine, error)
	SetTimeout(ctx context.Context, team, id string, req api.SetTimeoutRequest) (*store.Machine, error)
	Metrics(ctx context.Context, team, id string) ([]api.MetricSample, error)
	Fork(ctx context.Context, team, id string, count int) (*store.Snapshot, []*store.Machine, error)
	CreateSnapshot(ctx context.Context, team, id, name string) (*store.Snapshot, error)
	GetSnapshot(ctx context.Context, team, idOrName string) (*store.Snapshot, error)
	ListSnapshots(ctx context.Context, team string, f machine.SnapshotFilter, p machine.SnapshotPage) ([]*store.Snapshot, bool, error)
	DeleteSnapshot(ctx context.Context, team, id string, force bool) error
	Template(ctx context.Context, teamID, name string) (api.Template, error)

	// For envd calls: where a lineage is, a wake, and its agent.
	LineageHead(ctx context.Context, lineageID string) (*store.Machine, error)
	Wake(ctx context.Context, lineageID string, resume bool, cause string, details map[string]any) (*store.Machine, error)
	AgentEndpoint(ctx context.Context, team, id string) (machine.Endpoint, error)
	WhileRunning(ctx context.Context, id string) (context.Context, func())
	Touch(id string)
}

// Authenticator resolves an API key to whom it acts as.
type Authenticator interface {
	Authenticate(ctx context.Context, key string) (*access.Principal, error)
}

// Server serves the E2B-compatible API.
type Server struct {
	cfg      Config
	machines Machines
	auth     Authenticator
	logger   *slog.Logger
	bg       context.Context
	secret   []byte
	control  *http.ServeMux
	envd     http.Handler
	// limits is the rate limit of authenticated control-plane calls, by
	// API key id (nil: none): the API's, so a key has one budget on both.
	limits *ratelimit.Limiter
	// audit records refused calls (nil: none).
	audit *audit.Log
}

// WithRateLimit limits the authenticated control-plane calls of each API
// key with l (nil: no limit): past it 429 with Retry-After. envd calls (by a
// sandbox's access token) are not counted here.
func (s *Server) WithRateLimit(l *ratelimit.Limiter) *Server {
	s.limits = l
	return s
}

// WithAudit records refused calls in log.
func (s *Server) WithAudit(log *audit.Log) *Server {
	s.audit = log
	return s
}

// New returns the compatibility layer; bg outlives requests (wakes run on
// it).
func New(bg context.Context, cfg Config, machines Machines, auth Authenticator, logger *slog.Logger) (*Server, error) {
	secret, err := atomicfile.Secret(filepath.Join(cfg.DataDir, TokenSecretFile), 32)
	if err != nil {
		return nil, fmt.Errorf("e2b access-token secret: %w", err)
	}
	s := &Server{cfg: cfg, machines: machines, auth: auth, logger: logger, bg: bg, secret: secret}
	s.control = s.routes()
	s.envd = envd.New(s.openSandbox, logger.With("component", "e2b-envd"))
	return s, nil
}

// ServeHTTP sends a request to envd when it names a sandbox, to the
// control plane otherwise.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if id := sandboxOf(r); id != "" {
		// envd reads the sandbox from the header, which a call on the
		// host 49983-{id} (the edge's, and signed file URLs) lacks.
		r.Header.Set("E2b-Sandbox-Id", id)
		s.envd.ServeHTTP(w, r)
		return
	}
	if p := r.URL.Path; strings.HasPrefix(p, "/process.Process/") || strings.HasPrefix(p, "/filesystem.Filesystem/") || p == "/files" {
		s.writeError(w, r, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			"an envd call ("+p+") that names no sandbox",
			"send the E2b-Sandbox-Id header (E2B's SDKs do when E2B_SANDBOX_URL is set), or use the host 49983-<sandbox id>.<domain>"))
		return
	}
	s.control.ServeHTTP(w, r)
}

// sandboxOf returns the sandbox an envd request is for: the E2b-Sandbox-Id
// header, or a host of the form 49983-<id>.<domain>.
func sandboxOf(r *http.Request) string {
	if id := r.Header.Get("E2b-Sandbox-Id"); id != "" {
		return id
	}
	host, _, _ := strings.Cut(r.Host, ".")
	if port, id, ok := strings.Cut(host, "-"); ok && port == envdPort && id != "" {
		return id
	}
	return ""
}

// envdPort is where the SDKs think envd listens in a sandbox.
const envdPort = "49983"

// sandboxID is the E2B id of a machine: its lineage id without the prefix.
func sandboxID(rec *store.Machine) string { return strings.TrimPrefix(rec.LineageID, machinePrefix) }

const machinePrefix = "mch_"

// snapshotPrefix starts a snapshot's id, which E2B's SDKs pass where a
// template id goes (Sandbox.create(snapshotId), deleteSnapshot); a
// snapshot's name goes there too.
const snapshotPrefix = "snp_"

// machineID is the lineage id an E2B sandbox id names, or "" when it cannot
// name one (E2B ids are 20 lower-case hex digits here).
func machineID(sbx string) string {
	if len(sbx) != 20 || strings.ToLower(sbx) != sbx {
		return ""
	}
	if _, err := hex.DecodeString(sbx); err != nil {
		return ""
	}
	return machinePrefix + sbx
}

// accessToken is a sandbox's envd access token: stateless (a MAC of the
// lineage), so it survives pause, resume and server restarts, and is void
// for every other sandbox.
func (s *Server) accessToken(lineageID string) string { return s.token("envd-access:", lineageID) }

// token is a sandbox's token for purpose: a MAC of its lineage.
func (s *Server) token(purpose, lineageID string) string {
	m := hmac.New(sha256.New, s.secret)
	m.Write([]byte(purpose + lineageID))
	return hex.EncodeToString(m.Sum(nil)[:24])
}

// TrafficToken is the token that opens a private sandbox's ports on the
// edge (allowPublicTraffic: false), stateless like the access token and
// void for every other sandbox (edge.E2B.TrafficToken).
func (s *Server) TrafficToken(lineageID string) string { return s.token("traffic-access:", lineageID) }

// openSandbox resolves an envd request to its machine's agent: it checks
// the access token, wakes a paused machine with auto-resume (within the
// edge's window) and returns a context that ends when the machine stops
// running. The call counts as activity (AgentEndpoint records it).
func (s *Server) openSandbox(ctx context.Context, r envd.Request) (*envd.Sandbox, error) {
	lineage := machineID(r.SandboxID)
	if lineage == "" {
		return nil, notFound(r.SandboxID)
	}
	if r.AccessToken == "" || !hmac.Equal([]byte(r.AccessToken), []byte(s.accessToken(lineage))) {
		if r.Signature != "" {
			if err := r.CheckSignature(s.accessToken(lineage)); err != nil {
				return nil, err
			}
		} else {
			return nil, unauthenticated("missing or wrong X-Access-Token (or file URL signature) for sandbox "+r.SandboxID,
				"send the envdAccessToken that create and connect return (the SDKs do)")
		}
	}
	rec, err := s.machines.LineageHead(ctx, lineage)
	if err != nil {
		return nil, edge.WakeError(lineage, err)
	}
	t := target(rec)
	switch hold, err := edge.Decide(t, false); {
	case r.Probe && (err != nil || hold):
		return nil, errdefs.New(errdefs.ErrUnavailable, errdefs.CodeMachineUnavailable,
			fmt.Sprintf("sandbox %s is %s", r.SandboxID, rec.State), "connect to it with Sandbox.connect()")
	case err != nil:
		return nil, err
	case hold: // paused or busy: wake it (auto-resume), or wait for the operation
		if t, err = edge.Bring(ctx, s.bg, waker{s.machines}, lineage, s.cfg.WakeTimeout, nil); err != nil {
			return nil, err
		}
	}
	ep, err := s.machines.AgentEndpoint(ctx, rec.TeamID, t.MachineID)
	if err != nil {
		return nil, err
	}
	runCtx, done := s.machines.WhileRunning(ctx, t.MachineID)
	return &envd.Sandbox{Ctx: runCtx, Done: done, MachineID: t.MachineID, Lineage: lineage,
		Agent: agentclient.New(ep.URL, ep.Token, agentclient.SharedHTTPClient()),
		Touch: func() { s.machines.Touch(t.MachineID) }, Gone: func(ctx context.Context) bool { return s.gone(ctx, lineage) }}, nil
}

// gone says whether a lineage has ended for good: killed, failed, or no
// longer known. A pause, a stop or a lookup that fails is not gone.
func (s *Server) gone(ctx context.Context, lineage string) bool {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	rec, err := s.machines.LineageHead(ctx, lineage)
	if err != nil {
		return errors.Is(err, errdefs.ErrNotFound)
	}
	switch rec.State {
	case api.StateKilled, api.StateKilling, api.StateFailed:
		return true
	}
	return false
}

// waker is the manager as edge.Bring sees it.
type waker struct{ m Machines }

func (w waker) Route(ctx context.Context, lineageID string) (edge.Target, error) {
	rec, err := w.m.LineageHead(ctx, lineageID)
	if err != nil {
		return edge.Target{}, err
	}
	return target(rec), nil
}

func (w waker) Wake(ctx context.Context, lineageID string, resume bool) (edge.Target, error) {
	rec, err := w.m.Wake(ctx, lineageID, resume, "e2b", nil)
	if err != nil {
		return edge.Target{}, err
	}
	return target(rec), nil
}

func target(rec *store.Machine) edge.Target {
	return edge.Target{LineageID: rec.LineageID, MachineID: rec.ID, ContainerID: rec.ContainerID, State: rec.State,
		AutoResume: rec.AutoResume, PublicPorts: rec.PublicPorts, Error: rec.Error}
}
