package httpapi

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/access"
	"nullspace.dev/nullspace/internal/errdefs"
)

// WithAccess serves teams and keys (/v1/teams, /v1/keys) from a.
func (s *Server) WithAccess(a *access.Service) *Server {
	s.access = a
	return s
}

// accessRoutes are the routes of teams and keys.
func (s *Server) accessRoutes() []Route {
	return []Route{
		{Method: "POST", Path: "/v1/teams", Scope: access.Operator, Handler: s.createTeam},
		{Method: "GET", Path: "/v1/teams", Scope: access.Operator, Handler: s.listTeams},
		{Method: "GET", Path: "/v1/teams/{id}", Scope: access.Operator, Handler: s.getTeam},
		{Method: "DELETE", Path: "/v1/teams/{id}", Scope: access.Operator, Handler: s.deleteTeam},

		{Method: "POST", Path: "/v1/keys", Scope: access.KeysAdmin, Handler: s.createKey},
		{Method: "GET", Path: "/v1/keys", Scope: access.KeysAdmin, Handler: s.listKeys},
		// Any valid key may describe itself (which team, which scopes).
		{Method: "GET", Path: "/v1/keys/current", Handler: s.currentKey},
		{Method: "GET", Path: "/v1/keys/{id}", Scope: access.KeysAdmin, Handler: s.getKey},
		{Method: "DELETE", Path: "/v1/keys/{id}", Scope: access.KeysAdmin, Handler: s.revokeKey},
	}
}

func (s *Server) accessService() (*access.Service, error) {
	if s.access == nil {
		return nil, errdefs.New(errdefs.ErrNotFound, errdefs.CodeNotFound, "this server does not manage teams and keys", "")
	}
	return s.access, nil
}

func (s *Server) createTeam(w http.ResponseWriter, r *http.Request, _ string) error {
	a, err := s.accessService()
	if err != nil {
		return err
	}
	var req api.CreateTeamRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	t, err := a.CreateTeam(r.Context(), req)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, t)
	return nil
}

func (s *Server) listTeams(w http.ResponseWriter, r *http.Request, _ string) error {
	a, err := s.accessService()
	if err != nil {
		return err
	}
	ts, err := a.Teams(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, api.TeamList{Teams: ts})
	return nil
}

func (s *Server) getTeam(w http.ResponseWriter, r *http.Request, _ string) error {
	a, err := s.accessService()
	if err != nil {
		return err
	}
	t, err := a.Team(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, t)
	return nil
}

// deleteTeam deletes a team. One that still has machines (running, paused
// or stopped) is refused unless force=true; forced, the team is marked
// deleted and its keys revoked first (so that none of them makes another
// machine meanwhile), then its machines are killed and its snapshots and
// volumes deleted, each with its events. If that is cut short, the same
// call again finishes it, though the team is already gone.
func (s *Server) deleteTeam(w http.ResponseWriter, r *http.Request, _ string) error {
	a, err := s.accessService()
	if err != nil {
		return err
	}
	id := r.PathValue("id")
	force, err := boolParam(r, "force")
	if err != nil {
		return err
	}
	by := access.From(r.Context())
	if id == by.TeamID {
		return a.DeleteTeam(r.Context(), by, id) // refused: its own team
	}
	_, terr := a.Team(r.Context(), id)
	gone := errors.Is(terr, errdefs.ErrNotFound)
	if terr != nil && !gone {
		return terr
	}
	n, err := s.machines.TeamMachines(r.Context(), id)
	if err != nil {
		return err
	}
	if gone && n == 0 {
		return terr
	}
	if n > 0 && !force {
		return errdefs.New(errdefs.ErrFailedPrecondition, errdefs.CodeTeamInUse,
			fmt.Sprintf("team %s has %d machines (running, paused or stopped)", id, n),
			"kill them first, or delete with force=true (its machines are killed and its snapshots and volumes deleted)")
	}
	if !gone {
		if err := a.DeleteTeam(r.Context(), by, id); err != nil {
			return err
		}
	}
	// A create let in just before the keys went may land after a pass:
	// passes go on until none is left.
	for pass := 0; ; pass++ {
		if err := s.machines.EndTeam(r.Context(), id); err != nil {
			return fmt.Errorf("end team %s: %w", id, err)
		}
		if n, err = s.machines.TeamMachines(r.Context(), id); err != nil || n == 0 || pass == 2 {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("end team %s: %w", id, err)
	}
	if n > 0 {
		return fmt.Errorf("end team %s: %d machines left after three passes", id, n)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func boolParam(r *http.Request, name string) (bool, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("%s=%q is not true or false", name, v), fmt.Sprintf("send %s=true or %s=false", name, name))
	}
	return b, nil
}

func (s *Server) createKey(w http.ResponseWriter, r *http.Request, _ string) error {
	a, err := s.accessService()
	if err != nil {
		return err
	}
	var req api.CreateAPIKeyRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	k, err := a.CreateKey(r.Context(), access.From(r.Context()), req)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, k)
	return nil
}

func (s *Server) listKeys(w http.ResponseWriter, r *http.Request, _ string) error {
	a, err := s.accessService()
	if err != nil {
		return err
	}
	ks, err := a.Keys(r.Context(), access.From(r.Context()), r.URL.Query().Get("team_id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, api.APIKeyList{Keys: ks})
	return nil
}

func (s *Server) currentKey(w http.ResponseWriter, r *http.Request, _ string) error {
	return s.describeKey(w, r, "current")
}

func (s *Server) getKey(w http.ResponseWriter, r *http.Request, _ string) error {
	return s.describeKey(w, r, r.PathValue("id"))
}

func (s *Server) describeKey(w http.ResponseWriter, r *http.Request, id string) error {
	a, err := s.accessService()
	if err != nil {
		return err
	}
	k, err := a.Key(r.Context(), access.From(r.Context()), id)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, k)
	return nil
}

func (s *Server) revokeKey(w http.ResponseWriter, r *http.Request, _ string) error {
	a, err := s.accessService()
	if err != nil {
		return err
	}
	k, err := a.RevokeKey(r.Context(), access.From(r.Context()), r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, k)
	return nil
}
