package peer

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"nullspace.dev/nullspace/internal/errdefs"
)

// RelayPath is where the peer listener mounts the relay (Relays, behind
// Verifier.Middleware).
const RelayPath = "/peer/v1/relay"

// relayProtocol is the Upgrade token of a relay.
const relayProtocol = "nullspace-relay"

// ErrNoSuchMachine is what a relay's dial function returns (wrapped) when
// the machine has no live sandbox on this node; the relay answers 404, and
// the dialing node's error matches it too.
var ErrNoSuchMachine = errors.New("no such machine on this node")

// codeNoSuchMachine is the code of the relay's 404.
const codeNoSuchMachine = errdefs.CodeMachineNotFound

// handshakeTimeout bounds a relay's handshake when the caller's context
// has no earlier deadline. The answer waits for the owner's dial to the
// machine, which is local and quick, or refused.
const handshakeTimeout = 15 * time.Second

// StatusError is a relay the target node refused with an HTTP answer.
type StatusError struct {
	Node    string
	Status  int
	Code    string // from the JSON body, if any
	Message string // from the JSON body, or the status text
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("node %s refused the relay: %d %s: %s", e.Node, e.Status, e.Code, e.Message)
}

// Is makes a refusal for an unknown machine match ErrNoSuchMachine.
func (e *StatusError) Is(target error) bool {
	return target == ErrNoSuchMachine && e.Status == http.StatusNotFound && e.Code == codeNoSuchMachine
}

// Dial opens a TCP relay to port of machine machineID on node to: a signed
// GET RelayPath upgraded to the raw byte stream of the owner's connection
// to the machine. ctx bounds the dial and the handshake only; the returned
// connection outlives it. The connection supports CloseWrite, which the
// owner passes on to the machine as a half-close.
//
// Only http:// peer URLs can be dialed (the peer listener is plain HTTP on
// a private network).
func (c *Client) Dial(ctx context.Context, to Target, machineID string, port int) (net.Conn, error) {
	base, err := parseTarget(to)
	if err != nil {
		return nil, err
	}
	if base.Scheme != "http" {
		return nil, fmt.Errorf("relay to node %s: peer URL %q: only http is supported", to.Node, to.URL)
	}
	ref := &url.URL{Path: RelayPath, RawQuery: url.Values{
		"machine": {machineID},
		"port":    {strconv.Itoa(port)},
	}.Encode()}
	req := &http.Request{
		Method:     http.MethodGet,
		URL:        joinURL(base, ref),
		Host:       base.Host,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header: http.Header{
			"Connection": {"Upgrade"},
			"Upgrade":    {relayProtocol},
		},
	}
	c.Sign(req, to.Node, RouteRelay, "")

	hctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	d := net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}
	addr := base.Host
	if base.Port() == "" {
		addr = net.JoinHostPort(base.Hostname(), "80")
	}
	conn, err := d.DialContext(hctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("relay to machine %s port %d on node %s at %s: %w", machineID, port, to.Node, to.URL, err)
	}
	resp, br, err := relayHandshake(hctx, conn, req)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("relay to machine %s port %d on node %s at %s: %w", machineID, port, to.Node, to.URL, err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		defer conn.Close()
		conn.SetReadDeadline(time.Now().Add(dialTimeout)) // for the refusal's body
		return nil, fmt.Errorf("relay to machine %s port %d: %w", machineID, port, refusal(to.Node, resp))
	}
	return withBuffered(conn, br), nil
}

// relayHandshake writes req on conn and reads the answer's header, both
// bounded by ctx; conn's deadline is cleared again when it returns.
func relayHandshake(ctx context.Context, conn net.Conn, req *http.Request) (*http.Response, *bufio.Reader, error) {
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	// A cancel mid-handshake unblocks the reads and writes at once.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer func() {
		stop()
		conn.SetDeadline(time.Time{})
	}()
	if err := req.Write(conn); err != nil {
		return nil, nil, ctxErr(ctx, err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return nil, nil, ctxErr(ctx, err)
	}
	if !stop() {
		// The cancel came in time to put conn's deadline in the past.
		resp.Body.Close()
		return nil, nil, ctx.Err()
	}
	return resp, br, nil
}

// ctxErr prefers the context's error to the timeout it caused.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return err
}

// refusal reads a non-101 answer into a *StatusError.
func refusal(node string, resp *http.Response) error {
	defer resp.Body.Close()
	e := &StatusError{Node: node, Status: resp.StatusCode, Message: http.StatusText(resp.StatusCode)}
	var body errorBody
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&body); err == nil && body.Message != "" {
		e.Code, e.Message = body.Code, body.Message
	}
	return e
}

// withBuffered returns conn, reading first whatever br holds of it: bytes
// the other side sent right behind its answer's header (an SSH server
// speaks first) are not lost.
func withBuffered(conn net.Conn, br *bufio.Reader) net.Conn {
	n := br.Buffered()
	if n == 0 {
		return conn
	}
	buf, _ := br.Peek(n)
	return &prefixConn{Conn: conn, prefix: append([]byte(nil), buf...)}
}

// prefixConn is a net.Conn whose reads return prefix first.
type prefixConn struct {
	net.Conn
	mu     sync.Mutex
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		c.mu.Unlock()
		return n, nil
	}
	c.mu.Unlock()
	return c.Conn.Read(p)
}

// CloseWrite half-closes the connection, if it can.
func (c *prefixConn) CloseWrite() error {
	if cw, ok := c.Conn.(closeWriter); ok {
		return cw.CloseWrite()
	}
	return fmt.Errorf("half-close a %T: %w", c.Conn, errors.ErrUnsupported)
}

type closeWriter interface{ CloseWrite() error }

// Relays is the server side of the relay, mounted at RelayPath behind
// Verifier.Middleware. An established relay is independent of its request
// (a hijacked connection outlives the request's context): it ends when
// both directions have ended, either fails, or Close is called. The HTTP
// server's Shutdown does not see hijacked connections, so the caller calls
// Close after it.
type Relays struct {
	// Dial connects to port of machine machineID on this node; ctx is the
	// relay request's, which lasts as long as the relay. It returns
	// an error wrapping ErrNoSuchMachine when the machine has no live
	// sandbox here (the relay answers 404), any other error becomes 502
	// with the error's text (the answer goes to a node, not to a client).
	Dial func(ctx context.Context, machineID string, port int) (net.Conn, error)
	// Logger gets a relay's end at debug level. Default: discarded.
	Logger *slog.Logger

	wg sync.WaitGroup

	mu     sync.Mutex
	closed bool
	active map[*relay]struct{}
}

// RelayHandler is a Relays with dial, for a caller that never closes it.
func RelayHandler(dial func(ctx context.Context, machineID string, port int) (net.Conn, error)) http.Handler {
	return &Relays{Dial: dial}
}

var _ http.Handler = (*Relays)(nil)

// relay is one established relay: the peer's connection and the machine's.
type relay struct {
	peer, machine net.Conn
	closeOnce     sync.Once
}

func (r *relay) close() {
	r.closeOnce.Do(func() {
		r.peer.Close()
		r.machine.Close()
	})
}

// ServeHTTP checks the request, dials the machine, and only then upgrades,
// so every failure before the relay exists is an ordinary HTTP answer.
func (rs *Relays) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet || !hasToken(r.Header["Connection"], "upgrade") ||
		!hasToken(r.Header["Upgrade"], relayProtocol) {
		writeError(w, http.StatusBadRequest, errorBody{Code: errdefs.CodeInvalidArgument,
			Message: "a relay is a GET with Connection: Upgrade and Upgrade: " + relayProtocol})
		return
	}
	q := r.URL.Query()
	machineID := q.Get("machine")
	port, err := strconv.Atoi(q.Get("port"))
	if machineID == "" || err != nil || port < 1 || port > 65535 {
		writeError(w, http.StatusBadRequest, errorBody{Code: errdefs.CodeInvalidArgument,
			Message: fmt.Sprintf("a relay needs machine (non-empty) and port (1 to 65535); got machine %q port %q", machineID, q.Get("port"))})
		return
	}
	if rs.isClosed() {
		writeError(w, http.StatusServiceUnavailable, errorBody{Code: errdefs.CodeUnavailable, Retryable: true,
			Message: "this node is shutting down", SuggestedAction: "retry; the machine's next owner will answer"})
		return
	}
	machine, err := rs.Dial(r.Context(), machineID, port)
	if err != nil {
		if errors.Is(err, ErrNoSuchMachine) {
			writeError(w, http.StatusNotFound, errorBody{Code: codeNoSuchMachine,
				Message: fmt.Sprintf("machine %s has no live sandbox on this node", machineID)})
			return
		}
		writeError(w, http.StatusBadGateway, errorBody{Code: errdefs.CodeUpstreamFailed, Retryable: true,
			Message: fmt.Sprintf("dial machine %s port %d: %v", machineID, port, err)})
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		machine.Close()
		writeError(w, http.StatusInternalServerError, errorBody{Code: errdefs.CodeInternal,
			Message: fmt.Sprintf("the peer listener cannot upgrade: %v", err)})
		return
	}
	// The server's read and write timeouts are for requests, not for a
	// relay that may last hours.
	conn.SetDeadline(time.Time{})
	brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + relayProtocol + "\r\n\r\n")
	if err := brw.Flush(); err != nil {
		conn.Close()
		machine.Close()
		return
	}
	rl := &relay{peer: withBuffered(conn, brw.Reader), machine: machine}
	if !rs.add(rl) {
		rl.close() // Close ran while we dialed
		return
	}
	defer rs.remove(rl)
	log := rs.logger().With("machine_id", machineID, "port", port)
	if o, ok := FromContext(r.Context()); ok {
		log = log.With("from", o.From)
	}
	rl.run(log)
}

// run copies both ways until both directions end, or one fails; a
// direction's clean end is passed on as a half-close.
func (rl *relay) run(log *slog.Logger) {
	start := time.Now()
	var in, out int64
	var inErr, outErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		in, inErr = pipe(rl.machine, rl.peer, rl)
	}()
	out, outErr = pipe(rl.peer, rl.machine, rl)
	<-done
	rl.close()
	log.Debug("relay ended", "bytes_in", in, "bytes_out", out, "duration", time.Since(start),
		"err_in", inErr, "err_out", outErr)
}

// pipe copies src to dst. At src's end it half-closes dst (or, when dst
// cannot, closes the relay); on an error it closes the relay, which ends
// the other direction too.
func pipe(dst, src net.Conn, rl *relay) (int64, error) {
	n, err := io.Copy(dst, src)
	if err != nil {
		rl.close()
		return n, err
	}
	if cw, ok := dst.(closeWriter); ok {
		if err := cw.CloseWrite(); err != nil {
			rl.close()
			return n, err
		}
		return n, nil
	}
	rl.close()
	return n, nil
}

func (rs *Relays) isClosed() bool {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return rs.closed
}

func (rs *Relays) add(rl *relay) bool {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.closed {
		return false
	}
	if rs.active == nil {
		rs.active = make(map[*relay]struct{})
	}
	rs.active[rl] = struct{}{}
	rs.wg.Add(1)
	return true
}

func (rs *Relays) remove(rl *relay) {
	rs.mu.Lock()
	delete(rs.active, rl)
	rs.mu.Unlock()
	rs.wg.Done()
}

// Close ends every established relay, refuses new ones (503), and waits
// until their copies have stopped. The machines are not touched: only the
// connections through this node end.
func (rs *Relays) Close() error {
	rs.mu.Lock()
	rs.closed = true
	for rl := range rs.active {
		rl.close()
	}
	rs.mu.Unlock()
	rs.wg.Wait()
	return nil
}

func (rs *Relays) logger() *slog.Logger {
	if rs.Logger != nil {
		return rs.Logger
	}
	return slog.New(slog.DiscardHandler)
}

// hasToken reports whether a comma-separated header holds token, in any
// case.
func hasToken(values []string, token string) bool {
	for _, v := range values {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}
