package httpapi

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
)

// SSH is the API's side of the SSH gateway: the teams' keys, and sign-in
// tokens (refused with ssh_disabled when the gateway is off).
type SSH interface {
	Add(ctx context.Context, team string, req api.AddSSHKeyRequest) (api.SSHKey, error)
	List(ctx context.Context, team string) ([]api.SSHKey, error)
	Delete(ctx context.Context, team, id string) error
	Token(ctx context.Context, team, machineID string, ttl time.Duration) (api.SSHToken, error)
}

// WithSSH serves the SSH routes with ssh.
func (s *Server) WithSSH(ssh SSH) *Server {
	s.ssh = ssh
	return s
}

func (s *Server) addSSHKey(w http.ResponseWriter, r *http.Request, team string) error {
	var req api.AddSSHKeyRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	k, err := s.ssh.Add(r.Context(), team, req)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, k)
	return nil
}

func (s *Server) listSSHKeys(w http.ResponseWriter, r *http.Request, team string) error {
	keys, err := s.ssh.List(r.Context(), team)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, api.SSHKeyList{Keys: keys})
	return nil
}

func (s *Server) deleteSSHKey(w http.ResponseWriter, r *http.Request, team string) error {
	if err := s.ssh.Delete(r.Context(), team, r.PathValue("id")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) sshToken(w http.ResponseWriter, r *http.Request, team string) error {
	var req api.SSHTokenRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	if req.TTLSeconds < 0 || int64(req.TTLSeconds) > api.MaxDurationMS/1000 {
		return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("ttl_seconds %d is out of range", req.TTLSeconds), "pass a shorter ttl, or omit it for 10 minutes")
	}
	tok, err := s.ssh.Token(r.Context(), team, r.PathValue("id"), time.Duration(req.TTLSeconds)*time.Second)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, tok)
	return nil
}
