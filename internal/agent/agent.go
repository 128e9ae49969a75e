// Package agent is the in-machine agent of Nullspace: the small static
// binary that runs as init (PID 1) inside every gVisor sandbox.
//
// It serves an HTTP API on the machine's IP (docs/http-api.md, the routes
// without the /v1/machines/{id} prefix) protected by a per-machine bearer
// token. It starts user commands in their own process groups and keeps their
// output in bounded buffers so clients can reattach, reaps every child
// including orphans (it is init), and serves the machine's files, streaming
// and atomically.
//
// Everything a command must keep across a pause descends from the agent:
// gVisor kills processes started with runsc exec on restore. Around a
// checkpoint the server calls the lifecycle routes (lifecycle.go): prepare
// runs the pause hooks and flushes the file systems; restored gives the
// machine its new identity (id, hostname, token) and runs the resume hooks.
package agent

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
)

// Config configures an Agent. Zero values take the defaults named below.
type Config struct {
	// Token is the bearer token every request but GET /health must carry;
	// POST /lifecycle/restored replaces it. Required. Env NULLSPACE_AGENT_TOKEN.
	Token string
	// MachineID is the machine's id, reported by GET /health and set as
	// NULLSPACE_MACHINE_ID in every command's environment; a restore
	// replaces it. Optional. Env NULLSPACE_MACHINE_ID.
	MachineID string
	// Addr is the listen address. Default ":49983". Env NULLSPACE_AGENT_ADDR.
	Addr string
	// MaxFileBytes is the largest file PUT /files accepts. Default 1 GiB.
	// Env NULLSPACE_AGENT_MAX_FILE_BYTES.
	MaxFileBytes int64
	// FileTimeout bounds one file operation's work in the machine (a
	// recursive remove, a deep listing): past it the call answers
	// deadline_exceeded. Default 60 s.
	FileTimeout time.Duration
	// OutputBytes is the size of the buffer kept per process and stream
	// (stdout, stderr); older output is dropped. Default 1 MiB.
	// Env NULLSPACE_AGENT_OUTPUT_BYTES.
	OutputBytes int
	// Workdir is the default cwd of commands, when it exists; otherwise the
	// user's home, otherwise /. Env NULLSPACE_WORKDIR.
	Workdir string
	// Env is the environment commands start from, as KEY=VALUE. Entries
	// named NULLSPACE_AGENT_* are always removed.
	Env []string
	// Version is reported by GET /health. Default "dev".
	Version string
	// ShutdownGrace is how long commands get to exit after the agent
	// forwards them SIGTERM on shutdown, before SIGKILL. Default 5 s.
	ShutdownGrace time.Duration
	// RunDir is where the agent publishes its state to user processes:
	// restore.json (api.AgentRestoreInfo) after every restore. Default
	// /run/nullspace.
	RunDir string
	// Contain holds what runs in the machine inside it (contain.go): a
	// process limit for commands of non-root users and an OOM watcher over
	// /proc. The agent turns it on when it is PID 1, i.e. in a machine.
	// Env NULLSPACE_AGENT_CONTAIN=0 turns it off there.
	Contain bool
	// ProcRoot is where the OOM watcher reads processes and memory.
	// Default /proc.
	ProcRoot string
}

// Defaults.
const (
	DefaultAddr         = ":49983"
	DefaultMaxFileBytes = 1 << 30
	DefaultFileTimeout  = 60 * time.Second
	DefaultOutputBytes  = 1 << 20
	DefaultRunDir       = "/run/nullspace"
)

// machineIDEnv names the machine's id in the environment of commands.
const machineIDEnv = "NULLSPACE_MACHINE_ID"

// secretEnvPrefix marks the agent's own variables, never passed to commands.
const secretEnvPrefix = "NULLSPACE_AGENT_"

func (c *Config) setDefaults() {
	if c.Addr == "" {
		c.Addr = DefaultAddr
	}
	if c.MaxFileBytes == 0 {
		c.MaxFileBytes = DefaultMaxFileBytes
	}
	if c.FileTimeout == 0 {
		c.FileTimeout = DefaultFileTimeout
	}
	if c.OutputBytes == 0 {
		c.OutputBytes = DefaultOutputBytes
	}
	if c.Version == "" {
		c.Version = "dev"
	}
	if c.ShutdownGrace == 0 {
		c.ShutdownGrace = 5 * time.Second
	}
	if c.RunDir == "" {
		c.RunDir = DefaultRunDir
	}
	if c.ProcRoot == "" {
		c.ProcRoot = "/proc"
	}
}

// Validate reports the first invalid field.
func (c *Config) Validate() error {
	switch {
	case c.Token == "":
		return errors.New("token is required (NULLSPACE_AGENT_TOKEN)")
	case c.MaxFileBytes < 0:
		return errors.New("max file bytes must not be negative (NULLSPACE_AGENT_MAX_FILE_BYTES)")
	case c.OutputBytes < 0:
		return errors.New("output bytes must not be negative (NULLSPACE_AGENT_OUTPUT_BYTES)")
	}
	return nil
}

// Agent serves the agent API. Create it with New.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	procs   *processManager
	files   *fileService
	watches watches
	handler http.Handler

	// tokenHash is the SHA-256 of the current token; a restore swaps it.
	tokenHash atomic.Pointer[[sha256.Size]byte]
	// restoreMu serialises restores: each adopts a whole identity.
	restoreMu sync.Mutex
	// restore is the machine's id and restore count; stored only with
	// restoreMu held, loaded freely.
	restore atomic.Pointer[api.AgentRestoreInfo]
}

// New validates cfg and starts the process-wide reaper.
func New(cfg Config, log *slog.Logger) (*Agent, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("agent config: %w", err)
	}
	if err := procReaper.ensureRunning(log); err != nil {
		return nil, fmt.Errorf("start reaper: %w", err)
	}
	env := make([]string, 0, len(cfg.Env)+1)
	for _, kv := range cfg.Env {
		if !strings.HasPrefix(kv, secretEnvPrefix) {
			env = append(env, kv)
		}
	}
	if cfg.MachineID != "" {
		env = setEnv(env, machineIDEnv, cfg.MachineID)
	}
	a := &Agent{
		cfg:   cfg,
		log:   log,
		procs: newProcessManager(log, cfg.OutputBytes, env, cfg.Workdir),
		files: &fileService{maxFileBytes: cfg.MaxFileBytes, timeout: cfg.FileTimeout},
	}
	if cfg.Contain {
		mi, err := readMeminfo(filepath.Join(cfg.ProcRoot, "meminfo"))
		if err != nil {
			return nil, fmt.Errorf("process limit: %w", err)
		}
		a.procs.processLimit = ProcessLimitFor(mi.total)
	}
	a.setToken(cfg.Token)
	a.restore.Store(&api.AgentRestoreInfo{MachineID: cfg.MachineID})
	a.handler = a.routes()
	return a, nil
}

// Handler returns the HTTP handler of the agent API.
func (a *Agent) Handler() http.Handler { return a.handler }

// Run listens on cfg.Addr and serves until ctx is done, then shuts down.
func (a *Agent) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", a.cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", a.cfg.Addr, err)
	}
	return a.Serve(ctx, ln)
}

// Serve serves on ln until ctx is done. Then it forwards SIGTERM to every
// running command's group, gives them ShutdownGrace to exit, kills the rest
// and stops the server.
func (a *Agent) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           a.handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       5 * time.Minute,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	a.log.Info("agent listening", "addr", ln.Addr().String(), "version", a.cfg.Version,
		"contain", a.cfg.Contain, "process_limit", a.procs.processLimit)

	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	a.log.Info("agent shutting down", "grace", a.cfg.ShutdownGrace.String())
	cleanup := context.WithoutCancel(ctx)
	a.procs.stopAll(cleanup, a.cfg.ShutdownGrace)
	shutCtx, cancel := context.WithTimeout(cleanup, 2*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutCtx); err != nil {
		srv.Close()
	}
	return nil
}

func (a *Agent) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", a.health)
	for _, r := range []struct {
		pattern string
		h       func(http.ResponseWriter, *http.Request) error
	}{
		{"POST /commands", a.runCommand},
		{"GET /commands", a.listCommands},
		{"GET /commands/{pid}/output", a.commandOutput},
		{"POST /commands/{pid}/stdin", a.commandStdin},
		{"POST /commands/{pid}/stdin/stream", a.commandStdinStream},
		{"POST /commands/{pid}/signal", a.signalCommand},
		{"POST /commands/{pid}/resize", a.resizeCommand},
		{"DELETE /commands/{pid}", a.killCommand},
		{"GET /commands/{pid}/wait", a.waitCommand},
		{"GET /files", a.readFile},
		{"PUT /files", a.writeFile},
		{"DELETE /files", a.removeFile},
		{"GET /files/list", a.listFiles},
		{"GET /files/stat", a.statFile},
		{"POST /files/mkdir", a.mkdir},
		{"POST /files/rename", a.rename},
		{"GET /files/watch", a.watchFiles},
		{"DELETE /files/watch/{watch_id}", a.unwatchFiles},
		{"POST /lifecycle/prepare", a.prepare},
		{"POST /lifecycle/restored", a.restored},
		{"POST /lifecycle/stop", a.stop},
		{"POST /lifecycle/reclaim", a.reclaim},
		{"POST /lifecycle/main", a.startMain},
		{"/", a.notFound},
	} {
		mux.Handle(r.pattern, a.authed(r.h))
	}
	return mux
}

// authed checks the bearer token, runs h and maps its error to a response.
// Handlers that stream write their own errors once the stream has begun.
func (a *Agent) authed(h func(http.ResponseWriter, *http.Request) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		sum := sha256.Sum256([]byte(tok))
		if !ok || subtle.ConstantTimeCompare(sum[:], a.tokenHash.Load()[:]) != 1 {
			a.writeError(w, r, errdefs.New(errdefs.ErrUnauthenticated, errdefs.CodeUnauthenticated,
				"missing or invalid agent token", "send Authorization: Bearer <the machine's agent token>"))
			return
		}
		if err := h(w, r); err != nil {
			a.writeError(w, r, err)
		}
	})
}

// setToken makes token the only one requests are accepted with.
func (a *Agent) setToken(token string) {
	sum := sha256.Sum256([]byte(token))
	a.tokenHash.Store(&sum)
}

func (a *Agent) health(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, struct {
		OK      bool                 `json:"ok"`
		Version string               `json:"version"`
		Restore api.AgentRestoreInfo `json:"restore"`
	}{true, a.cfg.Version, *a.restore.Load()})
}

func (a *Agent) notFound(w http.ResponseWriter, r *http.Request) error {
	return errdefs.New(errdefs.ErrNotFound, errdefs.CodeNotFound,
		fmt.Sprintf("no route %s %s", r.Method, r.URL.Path), "see docs/http-api.md for the agent's routes")
}

// statusOverride holds the codes whose HTTP status is more specific than
// their class's.
var statusOverride = map[string]int{
	errdefs.CodePermissionDenied: http.StatusForbidden,
	errdefs.CodeFileTooLarge:     http.StatusRequestEntityTooLarge,
}

// writeError sends err as an api.Error. The internal cause is logged, never
// sent.
func (a *Agent) writeError(w http.ResponseWriter, r *http.Request, err error) {
	p := errdefs.Classify(err)
	if s, ok := statusOverride[p.Code]; ok {
		p.Status = s
	}
	level := slog.LevelDebug
	if p.Status >= 500 {
		level = slog.LevelError
	}
	a.log.Log(r.Context(), level, "request failed", "method", r.Method, "path", r.URL.Path,
		"status", p.Status, "code", p.Code, "err", err)
	writeJSON(w, p.Status, api.Error{
		Code:            p.Code,
		Message:         p.Message,
		Retryable:       p.Retryable,
		SuggestedAction: p.SuggestedAction,
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.Encode(v)
}

// readJSON decodes the request body into v, reading at most limit bytes.
func readJSON(w http.ResponseWriter, r *http.Request, limit int64, v any) error {
	body := http.MaxBytesReader(w, r.Body, limit)
	if err := json.NewDecoder(body).Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return errdefs.Wrap(err, errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
				fmt.Sprintf("request body is larger than %d bytes", limit), "send less data per request")
		}
		if errors.Is(err, io.EOF) {
			return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
				"request body is empty", "send a JSON object")
		}
		return errdefs.Wrap(err, errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			"invalid JSON body: "+err.Error(), "send a JSON object matching the API")
	}
	return nil
}
