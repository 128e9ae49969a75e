package httpapi

import (
	"net/http"
	"strconv"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/machine"
	"nullspace.dev/nullspace/internal/page"
	"nullspace.dev/nullspace/internal/store"
)

func (s *Server) writeSnapshot(w http.ResponseWriter, r *http.Request, status int, sn *store.Snapshot) {
	writeJSON(w, status, s.machines.SnapshotView(r.Context(), sn))
}

// writeSnapshots writes a page of snapshots; more says whether another
// follows, whose token scope and order make.
func (s *Server) writeSnapshots(w http.ResponseWriter, r *http.Request, snaps []*store.Snapshot, more bool, scope page.Scope, byGeneration bool) {
	out := api.SnapshotList{Snapshots: s.machines.SnapshotViews(r.Context(), snaps)}
	if more {
		c := store.SnapshotCursorOf(snaps[len(snaps)-1], byGeneration)
		if byGeneration {
			out.NextToken = page.Encode(scope, strconv.Itoa(c.Generation), c.ID)
		} else {
			out.NextToken = page.EncodeTimeID(scope, c.Created, c.ID)
		}
	}
	writeJSON(w, http.StatusOK, out)
}

// snapshotPage reads a snapshot list's limit and next_token.
func snapshotPage(r *http.Request, scope page.Scope, byGeneration bool) (machine.SnapshotPage, error) {
	q := r.URL.Query()
	limit, err := page.Limit(q.Get("limit"))
	if err != nil {
		return machine.SnapshotPage{}, err
	}
	p := machine.SnapshotPage{Limit: limit}
	pos, err := page.Decode(scope, q.Get("next_token"), 2)
	if err != nil || pos == nil {
		return p, err
	}
	p.After.ID = pos[1]
	if byGeneration {
		p.After.Generation, err = strconv.Atoi(pos[0])
	} else {
		p.After.Created, err = time.Parse(time.RFC3339Nano, pos[0])
	}
	if err != nil {
		return p, page.Malformed()
	}
	return p, nil
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
	var req api.CreateSnapshotRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	sn, err := s.machines.CreateSnapshot(r.Context(), team, r.PathValue("id"), req.Name)
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
	scope := page.NewScope("checkpoints", team, r.PathValue("id"))
	p, err := snapshotPage(r, scope, true)
	if err != nil {
		return err
	}
	snaps, more, err := s.machines.Checkpoints(r.Context(), team, r.PathValue("id"), p)
	if err != nil {
		return err
	}
	s.writeSnapshots(w, r, snaps, more, scope, true)
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

// pinCheckpoint pins or unpins a state of a machine's history.
func (s *Server) pinCheckpoint(pinned bool) func(w http.ResponseWriter, r *http.Request, team string) error {
	return func(w http.ResponseWriter, r *http.Request, team string) error {
		sn, err := s.machines.PinCheckpoint(r.Context(), team, r.PathValue("id"), r.PathValue("snapshot_id"), pinned)
		if err != nil {
			return err
		}
		s.writeSnapshot(w, r, http.StatusOK, sn)
		return nil
	}
}

func (s *Server) listSnapshots(w http.ResponseWriter, r *http.Request, team string) error {
	q := r.URL.Query()
	f := machine.SnapshotFilter{MachineID: q.Get("machine_id"), Kind: q.Get("kind"), Name: q.Get("name")}
	scope := page.NewScope("snapshots", team, f.MachineID, f.Kind, f.Name)
	p, err := snapshotPage(r, scope, false)
	if err != nil {
		return err
	}
	snaps, more, err := s.machines.ListSnapshots(r.Context(), team, f, p)
	if err != nil {
		return err
	}
	s.writeSnapshots(w, r, snaps, more, scope, false)
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
	scope := page.NewScope("volumes", team)
	after, limit, err := namePage(r, scope)
	if err != nil {
		return err
	}
	vols, more, err := s.machines.ListVolumes(r.Context(), team, after, limit)
	if err != nil {
		return err
	}
	out := api.VolumeList{Volumes: vols}
	if out.Volumes == nil {
		out.Volumes = []api.Volume{}
	}
	if more {
		out.NextToken = page.Encode(scope, vols[len(vols)-1].Name)
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// namePage reads the limit and next_token of a list ordered by name.
func namePage(r *http.Request, scope page.Scope) (after string, limit int, err error) {
	q := r.URL.Query()
	if limit, err = page.Limit(q.Get("limit")); err != nil {
		return "", 0, err
	}
	pos, err := page.Decode(scope, q.Get("next_token"), 1)
	if err != nil || pos == nil {
		return "", limit, err
	}
	return pos[0], limit, nil
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
