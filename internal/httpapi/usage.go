package httpapi

import (
	"fmt"
	"net/http"
	"strings"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/access"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/usage"
)

func (s *Server) usageRoutes() []Route {
	return []Route{
		{Method: "GET", Path: "/v1/usage", Scope: access.MachinesRead, Handler: s.getUsage},
	}
}

// defaultUsageRange is the range of GET /v1/usage without from.
const defaultUsageRange = 24 * time.Hour

// getUsage is the caller's team's usage over [from, to) (default: the
// last 24 hours), grouped by team, machine and day, as JSON or, with
// Accept: text/csv, CSV. An operator key may name another team with
// team_id, or every team with team_id=*.
func (s *Server) getUsage(w http.ResponseWriter, r *http.Request, team string) error {
	q := r.URL.Query()
	if id := q.Get("team_id"); id == "*" && access.From(r.Context()).Operator() {
		team = "" // every team's
	} else if id != "" {
		a, err := s.accessService()
		if err != nil {
			return err
		}
		if team, err = a.ActingTeam(r.Context(), access.From(r.Context()), id); err != nil {
			return err
		}
	}
	to := time.Now().UTC()
	from := time.Time{}
	for _, p := range []struct {
		name string
		dst  *time.Time
	}{{"to", &to}, {"from", &from}} {
		v := q.Get(p.name)
		if v == "" {
			continue
		}
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
				fmt.Sprintf("%s %q is not an RFC 3339 time", p.name, v), "give a time like 2026-12-01T00:00:00Z")
		}
		*p.dst = t.UTC()
	}
	if from.IsZero() {
		from = to.Add(-defaultUsageRange)
	}
	if !from.Before(to) {
		return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("from (%s) is not before to (%s)", from.Format(time.RFC3339), to.Format(time.RFC3339)),
			"give a from earlier than to")
	}
	by, ok := usage.ParseGroupBy(q.Get("group_by"))
	if !ok {
		return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("group_by %q is not a list of team, machine and day", q.Get("group_by")),
			"use group_by=team, machine or day, or several joined by commas (machine,day)")
	}
	rows, err := s.machines.Usage(r.Context(), team, from, to, by)
	if err != nil {
		return err
	}
	if strings.Contains(r.Header.Get("Accept"), "text/csv") {
		w.Header().Set("Content-Type", "text/csv; charset=utf-8")
		w.WriteHeader(http.StatusOK)
		return usage.WriteCSV(w, rows)
	}
	out := api.Usage{From: from, To: to, GroupBy: groupNames(by), Rows: make([]api.UsageRow, 0, len(rows))}
	for _, r := range rows {
		out.Rows = append(out.Rows, api.UsageRow{TeamID: r.TeamID, MachineID: r.MachineID, Day: r.Day,
			RunningSeconds: r.RunningSeconds, VCPUSeconds: r.VCPUSeconds, MemoryGiBSeconds: r.MemoryGiBSeconds,
			StorageGiBSeconds: r.StorageGiBSeconds, Creates: r.Creates, Resumes: r.Resumes, EgressBytes: r.EgressBytes})
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func groupNames(by usage.GroupBy) []string {
	out := []string{}
	for _, g := range []struct {
		on   bool
		name string
	}{{by.Team, "team"}, {by.Machine, "machine"}, {by.Day, "day"}} {
		if g.on {
			out = append(out, g.name)
		}
	}
	return out
}
