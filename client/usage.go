package client

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"nullspace.dev/nullspace/api"
)

// UsageQuery selects the usage GET /v1/usage returns. Zero times take the
// server's defaults (the last 24 hours); GroupBy holds team, machine and
// day; TeamID is another team, or "*" for every team (operator key).
type UsageQuery struct {
	From, To time.Time
	GroupBy  []string
	TeamID   string
}

func (q UsageQuery) values() url.Values {
	v := url.Values{}
	if !q.From.IsZero() {
		v.Set("from", q.From.UTC().Format(time.RFC3339Nano))
	}
	if !q.To.IsZero() {
		v.Set("to", q.To.UTC().Format(time.RFC3339Nano))
	}
	if len(q.GroupBy) > 0 {
		v.Set("group_by", strings.Join(q.GroupBy, ","))
	}
	if q.TeamID != "" {
		v.Set("team_id", q.TeamID)
	}
	return v
}

// Usage returns the team's usage over a range (GET /v1/usage).
func (c *Client) Usage(ctx context.Context, q UsageQuery) (*api.Usage, error) {
	var u api.Usage
	if err := c.do(ctx, request{method: http.MethodGet, path: "/v1/usage", query: q.values()}, &u); err != nil {
		return nil, err
	}
	return &u, nil
}

// UsageCSV writes the team's usage over a range as CSV to w (GET
// /v1/usage with Accept: text/csv).
func (c *Client) UsageCSV(ctx context.Context, q UsageQuery, w io.Writer) error {
	resp, err := c.send(ctx, request{method: http.MethodGet, path: "/v1/usage", query: q.values(), accept: "text/csv"})
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(w, resp.Body); err != nil {
		return fmt.Errorf("read usage CSV: %w", err)
	}
	return nil
}
