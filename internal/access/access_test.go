package access

import (
	"path/filepath"
	"slices"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/apikey"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store"
	"nullspace.dev/nullspace/internal/store/sqlstore"
)

func TestScopes(t *testing.T) {
	cases := []struct {
		have []string
		need string
		want bool
	}{
		{[]string{MachinesRead}, MachinesRead, true},
		{[]string{MachinesRead}, MachinesWrite, false},
		{[]string{MachinesWrite}, MachinesRead, true},
		{[]string{MachinesWrite}, TemplatesWrite, false},
		{[]string{TemplatesWrite}, MachinesRead, true},
		{[]string{TemplatesWrite}, MachinesWrite, false},
		{[]string{KeysAdmin}, MachinesRead, false},
		{[]string{KeysAdmin}, KeysAdmin, true},
		{[]string{KeysAdmin}, Operator, false},
		{[]string{Operator}, KeysAdmin, true},
		{[]string{Operator}, MachinesWrite, true},
		{[]string{Operator}, TemplatesWrite, true},
		{[]string{MachinesWrite, KeysAdmin}, Operator, false},
		{nil, MachinesRead, false},
	}
	for _, c := range cases {
		if got := Scopes(c.have).Has(c.need); got != c.want {
			t.Errorf("%v.Has(%s) = %v, want %v", c.have, c.need, got, c.want)
		}
	}
	if !(Scopes{Operator}).Covers(Scopes{KeysAdmin, MachinesWrite}) || (Scopes{KeysAdmin}).Covers(Scopes{MachinesRead}) {
		t.Error("Covers")
	}
	got, err := ParseScopes([]string{" machines:write", "keys:admin", "machines:write"})
	if err != nil || !slices.Equal(got, Scopes{KeysAdmin, MachinesWrite}) {
		t.Errorf("ParseScopes = %v, %v", got, err)
	}
	for _, bad := range [][]string{nil, {}, {"admin"}, {"machines:read", "root"}} {
		if _, err := ParseScopes(bad); errdefs.Classify(err).Code != errdefs.CodeInvalidArgument {
			t.Errorf("ParseScopes(%q) = %v, want invalid_argument", bad, err)
		}
	}
}

type fixture struct {
	svc            *Service
	db             store.Store
	now            time.Time
	operator, team *Principal
}

// newFixture is a store with the first team and its operator key, and a
// second team with a keys:admin key.
func newFixture(t *testing.T) *fixture {
	db, err := sqlstore.Open(t.Context(), filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	f := &fixture{db: db, now: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)}
	f.svc = New(db)
	f.svc.now = func() time.Time { return f.now }
	ctx := t.Context()
	if err := db.CreateTeam(ctx, store.Team{ID: "team_default", Name: "default", CreatedAt: f.now}); err != nil {
		t.Fatal(err)
	}
	f.operator = &Principal{TeamID: "team_default", KeyID: "ak_op", Scopes: Scopes{Operator}}
	team, err := f.svc.CreateTeam(ctx, api.CreateTeamRequest{Name: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	k, err := f.svc.CreateKey(ctx, f.operator, api.CreateAPIKeyRequest{Name: "admin", TeamID: team.ID, Scopes: []string{KeysAdmin, MachinesWrite}})
	if err != nil {
		t.Fatal(err)
	}
	if f.team, err = f.svc.Authenticate(ctx, k.Key); err != nil {
		t.Fatal(err)
	}
	return f
}

func code(err error) string {
	if err == nil {
		return ""
	}
	return errdefs.Classify(err).Code
}

// TestKeys: a key's life (made, used, listed, expired, revoked), and what
// each kind of key may do with keys.
func TestKeys(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	expires := f.now.Add(time.Hour)
	k, err := f.svc.CreateKey(ctx, f.team, api.CreateAPIKeyRequest{Name: "ci", Scopes: []string{MachinesRead}, ExpiresAt: &expires})
	if err != nil {
		t.Fatal(err)
	}
	if k.TeamID != f.team.TeamID || k.Prefix != k.Key[:len(k.Prefix)] || !slices.Equal(k.Scopes, []string{MachinesRead}) {
		t.Fatalf("made key %+v", k)
	}
	// Both spellings of the key name it.
	for _, form := range []string{k.Key, apikey.E2BForm(k.Key), " " + k.Key + "\n"} {
		p, err := f.svc.Authenticate(ctx, form)
		if err != nil || p.KeyID != k.ID || p.TeamID != f.team.TeamID || p.Operator() {
			t.Fatalf("Authenticate(%q) = %+v, %v", form, p, err)
		}
	}

	// What keys may make.
	refusals := []struct {
		by   *Principal
		req  api.CreateAPIKeyRequest
		code string
	}{
		{f.team, api.CreateAPIKeyRequest{Scopes: []string{Operator}}, errdefs.CodeInsufficientScope},
		{f.team, api.CreateAPIKeyRequest{Scopes: []string{TemplatesWrite}}, errdefs.CodeInsufficientScope},
		{f.team, api.CreateAPIKeyRequest{Scopes: []string{MachinesRead}, TeamID: "team_default"}, errdefs.CodeTeamNotFound},
		{f.team, api.CreateAPIKeyRequest{Scopes: []string{"everything"}}, errdefs.CodeInvalidArgument},
		{f.team, api.CreateAPIKeyRequest{}, errdefs.CodeInvalidArgument},
		{f.team, api.CreateAPIKeyRequest{Scopes: []string{MachinesRead}, ExpiresAt: &f.now}, errdefs.CodeInvalidArgument},
		{f.operator, api.CreateAPIKeyRequest{Scopes: []string{MachinesRead}, TeamID: "team_nope"}, errdefs.CodeTeamNotFound},
	}
	for _, r := range refusals {
		if _, err := f.svc.CreateKey(ctx, r.by, r.req); code(err) != r.code {
			t.Errorf("CreateKey by %v of %+v: %v, want %s", r.by.Scopes, r.req, err, r.code)
		}
	}

	// Lists: a team sees its own keys; another team's are not found.
	keys, err := f.svc.Keys(ctx, f.team, "")
	if err != nil || len(keys) != 2 {
		t.Fatalf("the team's keys: %+v, %v; want 2", keys, err)
	}
	if _, err := f.svc.Keys(ctx, f.team, "team_default"); code(err) != errdefs.CodeTeamNotFound {
		t.Fatalf("a team lists the operator team's keys: %v", err)
	}
	if keys, err := f.svc.Keys(ctx, f.operator, f.team.TeamID); err != nil || len(keys) != 2 {
		t.Fatalf("the operator lists the team's keys: %+v, %v", keys, err)
	}
	mine, err := f.svc.CreateKey(ctx, f.operator, api.CreateAPIKeyRequest{Scopes: []string{MachinesRead}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.Key(ctx, f.team, mine.ID); code(err) != errdefs.CodeKeyNotFound {
		t.Fatalf("a team describes the operator team's key: %v", err)
	}
	if _, err := f.svc.RevokeKey(ctx, f.team, mine.ID); code(err) != errdefs.CodeKeyNotFound {
		t.Fatalf("a team revokes the operator team's key: %v", err)
	}
	if cur, err := f.svc.Key(ctx, f.team, "current"); err != nil || cur.ID != f.team.KeyID {
		t.Fatalf("current: %+v, %v", cur, err)
	}

	// Expiry, to the instant.
	f.now = expires.Add(-time.Nanosecond)
	if _, err := f.svc.Authenticate(ctx, k.Key); err != nil {
		t.Fatalf("a key just before it expires: %v", err)
	}
	f.now = expires
	if _, err := f.svc.Authenticate(ctx, k.Key); code(err) != errdefs.CodeUnauthenticated {
		t.Fatalf("an expired key: %v", err)
	}

	// Revocation.
	revoked, err := f.svc.RevokeKey(ctx, f.team, f.team.KeyID)
	if err != nil || revoked.RevokedAt == nil {
		t.Fatalf("revoke: %+v, %v", revoked, err)
	}
	for _, key := range []string{"", "ns_", "ns_00", "garbage", "Bearer x"} {
		if _, err := f.svc.Authenticate(ctx, key); code(err) != errdefs.CodeUnauthenticated {
			t.Errorf("Authenticate(%q) = %v, want unauthenticated", key, err)
		}
	}
}

// TestLastUsed: a use is recorded, at most once a minute per key.
func TestLastUsed(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	k, err := f.svc.CreateKey(ctx, f.operator, api.CreateAPIKeyRequest{Scopes: []string{MachinesRead}})
	if err != nil {
		t.Fatal(err)
	}
	lastUsed := func() time.Time {
		t.Helper()
		for range 100 { // the write is made in the background
			got, err := f.db.GetAPIKey(ctx, k.ID)
			if err != nil {
				t.Fatal(err)
			}
			if !got.LastUsedAt.IsZero() {
				return got.LastUsedAt
			}
			time.Sleep(10 * time.Millisecond)
		}
		return time.Time{}
	}
	first := f.now
	if _, err := f.svc.Authenticate(ctx, k.Key); err != nil {
		t.Fatal(err)
	}
	if got := lastUsed(); !got.Equal(first) {
		t.Fatalf("last used %v, want %v", got, first)
	}
	f.now = first.Add(30 * time.Second)
	f.svc.Authenticate(ctx, k.Key)
	time.Sleep(50 * time.Millisecond)
	if got := lastUsed(); !got.Equal(first) {
		t.Fatalf("last used %v after a use 30 s later, want %v still", got, first)
	}
	f.now = first.Add(2 * time.Minute)
	f.svc.Authenticate(ctx, k.Key)
	for range 100 {
		if got, _ := f.db.GetAPIKey(ctx, k.ID); got.LastUsedAt.Equal(f.now) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("a use two minutes later was not recorded")
}

// TestTeams: teams are made, listed and deleted; a deleted team's keys no
// longer authenticate; a key cannot delete its own team.
func TestTeams(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	if _, err := f.svc.CreateTeam(ctx, api.CreateTeamRequest{Name: "acme"}); code(err) != errdefs.CodeTeamExists {
		t.Fatalf("a second acme: %v", err)
	}
	if _, err := f.svc.CreateTeam(ctx, api.CreateTeamRequest{Name: " "}); code(err) != errdefs.CodeInvalidArgument {
		t.Fatalf("a blank name: %v", err)
	}
	k, err := f.svc.CreateKey(ctx, f.team, api.CreateAPIKeyRequest{Scopes: []string{MachinesRead}})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.svc.DeleteTeam(ctx, f.operator, f.operator.TeamID); code(err) != errdefs.CodeTeamInUse {
		t.Fatalf("the operator deletes its own team: %v", err)
	}
	if err := f.svc.DeleteTeam(ctx, f.operator, f.team.TeamID); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.Authenticate(ctx, k.Key); code(err) != errdefs.CodeUnauthenticated {
		t.Fatalf("a key of a deleted team: %v", err)
	}
	teams, err := f.svc.Teams(ctx)
	if err != nil || len(teams) != 1 || teams[0].ID != "team_default" {
		t.Fatalf("teams after the delete: %+v, %v", teams, err)
	}
	if _, err := f.svc.CreateTeam(ctx, api.CreateTeamRequest{Name: "acme"}); err != nil {
		t.Fatalf("the name of a deleted team is free again: %v", err)
	}
}
