// Package access says who a request acts as and what it may do: API keys
// and their scopes, teams, and the principal a key authenticates as.
//
// A key belongs to one team and acts on that team's resources only; its
// scopes say which kinds of calls it may make. The operator scope adds
// what no team key can do (teams, other teams' keys, quotas, the server's
// metrics). The key written at a server's first start is the operator's.
package access

import (
	"fmt"
	"slices"
	"strings"

	"nullspace.dev/nullspace/internal/errdefs"
)

// Scopes. A route names the one it needs (httpapi.Route.Scope).
const (
	// MachinesRead: read machines, their snapshots, volumes, events,
	// metrics, files and command output, templates and SSH keys.
	MachinesRead = "machines:read"
	// MachinesWrite: everything a machine does (create, exec, write
	// files, pause, fork, kill...), and snapshots, volumes and SSH keys.
	MachinesWrite = "machines:write"
	// TemplatesWrite: build and delete the team's templates.
	TemplatesWrite = "templates:write"
	// KeysAdmin: make, list and revoke the team's own keys.
	KeysAdmin = "keys:admin"
	// Operator: all of the above, and teams, every team's keys, quotas and
	// the server's metrics.
	Operator = "operator"
)

// All lists every scope, in the order they are documented.
var All = []string{MachinesRead, MachinesWrite, TemplatesWrite, KeysAdmin, Operator}

// implied are the scopes each scope grants besides itself.
var implied = map[string][]string{
	MachinesWrite:  {MachinesRead},
	TemplatesWrite: {MachinesRead},
	KeysAdmin:      {},
	Operator:       {MachinesRead, MachinesWrite, TemplatesWrite, KeysAdmin},
}

// Scopes is a key's set of scopes.
type Scopes []string

// ParseScopes checks names and returns them sorted without duplicates;
// an empty list is refused (a key that can do nothing is a mistake).
func ParseScopes(names []string) (Scopes, error) {
	var out Scopes
	for _, n := range names {
		n = strings.TrimSpace(n)
		if !slices.Contains(All, n) {
			return nil, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
				fmt.Sprintf("unknown scope %q", n), "use scopes among "+strings.Join(All, ", "))
		}
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	if len(out) == 0 {
		return nil, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			"a key needs at least one scope", "name scopes among "+strings.Join(All, ", "))
	}
	slices.Sort(out)
	return out, nil
}

// Has reports whether the scopes grant scope, directly or by implication.
func (s Scopes) Has(scope string) bool {
	for _, have := range s {
		if have == scope || slices.Contains(implied[have], scope) {
			return true
		}
	}
	return false
}

// Covers reports whether s grants every scope of other: a key may only
// make keys that can do no more than itself.
func (s Scopes) Covers(other Scopes) bool {
	for _, o := range other {
		if !s.Has(o) {
			return false
		}
	}
	return true
}

// Need is the error of a call the key's scopes do not allow.
func Need(scope string) error {
	return errdefs.New(errdefs.ErrForbidden, errdefs.CodeInsufficientScope,
		fmt.Sprintf("this call needs an API key with the %s scope", scope),
		fmt.Sprintf("use a key with %s (nullspace key create --scope %s)", scope, scope))
}
