package peer

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Target is a node to call: its id and the base URL of its peer listener.
type Target struct {
	Node string // the node's id, signed as X-Nullspace-Peer-To
	URL  string // its peer listener, e.g. http://10.0.0.2:7946
}

// Client makes signed requests from node Self to other nodes. Its zero
// value is not usable: Self and Key are required. It is safe for
// concurrent use; do not copy it after first use.
type Client struct {
	Self string // this node's id
	Key  []byte // the cluster key
	// Now is the clock the signature's time is read from: the caller
	// passes one corrected to the database's now(). Default time.Now.
	Now func() time.Time
	// Transport carries requests to peers. Default: an HTTP/1.1
	// transport with keep-alives, 256 idle connections per peer and a 2 s
	// dial timeout, no environment proxy and no compression.
	Transport http.RoundTripper
	// OnError answers a forwarded request the target node did not answer
	// (it is down, refused the connection, or broke it before a response
	// header). Default: 503 node_unreachable, retryable.
	OnError func(w http.ResponseWriter, r *http.Request, node string, err error)
	// Logger gets what the reverse proxy reports (a body copy cut short)
	// at debug level. Default: discarded.
	Logger *slog.Logger

	once      sync.Once
	transport http.RoundTripper
	errorLog  *log.Logger
}

func (c *Client) init() {
	c.once.Do(func() {
		c.transport = c.Transport
		if c.transport == nil {
			c.transport = newTransport()
		}
		logger := c.Logger
		if logger == nil {
			logger = slog.New(slog.DiscardHandler)
		}
		c.errorLog = slog.NewLogLogger(logger.Handler(), slog.LevelDebug)
	})
}

// dialTimeout bounds a connection to a peer. Peers are on one network; a
// node that does not accept within it is down, and the caller's answer
// (node_unreachable) is better early than late.
const dialTimeout = 2 * time.Second

func newTransport() *http.Transport {
	d := &net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}
	return &http.Transport{
		// Peers are reached directly, never through HTTP_PROXY.
		Proxy:       nil,
		DialContext: d.DialContext,
		// Many requests go to few peers: keep their connections.
		MaxIdleConns:        1024,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     90 * time.Second,
		// Bodies pass through as the client and the owner wrote them.
		DisableCompression:    true,
		ExpectContinueTimeout: time.Second,
		// HTTP/1.1 only: upgrades (WebSockets, the relay) need it.
		ForceAttemptHTTP2: false,
	}
}

// Sign adds the peer headers to req, a request from c.Self to node to
// for the given route and client address. It signs req.URL.RequestURI()
// and req.Host (or req.URL.Host when Host is empty), which is what
// http.Transport sends; change neither after signing. Any peer headers
// req already has are replaced.
func (c *Client) Sign(req *http.Request, to, route, clientAddr string) {
	var nonce [16]byte
	rand.Read(nonce[:]) // never fails: it crashes the program instead
	now := time.Now
	if c.Now != nil {
		now = c.Now
	}
	ts := strconv.FormatInt(now().UnixMilli(), 10)
	nonceHex := hex.EncodeToString(nonce[:])
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	mac := hmac.New(sha256.New, c.Key)
	mac.Write([]byte(canonical(req.Method, req.URL.RequestURI(), host, c.Self, to, ts, nonceHex, route, clientAddr)))

	stripPeerHeaders(req.Header)
	h := req.Header
	h.Set(headerFrom, c.Self)
	h.Set(headerTo, to)
	h.Set(headerTime, ts)
	h.Set(headerNonce, nonceHex)
	h.Set(headerRoute, route)
	h.Set(headerClient, clientAddr)
	h.Set(headerSignature, hex.EncodeToString(mac.Sum(nil)))
}

// Forward sends r to node to and copies its answer to w: same method, URI,
// Host header, other headers and body, plus the signed peer headers (any
// the client sent are dropped). Streams (SSE, NDJSON, long downloads) are
// flushed write by write, and upgrades (WebSockets) are spliced through.
// The client's address travels in the signed client header; no
// X-Forwarded-For is added, and the client's own X-Forwarded-* headers are
// passed on as sent, so the owner sees the request as it arrived here.
//
// Callers must not forward a request that came from a peer (FromContext):
// a forwarded request is never forwarded again.
func (c *Client) Forward(w http.ResponseWriter, r *http.Request, to Target, route string) {
	c.init()
	base, err := parseTarget(to)
	if err != nil {
		c.onError(w, r, to, err)
		return
	}
	client := clientAddr(r)
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(base)
			pr.Out.Host = pr.In.Host
			// Rewrite drops these before it is called; put the client's
			// back as they were, adding nothing.
			for _, k := range [...]string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"} {
				if v, ok := pr.In.Header[k]; ok {
					pr.Out.Header[k] = v
				}
			}
			c.Sign(pr.Out, to.Node, route, client)
		},
		Transport: c.transport,
		// Flush after every write: a response of known length written
		// slowly (a log tail, a file being produced) reaches the client
		// as the owner writes it. SSE and responses without a length are
		// flushed that way whatever this says.
		FlushInterval: -1,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			c.onError(w, r, to, err)
		},
		ErrorLog:   c.errorLog,
		BufferPool: copyBuffers{},
	}
	rp.ServeHTTP(w, r)
}

// copyBuffers lends the proxy its 32 KiB copy buffers, which it would
// otherwise allocate for every request.
type copyBuffers struct{}

var copyBufferPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (copyBuffers) Get() []byte  { return *copyBufferPool.Get().(*[]byte) }
func (copyBuffers) Put(b []byte) { copyBufferPool.Put(&b) }

// onError answers a forward that failed, unless the client has gone.
func (c *Client) onError(w http.ResponseWriter, r *http.Request, to Target, err error) {
	if r.Context().Err() != nil {
		return // nobody to answer
	}
	if c.OnError != nil {
		c.OnError(w, r, to.Node, err)
		return
	}
	writeError(w, http.StatusServiceUnavailable, errorBody{
		Code:            CodeNodeUnreachable,
		Message:         fmt.Sprintf("node %s at %s did not answer: %v", to.Node, to.URL, err),
		Retryable:       true,
		SuggestedAction: "retry; the cluster will declare the node dead and its machines resumable elsewhere",
	})
}

// clientAddr is the address of the client r came from: the origin's, if a
// peer sent r, else the host of r.RemoteAddr.
func clientAddr(r *http.Request) string {
	if o, ok := FromContext(r.Context()); ok {
		return o.ClientAddr
	}
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		return host
	}
	return r.RemoteAddr
}

// Do sends req to node to as a call of this node's own (no client
// address), signed for route, and returns the response as the transport
// gave it: redirects are not followed. req's URL supplies the path and
// query; the scheme and host come from to.URL (and its path, if any, is
// put in front). req is not changed; ctx governs the call.
func (c *Client) Do(ctx context.Context, to Target, route string, req *http.Request) (*http.Response, error) {
	c.init()
	base, err := parseTarget(to)
	if err != nil {
		return nil, err
	}
	out := req.Clone(ctx)
	out.RequestURI = ""
	out.URL = joinURL(base, req.URL)
	if out.Host == "" || out.Host == req.URL.Host {
		out.Host = base.Host // a Host set apart from the URL's is kept
	}
	c.Sign(out, to.Node, route, "")
	resp, err := c.transport.RoundTrip(out)
	if err != nil {
		return nil, fmt.Errorf("peer %s %s on node %s at %s: %w", req.Method, out.URL.Path, to.Node, to.URL, err)
	}
	return resp, nil
}

func parseTarget(to Target) (*url.URL, error) {
	u, err := url.Parse(to.URL)
	if err != nil {
		return nil, fmt.Errorf("peer URL of node %s: %w", to.Node, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("peer URL %q of node %s: want http://host:port", to.URL, to.Node)
	}
	if to.Node == "" {
		return nil, errors.New("peer target without a node id")
	}
	return u, nil
}

// joinURL is ref's path and query on base's scheme, host and path, the way
// httputil.ProxyRequest.SetURL joins them.
func joinURL(base, ref *url.URL) *url.URL {
	u := *base
	u.Path = strings.TrimSuffix(base.Path, "/") + ref.Path
	if base.RawPath != "" || ref.RawPath != "" {
		u.RawPath = strings.TrimSuffix(base.EscapedPath(), "/") + ref.EscapedPath()
	} else {
		u.RawPath = ""
	}
	u.RawQuery = ref.RawQuery
	u.Fragment = ""
	return &u
}
