package access

import (
	"net"
	"net/http"

	"nullspace.dev/nullspace/internal/apikey"
	"nullspace.dev/nullspace/internal/audit"
	"nullspace.dev/nullspace/internal/errdefs"
)

// Source is the client's address of r, without its port.
func Source(r *http.Request) string {
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		return host
	}
	return r.RemoteAddr
}

// Refusal is the audit entry of a request refused with err before its
// handler (no key, a key that is not valid, a missing scope, a rate
// limit), under target: p made it if its key was valid; else key is the
// key offered, of which only the shown prefix is kept.
func Refusal(r *http.Request, target string, p *Principal, key string, err error) audit.Entry {
	e := audit.Entry{Target: target, Outcome: errdefs.Classify(err).Code, Source: Source(r)}
	if p != nil {
		e.TeamID, e.ActorTeamID, e.ActorKeyID = p.TeamID, p.TeamID, p.KeyID
	} else {
		e.ActorKeyID = apikey.ShownPrefix(key)
	}
	return e
}
