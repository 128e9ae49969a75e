package client

import (
	"context"
	"net/http"
	"net/url"

	"nullspace.dev/nullspace/api"
)

// CreateVolume creates a named volume (POST /v1/volumes). Mount it with
// api.CreateMachineRequest.Volumes.
func (c *Client) CreateVolume(ctx context.Context, name string) (*api.Volume, error) {
	var v api.Volume
	if err := c.do(ctx, request{method: http.MethodPost, path: "/v1/volumes", json: api.CreateVolumeRequest{Name: name}}, &v); err != nil {
		return nil, err
	}
	return &v, nil
}

// ListVolumes lists the volumes by name (GET /v1/volumes).
func (c *Client) ListVolumes(ctx context.Context) ([]api.Volume, error) {
	return allPages(ctx, c, "/v1/volumes", url.Values{}, func(l *api.VolumeList) ([]api.Volume, string) { return l.Volumes, l.NextToken })
}

// DeleteVolume deletes a volume and its files (DELETE /v1/volumes/{name}).
// A volume that machines or snapshots use fails with code volume_in_use.
func (c *Client) DeleteVolume(ctx context.Context, name string) error {
	return c.do(ctx, request{method: http.MethodDelete, path: "/v1/volumes/" + url.PathEscape(name)}, nil)
}
