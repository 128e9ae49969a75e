package server

import (
	"path/filepath"
	"testing"
	"time"

	"nullspace.dev/nullspace/internal/access"
	"nullspace.dev/nullspace/internal/ratelimit"
	"nullspace.dev/nullspace/internal/store"
	"nullspace.dev/nullspace/internal/store/sqlstore"
)

// TestTeamRates: a team's own rate limit (its quota's api_rate and
// api_burst) replaces the default for its keys, is read again after
// teamRateTTL, and a team without one gets the default.
func TestTeamRates(t *testing.T) {
	ctx := t.Context()
	db, err := sqlstore.Open(ctx, filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, id := range []string{"a", "b"} {
		if err := db.CreateTeam(ctx, store.Team{ID: id, Name: id, CreatedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	own := store.DefaultQuota
	own.APIRate, own.APIBurst = 2, 3
	if err := db.SetQuota(ctx, "a", own); err != nil {
		t.Fatal(err)
	}
	def := ratelimit.Limit{Rate: 100, Burst: 1000}
	tr := newTeamRates(db, def)
	now := time.Now()
	tr.now = func() time.Time { return now }
	key := func(team string) string { return access.RateKey(&access.Principal{TeamID: team, KeyID: "ak_1"}) }
	if lim, ok := tr.override(key("a")); !ok || lim != (ratelimit.Limit{Rate: 2, Burst: 3}) {
		t.Fatalf("team a: %+v %v, want its own 2:3", lim, ok)
	}
	if _, ok := tr.override(key("b")); ok {
		t.Fatal("team b has no limit of its own but got one")
	}
	// Lifted to no limit: seen once the cached one is old.
	own.APIRate, own.APIBurst = 0, -1
	if err := db.SetQuota(ctx, "a", own); err != nil {
		t.Fatal(err)
	}
	if lim, _ := tr.override(key("a")); lim.Rate != 2 {
		t.Fatalf("team a within the TTL: %+v, want the cached 2", lim)
	}
	now = now.Add(teamRateTTL)
	if lim, ok := tr.override(key("a")); !ok || !lim.Unlimited() {
		t.Fatalf("team a after the TTL: %+v %v, want no limit", lim, ok)
	}

	// Through a limiter: team a's keys unlimited, team b's at the default.
	l := ratelimit.New(ratelimit.Config{Default: ratelimit.Limit{Rate: 1, Burst: 1}, Override: tr.override})
	for range 5 {
		if ok, _ := l.Allow(key("a")); !ok {
			t.Fatal("a request of team a was limited")
		}
	}
	l.Allow(key("b"))
	if ok, _ := l.Allow(key("b")); ok {
		t.Fatal("team b's second request at once passed a limit of 1:1")
	}
}
