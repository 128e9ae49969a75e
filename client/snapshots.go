package client

import (
	"context"
	"net/http"
	"net/url"

	"nullspace.dev/nullspace/api"
)

// Pause checkpoints a running machine into a hibernate snapshot and stops it
// (POST /v1/machines/{id}/pause). The id stays as a paused alias; bring the
// machine back with Connect or Resume, which return a new machine id.
// Pausing a paused machine returns its snapshot.
func (c *Client) Pause(ctx context.Context, id string) (*api.Snapshot, error) {
	var s api.Snapshot
	if err := c.do(ctx, request{method: http.MethodPost, path: machinePath(id, "pause")}, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// Resume restores a paused machine's hibernate snapshot into a new machine
// of the same lineage (POST /v1/snapshots/{id}/resume). A snapshot that is
// not the lineage's latest state fails with code snapshot_superseded.
func (c *Client) Resume(ctx context.Context, snapshotID string) (*api.Machine, error) {
	var m api.Machine
	if err := c.do(ctx, request{method: http.MethodPost, path: snapshotPath(snapshotID, "resume")}, &m); err != nil {
		return nil, err
	}
	return &m, nil
}

// Connect returns the running latest execution of id's lineage, resuming it
// first if it is paused (POST /v1/machines/{id}/connect). id may be any id
// of the lineage; use the returned machine's ID afterwards.
func (c *Client) Connect(ctx context.Context, id string) (*api.Machine, error) {
	var m api.Machine
	if err := c.do(ctx, request{method: http.MethodPost, path: machinePath(id, "connect")}, &m); err != nil {
		return nil, err
	}
	return &m, nil
}

// CreateSnapshot takes a reusable snapshot of a running machine, which keeps
// running (POST /v1/machines/{id}/snapshots). Create machines from it with
// CreateMachine and api.CreateMachineRequest.SnapshotID.
func (c *Client) CreateSnapshot(ctx context.Context, id string) (*api.Snapshot, error) {
	return c.CreateSnapshotWith(ctx, id, api.CreateSnapshotRequest{})
}

// CreateSnapshotWith is CreateSnapshot with options: req.Name names the
// snapshot (unique in the team: a taken name fails with code
// snapshot_name_exists), and the name then works wherever its id does.
func (c *Client) CreateSnapshotWith(ctx context.Context, id string, req api.CreateSnapshotRequest) (*api.Snapshot, error) {
	r := request{method: http.MethodPost, path: machinePath(id, "snapshots")}
	if req != (api.CreateSnapshotRequest{}) {
		r.json = req
	}
	var s api.Snapshot
	if err := c.do(ctx, r, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// Fork snapshots a running machine and creates count children from the
// snapshot (POST /v1/machines/{id}/fork). count 0 asks for the server's
// default, 1; at most 16.
func (c *Client) Fork(ctx context.Context, id string, count int) (*api.ForkResult, error) {
	r := request{method: http.MethodPost, path: machinePath(id, "fork")}
	if count != 0 {
		r.json = api.ForkRequest{Count: count}
	}
	var res api.ForkResult
	if err := c.do(ctx, r, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// Checkpoints returns the history of id's lineage, by generation
// (GET /v1/machines/{id}/checkpoints).
// It reads every page.
func (c *Client) Checkpoints(ctx context.Context, id string) ([]api.Snapshot, error) {
	return c.allSnapshots(ctx, machinePath(id, "checkpoints"), url.Values{})
}

// allSnapshots reads every page of a snapshot list.
func (c *Client) allSnapshots(ctx context.Context, path string, q url.Values) ([]api.Snapshot, error) {
	return allPages(ctx, c, path, q, func(l *api.SnapshotList) ([]api.Snapshot, string) { return l.Snapshots, l.NextToken })
}

// Checkpoint adds a checkpoint of a running machine to its history; the
// machine keeps running (POST /v1/machines/{id}/checkpoints).
func (c *Client) Checkpoint(ctx context.Context, id string) (*api.Snapshot, error) {
	var s api.Snapshot
	if err := c.do(ctx, request{method: http.MethodPost, path: machinePath(id, "checkpoints")}, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// RestoreCheckpoint replaces the state of the latest execution of id's
// lineage with the snapshot snapshotID from its history, keeping that
// execution's id, and returns it running
// (POST /v1/machines/{id}/checkpoints/{snapshot_id}/restore).
func (c *Client) RestoreCheckpoint(ctx context.Context, id, snapshotID string) (*api.Machine, error) {
	var m api.Machine
	path := machinePath(id, "checkpoints", url.PathEscape(snapshotID), "restore")
	if err := c.do(ctx, request{method: http.MethodPost, path: path}, &m); err != nil {
		return nil, err
	}
	return &m, nil
}

// ListSnapshots lists snapshots, oldest first (GET /v1/snapshots, every
// page). Empty
// machineID and kind do not filter; kind is one of api.SnapshotHibernate,
// api.SnapshotReusable, api.SnapshotCheckpoint, api.SnapshotDisk.
func (c *Client) ListSnapshots(ctx context.Context, machineID, kind string) ([]api.Snapshot, error) {
	return c.ListSnapshotsWhere(ctx, SnapshotFilter{MachineID: machineID, Kind: kind})
}

// SnapshotFilter filters ListSnapshotsWhere. Zero values do not filter.
type SnapshotFilter struct {
	MachineID string // snapshots taken of this machine id
	Kind      string // api.SnapshotHibernate, api.SnapshotReusable, ...
	Name      string // the snapshot of this name (none or one)
}

// ListSnapshotsWhere lists the snapshots that match f, oldest first
// (GET /v1/snapshots, every page).
func (c *Client) ListSnapshotsWhere(ctx context.Context, f SnapshotFilter) ([]api.Snapshot, error) {
	q := url.Values{}
	if f.MachineID != "" {
		q.Set("machine_id", f.MachineID)
	}
	if f.Kind != "" {
		q.Set("kind", f.Kind)
	}
	if f.Name != "" {
		q.Set("name", f.Name)
	}
	return c.allSnapshots(ctx, "/v1/snapshots", q)
}

// GetSnapshot returns one snapshot by id or name (GET /v1/snapshots/{id}).
func (c *Client) GetSnapshot(ctx context.Context, id string) (*api.Snapshot, error) {
	var s api.Snapshot
	if err := c.do(ctx, request{method: http.MethodGet, path: snapshotPath(id)}, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// DeleteSnapshot deletes a snapshot by id or name, which frees its name
// (DELETE /v1/snapshots/{id}). A snapshot
// that paused or live machines depend on fails with code snapshot_in_use
// unless force is set; forced, paused machines whose state it held become
// failed.
func (c *Client) DeleteSnapshot(ctx context.Context, id string, force bool) error {
	var q url.Values
	if force {
		q = url.Values{"force": {"true"}}
	}
	return c.do(ctx, request{method: http.MethodDelete, path: snapshotPath(id), query: q}, nil)
}

func snapshotPath(id string, rest ...string) string {
	p := "/v1/snapshots/" + url.PathEscape(id)
	for _, r := range rest {
		p += "/" + r
	}
	return p
}

// PinCheckpoint pins (pinned true) or unpins a state of id's history
// (POST /v1/machines/{id}/checkpoints/{snapshot_id}/pin or /unpin): a
// pinned one is kept whatever the machine's checkpoint retention.
func (c *Client) PinCheckpoint(ctx context.Context, id, snapshotID string, pinned bool) (*api.Snapshot, error) {
	verb := "unpin"
	if pinned {
		verb = "pin"
	}
	var s api.Snapshot
	if err := c.do(ctx, request{method: http.MethodPost, path: machinePath(id, "checkpoints", url.PathEscape(snapshotID), verb)}, &s); err != nil {
		return nil, err
	}
	return &s, nil
}
