package agentclient

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"nullspace.dev/nullspace/api"
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

// The lifecycle calls go to their routes, and SetToken changes the token
// of every later call, also while others are under way.
func TestLifecycleAndSetToken(t *testing.T) {
	var mu sync.Mutex
	var seen []string // "METHOD /path token"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Method+" "+r.URL.Path+" "+r.Header.Get("Authorization"))
		mu.Unlock()
		switch r.URL.Path {
		case "/health":
			w.Write([]byte(`{"ok":true,"version":"v","restore":{"machine_id":"m","restore_count":2}}`))
		case "/lifecycle/prepare":
			var req api.AgentPrepareRequest
			if err := json.NewDecoder(r.Body).Decode(&req); err != nil || len(req.Hooks) != 1 || req.TimeoutMS != 5 {
				t.Errorf("prepare: got %+v, %v, want the request sent", req, err)
			}
			w.Write([]byte(`{"hooks":[{"command":"h","exit_code":3}],"sync_ms":7}`))
		case "/lifecycle/restored":
			var req api.AgentRestoredRequest
			if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Token != "new" || req.Files["/etc/hosts"] != "x" {
				t.Errorf("restored: got %+v, %v, want the request sent", req, err)
			}
			w.Write([]byte(`{"clock_skew_ms":-4}`))
		default:
			w.WriteHeader(http.StatusOK)
			w.Write([]byte(`{}`))
		}
	}))
	defer srv.Close()
	c := New(srv.URL, "old", nil)
	defer c.Close()
	ctx := t.Context()

	prep, err := c.Prepare(ctx, api.AgentPrepareRequest{Hooks: []string{"h"}, TimeoutMS: 5})
	if err != nil || prep.SyncMS != 7 || len(prep.Hooks) != 1 || prep.Hooks[0].ExitCode != 3 {
		t.Errorf("Prepare: got %+v, %v, want the agent's answer", prep, err)
	}
	res, err := c.Restored(ctx, api.AgentRestoredRequest{MachineID: "m", Hostname: "m", Token: "new",
		Files: map[string]string{"/etc/hosts": "x"}})
	if err != nil || res.ClockSkewMS != -4 {
		t.Errorf("Restored: got %+v, %v, want the agent's answer", res, err)
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() { c.Stat(ctx, "/") })
	}
	c.SetToken("new")
	wg.Wait()
	h, err := c.Health(ctx)
	if err != nil || h.Restore != (api.AgentRestoreInfo{MachineID: "m", RestoreCount: 2}) {
		t.Errorf("Health: got %+v, %v, want the restore info", h, err)
	}

	mu.Lock()
	defer mu.Unlock()
	want := []string{"POST /lifecycle/prepare Bearer old", "POST /lifecycle/restored Bearer old"}
	for i, w := range want {
		if seen[i] != w {
			t.Errorf("call %d: got %q, want %q", i, seen[i], w)
		}
	}
	if last, want := seen[len(seen)-1], "GET /health Bearer new"; last != want {
		t.Errorf("last call: got %q, want %q", last, want)
	}
}
