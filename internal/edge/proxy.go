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
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
)

// newProxy returns the reverse proxy to machines. It streams bodies both
// ways (responses without a length, and SSE, are flushed as they come),
// upgrades WebSockets, strips hop-by-hop headers and sets X-Forwarded-*.
func (s *Server) newProxy() *httputil.ReverseProxy {
	tr := &http.Transport{
		DialContext:         s.dial,
		MaxIdleConns:        1024,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     60 * time.Second,
		// Bodies pass through as the machine sent them.
		DisableCompression: true,
		// Long polls and slow servers are the machine's business: no
		// response header timeout. A dial that hangs is bounded in dial.
		ExpectContinueTimeout: time.Second,
	}
	return &httputil.ReverseProxy{
		Rewrite:   s.rewrite,
		Transport: tr,
		// Streams (text/event-stream, and any response without a length:
		// chunked long polls, NDJSON) are flushed write by write whatever
		// this says; a response of known length is written out as it
		// fills the buffer, without a flush per write.
		FlushInterval:  0,
		ModifyResponse: s.modifyResponse,
		ErrorHandler:   s.proxyError,
		BufferPool:     copyBuffers{},
		// What the proxy logs itself (a body copy cut short) goes to the
		// edge's log at debug level, not to the process's standard logger.
		ErrorLog: slog.NewLogLogger(s.logger.Handler(), slog.LevelDebug),
	}
}

// copyBuffers are the proxy's copy buffers: 128 KiB, four times the
// default, so a large download takes fewer reads and writes.
type copyBuffers struct{}

var copyBufferPool = sync.Pool{New: func() any { b := make([]byte, 128<<10); return &b }}

func (copyBuffers) Get() []byte  { return *copyBufferPool.Get().(*[]byte) }
func (copyBuffers) Put(b []byte) { copyBufferPool.Put(&b) }

func (s *Server) rewrite(pr *httputil.ProxyRequest) {
	req := requestOf(pr.In.Context())
	pr.Out.URL = forwardedURL(req.target, req.label.Port, req.path, pr.In.URL.RawQuery)
	// The machine's server sees the host the client used (dev servers
	// check it), plus X-Forwarded-For (the client's address appended to
	// what earlier proxies said), -Host and -Proto.
	pr.Out.Host = pr.In.Host
	if xff := pr.In.Header["X-Forwarded-For"]; len(xff) > 0 {
		pr.Out.Header["X-Forwarded-For"] = slices.Clone(xff)
	}
	pr.SetXForwarded()
	// X-Real-Ip is the address the edge saw, whatever the client sent: a
	// client cannot make the machine believe it comes from elsewhere. (The
	// last X-Forwarded-For entry is the same address; earlier ones are the
	// client's own claim.)
	if ip, _, err := net.SplitHostPort(pr.In.RemoteAddr); err == nil {
		pr.Out.Header.Set("X-Real-Ip", ip)
	} else {
		pr.Out.Header.Del("X-Real-Ip")
	}
	if s.cfg.TLS {
		pr.Out.Header.Set("X-Forwarded-Proto", "https")
	}
}

func (s *Server) modifyResponse(resp *http.Response) error {
	if resp.StatusCode == http.StatusSwitchingProtocols {
		if req := requestOf(resp.Request.Context()); req != nil && req.upgraded.CompareAndSwap(false, true) {
			s.metrics.websockets.Inc()
		}
	}
	return nil
}

// dial connects to the machine a pooled connection's host (a container id)
// names. It checks that the container is still the lineage's running
// execution, so a connection never reaches a machine that took over the
// IP. After a wake it retries a refused connection until the wake window
// ends, while the user's server inside comes up.
func (s *Server) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	req := requestOf(ctx)
	if req == nil {
		return nil, errors.New("edge: dial outside a request")
	}
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	port, _ := strconv.Atoi(portStr)
	t := req.target
	if host != t.ContainerID {
		return nil, errMoved
	}
	// A dial that hangs (a machine frozen for a snapshot answers later)
	// is bounded; refused ones are retried only until retryDialUntil.
	deadline := time.Now().Add(10 * time.Second)
	retryUntil := req.retryDialUntil
	var d net.Dialer
	backoff := 5 * time.Millisecond
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			// The machine may have moved on while we waited.
			cur, err := s.machines.Route(ctx, t.LineageID)
			if err != nil || cur.ContainerID != t.ContainerID || cur.State != api.StateRunning && cur.State != api.StateSnapshotting {
				return nil, errMoved
			}
		}
		release, err := s.gates.acquire(ctx, t.ContainerID)
		if err != nil {
			return nil, err
		}
		dctx, cancel := context.WithDeadline(ctx, deadline)
		c, err := d.DialContext(dctx, network, netip.AddrPortFrom(t.IP, uint16(port)).String())
		cancel()
		if err == nil {
			timer := time.AfterFunc(newConnGrace, release)
			return &activeConn{Conn: c, touch: func() { s.machines.Touch(t.MachineID) },
				answered: func() { timer.Stop(); release() }}, nil
		}
		release()
		if !errors.Is(err, syscall.ECONNREFUSED) || time.Now().Add(backoff).After(retryUntil) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 200*time.Millisecond)
	}
}

// errMoved: the execution a request was routed to is no longer the
// lineage's running one (it paused, was killed or restored meanwhile).
var errMoved = errors.New("machine moved")

// proxyError answers a request the proxy could not forward.
func (s *Server) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	req := requestOf(r.Context())
	if r.Context().Err() != nil {
		req.code = "client_gone"
		return
	}
	if req.body != nil && req.body.Err != nil {
		// The client's body broke the request, not the machine.
		s.refuse(w, r, req, bodyRefusal(req.body.Err))
		return
	}
	l := req.label
	// Whatever broke, if the machine moved on meanwhile (killed, paused,
	// restored) that is the answer, not the broken connection.
	moved := errors.Is(err, errMoved)
	s.Forget(l.LineageID) // whatever the cache said led here
	cur, rerr := s.machines.Route(r.Context(), l.LineageID)
	if rerr != nil || cur.ContainerID != req.target.ContainerID || cur.State != api.StateRunning && cur.State != api.StateSnapshotting {
		moved = true
	}
	switch {
	case moved && (rerr != nil || cur.State == api.StateKilled || cur.State == api.StateKilling):
		s.refuse(w, r, req, notFound(l.LineageID))
	case moved:
		s.refuse(w, r, req, unavailable(errdefs.CodeMachineUnavailable,
			fmt.Sprintf("machine %s changed state (%s) while the request was on its way", l.LineageID, cur.State), true,
			"retry after the Retry-After delay"))
	case errors.Is(err, syscall.ECONNREFUSED):
		s.refuse(w, r, req, refusal{Status: http.StatusBadGateway, Code: errdefs.CodePortNotListening,
			Message: fmt.Sprintf("nothing listens on port %d in machine %s", l.Port, l.LineageID),
			Action:  fmt.Sprintf("start a server on port %d bound to 0.0.0.0 in the machine", l.Port), Retryable: true})
	default:
		s.logger.WarnContext(r.Context(), "edge proxy error", "lineage_id", l.LineageID, "port", l.Port, "err", err)
		s.refuse(w, r, req, refusal{Status: http.StatusBadGateway, Code: errdefs.CodeUpstreamFailed,
			Message: fmt.Sprintf("the server on port %d of machine %s did not answer properly", l.Port, l.LineageID),
			Action:  "retry; check the server in the machine", Retryable: true})
	}
}

// activeConn counts bytes to and from a machine as activity (idle
// suspend), at most once per second.
type activeConn struct {
	net.Conn
	touch func()
	last  atomic.Int64 // unix nanoseconds of the last touch
	// answered releases the connection's pacing slot (gate.go) at its
	// first byte from the machine, or when it closes.
	answered func()
	once     sync.Once
}

func (c *activeConn) Close() error {
	c.once.Do(c.answered)
	return c.Conn.Close()
}

func (c *activeConn) active() {
	now := time.Now().UnixNano()
	if last := c.last.Load(); now-last >= int64(time.Second) && c.last.CompareAndSwap(last, now) {
		c.touch()
	}
}

func (c *activeConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.once.Do(c.answered)
		c.active()
	}
	return n, err
}

func (c *activeConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if n > 0 {
		c.active()
	}
	return n, err
}
