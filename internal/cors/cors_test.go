package cors

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in      []string
		enabled bool
		ok      bool
	}{
		{nil, false, true},
		{[]string{"*"}, true, true},
		{[]string{"https://app.example.com", "http://localhost:5173"}, true, true},
		{[]string{"https://app.example.com/"}, true, true},
		{[]string{"app.example.com"}, false, false},
		{[]string{"ftp://x"}, false, false},
		{[]string{"https://x/path"}, false, false},
		{[]string{"https://u:p@x"}, false, false},
	} {
		p, err := Parse(tc.in)
		if (err == nil) != tc.ok {
			t.Errorf("Parse(%q) error %v, want ok %v", tc.in, err, tc.ok)
			continue
		}
		if err == nil && p.Enabled() != tc.enabled {
			t.Errorf("Parse(%q).Enabled() = %v", tc.in, p.Enabled())
		}
	}
}

func TestWrap(t *testing.T) {
	p, err := Parse([]string{"https://app.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	reached := 0
	api := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached++
		w.Header().Set("Retry-After", "5")
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	h := p.Wrap(api)
	for _, tc := range []struct {
		name, method, origin, reqMethod string
		status                          int
		allowOrigin                     string
		reaches                         bool
	}{
		{"preflight, allowed", "OPTIONS", "https://app.example.com", "POST", 204, "https://app.example.com", false},
		{"request, allowed", "POST", "https://app.example.com", "", 503, "https://app.example.com", true},
		{"preflight, other origin", "OPTIONS", "https://evil.example", "POST", 503, "", true},
		{"request, other origin", "GET", "https://evil.example", "", 503, "", true},
		{"no origin", "GET", "", "", 503, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := reached
			r := httptest.NewRequest(tc.method, "/v1/machines", nil)
			if tc.origin != "" {
				r.Header.Set("Origin", tc.origin)
			}
			if tc.reqMethod != "" {
				r.Header.Set("Access-Control-Request-Method", tc.reqMethod)
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			if w.Code != tc.status || w.Header().Get("Access-Control-Allow-Origin") != tc.allowOrigin || (reached > before) != tc.reaches {
				t.Fatalf("status %d, allow-origin %q, reached %v; want %d, %q, %v", w.Code,
					w.Header().Get("Access-Control-Allow-Origin"), reached > before, tc.status, tc.allowOrigin, tc.reaches)
			}
			if tc.allowOrigin != "" && tc.method != "OPTIONS" && w.Header().Get("Access-Control-Expose-Headers") == "" {
				t.Fatal("allowed request without Access-Control-Expose-Headers: a page could not read Retry-After")
			}
			if tc.method == "OPTIONS" && tc.status == 204 && w.Header().Get("Access-Control-Allow-Headers") == "" {
				t.Fatal("preflight without Access-Control-Allow-Headers")
			}
		})
	}
	// Off by default: nothing is added, a preflight goes to the API (404).
	off, _ := Parse(nil)
	r := httptest.NewRequest("OPTIONS", "/v1/machines", nil)
	r.Header.Set("Origin", "https://app.example.com")
	r.Header.Set("Access-Control-Request-Method", "POST")
	w := httptest.NewRecorder()
	off.Wrap(api).ServeHTTP(w, r)
	if w.Header().Get("Access-Control-Allow-Origin") != "" || w.Code != 503 {
		t.Fatalf("disabled policy: status %d, headers %v", w.Code, w.Header())
	}
}
