package reqbody

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"nullspace.dev/nullspace/internal/errdefs"
)

// TestError: what the client gets for each way its body can break.
func TestError(t *testing.T) {
	over := New(http.MaxBytesReader(httptest.NewRecorder(), io.NopCloser(strings.NewReader("0123456789")), 4))
	_, readErr := io.ReadAll(over)
	slow := errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeBodyTooSlow, "too slow", "")
	for _, tt := range []struct {
		name   string
		err    error
		status int
		code   string
	}{
		{"over the limit", over.Err, http.StatusRequestEntityTooLarge, errdefs.CodeBodyTooLarge},
		{"public already", slow, 400, errdefs.CodeBodyTooSlow},
		{"malformed chunk", errors.New("invalid byte in chunk length"), http.StatusBadRequest, errdefs.CodeInvalidArgument},
	} {
		if p := errdefs.Classify(Error(tt.err)); p.Status != tt.status || p.Code != tt.code {
			t.Errorf("%s: %d %s, want %d %s", tt.name, p.Status, p.Code, tt.status, tt.code)
		}
	}
	if readErr == nil || over.Err == nil {
		t.Fatalf("a body over its limit: read error %v, kept %v; want both", readErr, over.Err)
	}
	ok := New(io.NopCloser(strings.NewReader("body")))
	if _, err := io.ReadAll(ok); err != nil || ok.Err != nil {
		t.Fatalf("a whole body: %v, kept %v; want neither (io.EOF is its end)", err, ok.Err)
	}
}
