package client

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"nullspace.dev/nullspace/api"
)

// EventQuery selects lifecycle events. Zero fields match everything.
type EventQuery struct {
	// After returns only events with a larger sequence number: the seq of
	// the last event seen, to resume after a disconnect.
	After     int64
	MachineID string
	Types     []string
	// Limit bounds a list (1 to 1000; 0: the server's default).
	Limit int
}

func (q EventQuery) values() url.Values {
	v := url.Values{}
	if q.After > 0 {
		v.Set("after", strconv.FormatInt(q.After, 10))
	}
	if q.MachineID != "" {
		v.Set("machine_id", q.MachineID)
	}
	if len(q.Types) > 0 {
		v.Set("type", strings.Join(q.Types, ","))
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	return v
}

// ListEvents returns the team's lifecycle events matching q, by sequence
// number (GET /v1/events).
func (c *Client) ListEvents(ctx context.Context, q EventQuery) ([]api.Event, error) {
	var l api.EventList
	if err := c.do(ctx, request{method: http.MethodGet, path: "/v1/events", query: q.values()}, &l); err != nil {
		return nil, err
	}
	return l.Events, nil
}

// FollowEvents calls fn for every event matching q, the stored ones first,
// then new ones as they happen, until ctx ends, the stream breaks or fn
// returns an error (GET /v1/events?follow=true). To resume after a break,
// call it again with q.After set to the last seq fn saw.
func (c *Client) FollowEvents(ctx context.Context, q EventQuery, fn func(api.Event) error) error {
	v := q.values()
	v.Set("follow", "true")
	resp, err := c.send(ctx, request{method: http.MethodGet, path: "/v1/events", query: v, accept: "application/x-ndjson"})
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return readLines(ctx, resp.Body, fn)
}

// readLines decodes an NDJSON stream into fn.
func readLines[T any](ctx context.Context, r io.Reader, fn func(T) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if len(strings.TrimSpace(sc.Text())) == 0 {
			continue
		}
		var v T
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			return fmt.Errorf("stream: %w", err)
		}
		if err := fn(v); err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("stream: %w", err)
	}
	return nil
}
