// Package reqbody tells a request body the client broke from a failure of
// whatever the body was being sent to. The API (JSON bodies, bodies
// streamed to a machine's agent) and the edge (bodies proxied to a
// machine) wrap request bodies in a Reader; when the request fails and the
// Reader saw a read error, the failure is the client's: a body too large,
// too slow (internal/minrate) or badly framed (a malformed chunk), answered
// as such, not as an error of the machine.
package reqbody

import (
	"errors"
	"fmt"
	"io"
	"net/http"

	"nullspace.dev/nullspace/internal/errdefs"
)

// Reader is a client's request body that keeps the error that ended it.
type Reader struct {
	rc io.ReadCloser
	// Err is the read error other than io.EOF, if one ended the body.
	Err error
}

// New wraps body.
func New(body io.ReadCloser) *Reader { return &Reader{rc: body} }

func (b *Reader) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		b.Err = err
	}
	return n, err
}

// Close closes the body.
func (b *Reader) Close() error { return b.rc.Close() }

// Error is the public error of a body read error: 413 body_too_large for
// an http.MaxBytesReader's limit, the error itself when it is public
// already (minrate's body_too_slow), else 400 invalid_argument.
func Error(err error) error {
	var tooLarge *http.MaxBytesError
	var public *errdefs.Error
	switch {
	case errors.As(err, &tooLarge):
		return &errdefs.Error{Class: errdefs.ErrInvalidArgument, Code: errdefs.CodeBodyTooLarge, Status: http.StatusRequestEntityTooLarge,
			Message:         fmt.Sprintf("the request body is larger than the %d bytes this route accepts", tooLarge.Limit),
			SuggestedAction: "send a smaller body; files go through PUT /v1/machines/{id}/files", Err: err}
	case errors.As(err, &public):
		return err
	}
	return errdefs.Wrap(err, errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
		"the request body could not be read: "+err.Error(), "send the body with a correct Content-Length or chunked encoding")
}
