// Package edge serves public traffic to machines' ports: it checks the
// signed URL a request came on, wakes a paused or stopped machine that
// has auto_resume (holding the request meanwhile), and proxies HTTP,
// streams and WebSockets to the machine's latest execution. It answers
// every refusal itself, before anything is woken, with the standard JSON
// error body (a small HTML page for browser navigations); a machine that
// cannot be woken gets the 503 contract of reference document 001.
//
// The edge knows machines only through the Machines interface, never
// through the HTTP API.
package edge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/ratelimit"
	"nullspace.dev/nullspace/internal/reqbody"
)

// Machines is what the edge needs of the machine manager.
type Machines interface {
	// Route returns the latest execution of a lineage, read-only: it never
	// wakes anything. An unknown lineage is an error matching
	// errdefs.ErrNotFound.
	Route(ctx context.Context, lineageID string) (Target, error)
	// Wake waits for any lifecycle operation of the lineage to finish and,
	// if resume is set, brings its latest execution to running the way
	// connect does (resume a paused one, start a stopped one; cause
	// "edge", the port in the event). It returns the execution as it is
	// then.
	Wake(ctx context.Context, lineageID string, port int, resume bool) (Target, error)
	// Touch records activity of a running execution, for idle suspend.
	Touch(machineID string)
}

// Target is a lineage's latest execution, as the edge routes to it.
type Target struct {
	LineageID   string
	MachineID   string
	ContainerID string // changes whenever the sandbox does
	State       string
	IP          netip.Addr // valid while running
	AutoResume  bool
	PublicPorts bool
	Error       string // why a failed machine failed
	// E2B: a sandbox created through the E2B-compatible API, whose URLs
	// are answered in E2B's shape (see E2B).
	E2B bool
	// Node is the node of the cluster that serves the request instead of
	// this one: the one that runs the machine, or that wakes it (""
	// here). The request goes there through Config.Peer, whole.
	Node string
}

// AgentPort is the in-machine agent's port, never reachable by the edge.
const AgentPort = 49983

// Config configures the edge.
type Config struct {
	// Domain is the public domain machine URLs are under, with the port
	// clients connect to when it is not the scheme's default
	// ("localhost:7701", "preview.example.com"). Required.
	Domain string
	// TLS: URLs are https/wss (the listener terminates TLS).
	TLS bool
	// PathBase is the origin of path-form URLs (scheme://host[:port]),
	// for clients that cannot resolve *.Domain; empty: the bare domain.
	PathBase string
	// WakeTimeout bounds how long a request is held while its machine
	// wakes; past it the request gets 503 machine_wake_timeout. Default
	// DefaultWakeTimeout.
	WakeTimeout time.Duration
	// HoldBodyLimit bounds the request body buffered while a request is
	// held; a larger body gets 503 machine_wake_body_too_large (retryable:
	// once the machine is awake bodies stream). Default DefaultHoldBodyLimit.
	HoldBodyLimit int64
	// RatePerSource limits the requests of one client address (an IPv6
	// client's /64), whatever they are for; RatePerMachine the requests
	// that reach one machine's URLs (counted once the URL is authorized,
	// so strangers cannot spend a private machine's budget). Past either,
	// a request gets 429 rate_limited with Retry-After before anything is
	// looked up or woken. Requests, not TCP connections, are counted: a
	// kept-alive connection or an HTTP/2 one carries any number, and each
	// costs a route look-up and maybe an upstream dial. Zero: no limit.
	RatePerSource, RatePerMachine ratelimit.Limit
	// Peer takes a request to the node of the cluster that serves it
	// (Target.Node), whole; nil: one node.
	Peer func(w http.ResponseWriter, r *http.Request, node string)
}

// Defaults of Config.
const (
	DefaultWakeTimeout   = 30 * time.Second
	DefaultHoldBodyLimit = 1 << 20
)

// MaxHeaderBytes bounds a request's line and headers: a larger request
// gets 431 headers_too_large, as JSON like every answer of the edge. The
// http.Server in front must allow more than this (its own refusal is plain
// text); requests past the server's limit never reach the edge.
const MaxHeaderBytes = 64 << 10

// Server is the edge's HTTP handler and URL issuer.
type Server struct {
	cfg      Config
	machines Machines
	keys     *Keys
	logger   *slog.Logger
	metrics  *metrics
	proxy    *httputil.ReverseProxy
	wakes    singleflight.Group
	routes   routes
	gates    gates
	// perSource and perMachine are Config's rate limits (nil: none).
	perSource, perMachine *ratelimit.Limiter
	// domainHost is Domain without its port, lower-case.
	domainHost string
	// bg is the context wakes run under: a client that leaves does not
	// cancel the wake the others wait for.
	bg context.Context
	// e2b is set when the server runs the E2B compatibility API.
	e2b *E2B
}

// New returns the edge. Its collectors are registered with reg (nil: not
// registered). Wakes run under bg, detached from the requests that asked.
func New(bg context.Context, cfg Config, machines Machines, keys *Keys, reg prometheus.Registerer, logger *slog.Logger) (*Server, error) {
	if cfg.Domain == "" {
		return nil, errors.New("edge: the domain is empty")
	}
	if cfg.WakeTimeout <= 0 {
		cfg.WakeTimeout = DefaultWakeTimeout
	}
	if cfg.HoldBodyLimit <= 0 {
		cfg.HoldBodyLimit = DefaultHoldBodyLimit
	}
	host := strings.ToLower(cfg.Domain)
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if cfg.PathBase == "" {
		cfg.PathBase = scheme(cfg.TLS) + "://" + cfg.Domain
	}
	s := &Server{cfg: cfg, machines: machines, keys: keys, logger: logger, metrics: newMetrics(reg),
		domainHost: host, bg: context.WithoutCancel(bg),
		perSource:  ratelimit.New(ratelimit.Config{Default: cfg.RatePerSource}),
		perMachine: ratelimit.New(ratelimit.Config{Default: cfg.RatePerMachine})}
	s.proxy = s.newProxy()
	return s, nil
}

func scheme(tls bool) string {
	if tls {
		return "https"
	}
	return "http"
}

// pathPrefix starts path-form URLs: {PathBase}/m/{label}.
const pathPrefix = "/m/"

// URL returns the URLs of a port of a lineage: signed unless public, and
// expiring at expires unless it is zero.
func (s *Server) URL(lineageID string, port int, expires time.Time, public bool) (api.MachineURL, error) {
	if err := checkPort(port); err != nil {
		return api.MachineURL{}, err
	}
	if !lineageLabelable(lineageID) {
		return api.MachineURL{}, fmt.Errorf("machine url: lineage id %q cannot be put in a host name: %w", lineageID, errdefs.ErrInternal)
	}
	l := label{Port: port, LineageID: lineageID}
	if !public {
		if !expires.IsZero() {
			l.Expires = expires.Truncate(time.Second)
		}
		l.Sig = s.keys.sign(l)
	}
	origin := scheme(s.cfg.TLS) + "://" + l.String() + "." + s.cfg.Domain
	path := s.cfg.PathBase + pathPrefix + l.String()
	u := api.MachineURL{Port: port, LineageID: lineageID, OriginURL: origin, PathURL: path, Public: public}
	if !l.Expires.IsZero() {
		t := l.Expires.UTC()
		u.ExpiresAt = &t
	}
	// On a localhost domain the URL every client can use is the path
	// form: glibc (Python's urllib, Node's fetch) does not resolve
	// *.localhost, and browsers are redirected from it to the origin form.
	u.URL = origin
	if s.domainHost == "localhost" || strings.HasSuffix(s.domainHost, ".localhost") {
		u.URL = path
	}
	u.WSURL = "ws" + strings.TrimPrefix(u.URL, "http") // ws:// or wss://
	return u, nil
}

// checkPort refuses ports the edge never forwards to.
func checkPort(port int) error {
	if port < 1 || port > 65535 {
		return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodePortNotAllowed,
			fmt.Sprintf("port %d is out of range", port), "use a port from 1 to 65535")
	}
	if port == AgentPort {
		return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodePortNotAllowed,
			fmt.Sprintf("port %d is the machine agent's and is never reachable from outside", port),
			"serve your application on another port")
	}
	return nil
}

// request is the edge's state of one request, carried in its context.
type request struct {
	label  label
	target Target
	path   string // the escaped path forwarded (the path form's prefix taken off)
	woken  bool   // the request waited for a wake
	// retryDialUntil: a refused connection is retried until then (after a
	// wake, while the server inside becomes reachable).
	retryDialUntil time.Time
	code           string // the public code of a refusal, for metrics
	// e2b: the target is an E2B sandbox (Target.E2B): a refusal that E2B
	// words differently goes out in E2B's shape.
	e2b bool
	// upgraded is set when a WebSocket upgrade succeeded.
	upgraded atomic.Bool
	// body is the client's request body, which keeps the error that
	// ended it (nil: no body).
	body *reqbody.Reader
}

type requestKey struct{}

func requestOf(ctx context.Context) *request {
	r, _ := ctx.Value(requestKey{}).(*request)
	return r
}

// ServeHTTP serves one public request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rw := &statusWriter{ResponseWriter: w}
	req := &request{}
	r = r.WithContext(context.WithValue(r.Context(), requestKey{}, req))
	if r.Body != nil && r.Body != http.NoBody {
		req.body = reqbody.New(r.Body)
		r.Body = req.body
	}
	s.serve(rw, r, req)
	if req.upgraded.Load() {
		s.metrics.websockets.Dec()
	}
	status := rw.status
	if status == 0 {
		status = http.StatusOK
		if r.Context().Err() != nil {
			status = 499 // the client went away first
		}
	}
	s.metrics.observe(status, req.code, time.Since(start))
	// One line per request at debug level. Never the label: it is the
	// signature.
	s.logger.DebugContext(r.Context(), "edge request", "method", r.Method, "lineage_id", req.label.LineageID,
		"port", req.label.Port, "path", req.path, "status", status, "code", req.code, "woken", req.woken,
		"duration", time.Since(start))
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request, req *request) {
	if ok, after := s.perSource.Allow(ratelimit.SourceKey(r.RemoteAddr)); !ok {
		s.refuse(w, r, req, rateLimited("requests from your address", after))
		return
	}
	if n := headerBytes(r); n > MaxHeaderBytes {
		s.refuse(w, r, req, refusal{Status: http.StatusRequestHeaderFieldsTooLarge, Code: errdefs.CodeHeadersTooLarge,
			Message: fmt.Sprintf("the request's line and headers are %d bytes, over the edge's limit of %d", n, MaxHeaderBytes),
			Action:  "send fewer or smaller headers (cookies often grow): clear the site's cookies"})
		return
	}
	raw, path, pathForm, ok := s.locate(r)
	if !ok {
		s.refuse(w, r, req, refusal{Status: http.StatusNotFound, Code: errdefs.CodeNotFound,
			Message: "this is the Nullspace edge: it serves machine URLs only", Action: "get a machine port's URL with POST /v1/machines/{id}/urls or `nullspace machine url ID PORT`"})
		return
	}
	req.path = path // escaped
	l, err := parseLabel(raw)
	if s.e2bAPI(raw, l, err, pathForm) {
		s.e2b.API.ServeHTTP(w, r)
		return
	}
	if err != nil {
		s.refuse(w, r, req, refusal{Status: http.StatusBadRequest, Code: errdefs.CodeURLInvalid,
			Message: "the host or path is not a machine URL", Action: "use the URL exactly as POST /v1/machines/{id}/urls returned it"})
		return
	}
	req.label = l
	if err := checkPort(l.Port); err != nil {
		p := errdefs.Classify(err)
		s.refuse(w, r, req, refusal{Status: http.StatusBadRequest, Code: p.Code, Message: p.Message, Action: p.SuggestedAction})
		return
	}
	if ref, ok := s.authorize(r, l); !ok {
		s.refuse(w, r, req, ref)
		return
	}
	if ok, after := s.perMachine.Allow(l.LineageID); !ok {
		s.refuse(w, r, req, rateLimited(fmt.Sprintf("requests to machine %s", l.LineageID), after))
		return
	}
	// Browsers get each machine port as an origin of its own: its cookies
	// and storage are not shared with other machines, and absolute links
	// work. The path form is for clients that cannot resolve *.Domain.
	if pathForm && r.Header.Get("Sec-Fetch-Mode") == "navigate" && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
		to := scheme(s.cfg.TLS) + "://" + raw + "." + s.cfg.Domain + path
		if r.URL.RawQuery != "" {
			to += "?" + r.URL.RawQuery
		}
		req.code = "redirect_origin"
		http.Redirect(w, r, to, http.StatusTemporaryRedirect)
		return
	}
	t, ok := s.target(w, r, req)
	if !ok {
		return
	}
	if t.Node != "" && s.cfg.Peer != nil {
		req.code = "forwarded"
		s.cfg.Peer(w, r, t.Node)
		return
	}
	req.target = t
	s.machines.Touch(t.MachineID)
	s.forward(w, r)
}

// locate finds the label of a request: in the Host (origin form,
// {label}.{domain}) or in the path (path form, /m/{label}/...). It returns
// the label, the path to forward, and whether it was the path form.
func (s *Server) locate(r *http.Request) (raw, path string, pathForm, ok bool) {
	host := strings.ToLower(r.Host)
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if sub, found := strings.CutSuffix(host, "."+s.domainHost); found && sub != "" && !strings.Contains(sub, ".") {
		return sub, r.URL.EscapedPath(), false, true
	}
	rest, found := strings.CutPrefix(r.URL.EscapedPath(), pathPrefix)
	if !found {
		return "", "", false, false
	}
	raw, path, _ = strings.Cut(rest, "/")
	return raw, "/" + path, true, raw != ""
}

// authorize checks a request's label before anything is looked up or
// woken: a signature must be valid and unexpired; an unsigned label is
// let through only to a machine whose ports are public.
func (s *Server) authorize(r *http.Request, l label) (refusal, bool) {
	ctx := r.Context()
	if l.Sig != "" {
		if !s.keys.verify(l) {
			return refusal{Status: http.StatusForbidden, Code: errdefs.CodeSignatureInvalid,
				Message: "the URL's signature is not valid for this machine and port",
				Action:  "get a new URL with POST /v1/machines/{id}/urls (signing keys may have been rotated)"}, false
		}
		if !l.Expires.IsZero() && time.Now().After(l.Expires) {
			return refusal{Status: http.StatusForbidden, Code: errdefs.CodeURLExpired,
				Message: fmt.Sprintf("the URL expired at %s", l.Expires.UTC().Format(time.RFC3339)),
				Action:  "get a new URL with POST /v1/machines/{id}/urls"}, false
		}
		return refusal{}, true
	}
	t, err := s.route(ctx, l.LineageID)
	if err == nil && t.E2B && s.e2b != nil && !t.PublicPorts {
		// E2B's shape of the guard: a private sandbox opens to its
		// traffic access token.
		if s.trafficTokenOK(r, l.LineageID) {
			return refusal{}, true
		}
		return trafficTokenRefusal(), false
	}
	if err != nil || !t.PublicPorts {
		// An unknown machine and a private one look the same here.
		return refusal{Status: http.StatusUnauthorized, Code: errdefs.CodeSignatureMissing,
			Message: "this machine's ports are not public: the URL needs a signature",
			Action:  "get a signed URL with POST /v1/machines/{id}/urls, or create the machine with public_ports"}, false
	}
	return refusal{}, true
}

// target returns the running execution to forward to, waking it if it
// needs to and may, or answers the request itself and returns false.
func (s *Server) target(w http.ResponseWriter, r *http.Request, req *request) (Target, bool) {
	l := req.label
	t, err := s.route(r.Context(), l.LineageID)
	if err != nil {
		s.refuseErr(w, r, req, l, err)
		return Target{}, false
	}
	req.e2b = t.E2B
	if t.Node != "" && s.cfg.Peer != nil {
		return t, true // its node serves it, holding it if it must
	}
	switch f, v := triage(t, false); v {
	case toForward:
		return t, true
	case toRefuse:
		s.refuse(w, r, req, f)
		return Target{}, false
	}
	// Paused or stopped with auto_resume, or in the middle of a lifecycle
	// operation: hold the request until the machine runs.
	return s.hold(w, r, req, t.AutoResume, t.State == api.StateStopped || t.State == api.StateStopping)
}

// What to do with a request, by the state of its target.
type verdict int

const (
	toForward verdict = iota // the machine runs
	toHold                   // wait for a wake, or for an operation in progress
	toRefuse                 // answer with the refusal
)

// triage decides what to do with a request for t. A request that waited
// for a wake already (woken) is not held again.
func triage(t Target, woken bool) (refusal, verdict) {
	switch t.State {
	case api.StateRunning, api.StateSnapshotting:
		return refusal{}, toForward
	case api.StateKilled, api.StateKilling:
		return notFound(t.LineageID), toRefuse
	case api.StateFailed:
		return failed(t), toRefuse
	case api.StatePaused, api.StatePausing, api.StateStopped, api.StateStopping:
		if !t.AutoResume {
			return autoResumeOff(t), toRefuse
		}
	}
	if woken {
		return unavailable(errdefs.CodeMachineUnavailable, fmt.Sprintf("machine %s is %s", t.LineageID, t.State), true,
			"retry after the Retry-After delay"), toRefuse
	}
	return refusal{}, toHold
}

func notFound(lineageID string) refusal {
	return refusal{Status: http.StatusNotFound, Code: errdefs.CodeMachineNotFound,
		Message: fmt.Sprintf("machine %s does not exist (it was killed, or never was)", lineageID),
		Action:  "create a new machine"}
}

func failed(t Target) refusal {
	msg := fmt.Sprintf("machine %s has failed", t.LineageID)
	if t.Error != "" {
		msg += ": " + t.Error
	}
	return unavailable(errdefs.CodeMachineFailed, msg, false, "create a new machine; this one cannot be woken")
}

func autoResumeOff(t Target) refusal {
	if t.State == api.StateStopped || t.State == api.StateStopping {
		return unavailable(errdefs.CodeStoppedAutoResumeOff,
			fmt.Sprintf("machine %s is stopped and does not have auto_resume", t.LineageID), false,
			"start it with POST /v1/machines/{id}/start (`nullspace machine start`), or create machines with auto_resume")
	}
	return unavailable(errdefs.CodePausedAutoResumeOff,
		fmt.Sprintf("machine %s is paused and does not have auto_resume", t.LineageID), false,
		"resume it with POST /v1/machines/{id}/connect (`nullspace machine connect`), or create machines with on_timeout \"pause\" and auto_resume")
}

// forward proxies the request to its target.
func (s *Server) forward(w http.ResponseWriter, r *http.Request) {
	s.proxy.ServeHTTP(w, r)
}

// statusWriter records the status of a response. It unwraps for
// http.ResponseController (flushes, WebSocket hijacks).
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 || w.status == http.StatusSwitchingProtocols {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

var _ http.Flusher = (*statusWriter)(nil)

// Flush is for handlers that assert http.Flusher rather than use a
// ResponseController: E2B's envd (Connect streams) on its hosts.
func (w *statusWriter) Flush() {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	http.NewResponseController(w.ResponseWriter).Flush()
}

// forwardedURL builds the outbound URL of a request to t: the host names
// the sandbox (its container id), never an IP, so that pooled connections
// are never reused for another machine that later gets the same IP.
func forwardedURL(t Target, port int, escapedPath, rawQuery string) *url.URL {
	u := &url.URL{Scheme: "http", Host: t.ContainerID + ":" + strconv.Itoa(port), RawQuery: rawQuery}
	if p, err := url.PathUnescape(escapedPath); err == nil {
		u.Path, u.RawPath = p, escapedPath
	} else {
		u.Path = escapedPath
	}
	return u
}

// headerBytes is about the size of a request's line and headers on the
// wire, as net/http counts them against MaxHeaderBytes.
func headerBytes(r *http.Request) int {
	n := len(r.Method) + 1 + len(r.RequestURI) + 1 + len(r.Proto) + 2 + len("Host: ") + len(r.Host) + 2
	for k, vs := range r.Header {
		for _, v := range vs {
			n += len(k) + 2 + len(v) + 2
		}
	}
	return n
}

// bodyRefusal is the answer to a request whose body could not be read
// because of the client: a too-slow body keeps its own code (see
// internal/minrate), anything else (a malformed chunk, a body shorter than
// its Content-Length) is a 400.
func bodyRefusal(err error) refusal {
	p := errdefs.Classify(reqbody.Error(err))
	return refusal{Status: p.Status, Code: p.Code, Message: p.Message, Action: p.SuggestedAction}
}
