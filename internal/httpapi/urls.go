package httpapi

import (
	"fmt"
	"net/http"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
)

// machineURL issues the public URL of a machine's port. The URL names the
// machine's lineage: it reaches the latest execution, wakes it when it is
// paused and auto-resumable, and stays valid across pauses and resumes.
func (s *Server) machineURL(w http.ResponseWriter, r *http.Request, team string) error {
	var req api.MachineURLRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	if s.urls == nil {
		return errdefs.New(errdefs.ErrFailedPrecondition, errdefs.CodeFailedPrecondition,
			"this server runs without an edge, so machine ports have no public URLs", "start the server with --edge-addr")
	}
	if req.ExpiresInMS < 0 || req.ExpiresInMS > api.MaxDurationMS {
		return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("expires_in_ms %d is out of range", req.ExpiresInMS),
			fmt.Sprintf("give 1 to %d milliseconds (a year), or omit it for a URL that does not expire", api.MaxDurationMS))
	}
	rec, err := s.machines.Get(r.Context(), team, r.PathValue("id"))
	if err != nil {
		return err
	}
	head, err := s.machines.LineageHead(r.Context(), rec.LineageID)
	if err != nil {
		return err
	}
	if head.State == api.StateKilled || head.State == api.StateKilling || head.State == api.StateFailed {
		return errdefs.New(errdefs.ErrFailedPrecondition, errdefs.CodeMachineNotRunning,
			fmt.Sprintf("machine %s is %s: its ports have no URL", head.ID, head.State), "create a new machine")
	}
	var expires time.Time
	if req.ExpiresInMS > 0 {
		expires = time.Now().Add(time.Duration(req.ExpiresInMS) * time.Millisecond)
	}
	u, err := s.urls.URL(rec.LineageID, req.Port, expires, head.PublicPorts)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, u)
	return nil
}
