package sshgate

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store"
)

// KeyStore keeps the registered keys (store.SSHKeys).
type KeyStore interface {
	AddSSHKey(ctx context.Context, k store.SSHKey) error
	ListSSHKeys(ctx context.Context, teamID string) ([]store.SSHKey, error)
	SSHKeyByFingerprint(ctx context.Context, fingerprint string) (store.SSHKey, error)
	DeleteSSHKey(ctx context.Context, teamID, idOrFingerprint string) error
}

// Keys are the teams' registered public keys.
type Keys struct{ db KeyStore }

// NewKeys returns the keys kept in db.
func NewKeys(db KeyStore) *Keys { return &Keys{db: db} }

const maxKeyName = 100

// Add registers a team's public key.
func (k *Keys) Add(ctx context.Context, team string, req api.AddSSHKeyRequest) (api.SSHKey, error) {
	key, fp, comment, err := ParsePublicKey(req.PublicKey)
	if err != nil {
		return api.SSHKey{}, err
	}
	name := strings.TrimSpace(req.Name)
	if name == "" {
		name = strings.TrimSpace(comment)
	}
	if name == "" {
		name = fp
	}
	if utf8.RuneCountInString(name) > maxKeyName || strings.ContainsAny(name, "\r\n\x00") {
		return api.SSHKey{}, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("name must be one line of at most %d characters", maxKeyName), "pass a shorter name")
	}
	b := make([]byte, 8)
	rand.Read(b)
	rec := store.SSHKey{ID: "key_" + hex.EncodeToString(b), TeamID: team, Name: name, Fingerprint: fp, PublicKey: key,
		CreatedAt: time.Now().UTC()}
	if err := k.db.AddSSHKey(ctx, rec); err != nil {
		return api.SSHKey{}, err
	}
	return publicKey(rec), nil
}

// List returns a team's keys, oldest first.
func (k *Keys) List(ctx context.Context, team string) ([]api.SSHKey, error) {
	recs, err := k.db.ListSSHKeys(ctx, team)
	if err != nil {
		return nil, err
	}
	out := make([]api.SSHKey, 0, len(recs))
	for _, r := range recs {
		out = append(out, publicKey(r))
	}
	return out, nil
}

// Delete removes a team's key, by id or fingerprint. Sessions it opened
// go on; new ones are refused.
func (k *Keys) Delete(ctx context.Context, team, id string) error {
	return k.db.DeleteSSHKey(ctx, team, id)
}

func (k *Keys) byFingerprint(ctx context.Context, fp string) (store.SSHKey, error) {
	return k.db.SSHKeyByFingerprint(ctx, fp)
}

func publicKey(r store.SSHKey) api.SSHKey {
	return api.SSHKey{ID: r.ID, Name: r.Name, Fingerprint: r.Fingerprint, PublicKey: r.PublicKey, CreatedAt: r.CreatedAt}
}

// Access is the API's side of SSH: the keys, and tokens for the gateway
// when it runs (Gate nil: tokens are refused with ssh_disabled).
type Access struct {
	*Keys
	Gate     *Server
	Machines Machines
	// Host and Port are where clients reach the gateway.
	Host string
	Port int
}

// DefaultTokenTTL is a token's life unless asked otherwise.
const DefaultTokenTTL = 10 * time.Minute

// Token issues a short-lived password for SSH sessions in a team's
// machine (its lineage: the token outlives pauses and resumes).
func (a *Access) Token(ctx context.Context, team, id string, ttl time.Duration) (api.SSHToken, error) {
	if a.Gate == nil {
		return api.SSHToken{}, errdefs.New(errdefs.ErrFailedPrecondition, errdefs.CodeSSHDisabled,
			"the SSH gateway is off", "start the server with --ssh-addr (e.g. 127.0.0.1:2222)")
	}
	if ttl == 0 {
		ttl = DefaultTokenTTL
	}
	if ttl < time.Second || ttl > MaxTokenTTL {
		return api.SSHToken{}, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			fmt.Sprintf("ttl_seconds must be from 1 to %d", int(MaxTokenTTL.Seconds())), "pass a shorter ttl, or omit it for 10 minutes")
	}
	lineage, err := a.Machines.Lineage(ctx, team, id)
	if err != nil {
		return api.SSHToken{}, err
	}
	exp := time.Now().Add(ttl).UTC().Truncate(time.Second)
	cmd := fmt.Sprintf("ssh -p %d %s@%s", a.Port, lineage, a.Host)
	return api.SSHToken{Token: a.Gate.tokens.Issue(team, lineage, exp), ExpiresAt: exp, User: lineage, Host: a.Host, Port: a.Port,
		Command: cmd}, nil
}

// Advertised is the host and port clients reach a listener on: its own
// address, or this host's name when it listens on every address.
func Advertised(addr net.Addr) (string, int) {
	host, port, _ := net.SplitHostPort(addr.String())
	p, _ := strconv.Atoi(port)
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "localhost"
	}
	return host, p
}
