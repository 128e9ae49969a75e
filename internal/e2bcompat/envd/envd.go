// Package envd serves E2B's in-machine API (envd) for the compatibility
// layer: the process.Process and filesystem.Filesystem Connect services
// (connectrpc.com/connect, JSON or binary, from E2B's own protos in spec/)
// and the /files and /health HTTP routes, each translated to the calls of
// a Nullspace machine's agent: its commands, PTY sessions, files and
// watches. There is no second agent in the machine.
package envd

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	"nullspace.dev/nullspace/internal/agent/agentclient"
	"nullspace.dev/nullspace/internal/e2bcompat/envd/spec/filesystem/filesystemconnect"
	"nullspace.dev/nullspace/internal/e2bcompat/envd/spec/process/processconnect"
	"nullspace.dev/nullspace/internal/errdefs"
)

// DefaultUser is who commands run as, and whose home relative paths are
// in, when a call names no user (E2B's default).
const DefaultUser = "user"

// Request is what names and authorizes an envd call's sandbox.
type Request struct {
	SandboxID   string
	AccessToken string // the X-Access-Token header
	// A file URL signed by the SDK (downloadUrl, uploadUrl) carries these
	// instead of the token.
	Path, Operation, User string
	Signature             string
	Expiration            int64 // unix seconds; 0: none
	// Probe asks about the sandbox without waking it (health checks).
	Probe bool
}

// SignatureError is a file URL's signature that does not hold. Its answer
// is E2B's envd's, word for word ({"code": 401, "message": ...}): code
// written for E2B compares it whole.
type SignatureError struct{ Message string }

func (e *SignatureError) Error() string { return e.Message }

// The signature refusals, in E2B's words.
var (
	ErrSignatureInvalid = &SignatureError{"invalid signature"}
	ErrSignatureExpired = &SignatureError{"signature is already expired"}
)

// CheckSignature checks the file signature the request carries against
// token (E2B's v1 signature: sha256 of path:operation:user:token
// [:expiration], base64 without padding): nil when it holds,
// ErrSignatureInvalid, or ErrSignatureExpired. The signature is checked
// before the expiry, as envd does: a forger learns nothing of the clock.
func (r Request) CheckSignature(token string) error {
	if r.Signature == "" || r.Operation == "" {
		return ErrSignatureInvalid
	}
	raw := r.Path + ":" + r.Operation + ":" + r.User + ":" + token
	if r.Expiration != 0 {
		raw += ":" + strconv.FormatInt(r.Expiration, 10)
	}
	sum := sha256.Sum256([]byte(raw))
	want := "v1_" + strings.TrimRight(base64.StdEncoding.EncodeToString(sum[:]), "=")
	if subtle.ConstantTimeCompare([]byte(r.Signature), []byte(want)) != 1 {
		return ErrSignatureInvalid
	}
	if r.Expiration != 0 && time.Now().Unix() > r.Expiration {
		return ErrSignatureExpired
	}
	return nil
}

// Sandbox is the machine an envd call runs against.
type Sandbox struct {
	// Ctx ends when the call's context does or when the machine stops
	// running (a pause): the agent goes without closing connections.
	Ctx context.Context
	// Done releases what Ctx holds; call it when the call ends.
	Done      func()
	MachineID string
	// Lineage keys what the layer keeps per sandbox (process tags,
	// watcher positions): it survives pause and resume.
	Lineage string
	Agent   *agentclient.Client
	// Touch records activity (idle_timeout counts it) during a long call:
	// opening the sandbox has counted the call itself.
	Touch func()
	// Gone, asked once Ctx has ended, says whether the sandbox is gone for
	// good (killed or failed) rather than paused; nil: not known.
	Gone func(ctx context.Context) bool
}

// killedText is what E2B's SDKs say of a sandbox that went away under a
// call (and what code written for E2B looks for in the error).
const killedText = "the sandbox was killed or reached its end of life while the request was in flight"

// Opener resolves a call to its sandbox, waking it when it may; errors are
// errdefs-classified.
type Opener func(ctx context.Context, r Request) (*Sandbox, error)

// Server is envd.
type Server struct {
	open   Opener
	logger *slog.Logger
	mux    *http.ServeMux

	mu sync.Mutex
	// tags are the processes started with a tag, by lineage.
	tags map[string]map[string]uint32
	// watchers are the positions of the non-streaming watchers
	// (CreateWatcher), by lineage and watch id.
	watchers map[string]watcher
}

// watcher is where a non-streaming watcher's next read starts.
type watcher struct {
	dir   string // the watched directory, which event names are relative to
	after int64  // the last event read
}

// New returns envd over open.
func New(open Opener, logger *slog.Logger) *Server {
	s := &Server{open: open, logger: logger, mux: http.NewServeMux(),
		tags: map[string]map[string]uint32{}, watchers: map[string]watcher{}}
	// Small messages go uncompressed: gzip costs more than it saves on
	// the few hundred bytes most answers are (a unary List was 2.4 ms
	// slower than the Nullspace API's with every answer gzipped).
	opts := connect.WithHandlerOptions(connect.WithCompressMinBytes(4<<10), connect.WithInterceptors(logErrors{logger}))
	s.mux.Handle(processconnect.NewProcessHandler(&processService{s}, opts))
	s.mux.Handle(filesystemconnect.NewFilesystemHandler(&filesystemService{s}, opts))
	s.mux.HandleFunc("GET /files", s.getFile)
	s.mux.HandleFunc("POST /files", s.postFiles)
	s.mux.HandleFunc("GET /health", s.health)
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.writeError(w, r, errdefs.New(errdefs.ErrNotFound, errdefs.CodeNotFound,
			fmt.Sprintf("envd has no route %s %s", r.Method, r.URL.Path),
			"see the README's table of the E2B calls that are served"))
	})
	return s
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// request reads the sandbox id and token of a call.
func request(h http.Header) Request {
	return Request{SandboxID: h.Get("E2b-Sandbox-Id"), AccessToken: h.Get("X-Access-Token")}
}

// userOf is the user a call runs as: the SDKs send it as the user name of
// HTTP Basic auth with an empty password.
func userOf(h http.Header) string {
	v, ok := strings.CutPrefix(h.Get("Authorization"), "Basic ")
	if !ok {
		return DefaultUser
	}
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(v))
	if err != nil {
		return DefaultUser
	}
	name, _, _ := strings.Cut(string(b), ":")
	if name == "" {
		return DefaultUser
	}
	return name
}

// home is a user's home directory in the templates.
func home(user string) string {
	if user == "root" {
		return "/root"
	}
	return "/home/" + user
}

// resolve makes a path absolute the way envd does: "~" and relative paths
// are in the user's home.
func resolve(p, user string) string {
	switch {
	case p == "" || p == "~":
		return home(user)
	case strings.HasPrefix(p, "~/"):
		return path.Join(home(user), p[2:])
	case !path.IsAbs(p):
		return path.Join(home(user), p)
	}
	return path.Clean(p)
}

// health answers 204 when the sandbox runs and its agent answers, and 502
// otherwise, as E2B does: the SDKs' isRunning() reads 502 as false, and
// they probe it to tell a killed sandbox from a dropped connection. It
// never wakes a paused sandbox.
func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	req := request(r.Header)
	req.Probe = true
	sb, err := s.open(r.Context(), req)
	if err == nil {
		defer sb.Done()
		_, err = sb.Agent.Health(sb.Ctx)
	}
	if err != nil {
		p := errdefs.Classify(err)
		if p.Status == http.StatusNotFound || p.Status >= 500 {
			p.Status, p.Retryable = http.StatusBadGateway, false
		}
		writePublic(w, p)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// rpcError maps an errdefs-classified error to a Connect error, with the
// stable code, message and next step in its message.
func rpcError(err error) error {
	if err == nil {
		return nil
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return connect.NewError(connect.CodeDeadlineExceeded, &publicError{"the call's deadline passed", err})
	}
	if errors.Is(err, context.Canceled) {
		return connect.NewError(connect.CodeCanceled, &publicError{"the call was canceled", err})
	}
	p := errdefs.Classify(err)
	code := connect.CodeInternal
	switch p.Status {
	case http.StatusBadRequest:
		code = connect.CodeInvalidArgument
	case http.StatusUnauthorized:
		code = connect.CodeUnauthenticated
	case http.StatusForbidden:
		code = connect.CodePermissionDenied
	case http.StatusNotFound:
		code = connect.CodeNotFound
	case http.StatusConflict:
		code = connect.CodeFailedPrecondition
	case http.StatusRequestEntityTooLarge, http.StatusTooManyRequests, http.StatusInsufficientStorage:
		code = connect.CodeResourceExhausted
	case http.StatusServiceUnavailable, http.StatusBadGateway:
		code = connect.CodeUnavailable
		if !p.Retryable {
			// Unavailable until someone acts (a paused sandbox without
			// auto-resume): the SDKs would turn unavailable into "not
			// running anymore" and drop the message that says what to do.
			code = connect.CodeFailedPrecondition
		}
	case http.StatusGatewayTimeout:
		code = connect.CodeDeadlineExceeded
	}
	return connect.NewError(code, &publicError{message(p), err})
}

// publicError is what a Connect error sends (msg) over its internal cause,
// which only the server log sees (logErrors).
type publicError struct {
	msg   string
	cause error
}

func (e *publicError) Error() string { return e.msg }
func (e *publicError) Unwrap() error { return e.cause }

// logErrors logs the cause of every failed RPC: the answer carries only
// the public message (rpcError).
type logErrors struct{ logger *slog.Logger }

var _ connect.Interceptor = logErrors{}

func (l logErrors) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		resp, err := next(ctx, req)
		l.log(ctx, req.Spec().Procedure, err)
		return resp, err
	}
}

func (l logErrors) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (l logErrors) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		err := next(ctx, conn)
		l.log(ctx, conn.Spec().Procedure, err)
		return err
	}
}

func (l logErrors) log(ctx context.Context, procedure string, err error) {
	if err == nil {
		return
	}
	level := slog.LevelDebug
	switch connect.CodeOf(err) {
	case connect.CodeInternal, connect.CodeUnknown, connect.CodeDataLoss:
		level = slog.LevelError
	}
	l.logger.Log(ctx, level, "envd call failed", "procedure", procedure, "code", connect.CodeOf(err).String(), "err", cause(err))
}

// cause is the internal error under a Connect error made by rpcError.
func cause(err error) error {
	var pe *publicError
	if errors.As(err, &pe) && pe.cause != nil {
		return pe.cause
	}
	return err
}

// message is the text E2B's SDKs show: our stable code first, then what
// happened and what to do.
func message(p errdefs.Public) string {
	msg := p.Code + ": " + p.Message
	if p.SuggestedAction != "" {
		msg += "; " + p.SuggestedAction
	}
	return msg
}

// writeError answers a plain HTTP envd route with E2B's error body
// ({"code": status, "message": ...}), which the SDKs read.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	p := errdefs.Classify(err)
	s.logger.Log(r.Context(), p.LogLevel(), "envd call failed", "method", r.Method, "path", r.URL.Path, "code", p.Code, "err", err)
	if se := (*SignatureError)(nil); errors.As(err, &se) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		json.NewEncoder(w).Encode(map[string]any{"code": http.StatusUnauthorized, "message": se.Message})
		return
	}
	writePublic(w, p)
}

// writePublic writes the body of p; a retryable 5xx says when to retry.
func writePublic(w http.ResponseWriter, p errdefs.Public) {
	if p.Retryable && p.Status >= 500 {
		w.Header().Set("Retry-After", "1")
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(p.Status)
	json.NewEncoder(w).Encode(map[string]any{"code": p.Status, "message": message(p)})
}
