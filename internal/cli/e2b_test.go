package cli

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestE2BEnv(t *testing.T) {
	tests := []struct {
		name, health string
		want         []string
		wantCode     int
		wantErr      string
	}{
		{name: "with an edge", health: `{"ok":true,"version":"v","e2b":{"url":"http://127.0.0.1:7703","domain":"localhost:7701"}}`,
			want: []string{"export E2B_API_URL=http://127.0.0.1:7703", "export E2B_SANDBOX_URL=http://127.0.0.1:7703",
				"export E2B_API_KEY=test-key", "export E2B_DOMAIN=localhost:7701"}},
		{name: "without an edge", health: `{"ok":true,"version":"v","e2b":{"url":"http://10.0.0.1:7703"}}`,
			want: []string{"export E2B_API_URL=http://10.0.0.1:7703", "export E2B_SANDBOX_URL=http://10.0.0.1:7703", "export E2B_API_KEY=test-key"}},
		{name: "off", health: `{"ok":true,"version":"v"}`, wantCode: exitError, wantErr: "--e2b-compat"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.Write([]byte(tc.health))
			}))
			defer srv.Close()
			out, errOut, code := run(t, t.Context(), &fakeServer{Server: srv}, "", "e2b", "env")
			if code != tc.wantCode || !strings.Contains(errOut, tc.wantErr) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", code, errOut, tc.wantCode, tc.wantErr)
			}
			if got := strings.Split(strings.TrimSpace(out), "\n"); tc.want != nil && strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("printed\n%s\nwant\n%s", out, strings.Join(tc.want, "\n"))
			}
		})
	}
	// A Nullspace key is printed in its E2B form, which E2B's SDKs 2.27.0
	// to 2.45.0 require.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"ok":true,"version":"v","e2b":{"url":"http://127.0.0.1:7703"}}`))
	}))
	defer srv.Close()
	out, _, _ := run(t, t.Context(), &fakeServer{Server: srv}, "", "e2b", "env", "--api-key", "ns_00ff")
	if !strings.Contains(out, "export E2B_API_KEY=e2b_00ff\n") {
		t.Errorf("printed\n%s\nwant E2B_API_KEY=e2b_00ff", out)
	}
	if got := shellQuote("it's"); got != `'it'"'"'s'` {
		t.Errorf("shellQuote: %s", got)
	}
}
