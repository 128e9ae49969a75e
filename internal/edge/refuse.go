package edge

import (
	"encoding/json"
	"html/template"
	"net/http"
	"strings"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/ratelimit"
)

// refusal is an answer the edge gives itself instead of the machine's.
type refusal struct {
	Status    int
	Code      string
	Message   string
	Retryable bool
	Action    string
	// RetryAfter, when non-zero, is sent as Retry-After instead of the
	// 503s' RetryAfter.
	RetryAfter time.Duration
}

// RetryAfter is the Retry-After of every 503 the edge sends (reference
// document 001: "503 Service Unavailable with Retry-After: 5").
const RetryAfter = "5"

// unavailable is the 503 contract: Retry-After and a stable code that says
// whether a retry can succeed.
func unavailable(code, msg string, retryable bool, action string) refusal {
	return refusal{Status: http.StatusServiceUnavailable, Code: code, Message: msg, Retryable: retryable, Action: action}
}

// rateLimited is the answer past a rate limit (Config.RatePerSource,
// RatePerMachine): errdefs' 429 rate_limited.
func rateLimited(what string, after time.Duration) refusal {
	p := errdefs.Classify(errdefs.RateLimited(what, after))
	return refusal{Status: p.Status, Code: p.Code, Message: p.Message, Retryable: p.Retryable, Action: p.SuggestedAction,
		RetryAfter: p.RetryAfter}
}

// refuse writes a refusal: the standard JSON error body, or a small HTML
// page for a browser navigation.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, req *request, f refusal) {
	req.code = f.Code
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	if f.RetryAfter > 0 {
		h.Set("Retry-After", ratelimit.RetryAfterSeconds(f.RetryAfter))
	} else if f.Status == http.StatusServiceUnavailable {
		h.Set("Retry-After", RetryAfter)
	}
	if s.e2bNotFound(req, f) {
		f.Status = http.StatusBadGateway
		if !wantsHTML(r) {
			writeE2BNotFound(w, req, f)
			return
		}
	}
	if wantsHTML(r) {
		h.Set("Content-Type", "text/html; charset=utf-8")
		h.Set("X-Content-Type-Options", "nosniff")
		w.WriteHeader(f.Status)
		errorPage.Execute(w, map[string]any{"Status": f.Status, "StatusText": http.StatusText(f.Status), "Refusal": f})
		return
	}
	h.Set("Content-Type", "application/json")
	w.WriteHeader(f.Status)
	json.NewEncoder(w).Encode(api.Error{Code: f.Code, Message: f.Message, Retryable: f.Retryable, SuggestedAction: f.Action})
}

// wantsHTML says whether a request is a browser's page load.
func wantsHTML(r *http.Request) bool {
	return strings.Contains(r.Header.Get("Accept"), "text/html")
}

// errorPage is the page a browser gets; a retryable one reloads itself
// after Retry-After.
var errorPage = template.Must(template.New("error").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>{{.Status}} {{.StatusText}}</title>
{{if .Refusal.Retryable}}<meta http-equiv="refresh" content="5">{{end}}
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:40em;margin:4em auto;padding:0 1em;color:#222}code{background:#eee;padding:0 .2em}</style>
</head><body>
<h1>{{.Status}} {{.StatusText}}</h1>
<p>{{.Refusal.Message}}.</p>
{{if .Refusal.Action}}<p>{{.Refusal.Action}}.</p>{{end}}
{{if .Refusal.Retryable}}<p>This page reloads itself in 5 seconds.</p>{{end}}
<p><small>Nullspace edge · <code>{{.Refusal.Code}}</code></small></p>
</body></html>
`))
