package e2bcompat

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/access"
	"nullspace.dev/nullspace/internal/audit"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store"
)

// scopedKeys authenticates each key with its scopes, of team-a.
type scopedKeys map[string]access.Scopes

func (k scopedKeys) Authenticate(_ context.Context, key string) (*access.Principal, error) {
	if sc, ok := k[key]; ok {
		return &access.Principal{TeamID: "team-a", KeyID: "id-" + key, Scopes: sc}, nil
	}
	return nil, errdefs.ErrUnauthenticated
}

// TestReadKeyGetsNoEnvdToken: a machines:read key may read a sandbox but
// neither act on it nor get its envd access token (which lets its holder
// run commands in it); a machines:write key gets the token.
func TestReadKeyGetsNoEnvdToken(t *testing.T) {
	f := newFake()
	rec := f.add("team-a", api.StateRunning)
	s, err := New(t.Context(), Config{DataDir: t.TempDir(), Domain: "localhost:7701", WakeTimeout: time.Second}, f,
		scopedKeys{"ro": {access.MachinesRead}, "rw": {access.MachinesWrite}}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	if resp := call(t, srv, "ro", "POST", "/sandboxes/"+sandboxID(rec)+"/pause", "", nil); resp.StatusCode != 403 {
		t.Fatalf("pause with a read key: %d, want 403", resp.StatusCode)
	}
	for key, want := range map[string]string{"ro": "", "rw": s.accessToken(rec.LineageID)} {
		var d struct {
			SandboxID       string `json:"sandboxID"`
			EnvdAccessToken string `json:"envdAccessToken"`
		}
		call(t, srv, key, "GET", "/sandboxes/"+sandboxID(rec), "", &d)
		if d.SandboxID == "" || d.EnvdAccessToken != want {
			t.Errorf("GET with the %s key: sandbox %q token %q, want token %q", key, d.SandboxID, d.EnvdAccessToken, want)
		}
	}
}

// TestRefusalsAudited: the E2B API's refusals (no key, a bad key, a
// missing scope) reach the audit log, as the API's do.
func TestRefusalsAudited(t *testing.T) {
	f := newFake()
	rec := f.add("team-a", api.StateRunning)
	st := &auditStore{}
	s, err := New(t.Context(), Config{DataDir: t.TempDir(), Domain: "localhost:7701", WakeTimeout: time.Second}, f,
		scopedKeys{"ro": {access.MachinesRead}}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	s.WithAudit(audit.New(st, slog.New(slog.DiscardHandler)))
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	call(t, srv, "", "GET", "/sandboxes", "", nil)
	call(t, srv, "ro", "POST", "/sandboxes/"+sandboxID(rec)+"/pause", "", nil)
	for range 100 {
		if got := st.outcomes(); len(got) == 2 {
			if got[0] != "unauthenticated" || got[1] != "insufficient_scope" {
				t.Fatalf("audited outcomes %v", got)
			}
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("audited outcomes %v, want unauthenticated and insufficient_scope", st.outcomes())
}

type auditStore struct {
	mu      sync.Mutex
	entries []store.AuditEntry
}

func (a *auditStore) AppendAudit(_ context.Context, e store.AuditEntry) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.entries = append(a.entries, e)
	return nil
}

func (a *auditStore) ListAudit(context.Context, store.AuditFilter) ([]store.AuditEntry, error) {
	return nil, nil
}

func (a *auditStore) outcomes() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for _, e := range a.entries {
		out = append(out, e.Outcome)
	}
	return out
}
