package client

import (
	"context"
	"net/http"
	"time"

	"nullspace.dev/nullspace/api"
)

// SetTimeout refreshes a machine's lease: its deadline becomes timeout from
// now (POST /v1/machines/{id}/timeout). action is api.TimeoutDestroy,
// api.TimeoutHibernate, api.TimeoutStop (files kept, memory dropped) or ""
// to keep the current one. It returns the lease now in effect.
func (c *Client) SetTimeout(ctx context.Context, id string, timeout time.Duration, action string) (*api.Lease, error) {
	var l api.Lease
	req := api.SetTimeoutRequest{TimeoutMS: timeout.Milliseconds(), TimeoutAction: action}
	if err := c.do(ctx, request{method: http.MethodPost, path: machinePath(id, "timeout"), json: req}, &l); err != nil {
		return nil, err
	}
	return &l, nil
}
