package peer

import (
	"container/heap"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// DefaultWindow is how far a peer request's time may be from the
// receiver's clock when Verifier.Window is zero.
const DefaultWindow = 60 * time.Second

// DefaultMaxNonces bounds the nonce cache when Verifier.MaxNonces is zero:
// about 80 MiB at most, and room for 8,700 peer requests a second with the
// default window (a nonce is kept up to two windows).
const DefaultMaxNonces = 1 << 20

// Verifier checks the signature of peer requests arriving at node Self.
// Its zero value is not usable: Self and Key are required. It is safe for
// concurrent use; do not copy it after first use.
type Verifier struct {
	Self string // this node's id; requests for another node are refused
	Key  []byte // the cluster key
	// Window is how far a request's time may be from Now, either way.
	// Default DefaultWindow.
	Window time.Duration
	// Now is the clock: the caller passes one corrected to the database's
	// now(), so node clocks do not matter. Default time.Now.
	Now func() time.Time
	// MaxNonces bounds the nonce cache. Default DefaultMaxNonces.
	MaxNonces int
	// Logger gets each refusal at warning level (a node with the wrong
	// key or a stale peer URL, or someone else knocking). Default:
	// discarded.
	Logger *slog.Logger

	mu sync.Mutex
	// seen maps a nonce to when it leaves the window (unix ms); expiry
	// orders the same nonces by that time, so pruning is cheap.
	seen   map[[16]byte]int64
	expiry nonceHeap
	// horizon is the latest time the cache was pruned at: a nonce whose
	// window ended before it may have been forgotten, so its request is
	// refused as stale even if Now has stepped back since (a clock
	// corrected to the database can).
	horizon int64
}

// RefusedError is a peer request that failed verification.
type RefusedError struct {
	Status    int    // 401, or 503 when the nonce cache is full
	Code      string // CodePeerUnauthenticated or CodePeerOverloaded
	Message   string // which check failed; no secrets
	Retryable bool
}

func (e *RefusedError) Error() string { return e.Message }

func unauthenticated(format string, args ...any) *RefusedError {
	return &RefusedError{Status: http.StatusUnauthorized, Code: CodePeerUnauthenticated, Message: fmt.Sprintf(format, args...)}
}

// Middleware verifies each request (Verify), refuses those that fail with
// a JSON error, and passes the others to next with their Origin in the
// context and the peer headers removed.
func (v *Verifier) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		o, verr := v.Verify(r)
		if verr != nil {
			var err *RefusedError
			if !errors.As(verr, &err) {
				err = unauthenticated("%s", verr.Error())
			}
			if v.Logger != nil {
				v.Logger.WarnContext(r.Context(), "peer request refused", "remote", r.RemoteAddr,
					"method", r.Method, "path", r.URL.Path, "status", err.Status, "reason", err.Message)
			}
			writeError(w, err.Status, errorBody{Code: err.Code, Message: err.Message, Retryable: err.Retryable,
				SuggestedAction: suggestion(err)})
			return
		}
		stripPeerHeaders(r.Header)
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), originKey{}, o)))
	})
}

func suggestion(err *RefusedError) string {
	if err.Retryable {
		return "retry in a few seconds"
	}
	return ""
}

// Verify checks r's peer headers and returns the Origin they state; the
// error is a *RefusedError. It
// records the nonce, so a second Verify of the same request fails as a
// replay. It does not change r.
func (v *Verifier) Verify(r *http.Request) (Origin, error) {
	h := r.Header
	from := h.Get(headerFrom)
	who := from // for messages, which quote it before the signature vouches for it
	if len(who) > 64 {
		who = who[:64] + "..."
	}
	for _, name := range [...]string{headerFrom, headerTo, headerTime, headerNonce, headerRoute, headerSignature} {
		if h.Get(name) == "" {
			if who != "" {
				return Origin{}, unauthenticated("peer request from node %q has no %s header: only nodes of this cluster may call the peer listener", who, name)
			}
			return Origin{}, unauthenticated("peer request has no %s header: only nodes of this cluster may call the peer listener", name)
		}
	}
	to, ts, nonceHex, route, client := h.Get(headerTo), h.Get(headerTime), h.Get(headerNonce), h.Get(headerRoute), h.Get(headerClient)
	for _, s := range [...]string{from, to, ts, nonceHex, route, client} {
		// net/http never hands a server such a value; a test or another
		// transport might, and the canonical string relies on it.
		if strings.ContainsAny(s, "\r\n") {
			return Origin{}, unauthenticated("peer request has a header with a line break")
		}
	}
	ms, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return Origin{}, unauthenticated("peer request from node %q has a garbled %s header: want unix milliseconds", who, headerTime)
	}
	var nonce [16]byte
	if len(nonceHex) != 2*len(nonce) {
		return Origin{}, unauthenticated("peer request from node %q has a garbled %s header: want %d hex digits", who, headerNonce, 2*len(nonce))
	}
	if _, err := hex.Decode(nonce[:], []byte(nonceHex)); err != nil {
		return Origin{}, unauthenticated("peer request from node %q has a garbled %s header: want %d hex digits", who, headerNonce, 2*len(nonce))
	}
	sig, err := hex.DecodeString(h.Get(headerSignature))
	if err != nil || len(sig) != sha256.Size {
		return Origin{}, unauthenticated("peer request from node %q has a garbled %s header: want %d hex digits", who, headerSignature, 2*sha256.Size)
	}

	mac := hmac.New(sha256.New, v.Key)
	mac.Write([]byte(canonical(r.Method, r.RequestURI, r.Host, from, to, ts, nonceHex, route, client)))
	if !hmac.Equal(sig, mac.Sum(nil)) {
		return Origin{}, unauthenticated("peer request from node %q has a wrong signature: the nodes do not share the cluster key, or the request was changed on the way", who)
	}
	// From here the headers are the sender's own words.
	if to != v.Self {
		return Origin{}, unauthenticated("peer request from node %q was meant for node %q but reached node %q: the sender has a stale peer URL for %q", who, to, v.Self, to)
	}
	window := v.window()
	now := v.now()
	sent := time.UnixMilli(ms)
	switch age := now.Sub(sent); {
	case age > window:
		return Origin{}, unauthenticated("peer request from node %q is %s old, outside the %s window: check the nodes' clocks", who, seconds(age), seconds(window))
	case -age > window:
		return Origin{}, unauthenticated("peer request from node %q is dated %s ahead of this node's clock, outside the %s window: check the nodes' clocks", who, seconds(-age), seconds(window))
	}
	switch v.remember(nonce, ms+window.Milliseconds(), now.UnixMilli()) {
	case nonceReplayed:
		return Origin{}, unauthenticated("peer request from node %q reuses nonce %s: a replay, refused", who, nonceHex)
	case nonceStale:
		return Origin{}, unauthenticated("peer request from node %q is older than the window (this node's clock stepped back): check the nodes' clocks", who)
	case nonceCacheFull:
		return Origin{}, &RefusedError{Status: http.StatusServiceUnavailable, Code: CodePeerOverloaded, Retryable: true,
			Message: fmt.Sprintf("node %q got more peer requests within the window than it can remember nonces for", v.Self)}
	}
	return Origin{From: from, Route: route, ClientAddr: client}, nil
}

type nonceRefusal int

const (
	nonceFresh nonceRefusal = iota
	nonceReplayed
	nonceStale
	nonceCacheFull
)

// remember records nonce until exp (unix ms), pruning nonces whose window
// ended before now. A full cache refuses: forgetting a nonce still in its
// window would let its request be replayed.
func (v *Verifier) remember(nonce [16]byte, exp, now int64) nonceRefusal {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.seen == nil {
		v.seen = make(map[[16]byte]int64)
	}
	v.horizon = max(v.horizon, now)
	for len(v.expiry) > 0 && v.expiry[0].exp < v.horizon {
		e := heap.Pop(&v.expiry).(nonceEntry)
		delete(v.seen, e.nonce)
	}
	if exp < v.horizon {
		return nonceStale
	}
	if _, ok := v.seen[nonce]; ok {
		return nonceReplayed
	}
	maxNonces := v.MaxNonces
	if maxNonces <= 0 {
		maxNonces = DefaultMaxNonces
	}
	if len(v.seen) >= maxNonces {
		return nonceCacheFull
	}
	v.seen[nonce] = exp
	heap.Push(&v.expiry, nonceEntry{nonce: nonce, exp: exp})
	return nonceFresh
}

func (v *Verifier) window() time.Duration {
	if v.Window > 0 {
		return v.Window
	}
	return DefaultWindow
}

func (v *Verifier) now() time.Time {
	if v.Now != nil {
		return v.Now()
	}
	return time.Now()
}

// seconds formats d as seconds ("75s", "1.5s"), the unit clock skew is
// talked about in.
func seconds(d time.Duration) string {
	return strconv.FormatFloat(d.Round(time.Millisecond).Seconds(), 'f', -1, 64) + "s"
}

type nonceEntry struct {
	nonce [16]byte
	exp   int64
}

// nonceHeap is a min-heap of nonces by expiry.
type nonceHeap []nonceEntry

func (h nonceHeap) Len() int           { return len(h) }
func (h nonceHeap) Less(i, j int) bool { return h[i].exp < h[j].exp }
func (h nonceHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *nonceHeap) Push(x any)        { *h = append(*h, x.(nonceEntry)) }
func (h *nonceHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}
