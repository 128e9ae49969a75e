package httpapi

import (
	"fmt"
	"net/http"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/access"
	"nullspace.dev/nullspace/internal/audit"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store"
)

func (s *Server) quotaRoutes() []Route {
	return []Route{
		{Method: "GET", Path: "/v1/quotas", Scope: access.MachinesRead, Handler: s.getQuotas},
		{Method: "PUT", Path: "/v1/teams/{id}/quota", Scope: access.Operator, Handler: s.setQuota},
	}
}

// getQuotas shows the caller's team's limits and use; an operator key may
// name another team with team_id.
func (s *Server) getQuotas(w http.ResponseWriter, r *http.Request, team string) error {
	if id := r.URL.Query().Get("team_id"); id != "" {
		a, err := s.accessService()
		if err != nil {
			return err
		}
		if team, err = a.ActingTeam(r.Context(), access.From(r.Context()), id); err != nil {
			return err
		}
	}
	return s.writeQuotas(w, r, team, http.StatusOK)
}

func (s *Server) writeQuotas(w http.ResponseWriter, r *http.Request, team string, status int) error {
	q, u, err := s.machines.TeamQuota(r.Context(), team)
	if err != nil {
		return err
	}
	writeJSON(w, status, api.Quotas{TeamID: team,
		Limits: api.QuotaLimits{RunningMachines: q.RunningMachines, VCPUs: q.VCPUs, MemoryMB: q.MemoryMB,
			SnapshotBytes: q.SnapshotBytes, CreatesPerMinute: q.CreatesPerMinute, APIRate: q.APIRate, APIBurst: q.APIBurst},
		Usage: api.QuotaUsage{RunningMachines: u.RunningMachines, VCPUs: u.VCPUs, MemoryMB: u.MemoryMB,
			SnapshotBytes: u.SnapshotBytes, CreatesPerMinute: u.Creates}})
	return nil
}

// setQuota replaces a team's own limits (operator). Lowering one below
// the use touches nothing running: new machines are refused until the
// use is under it.
func (s *Server) setQuota(w http.ResponseWriter, r *http.Request, _ string) error {
	a, err := s.accessService()
	if err != nil {
		return err
	}
	id := r.PathValue("id")
	if _, err := a.Team(r.Context(), id); err != nil {
		return err
	}
	var req api.SetQuotaRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	q := store.DefaultQuota
	for _, f := range []struct {
		name string
		v    *int64
		dst  *int64
	}{
		{"running_machines", req.RunningMachines, &q.RunningMachines},
		{"vcpus", req.VCPUs, &q.VCPUs},
		{"memory_mb", req.MemoryMB, &q.MemoryMB},
		{"snapshot_bytes", req.SnapshotBytes, &q.SnapshotBytes},
		{"creates_per_minute", req.CreatesPerMinute, &q.CreatesPerMinute},
		{"api_rate", req.APIRate, &q.APIRate},
		{"api_burst", req.APIBurst, &q.APIBurst},
	} {
		if f.v == nil {
			continue
		}
		if *f.v < 0 {
			return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
				fmt.Sprintf("%s %d is negative", f.name, *f.v), "send 0 for no limit, or leave it out for the server's default")
		}
		*f.dst = *f.v
	}
	if err := s.machines.SetQuota(r.Context(), id, q); err != nil {
		return err
	}
	a.Record(r.Context(), audit.QuotaSet, id, id, req)
	return s.writeQuotas(w, r, id, http.StatusOK)
}
