package agentclient

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"nullspace.dev/nullspace/internal/errdefs"
)

func TestErrorMapping(t *testing.T) {
	tests := []struct {
		name       string
		status     int
		body       string
		wantClass  error
		wantCode   string
		wantMsg    string
		wantAction string
	}{
		{"file not found", 404, `{"code":"file_not_found","message":"/x does not exist","suggested_action":"check"}`,
			errdefs.ErrNotFound, "file_not_found", "/x does not exist", "check"},
		{"command not found", 400, `{"code":"command_not_found","message":"m"}`,
			errdefs.ErrInvalidArgument, "command_not_found", "m", ""},
		{"file too large", 413, `{"code":"file_too_large","message":"m"}`,
			errdefs.ErrInvalidArgument, "file_too_large", "m", ""},
		{"permission denied", 403, `{"code":"permission_denied","message":"m"}`,
			errdefs.ErrFailedPrecondition, "permission_denied", "m", ""},
		{"directory not empty", 409, `{"code":"directory_not_empty","message":"m"}`,
			errdefs.ErrFailedPrecondition, "directory_not_empty", "m", ""},
		{"process not found", 404, `{"code":"process_not_found","message":"m"}`,
			errdefs.ErrNotFound, "process_not_found", "m", ""},
		{"unauthenticated", 401, `{"code":"unauthenticated","message":"m"}`,
			errdefs.ErrUnauthenticated, "unauthenticated", "m", ""},
		{"unknown code uses the status", 429, `{"code":"something_new","message":"m"}`,
			errdefs.ErrResourceExhausted, "something_new", "m", ""},
		{"not JSON", 502, `<html>bad gateway</html>`,
			errdefs.ErrUnavailable, errdefs.CodeUnavailable, "the machine agent answered 502 Bad Gateway", ""},
		{"internal", 500, `{"code":"internal","message":"internal error"}`,
			errdefs.ErrInternal, "internal", "internal error", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if got := r.Header.Get("Authorization"); got != "Bearer tok" {
					t.Errorf("got Authorization %q, want %q", got, "Bearer tok")
				}
				w.WriteHeader(tt.status)
				w.Write([]byte(tt.body))
			}))
			defer srv.Close()
			c := New(srv.URL+"/", "tok", nil)
			defer c.Close()
			_, err := c.Stat(t.Context(), "/x")
			var e *errdefs.Error
			if !errors.As(err, &e) {
				t.Fatalf("got %v (%T), want *errdefs.Error", err, err)
			}
			if !errors.Is(err, tt.wantClass) || e.Code != tt.wantCode || e.Message != tt.wantMsg || e.SuggestedAction != tt.wantAction {
				t.Errorf("got class %v code %q message %q action %q, want %v %q %q %q",
					e.Class, e.Code, e.Message, e.SuggestedAction, tt.wantClass, tt.wantCode, tt.wantMsg, tt.wantAction)
			}
		})
	}
}

func TestStreamCutShort(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(`{"type":"stdout","data":"aGk="}` + "\n" + `{"type":"std`))
	}))
	defer srv.Close()
	c := New(srv.URL, "tok", nil)
	defer c.Close()
	s, err := c.Output(t.Context(), 1, OutputOptions{Follow: true})
	if err != nil {
		t.Fatalf("Output: %v", err)
	}
	defer s.Close()
	if !s.Next() || string(s.Event().Data) != "hi" {
		t.Fatalf("got %+v, %v, want a stdout event with hi", s.Event(), s.Err())
	}
	if s.Next() {
		t.Fatalf("got another event %+v, want the end", s.Event())
	}
	if err := s.Err(); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("got %v, want an agent_unavailable error", err)
	}
}
