package access

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/apikey"
	"nullspace.dev/nullspace/internal/audit"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store"
)

// Principal is who a request acts as: a key of a team, with its scopes.
type Principal struct {
	TeamID string
	KeyID  string
	Scopes Scopes
	// Source is the client's address, for the audit log.
	Source string
}

// RateKey is the principal's bucket in the per-key rate limiter: its key,
// under its team, so that the team's own limit (TeamOfRateKey) applies.
func RateKey(p *Principal) string { return p.TeamID + "/" + p.KeyID }

// TeamOfRateKey is the team of a RateKey.
func TeamOfRateKey(key string) string {
	team, _, _ := strings.Cut(key, "/")
	return team
}

// Operator reports whether the principal holds the operator scope.
func (p *Principal) Operator() bool { return p.Scopes.Has(Operator) }

type principalKey struct{}

// WithPrincipal returns ctx carrying p.
func WithPrincipal(ctx context.Context, p *Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// From returns the principal ctx carries, or nil.
func From(ctx context.Context) *Principal {
	p, _ := ctx.Value(principalKey{}).(*Principal)
	return p
}

// touchEvery bounds how often a key's last use is written: once a minute
// per key is exact enough to tell a live key from a forgotten one, and
// keeps a busy key's requests from each waiting on a write.
const touchEvery = time.Minute

// Service authenticates keys and manages teams and keys.
type Service struct {
	store store.Teams
	now   func() time.Time
	// Audit, if set, records every change of teams and keys.
	Audit *audit.Log

	mu      sync.Mutex
	touched map[string]time.Time // key id → last use written
}

// New returns the service over st.
func New(st store.Teams) *Service {
	return &Service{store: st, now: time.Now, touched: map[string]time.Time{}}
}

// Authenticate returns the principal of a key (in either of its forms,
// apikey.Canonical). An unknown, revoked or expired key, or a key of a
// deleted team, is unauthenticated.
func (s *Service) Authenticate(ctx context.Context, key string) (*Principal, error) {
	k, err := s.store.APIKeyByHash(ctx, apikey.Hash(apikey.Canonical(strings.TrimSpace(key))))
	if err != nil {
		return nil, err
	}
	now := s.now()
	switch {
	case !k.RevokedAt.IsZero():
		return nil, errdefs.New(errdefs.ErrUnauthenticated, errdefs.CodeUnauthenticated,
			fmt.Sprintf("API key %s was revoked", k.Prefix), "ask for a new key (nullspace key create)")
	case !k.ExpiresAt.IsZero() && !now.Before(k.ExpiresAt):
		return nil, errdefs.New(errdefs.ErrUnauthenticated, errdefs.CodeUnauthenticated,
			fmt.Sprintf("API key %s expired at %s", k.Prefix, k.ExpiresAt.UTC().Format(time.RFC3339)),
			"ask for a new key (nullspace key create)")
	}
	s.touch(ctx, k.ID, now)
	return &Principal{TeamID: k.TeamID, KeyID: k.ID, Scopes: Scopes(k.Scopes)}, nil
}

// touch records the key's use, at most once per touchEvery, without
// making the request wait for the write.
func (s *Service) touch(ctx context.Context, id string, now time.Time) {
	s.mu.Lock()
	last, ok := s.touched[id]
	due := !ok || now.Sub(last) >= touchEvery
	if due {
		s.touched[id] = now
	}
	s.mu.Unlock()
	if !due {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_ = s.store.TouchAPIKey(ctx, id, now) // best effort: a lost write is a minute of staleness
	}()
}

// NewID returns a new id with the prefix ("team_", "ak_").
func NewID(prefix string) string {
	b := make([]byte, 10)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// CreateTeam makes a team (operator).
func (s *Service) CreateTeam(ctx context.Context, req api.CreateTeamRequest) (*api.Team, error) {
	name := strings.TrimSpace(req.Name)
	if name == "" || len(name) > 64 {
		return nil, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			"a team needs a name of 1 to 64 characters", "send {\"name\": \"...\"}")
	}
	t := store.Team{ID: NewID("team_"), Name: name, CreatedAt: s.now().UTC().Truncate(time.Microsecond)}
	if err := s.store.CreateTeam(ctx, t); err != nil {
		return nil, err
	}
	s.Record(ctx, audit.TeamCreate, t.ID, t.ID, map[string]string{"name": t.Name})
	return teamView(t), nil
}

// Team returns a team that is not deleted.
func (s *Service) Team(ctx context.Context, id string) (*api.Team, error) {
	t, err := s.store.GetTeam(ctx, id)
	if err != nil {
		return nil, err
	}
	return teamView(*t), nil
}

// Teams lists the teams.
func (s *Service) Teams(ctx context.Context) ([]api.Team, error) {
	ts, err := s.store.ListTeams(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]api.Team, 0, len(ts))
	for _, t := range ts {
		out = append(out, *teamView(t))
	}
	return out, nil
}

// DeleteTeam marks a team deleted and revokes its keys; the caller has
// ended its machines. A principal cannot delete its own team (it would
// lock itself out).
func (s *Service) DeleteTeam(ctx context.Context, by *Principal, id string) error {
	if id == by.TeamID {
		return errdefs.New(errdefs.ErrFailedPrecondition, errdefs.CodeTeamInUse,
			fmt.Sprintf("team %s is the team of the key making the call", id), "delete it with a key of another team")
	}
	if err := s.store.DeleteTeam(ctx, id, s.now().UTC()); err != nil {
		return err
	}
	s.Record(ctx, audit.TeamDelete, id, id, nil)
	return nil
}

// Record writes an audit entry of a change the principal in ctx made.
func (s *Service) Record(ctx context.Context, action, team, target string, details any) {
	e := audit.Entry{TeamID: team, Action: action, Target: target, Details: details}
	if p := From(ctx); p != nil {
		e.ActorTeamID, e.ActorKeyID, e.Source = p.TeamID, p.KeyID, p.Source
	}
	s.Audit.Record(ctx, e)
}

func teamView(t store.Team) *api.Team {
	return &api.Team{ID: t.ID, Name: t.Name, CreatedAt: t.CreatedAt}
}

// ActingTeam is the team a call that may name one (team_id: keys, quotas,
// usage) acts on: the caller's, or for an operator any team that exists.
// Another team's id from a key that is not the operator's is not found,
// not forbidden: ids of other teams are not disclosed.
func (s *Service) ActingTeam(ctx context.Context, by *Principal, teamID string) (string, error) {
	if teamID == "" || teamID == by.TeamID {
		return by.TeamID, nil
	}
	if !by.Operator() {
		return "", errdefs.New(errdefs.ErrNotFound, errdefs.CodeTeamNotFound, fmt.Sprintf("team %s not found", teamID),
			"leave team_id out to act on your own team")
	}
	if _, err := s.store.GetTeam(ctx, teamID); err != nil {
		return "", err
	}
	return teamID, nil
}

// CreateKey makes a key for the caller's team (or, for an operator, any
// team) with no more scopes than the caller's own.
func (s *Service) CreateKey(ctx context.Context, by *Principal, req api.CreateAPIKeyRequest) (*api.CreatedAPIKey, error) {
	team, err := s.ActingTeam(ctx, by, req.TeamID)
	if err != nil {
		return nil, err
	}
	scopes, err := ParseScopes(req.Scopes)
	if err != nil {
		return nil, err
	}
	if !by.Scopes.Covers(scopes) {
		return nil, errdefs.New(errdefs.ErrForbidden, errdefs.CodeInsufficientScope,
			fmt.Sprintf("a key with scopes %s cannot make a key with scopes %s", strings.Join(by.Scopes, ","), strings.Join(scopes, ",")),
			"ask for no more scopes than the key making the call has")
	}
	now := s.now().UTC().Truncate(time.Microsecond)
	if req.ExpiresAt != nil && !req.ExpiresAt.After(now) {
		return nil, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			"expires_at is in the past", "send a time in the future, or none for a key that does not expire")
	}
	name := strings.TrimSpace(req.Name)
	if len(name) > 128 {
		return nil, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
			"a key's name is at most 128 characters", "send a shorter name")
	}
	key, hash, prefix := apikey.Generate()
	k := store.APIKey{ID: NewID("ak_"), TeamID: team, Hash: hash, Prefix: prefix, Name: name, Scopes: scopes, CreatedAt: now}
	if req.ExpiresAt != nil {
		k.ExpiresAt = req.ExpiresAt.UTC().Truncate(time.Microsecond)
	}
	if err := s.store.AddAPIKey(ctx, k); err != nil {
		return nil, err
	}
	s.Record(ctx, audit.KeyCreate, team, k.ID, map[string]any{"name": k.Name, "prefix": k.Prefix, "scopes": k.Scopes,
		"expires_at": req.ExpiresAt})
	return &api.CreatedAPIKey{APIKey: keyView(k), Key: key}, nil
}

// Keys lists a team's keys (the caller's, or any for an operator).
func (s *Service) Keys(ctx context.Context, by *Principal, teamID string) ([]api.APIKey, error) {
	team, err := s.ActingTeam(ctx, by, teamID)
	if err != nil {
		return nil, err
	}
	ks, err := s.store.ListAPIKeys(ctx, team)
	if err != nil {
		return nil, err
	}
	out := make([]api.APIKey, 0, len(ks))
	for _, k := range ks {
		out = append(out, keyView(k))
	}
	return out, nil
}

// Key describes one key the caller may see ("current": its own).
func (s *Service) Key(ctx context.Context, by *Principal, id string) (*api.APIKey, error) {
	if id == "current" {
		id = by.KeyID
	}
	k, err := s.visibleKey(ctx, by, id)
	if err != nil {
		return nil, err
	}
	v := keyView(*k)
	return &v, nil
}

// RevokeKey revokes a key of the caller's team (any team's, for an
// operator). A key may revoke itself.
func (s *Service) RevokeKey(ctx context.Context, by *Principal, id string) (*api.APIKey, error) {
	k, err := s.visibleKey(ctx, by, id)
	if err != nil {
		return nil, err
	}
	if err := s.store.RevokeAPIKey(ctx, id, s.now().UTC()); err != nil {
		return nil, err
	}
	s.Record(ctx, audit.KeyRevoke, k.TeamID, id, map[string]string{"prefix": k.Prefix})
	return s.Key(ctx, by, id)
}

// visibleKey returns key id if by may see it: keys of other teams are not
// found unless by is the operator.
func (s *Service) visibleKey(ctx context.Context, by *Principal, id string) (*store.APIKey, error) {
	k, err := s.store.GetAPIKey(ctx, id)
	if err == nil && k.TeamID != by.TeamID && !by.Operator() {
		err = errdefs.New(errdefs.ErrNotFound, errdefs.CodeKeyNotFound, fmt.Sprintf("API key %s not found", id),
			"list keys with GET /v1/keys")
	}
	return k, err
}

func keyView(k store.APIKey) api.APIKey {
	v := api.APIKey{ID: k.ID, TeamID: k.TeamID, Name: k.Name, Prefix: k.Prefix, Scopes: k.Scopes, CreatedAt: k.CreatedAt}
	if v.Scopes == nil {
		v.Scopes = []string{}
	}
	opt := func(t time.Time) *time.Time {
		if t.IsZero() {
			return nil
		}
		return &t
	}
	v.LastUsedAt, v.ExpiresAt, v.RevokedAt = opt(k.LastUsedAt), opt(k.ExpiresAt), opt(k.RevokedAt)
	return v
}
