package client

import (
	"context"
	"net/http"
	"time"

	"nullspace.dev/nullspace/api"
)

// MachineURL returns the public URL of a machine's port, served by the
// server's edge (POST /v1/machines/{id}/urls). The URL names the machine's
// lineage: it keeps working across pauses and resumes and wakes a paused
// machine that has auto_resume. expiresIn 0 gives a URL that does not
// expire.
func (c *Client) MachineURL(ctx context.Context, id string, port int, expiresIn time.Duration) (*api.MachineURL, error) {
	var u api.MachineURL
	body := api.MachineURLRequest{Port: port, ExpiresInMS: expiresIn.Milliseconds()}
	if err := c.do(ctx, request{method: http.MethodPost, path: machinePath(id, "urls"), json: body}, &u); err != nil {
		return nil, err
	}
	return &u, nil
}
