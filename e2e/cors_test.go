package e2e

import (
	"net/http"
	"testing"
)

const corsOrigin = "http://app.e2e.test"

// TestCORS: with --cors-origin, a browser on that origin gets its preflight
// answered without a key and may read the API's answers (Retry-After
// included); a page on another origin gets no CORS headers, so its browser
// refuses the answer.
func TestCORS(t *testing.T) {
	do := func(method, origin string, headers map[string]string) *http.Response {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), method, "http://"+env.inst.Addr+"/v1/machines", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Origin", origin)
		for k, v := range headers {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	pre := do("OPTIONS", corsOrigin, map[string]string{"Access-Control-Request-Method": "POST",
		"Access-Control-Request-Headers": "authorization, content-type"})
	if pre.StatusCode != http.StatusNoContent || pre.Header.Get("Access-Control-Allow-Origin") != corsOrigin ||
		pre.Header.Get("Access-Control-Allow-Headers") == "" || pre.Header.Get("Access-Control-Allow-Methods") == "" {
		t.Fatalf("preflight: %d %v", pre.StatusCode, pre.Header)
	}
	got := do("GET", corsOrigin, map[string]string{"Authorization": "Bearer " + env.key})
	if got.StatusCode != http.StatusOK || got.Header.Get("Access-Control-Allow-Origin") != corsOrigin ||
		got.Header.Get("Access-Control-Expose-Headers") == "" {
		t.Fatalf("GET from the allowed origin: %d %v", got.StatusCode, got.Header)
	}
	// Auth still applies to the request itself.
	if noKey := do("GET", corsOrigin, nil); noKey.StatusCode != http.StatusUnauthorized || noKey.Header.Get("Access-Control-Allow-Origin") != corsOrigin {
		t.Fatalf("GET without a key: %d %v", noKey.StatusCode, noKey.Header)
	}
	for _, method := range []string{"OPTIONS", "GET"} {
		other := do(method, "http://evil.example", map[string]string{"Access-Control-Request-Method": "POST", "Authorization": "Bearer " + env.key})
		if other.Header.Get("Access-Control-Allow-Origin") != "" {
			t.Fatalf("%s from another origin got CORS headers: %v", method, other.Header)
		}
	}
}
