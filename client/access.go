package client

import (
	"context"
	"net/http"
	"net/url"
	"strconv"

	"nullspace.dev/nullspace/api"
)

// CreateTeam makes a team (POST /v1/teams; operator key).
func (c *Client) CreateTeam(ctx context.Context, name string) (*api.Team, error) {
	var t api.Team
	if err := c.do(ctx, request{method: http.MethodPost, path: "/v1/teams", json: api.CreateTeamRequest{Name: name}}, &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// ListTeams lists the teams (GET /v1/teams; operator key).
func (c *Client) ListTeams(ctx context.Context) ([]api.Team, error) {
	var l api.TeamList
	if err := c.do(ctx, request{method: http.MethodGet, path: "/v1/teams"}, &l); err != nil {
		return nil, err
	}
	return l.Teams, nil
}

// DeleteTeam deletes a team (DELETE /v1/teams/{id}; operator key). force
// kills its machines and deletes its snapshots and volumes first.
func (c *Client) DeleteTeam(ctx context.Context, id string, force bool) error {
	r := request{method: http.MethodDelete, path: "/v1/teams/" + url.PathEscape(id)}
	if force {
		r.query = url.Values{"force": {"true"}}
	}
	return c.do(ctx, r, nil)
}

// CreateKey makes an API key (POST /v1/keys); the answer holds the key,
// shown once.
func (c *Client) CreateKey(ctx context.Context, req api.CreateAPIKeyRequest) (*api.CreatedAPIKey, error) {
	var k api.CreatedAPIKey
	if err := c.do(ctx, request{method: http.MethodPost, path: "/v1/keys", json: req}, &k); err != nil {
		return nil, err
	}
	return &k, nil
}

// ListKeys lists a team's keys (GET /v1/keys); teamID "" is the caller's.
func (c *Client) ListKeys(ctx context.Context, teamID string) ([]api.APIKey, error) {
	r := request{method: http.MethodGet, path: "/v1/keys"}
	if teamID != "" {
		r.query = url.Values{"team_id": {teamID}}
	}
	var l api.APIKeyList
	if err := c.do(ctx, r, &l); err != nil {
		return nil, err
	}
	return l.Keys, nil
}

// CurrentKey describes the key the client uses (GET /v1/keys/current).
func (c *Client) CurrentKey(ctx context.Context) (*api.APIKey, error) {
	var k api.APIKey
	if err := c.do(ctx, request{method: http.MethodGet, path: "/v1/keys/current"}, &k); err != nil {
		return nil, err
	}
	return &k, nil
}

// RevokeKey revokes a key (DELETE /v1/keys/{id}).
func (c *Client) RevokeKey(ctx context.Context, id string) (*api.APIKey, error) {
	var k api.APIKey
	if err := c.do(ctx, request{method: http.MethodDelete, path: "/v1/keys/" + url.PathEscape(id)}, &k); err != nil {
		return nil, err
	}
	return &k, nil
}

// Quotas returns a team's limits and use (GET /v1/quotas); teamID "" is
// the caller's (another team: operator key).
func (c *Client) Quotas(ctx context.Context, teamID string) (*api.Quotas, error) {
	r := request{method: http.MethodGet, path: "/v1/quotas"}
	if teamID != "" {
		r.query = url.Values{"team_id": {teamID}}
	}
	var q api.Quotas
	if err := c.do(ctx, r, &q); err != nil {
		return nil, err
	}
	return &q, nil
}

// SetQuota replaces a team's own limits (PUT /v1/teams/{id}/quota;
// operator key).
func (c *Client) SetQuota(ctx context.Context, teamID string, req api.SetQuotaRequest) (*api.Quotas, error) {
	var q api.Quotas
	if err := c.do(ctx, request{method: http.MethodPut, path: "/v1/teams/" + url.PathEscape(teamID) + "/quota", json: req}, &q); err != nil {
		return nil, err
	}
	return &q, nil
}

// AuditQuery selects audit log entries.
type AuditQuery struct {
	TeamID, Action, Before string
	Limit                  int
}

// Audit returns a page of the audit log, newest first (GET /v1/audit;
// operator key).
func (c *Client) Audit(ctx context.Context, q AuditQuery) (*api.AuditList, error) {
	v := url.Values{}
	for k, s := range map[string]string{"team_id": q.TeamID, "action": q.Action, "before": q.Before} {
		if s != "" {
			v.Set(k, s)
		}
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	var l api.AuditList
	if err := c.do(ctx, request{method: http.MethodGet, path: "/v1/audit", query: v}, &l); err != nil {
		return nil, err
	}
	return &l, nil
}
