// Package cors lets browsers call the API from other origins: the
// TypeScript SDK in a web page, say. It is off unless the server is given
// origins (--cors-origin); the API authenticates with a bearer key, never
// with cookies, so no credentials mode is offered.
package cors

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
)

// Methods and headers a page may use; Retry-After is readable by it so the
// SDK can honour it.
const (
	allowMethods  = "GET, POST, PUT, DELETE"
	allowHeaders  = "Authorization, Content-Type, Accept"
	exposeHeaders = "Retry-After, Content-Length, Content-Type"
	maxAge        = "600"
)

// Policy is the set of origins allowed to call the API.
type Policy struct {
	any     bool
	origins map[string]bool
}

// Parse checks origins: each is "*" (any origin) or scheme://host[:port],
// as a browser sends it in Origin (no path, no trailing slash).
func Parse(origins []string) (*Policy, error) {
	p := &Policy{origins: map[string]bool{}}
	for _, o := range origins {
		o = strings.TrimSpace(o)
		if o == "" {
			continue
		}
		if o == "*" {
			p.any = true
			continue
		}
		u, err := url.Parse(o)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
			(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
			return nil, fmt.Errorf("cors origin %q: want * or scheme://host[:port], e.g. https://app.example.com", o)
		}
		p.origins[u.Scheme+"://"+u.Host] = true
	}
	return p, nil
}

// Enabled reports whether any origin is allowed.
func (p *Policy) Enabled() bool { return p != nil && (p.any || len(p.origins) > 0) }

func (p *Policy) allows(origin string) bool {
	return origin != "" && (p.any || p.origins[origin])
}

// Wrap answers preflight requests from allowed origins and adds the CORS
// headers to their requests; everything else reaches next unchanged (a
// disallowed origin gets no CORS headers, so the browser refuses the
// answer). A disabled policy returns next itself.
func (p *Policy) Wrap(next http.Handler) http.Handler {
	if !p.Enabled() {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin := r.Header.Get("Origin")
		if origin != "" {
			w.Header().Add("Vary", "Origin")
		}
		if !p.allows(origin) {
			next.ServeHTTP(w, r)
			return
		}
		h := w.Header()
		h.Set("Access-Control-Allow-Origin", origin)
		if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
			// A preflight carries no API key: answer it before auth.
			h.Set("Access-Control-Allow-Methods", allowMethods)
			h.Set("Access-Control-Allow-Headers", allowHeaders)
			h.Set("Access-Control-Max-Age", maxAge)
			w.WriteHeader(http.StatusNoContent)
			return
		}
		h.Set("Access-Control-Expose-Headers", exposeHeaders)
		next.ServeHTTP(w, r)
	})
}
