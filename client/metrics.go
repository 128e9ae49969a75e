package client

import (
	"context"
	"net/http"
	"net/url"

	"nullspace.dev/nullspace/api"
)

// Metrics returns a running machine's recent samples, oldest first
// (GET /v1/machines/{id}/metrics): one every few seconds, the last ten
// minutes.
func (c *Client) Metrics(ctx context.Context, id string) ([]api.MetricSample, error) {
	var l api.MetricList
	if err := c.do(ctx, request{method: http.MethodGet, path: machinePath(id, "metrics")}, &l); err != nil {
		return nil, err
	}
	return l.Metrics, nil
}

// Monitor calls fn with each new sample of a machine as it is taken, until
// ctx ends, the stream breaks or fn returns an error
// (GET /v1/machines/{id}/metrics?follow=true).
func (c *Client) Monitor(ctx context.Context, id string, fn func(api.MetricSample) error) error {
	resp, err := c.send(ctx, request{method: http.MethodGet, path: machinePath(id, "metrics"),
		query: url.Values{"follow": {"true"}}, accept: "application/x-ndjson"})
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return readLines(ctx, resp.Body, fn)
}
