package edge

import (
	"crypto/subtle"
	"encoding/json"
	"net/http"
	"strings"

	"nullspace.dev/nullspace/internal/errdefs"
)

// E2B is what the edge does for E2B's SDKs when the server runs the E2B
// compatibility API (serve --e2b-compat). E2B's clients reach a sandbox's
// envd and its ports on the same per-sandbox hosts, {port}-{sandbox}.
// {domain}, and read E2B's answers there.
type E2B struct {
	// API serves E2B's API: its control plane on the host api.{domain},
	// and envd, E2B's in-machine API, on 49983-{sandbox}.{domain} (the
	// agent's port, which the edge never forwards). The SDKs go there when
	// only E2B_DOMAIN is set, as on E2B, and so do the download and upload
	// URLs they sign.
	API http.Handler
	// TrafficToken is the token that opens a private sandbox's ports
	// (network.allowPublicTraffic: false) in the TrafficTokenHeader: E2B's
	// shape of the guard signed URLs are.
	TrafficToken func(lineageID string) string
}

// TrafficTokenHeader carries a sandbox's traffic access token.
const TrafficTokenHeader = "E2b-Traffic-Access-Token"

// ServeE2B turns on what the edge does for E2B's SDKs. Call it before the
// edge serves.
func (s *Server) ServeE2B(e E2B) { s.e2b = &e }

// e2bAPIHost is the host label of E2B's control plane under the domain.
const e2bAPIHost = "api"

// e2bAPI says whether a request is for E2B's API: on api.{domain}, or
// envd on an E2B sandbox's host. l and lerr are raw parsed as a label.
func (s *Server) e2bAPI(raw string, l label, lerr error, pathForm bool) bool {
	if s.e2b == nil || s.e2b.API == nil || pathForm {
		return false
	}
	return raw == e2bAPIHost || lerr == nil && l.Port == AgentPort && l.Sig == "" && l.Expires.IsZero()
}

// trafficTokenOK says whether a request carries the traffic access token
// of lineage. The header is taken off: it is the edge's, not the app's.
func (s *Server) trafficTokenOK(r *http.Request, lineageID string) bool {
	tok := r.Header.Get(TrafficTokenHeader)
	r.Header.Del(TrafficTokenHeader)
	if tok == "" || s.e2b == nil || s.e2b.TrafficToken == nil {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(tok), []byte(s.e2b.TrafficToken(lineageID))) == 1
}

// trafficTokenRefusal answers an unsigned request for a private sandbox's
// port without its token: 403, as E2B does.
func trafficTokenRefusal() refusal {
	return refusal{Status: http.StatusForbidden, Code: errdefs.CodeTrafficTokenInvalid,
		Message: "this machine's ports are not public: the request needs the sandbox's traffic access token in the " +
			TrafficTokenHeader + " header, or a signed URL",
		Action: "send the trafficAccessToken that Sandbox.create returned, or get a signed URL with POST /v1/machines/{id}/urls"}
}

// e2bNotFound says whether a refusal goes out in E2B's shape: an E2B
// sandbox that was killed, on the unsigned URL E2B's getHost makes. E2B's
// clients expect 502 and E2B's body; ours rides along (error_code,
// suggested_action). A machine of the Nullspace API keeps its 404, and a
// lineage the server no longer knows, whose origin is unknown, is
// answered as Nullspace's.
func (s *Server) e2bNotFound(req *request, f refusal) bool {
	return s.e2b != nil && req.e2b && f.Code == errdefs.CodeMachineNotFound && req.label.Sig == "" && req.label.LineageID != ""
}

func writeE2BNotFound(w http.ResponseWriter, req *request, f refusal) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusBadGateway)
	json.NewEncoder(w).Encode(map[string]any{
		"code": http.StatusBadGateway, "message": "The sandbox was not found",
		"sandboxId":  strings.TrimPrefix(req.label.LineageID, lineagePrefix),
		"error_code": f.Code, "suggested_action": f.Action,
	})
}
