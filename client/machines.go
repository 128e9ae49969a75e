package client

import (
	"context"
	"net/http"
	"net/url"
	"slices"

	"nullspace.dev/nullspace/api"
)

// ListOptions filters ListMachines. Zero values do not filter.
type ListOptions struct {
	State    string            // e.g. api.StateRunning
	Metadata map[string]string // every pair must match
}

func (o ListOptions) query() url.Values {
	q := url.Values{}
	if o.State != "" {
		q.Set("state", o.State)
	}
	keys := make([]string, 0, len(o.Metadata))
	for k := range o.Metadata {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		q.Add("metadata", k+"="+o.Metadata[k])
	}
	return q
}

// CreateMachine creates and starts a machine (POST /v1/machines).
func (c *Client) CreateMachine(ctx context.Context, req api.CreateMachineRequest) (*api.Machine, error) {
	var m api.Machine
	if err := c.do(ctx, request{method: http.MethodPost, path: "/v1/machines", json: req}, &m); err != nil {
		return nil, err
	}
	return &m, nil
}

// ListMachines lists the machines that match opts (GET /v1/machines).
func (c *Client) ListMachines(ctx context.Context, opts ListOptions) ([]api.Machine, error) {
	var l api.MachineList
	if err := c.do(ctx, request{method: http.MethodGet, path: "/v1/machines", query: opts.query()}, &l); err != nil {
		return nil, err
	}
	return l.Machines, nil
}

// GetMachine returns one machine (GET /v1/machines/{id}).
func (c *Client) GetMachine(ctx context.Context, id string) (*api.Machine, error) {
	var m api.Machine
	if err := c.do(ctx, request{method: http.MethodGet, path: machinePath(id)}, &m); err != nil {
		return nil, err
	}
	return &m, nil
}

// KillMachine kills a machine and returns it in its final state
// (DELETE /v1/machines/{id}).
func (c *Client) KillMachine(ctx context.Context, id string) (*api.Machine, error) {
	var m api.Machine
	if err := c.do(ctx, request{method: http.MethodDelete, path: machinePath(id)}, &m); err != nil {
		return nil, err
	}
	return &m, nil
}
