package e2bcompat

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/access"
	"nullspace.dev/nullspace/internal/errdefs"
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
