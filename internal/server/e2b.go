package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"nullspace.dev/nullspace/internal/access"
	"nullspace.dev/nullspace/internal/e2bcompat"
	"nullspace.dev/nullspace/internal/httpapi"
	"nullspace.dev/nullspace/internal/machine"
	"nullspace.dev/nullspace/internal/minrate"
	"nullspace.dev/nullspace/internal/sshgate"
)

// The manager is what the E2B compatibility layer drives.
var _ e2bcompat.Machines = (*machine.Manager)(nil)

// e2bListener is the E2B-compatible API with its listener, not yet serving.
type e2bListener struct {
	compat *e2bcompat.Server
	http   *http.Server
	ln     net.Listener
	domain string
}

// startE2B makes the E2B-compatible API and listens on its address.
// domain is the edge's ("" without one): the SDKs' getHost(port) builds
// PORT-ID.domain.
func startE2B(bg context.Context, cfg Config, mgr *machine.Manager, auth *access.Service, domain string, logger *slog.Logger) (*e2bListener, error) {
	srv, err := e2bcompat.New(bg, e2bcompat.Config{DataDir: cfg.DataDir, Domain: domain, AllowInternet: cfg.AllowInternet,
		WakeTimeout: cfg.EdgeWakeTimeout}, mgr, auth, logger.With("component", "e2b"))
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.E2BAddr)
	if err != nil {
		return nil, fmt.Errorf("e2b compatibility: listen on %s: %w", cfg.E2BAddr, err)
	}
	logger.Info("e2b-compatible API", "addr", ln.Addr().String(), "domain", domain)
	// A command's input streamed to it (envd's StreamInput) idles by
	// design: it is not held to a rate.
	h := minrate.Handler(srv, cfg.MinBodyRate, streamsInput)
	return &e2bListener{compat: srv, ln: ln, domain: domain, http: &http.Server{Handler: h,
		ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog:    slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		BaseContext: func(net.Listener) context.Context { return bg }}}, nil
}

// streamsInput says whether a request is envd's StreamInput: a command's
// input streamed to it idles by design, so it is not held to a rate.
func streamsInput(r *http.Request) bool { return strings.HasSuffix(r.URL.Path, "/StreamInput") }

// advertised is where clients reach the layer, for GET /v1/health.
func (l *e2bListener) advertised() *httpapi.E2B {
	host, port := sshgate.Advertised(l.ln.Addr())
	return &httpapi.E2B{URL: "http://" + net.JoinHostPort(host, strconv.Itoa(port)), Domain: l.domain}
}

func (l *e2bListener) serve(logger *slog.Logger) {
	if err := l.http.Serve(l.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		logger.Error("e2b-compatible API", "err", err)
	}
}
