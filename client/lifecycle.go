package client

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"nullspace.dev/nullspace/api"
)

// Stop ends every process of a running machine and keeps its files
// (POST /v1/machines/{id}/stop): processes get SIGTERM, then SIGKILL once
// grace has passed, and the machine is stopped under the same id with its
// files in a "disk" snapshot. A nil grace leaves it to the server (10 s);
// 0 kills at once. Stopping a stopped machine returns it unchanged; an
// ephemeral machine fails with code machine_ephemeral.
func (c *Client) Stop(ctx context.Context, id string, grace *time.Duration) (*api.Machine, error) {
	r := request{method: http.MethodPost, path: machinePath(id, "stop")}
	if grace != nil {
		ms := ceilMS(*grace)
		r.json = api.StopMachineRequest{GraceMS: &ms}
	}
	var m api.Machine
	if err := c.do(ctx, r, &m); err != nil {
		return nil, err
	}
	return &m, nil
}

// Start boots a stopped machine from its disk under the same id, starts its
// main process again and restarts its lease (POST /v1/machines/{id}/start).
// Starting a running machine returns it unchanged; if the boot fails the
// machine stays stopped.
func (c *Client) Start(ctx context.Context, id string) (*api.Machine, error) {
	var m api.Machine
	if err := c.do(ctx, request{method: http.MethodPost, path: machinePath(id, "start")}, &m); err != nil {
		return nil, err
	}
	return &m, nil
}

// Wait blocks until the main process of the machine's current boot has
// exited and returns how it ended (GET /v1/machines/{id}/wait). A positive
// timeout is sent as timeout_ms: when it passes first, Wait fails with code
// deadline_exceeded and may be called again; 0 waits as long as ctx lets
// it. A machine created without a command fails with code
// machine_has_no_command.
func (c *Client) Wait(ctx context.Context, id string, timeout time.Duration) (*api.MainExit, error) {
	var q url.Values
	if timeout > 0 {
		q = url.Values{"timeout_ms": {strconv.FormatInt(ceilMS(timeout), 10)}}
	}
	var e api.MainExit
	if err := c.do(ctx, request{method: http.MethodGet, path: machinePath(id, "wait"), query: q}, &e); err != nil {
		return nil, err
	}
	return &e, nil
}

// ceilMS converts d to whole milliseconds, rounding up, so that a short
// positive duration does not become 0, which means something else to the
// server (kill at once, or an invalid timeout).
func ceilMS(d time.Duration) int64 {
	ms := d.Milliseconds()
	if d > 0 && d%time.Millisecond != 0 {
		ms++
	}
	return ms
}
