package httpapi

import (
	"encoding/json"
	"net/http"
	"strconv"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/access"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store"
)

func (s *Server) auditRoutes() []Route {
	return []Route{{Method: "GET", Path: "/v1/audit", Scope: access.Operator, Handler: s.listAudit}}
}

// listAudit is the audit log, newest first (operator).
func (s *Server) listAudit(w http.ResponseWriter, r *http.Request, _ string) error {
	if s.audit == nil {
		return errdefs.New(errdefs.ErrNotFound, errdefs.CodeNotFound, "this server keeps no audit log", "")
	}
	q := r.URL.Query()
	limit := 100
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument, "limit must be 1 to 1000", "")
		}
		limit = n
	}
	es, err := s.audit.List(r.Context(), store.AuditFilter{TeamID: q.Get("team_id"), Action: q.Get("action"), Before: q.Get("before"), Limit: limit})
	if err != nil {
		return err
	}
	out := api.AuditList{Entries: make([]api.AuditEntry, 0, len(es))}
	for _, e := range es {
		v := api.AuditEntry{ID: e.ID, Time: e.Time, TeamID: e.TeamID, ActorTeamID: e.ActorTeamID, ActorKeyID: e.ActorKeyID,
			Action: e.Action, Target: e.Target, Outcome: e.Outcome, Source: e.Source}
		if e.Details != "" {
			v.Details = json.RawMessage(e.Details)
		}
		out.Entries = append(out.Entries, v)
	}
	if len(es) == limit {
		out.Before = es[len(es)-1].ID
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}
