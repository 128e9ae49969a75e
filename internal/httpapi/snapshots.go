package httpapi

import (
	"net/http"
	"strconv"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/machine"
	"nullspace.dev/nullspace/internal/store"
)

func (s *Server) writeSnapshot(w http.ResponseWriter, r *http.Request, status int, sn *store.Snapshot) {
	writeJSON(w, status, s.machines.SnapshotView(r.Context(), sn))
}

func (s *Server) writeSnapshots(w http.ResponseWriter, r *http.Request, snaps []*store.Snapshot) {
	out := api.SnapshotList{Snapshots: []api.Snapshot{}}
	for _, sn := range snaps {
		out.Snapshots = append(out.Snapshots, s.machines.SnapshotView(r.Context(), sn))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) pauseMachine(w http.ResponseWriter, r *http.Request, team string) error {
	sn, err := s.machines.Pause(r.Context(), team, r.PathValue("id"))
	if err != nil {
		return err
	}
	s.writeSnapshot(w, r, http.StatusOK, sn)
	return nil
}

func (s *Server) setTimeout(w http.ResponseWriter, r *http.Request, team string) error {
	var req api.SetTimeoutRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	rec, err := s.machines.SetTimeout(r.Context(), team, r.PathValue("id"), req)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, machine.LeaseOf(rec, time.Now()))
	return nil
}

func (s *Server) connectMachine(w http.ResponseWriter, r *http.Request, team string) error {
	rec, err := s.machines.Connect(r.Context(), team, r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, s.machines.View(r.Context(), rec))
	return nil
}

func (s *Server) snapshotMachine(w http.ResponseWriter, r *http.Request, team string) error {
	sn, err := s.machines.CreateSnapshot(r.Context(), team, r.PathValue("id"))
	if err != nil {
		return err
	}
	s.writeSnapshot(w, r, http.StatusCreated, sn)
	return nil
}

func (s *Server) forkMachine(w http.ResponseWriter, r *http.Request, team string) error {
	req := api.ForkRequest{Count: 1}
	if err := decode(r, &req); err != nil {
		return err
	}
	sn, children, err := s.machines.Fork(r.Context(), team, r.PathValue("id"), req.Count)
	if err != nil {
		return err
	}
	out := api.ForkResult{Snapshot: s.machines.SnapshotView(r.Context(), sn), Machines: []api.Machine{}}
	for _, c := range children {
		out.Machines = append(out.Machines, s.machines.View(r.Context(), c))
	}
	writeJSON(w, http.StatusCreated, out)
	return nil
}

func (s *Server) listCheckpoints(w http.ResponseWriter, r *http.Request, team string) error {
	snaps, err := s.machines.Checkpoints(r.Context(), team, r.PathValue("id"))
	if err != nil {
		return err
	}
	s.writeSnapshots(w, r, snaps)
	return nil
}

func (s *Server) checkpointMachine(w http.ResponseWriter, r *http.Request, team string) error {
	sn, err := s.machines.Checkpoint(r.Context(), team, r.PathValue("id"))
	if err != nil {
		return err
	}
	s.writeSnapshot(w, r, http.StatusCreated, sn)
	return nil
}

func (s *Server) restoreCheckpoint(w http.ResponseWriter, r *http.Request, team string) error {
	rec, err := s.machines.RestoreCheckpoint(r.Context(), team, r.PathValue("id"), r.PathValue("snapshot_id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, s.machines.View(r.Context(), rec))
	return nil
}

func (s *Server) listSnapshots(w http.ResponseWriter, r *http.Request, team string) error {
	q := r.URL.Query()
	snaps, err := s.machines.ListSnapshots(r.Context(), team, machine.SnapshotFilter{MachineID: q.Get("machine_id"), Kind: q.Get("kind")})
	if err != nil {
		return err
	}
	s.writeSnapshots(w, r, snaps)
	return nil
}

func (s *Server) getSnapshot(w http.ResponseWriter, r *http.Request, team string) error {
	sn, err := s.machines.GetSnapshot(r.Context(), team, r.PathValue("id"))
	if err != nil {
		return err
	}
	s.writeSnapshot(w, r, http.StatusOK, sn)
	return nil
}

func (s *Server) deleteSnapshot(w http.ResponseWriter, r *http.Request, team string) error {
	force := false
	if v := r.URL.Query().Get("force"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument, "force must be true or false", "use ?force=true")
		}
		force = b
	}
	if err := s.machines.DeleteSnapshot(r.Context(), team, r.PathValue("id"), force); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) resumeSnapshot(w http.ResponseWriter, r *http.Request, team string) error {
	rec, err := s.machines.Resume(r.Context(), team, r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, s.machines.View(r.Context(), rec))
	return nil
}

func (s *Server) listVolumes(w http.ResponseWriter, r *http.Request, team string) error {
	vols, err := s.machines.ListVolumes(r.Context(), team)
	if err != nil {
		return err
	}
	if vols == nil {
		vols = []api.Volume{}
	}
	writeJSON(w, http.StatusOK, api.VolumeList{Volumes: vols})
	return nil
}

func (s *Server) createVolume(w http.ResponseWriter, r *http.Request, team string) error {
	var req api.CreateVolumeRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	v, err := s.machines.CreateVolume(r.Context(), team, req.Name)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, v)
	return nil
}

func (s *Server) deleteVolume(w http.ResponseWriter, r *http.Request, team string) error {
	if err := s.machines.DeleteVolume(r.Context(), team, r.PathValue("name")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
