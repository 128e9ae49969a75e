package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/machine"
	"nullspace.dev/nullspace/internal/reqbody"
	"nullspace.dev/nullspace/internal/routing"
)

// Where says which node of a cluster serves a route (see internal/routing).
type Where int

const (
	// Here: the node the call reached (reads from the database, keys,
	// templates).
	Here Where = iota
	// Owner: the node that runs machine {id}'s sandbox, if another does.
	Owner
	// Wake: Owner, or where placement wakes machine {id} if it runs nowhere.
	Wake
	// WakeSnapshot: Wake of the paused machine of snapshot {id}.
	WakeSnapshot
	// Place: where placement puts a new machine.
	Place
)

// WithRouter makes the server one node of a cluster: calls go to the node
// their route says (nil: every call is served here).
func (s *Server) WithRouter(r *routing.Router) *Server {
	s.router = r
	return s
}

// route takes r to the node that serves it and reports true, or reports
// false for a call to serve here. A call that came from a peer is served
// here; a lifecycle call on a node cut off from the database is refused.
func (s *Server) route(w http.ResponseWriter, r *http.Request, rt Route, team string) bool {
	if s.router == nil || rt.Where == Here {
		return false
	}
	if err := s.router.Check(); err != nil {
		s.writeError(w, r, err)
		return true
	}
	if routing.Forwarded(r) {
		return false
	}
	node, err := s.target(r, rt, team)
	if err != nil {
		s.writeError(w, r, err)
		return true
	}
	if node == routing.Here {
		return false
	}
	s.router.Forward(w, r, node, "api")
	return true
}

func (s *Server) target(r *http.Request, rt Route, team string) (string, error) {
	ctx := r.Context()
	switch rt.Where {
	case Owner:
		return s.router.Owner(ctx, team, r.PathValue("id"))
	case Wake:
		return s.router.Wake(ctx, team, r.PathValue("id"))
	case WakeSnapshot:
		return s.router.WakeSnapshot(ctx, team, r.PathValue("id"))
	case Place:
		// The body says what the machine needs; it is read here, and
		// again by the handler or the node it goes to.
		body, err := io.ReadAll(reqbody.New(http.MaxBytesReader(nil, r.Body, MaxBodyBytes)))
		if err != nil {
			return routing.Here, nil // the handler reads it again and says what is wrong
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		var req api.CreateMachineRequest
		if json.Unmarshal(body, &req) != nil {
			return routing.Here, nil
		}
		return s.router.Create(ctx, team, req)
	}
	return routing.Here, nil
}

// elsewhere takes a call whose handler found its machine running on
// another node (it moved there between the routing and the handler) to
// that node, once, if nothing of the call was read or written yet.
func (s *Server) elsewhere(w http.ResponseWriter, r *http.Request, err error) bool {
	var e *machine.ElsewhereError
	if s.router == nil || routing.Forwarded(r) || !errors.As(err, &e) || r.ContentLength != 0 {
		return false
	}
	s.router.Forward(w, r, e.Node, "api")
	return true
}
