// Package minrate cuts off request bodies that arrive slower than a minimum
// rate, so that a client trickling an upload (a byte a second) cannot hold a
// connection and a handler for ever, without a ReadTimeout that would also
// cut off large uploads and long streams that are merely long.
//
// Only the time a handler spends waiting for the client counts: a handler
// that reads slowly (its own consumer is slow) never makes the client too
// slow. The limit is enforced with the connection's read deadline
// (http.ResponseController), so a cut-off client is disconnected, not just
// answered.
package minrate

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"nullspace.dev/nullspace/internal/errdefs"
)

// Rate is a minimum transfer rate: at least Bytes in every Window spent
// waiting for the client. A body that ends sooner is never too slow.
type Rate struct {
	Bytes  int64
	Window time.Duration
}

// Default is the servers' rate: 1 KiB in every 10 s of waiting. A client
// sending a byte a second is cut off after 10 s.
var Default = Rate{Bytes: 1 << 10, Window: 10 * time.Second}

func (r Rate) String() string { return fmt.Sprintf("%d bytes per %s", r.Bytes, r.Window) }

// Handler wraps h so that every request body (but those exempt says to
// leave alone; exempt may be nil) that arrives slower than rate fails with
// a *errdefs.Error of code body_too_slow (408) and its connection is closed.
// A rate with no Bytes or no Window returns h unchanged.
func Handler(h http.Handler, rate Rate, exempt func(*http.Request) bool) http.Handler {
	if rate.Bytes <= 0 || rate.Window <= 0 {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 || exempt != nil && exempt(r) {
			h.ServeHTTP(w, r)
			return
		}
		b := &body{ReadCloser: r.Body, rc: http.NewResponseController(w), rate: rate}
		r.Body = b
		h.ServeHTTP(w, r)
		if b.err == nil {
			// The handler left some of the body unread: net/http reads
			// what is left (up to 256 KiB) to reuse the connection, and
			// may take one window for it, not as long as the client likes.
			b.rc.SetReadDeadline(time.Now().Add(rate.Window))
		}
	})
}

// TooSlow is the error of a body cut off for its rate.
func TooSlow(rate Rate, cause error) error {
	return &errdefs.Error{Class: errdefs.ErrInvalidArgument, Code: errdefs.CodeBodyTooSlow, Status: http.StatusRequestTimeout,
		Message:         fmt.Sprintf("the request body arrived slower than the server's minimum of %s", rate),
		SuggestedAction: "send the body without pauses, or in smaller requests",
		Err:             cause}
}

// body is a request body read under the rate. Reads come from one
// goroutine at a time (the handler's or a transport's), as for any body.
type body struct {
	io.ReadCloser
	rc   *http.ResponseController
	rate Rate
	// Of the current window: time spent blocked in Read, bytes read.
	waited time.Duration
	got    int64
	err    error // sticky: too slow, or io.EOF
}

func (b *body) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	start := time.Now()
	// The connection's deadline is what is left of the window; a server
	// that cannot set deadlines (a test recorder) reads without one.
	b.rc.SetReadDeadline(start.Add(b.rate.Window - b.waited))
	n, err := b.ReadCloser.Read(p)
	b.waited += time.Since(start)
	b.got += int64(n)
	if b.got >= b.rate.Bytes {
		b.waited, b.got = 0, 0
	}
	switch {
	case errors.Is(err, io.EOF):
		// The whole body is in: what the connection reads next (the next
		// request, the server's check for a closed connection, which
		// starts now) is not bound by the rate, and a Read after the end
		// must not set a deadline on it again.
		b.rc.SetReadDeadline(time.Time{})
		b.err = err
	case errors.Is(err, os.ErrDeadlineExceeded) || b.waited >= b.rate.Window:
		// The deadline stays: the connection is closed rather than read on.
		b.rc.SetReadDeadline(time.Now())
		b.err = TooSlow(b.rate, err)
		return n, b.err
	}
	return n, err
}
