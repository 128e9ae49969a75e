package client

import (
	"context"
	"net/http"
	"net/url"
	"slices"
	"strconv"

	"nullspace.dev/nullspace/api"
)

// ListOptions filters ListMachines. Zero values do not filter.
type ListOptions struct {
	State    string            // e.g. api.StateRunning
	Template string            // machines made from this template
	Metadata map[string]string // every pair must match
	// IncludeAliases lists every execution id (paused aliases too), not
	// one row per machine.
	IncludeAliases bool
	// Limit is the page size of each request (0: the server's default);
	// ListMachines reads every page whatever it is.
	Limit int
}

func (o ListOptions) query() url.Values {
	q := url.Values{}
	if o.State != "" {
		q.Set("state", o.State)
	}
	if o.Template != "" {
		q.Set("template", o.Template)
	}
	if o.IncludeAliases {
		q.Set("include_aliases", "true")
	}
	if o.Limit > 0 {
		q.Set("limit", strconv.Itoa(o.Limit))
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

// ListMachines lists the machines that match opts (GET /v1/machines),
// one per machine (its latest execution) unless opts.IncludeAliases. It
// reads every page.
func (c *Client) ListMachines(ctx context.Context, opts ListOptions) ([]api.Machine, error) {
	var all []api.Machine
	token := ""
	for {
		l, err := c.ListMachinesPage(ctx, opts, token)
		if err != nil {
			return nil, err
		}
		all = append(all, l.Machines...)
		if l.NextToken == "" {
			return all, nil
		}
		token = l.NextToken
	}
}

// ListMachinesPage returns one page of machines: the first with token "",
// the next with the NextToken of the one before (empty on the last page).
func (c *Client) ListMachinesPage(ctx context.Context, opts ListOptions, token string) (*api.MachineList, error) {
	q := opts.query()
	if token != "" {
		q.Set("next_token", token)
	}
	var l api.MachineList
	if err := c.do(ctx, request{method: http.MethodGet, path: "/v1/machines", query: q}, &l); err != nil {
		return nil, err
	}
	return &l, nil
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
