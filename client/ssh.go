package client

import (
	"context"
	"net/http"
	"net/url"
	"time"

	"nullspace.dev/nullspace/api"
)

// AddSSHKey registers a public key (one authorized_keys line) for the
// team's SSH sessions (POST /v1/ssh-keys); name may be empty (the key's
// comment).
func (c *Client) AddSSHKey(ctx context.Context, publicKey, name string) (*api.SSHKey, error) {
	var k api.SSHKey
	if err := c.do(ctx, request{method: http.MethodPost, path: "/v1/ssh-keys",
		json: api.AddSSHKeyRequest{PublicKey: publicKey, Name: name}}, &k); err != nil {
		return nil, err
	}
	return &k, nil
}

// ListSSHKeys lists the team's SSH keys (GET /v1/ssh-keys).
func (c *Client) ListSSHKeys(ctx context.Context) ([]api.SSHKey, error) {
	var l api.SSHKeyList
	if err := c.do(ctx, request{method: http.MethodGet, path: "/v1/ssh-keys"}, &l); err != nil {
		return nil, err
	}
	return l.Keys, nil
}

// DeleteSSHKey removes a key by id or fingerprint (DELETE /v1/ssh-keys/{id}).
func (c *Client) DeleteSSHKey(ctx context.Context, idOrFingerprint string) error {
	return c.do(ctx, request{method: http.MethodDelete, path: "/v1/ssh-keys/" + url.PathEscape(idOrFingerprint)}, nil)
}

// SSHToken returns a short-lived SSH password for a machine (POST
// /v1/machines/{id}/ssh-token); ttl 0 is the server's default (10 min).
func (c *Client) SSHToken(ctx context.Context, id string, ttl time.Duration) (*api.SSHToken, error) {
	var t api.SSHToken
	if err := c.do(ctx, request{method: http.MethodPost, path: "/v1/machines/" + url.PathEscape(id) + "/ssh-token",
		json: api.SSHTokenRequest{TTLSeconds: int(ttl / time.Second)}}, &t); err != nil {
		return nil, err
	}
	return &t, nil
}
