// Package peer is how the nodes of one cluster call each other: a request
// for a machine whose sandbox runs on another node is forwarded to that node
// in one hop (Client.Forward), a node calls another for itself (Client.Do),
// and the SSH gateway and E2B's envd reach a machine's agent on another node
// through a TCP relay (Client.Dial, Relays). The receiving side is a separate
// "peer listener" whose handlers sit behind Verifier.Middleware.
//
// # Protocol
//
// Every peer request carries these headers, all signed:
//
//	X-Nullspace-Peer-From       the sending node's id
//	X-Nullspace-Peer-To         the node the sender means to reach
//	X-Nullspace-Peer-Time       when it was signed, unix milliseconds
//	X-Nullspace-Peer-Nonce      16 random bytes, 32 lower-case hex digits
//	X-Nullspace-Peer-Route      what kind of call: "api", "e2b", "edge", "relay", ...
//	X-Nullspace-Peer-Client     the original client's address ("" for a node's own call)
//	X-Nullspace-Peer-Signature  hex HMAC-SHA256(cluster key, canonical string)
//
// The canonical string is the version tag and the signed fields, each ended
// by a newline:
//
//	nullspace-peer-v1\n METHOD\n REQUEST-URI\n HOST\n FROM\n TO\n TIME\n NONCE\n ROUTE\n CLIENT\n
//
// REQUEST-URI is the request target as sent on the wire (escaped path and
// raw query, the server's http.Request.RequestURI) and HOST the Host header.
// No field can hold a newline (HTTP forbids it in a request line and in
// header values, and the verifier refuses one anyway), so the string is
// unambiguous.
//
// The receiver (Verifier) refuses a request whose headers are missing or
// garbled, whose signature is wrong (compared in constant time), whose To
// is not itself, whose time is more than Window (60 s) away from its clock,
// or whose nonce it has seen within the window. Both sides read time from a
// clock corrected to the database's now(), so node clocks do not matter. The
// nonce cache remembers a nonce until its time leaves the window; it is
// bounded, and when full it refuses requests (503, retryable) rather than
// forget nonces that are still in the window, which would reopen replays.
//
// # What is and is not authenticated
//
// The signature proves the request was made by a holder of the cluster key
// (a node; the key is a cluster secret kept in the database), and binds it
// to its method, URI, Host, target node, route, client address and time.
// A captured request cannot be replayed (nonce and window), sent to another
// node (To), or turned into another call (method, URI, route).
//
// Headers other than the peer headers, and the body, are not signed. Bodies
// stream (uploads of gigabytes, a WebSocket's frames, a relay's bytes), so
// signing them would mean buffering them or a trailer the receiver checks
// only after the handler has acted on the body. The peer listener is meant
// to be on a private network between the nodes: the signature keeps other
// hosts on that network from calling it, not an attacker who can rewrite
// packets in flight. Whoever can do that needs TLS between the nodes, which
// this package leaves to the listener's configuration.
//
// A request that came through the peer listener carries its verified Origin
// in its context (FromContext); a request from a public listener never
// does. Handlers use that to never forward a forwarded request again.
package peer

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
)

// Header names. The prefix is how both sides find and strip them.
const (
	headerPrefix    = "X-Nullspace-Peer-"
	headerFrom      = headerPrefix + "From"
	headerTo        = headerPrefix + "To"
	headerTime      = headerPrefix + "Time"
	headerNonce     = headerPrefix + "Nonce"
	headerRoute     = headerPrefix + "Route"
	headerClient    = headerPrefix + "Client"
	headerSignature = headerPrefix + "Signature"
)

// signatureVersion starts the canonical string, so a later format cannot
// be confused with this one.
const signatureVersion = "nullspace-peer-v1"

// Route kinds in use. Any short string is allowed; these are the ones the
// server mounts.
const (
	RouteAPI   = "api"
	RouteE2B   = "e2b"
	RouteEdge  = "edge"
	RouteRelay = "relay"
)

// Public error codes this package writes.
const (
	// CodePeerUnauthenticated: a peer request failed verification (401).
	// Only nodes see it; the message says which check failed.
	CodePeerUnauthenticated = "peer_unauthenticated"
	// CodePeerOverloaded: the receiving node's nonce cache is full (503,
	// retryable).
	CodePeerOverloaded = "peer_overloaded"
	// CodeNodeUnreachable: the node that owns the machine did not answer
	// (503, retryable).
	CodeNodeUnreachable = "node_unreachable"
)

// Origin is what a verified peer request says about where it came from.
type Origin struct {
	From       string // the node that sent it
	Route      string // the route kind it was sent for
	ClientAddr string // the original client's address; "" for a node's own call
}

type originKey struct{}

// FromContext returns the Origin of a request that came through
// Verifier.Middleware. ok is false for a request from a public listener:
// only then may a handler forward it to another node.
func FromContext(ctx context.Context) (o Origin, ok bool) {
	o, ok = ctx.Value(originKey{}).(Origin)
	return o, ok
}

// canonical is the string the signature covers (see the package doc).
func canonical(method, requestURI, host, from, to, ts, nonce, route, client string) string {
	var b strings.Builder
	b.Grow(len(signatureVersion) + len(method) + len(requestURI) + len(host) + len(from) + len(to) +
		len(ts) + len(nonce) + len(route) + len(client) + 10)
	for _, s := range [...]string{signatureVersion, method, requestURI, host, from, to, ts, nonce, route, client} {
		b.WriteString(s)
		b.WriteByte('\n')
	}
	return b.String()
}

// stripPeerHeaders deletes every X-Nullspace-Peer-* header, however it is
// spelled.
func stripPeerHeaders(h http.Header) {
	for k := range h {
		if len(k) >= len(headerPrefix) && strings.EqualFold(k[:len(headerPrefix)], headerPrefix) {
			delete(h, k)
		}
	}
}

// errorBody is the JSON of an error answer, the API's shape.
type errorBody struct {
	Code            string `json:"code"`
	Message         string `json:"message"`
	Retryable       bool   `json:"retryable"`
	SuggestedAction string `json:"suggested_action,omitempty"`
}

func writeError(w http.ResponseWriter, status int, body errorBody) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}
