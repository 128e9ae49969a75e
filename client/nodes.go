package client

import (
	"context"
	"net/http"
	"net/url"

	"nullspace.dev/nullspace/api"
)

// ListNodes lists the cluster's nodes (GET /v1/nodes; operator key).
func (c *Client) ListNodes(ctx context.Context) ([]api.Node, error) {
	var l api.NodeList
	if err := c.do(ctx, request{method: http.MethodGet, path: "/v1/nodes"}, &l); err != nil {
		return nil, err
	}
	return l.Nodes, nil
}

// DrainNode drains a node (no placements on it; it pauses its machines) or,
// with drained false, undrains it (operator key).
func (c *Client) DrainNode(ctx context.Context, name string, drained bool) (*api.Node, error) {
	verb := "/drain"
	if !drained {
		verb = "/undrain"
	}
	var n api.Node
	if err := c.do(ctx, request{method: http.MethodPost, path: "/v1/nodes/" + url.PathEscape(name) + verb}, &n); err != nil {
		return nil, err
	}
	return &n, nil
}
