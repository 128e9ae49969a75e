package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/edge"
	"nullspace.dev/nullspace/internal/machine"
	"nullspace.dev/nullspace/internal/minrate"
	"nullspace.dev/nullspace/internal/peer"
	"nullspace.dev/nullspace/internal/routing"
	"nullspace.dev/nullspace/internal/store"
	"nullspace.dev/nullspace/internal/telemetry"
)

// EdgeSecretFile is the file under the data dir that machine URLs are
// signed with.
const EdgeSecretFile = "edge-secret"

// envdHostPrefix starts the hosts where the edge serves E2B's envd.
var envdHostPrefix = fmt.Sprint(edge.AgentPort) + "-"

// edgeListener is the edge with its listener, not yet serving.
type edgeListener struct {
	edge *edge.Server
	http *http.Server
	ln   net.Listener
	tls  bool
	// domain is the one machine URLs are under, with the port picked when
	// the configured one was 0.
	domain string
}

// startEdge makes the edge and listens on its address.
func startEdge(bg context.Context, cfg Config, mgr *machine.Manager, router *routing.Router, tel *telemetry.Metrics, logger *slog.Logger) (*edgeListener, error) {
	keys, err := edge.OpenKeys(filepath.Join(cfg.DataDir, EdgeSecretFile))
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.EdgeAddr)
	if err != nil {
		return nil, fmt.Errorf("edge: listen on %s: %w", cfg.EdgeAddr, err)
	}
	domain := cfg.EdgeDomain
	if _, port, err := net.SplitHostPort(cfg.EdgeAddr); err == nil && port == "0" {
		// A test's ephemeral port: URLs carry the one picked.
		domain = net.JoinHostPort(domain, fmt.Sprint(ln.Addr().(*net.TCPAddr).Port))
	}
	tlsOn := cfg.EdgeTLSCert != ""
	ecfg := edge.Config{Domain: domain, TLS: tlsOn, WakeTimeout: cfg.EdgeWakeTimeout, HoldBodyLimit: cfg.EdgeHoldBodyBytes,
		PathBase:      pathBase(domain, ln.Addr().(*net.TCPAddr), tlsOn),
		RatePerSource: cfg.EdgeRatePerSource, RatePerMachine: cfg.EdgeRatePerMachine}
	if router != nil {
		ecfg.Peer = func(w http.ResponseWriter, r *http.Request, node string) { router.Forward(w, r, node, "edge") }
	}
	e, err := edge.New(bg, ecfg, &edgeMachines{mgr: mgr, router: router}, keys, tel.Registry(), logger.With("component", "edge"))
	if err != nil {
		ln.Close()
		return nil, err
	}
	if mgr != nil {
		mgr.OnTransition(func(lineageID, _, _ string) { e.Forget(lineageID) })
	}
	srv := &http.Server{
		// gRPC streams idle by design: their bodies are not held to a rate,
		// nor is envd's StreamInput on E2B's 49983-{sandbox} hosts.
		Handler: minrate.Handler(e, cfg.MinBodyRate, func(r *http.Request) bool {
			return strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") ||
				(strings.HasPrefix(r.Host, envdHostPrefix) && streamsInput(r))
		}),
		// A client that sends its headers slowly is cut off before it
		// reaches a handler, so it never holds a wake.
		ReadHeaderTimeout: cfg.EdgeHeaderTimeout,
		// The edge refuses headers over edge.MaxHeaderBytes itself, with
		// its JSON error; past this larger bound net/http answers 431 in
		// plain text without reading on.
		MaxHeaderBytes: 16 * edge.MaxHeaderBytes,
		IdleTimeout:    2 * time.Minute,
		// Requests (held ones and WebSockets too) end when the server stops.
		BaseContext: func(net.Listener) context.Context { return bg },
		ErrorLog:    slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
	}
	if tlsOn {
		cert, err := tls.LoadX509KeyPair(cfg.EdgeTLSCert, cfg.EdgeTLSKey)
		if err != nil {
			ln.Close()
			return nil, fmt.Errorf("edge: TLS certificate: %w", err)
		}
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	return &edgeListener{edge: e, http: srv, ln: ln, tls: tlsOn, domain: domain}, nil
}

// pathBase is the origin of path-form URLs: the domain itself, except on
// a localhost domain, where it is the loopback address the edge listens on
// (glibc resolves neither *.localhost nor, reliably to the same family,
// localhost).
func pathBase(domain string, addr *net.TCPAddr, tlsOn bool) string {
	scheme := "http"
	if tlsOn {
		scheme = "https"
	}
	host, port, err := net.SplitHostPort(domain)
	if err != nil {
		host, port = domain, ""
	}
	if host != "localhost" {
		return scheme + "://" + domain
	}
	ip := addr.IP
	if ip.IsUnspecified() {
		ip = net.IPv4(127, 0, 0, 1)
	}
	if port == "" {
		return scheme + "://" + ip.String()
	}
	return scheme + "://" + net.JoinHostPort(ip.String(), port)
}

func (l *edgeListener) serve(logger *slog.Logger) {
	var err error
	if l.tls {
		err = l.http.ServeTLS(l.ln, "", "")
	} else {
		err = l.http.Serve(l.ln)
	}
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		logger.Error("edge server", "err", err)
	}
}

// edgeMachines is the manager as the edge sees it.
type edgeMachines struct {
	mgr    *machine.Manager
	router *routing.Router // nil: one node
}

var _ edge.Machines = (*edgeMachines)(nil)

func (e *edgeMachines) Route(ctx context.Context, lineageID string) (edge.Target, error) {
	rec, err := e.mgr.LineageHead(ctx, lineageID)
	if err != nil {
		return edge.Target{}, err
	}
	t := e.target(rec)
	// In a cluster, a request that did not come from a peer goes to the
	// node that runs the machine, or that placement wakes it on.
	if _, forwarded := peer.FromContext(ctx); e.router != nil && !forwarded {
		switch {
		case rec.State == api.StatePaused || rec.State == api.StateStopped:
			if rec.AutoResume {
				if t.Node, err = e.router.WakeLineage(ctx, lineageID); err != nil {
					return edge.Target{}, err
				}
			}
		default:
			t.Node = e.router.OwnerOf(rec)
		}
	}
	return t, nil
}

func (e *edgeMachines) Wake(ctx context.Context, lineageID string, port int, resume bool) (edge.Target, error) {
	rec, err := e.mgr.Wake(ctx, lineageID, resume, "edge", map[string]any{"port": port})
	if err != nil {
		return edge.Target{}, err
	}
	return e.target(rec), nil
}

func (e *edgeMachines) Touch(machineID string) { e.mgr.Touch(machineID) }

func (e *edgeMachines) target(rec *store.Machine) edge.Target {
	t := edge.Target{LineageID: rec.LineageID, MachineID: rec.ID, ContainerID: rec.ContainerID, State: rec.State,
		AutoResume: rec.AutoResume, PublicPorts: rec.PublicPorts, Error: rec.Error, E2B: rec.Origin == store.OriginE2B}
	if rec.Slot >= 0 && (rec.State == api.StateRunning || rec.State == api.StateSnapshotting) {
		t.IP, _ = e.mgr.GuestIP(rec)
	}
	return t
}
