package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/access"
	"nullspace.dev/nullspace/internal/ratelimit"
	"nullspace.dev/nullspace/internal/store"
	"nullspace.dev/nullspace/internal/store/sqlstore"
)

// The issue-24 measurements of what sharing a server costs a request:
//
//   - the API's pipeline (key lookup, rate limit, scope): the same
//     trivial route with and without it, on the running server
//     (GET /v1/health, public, beside GET /v1/keys/current, which
//     authenticates and answers from the key alone), interleaved;
//   - the quota check a create, resume or fork makes (the team's limits
//     and its use, two queries), in-process on the server's store;
//   - the rate limiter's check, in-process;
//   - key lookup and the quota check on a store of 1,000 teams and
//     10,000 keys (and 10,000 machines), SQLite in a temporary directory.
const (
	metricAPIPublic    = "api_public_roundtrip" // GET /v1/health
	metricAPIAuthed    = "api_authed_roundtrip" // GET /v1/keys/current
	metricQuotaCheck   = "quota_check"          // Manager.TeamQuota on the server's store
	metricRateCheck    = "rate_limit_check_us"  // ratelimit.Allow, µs
	metricKeyLookup10k = "key_lookup_10k_keys"  // access.Authenticate among 10,000 keys
	metricQuota10k     = "quota_check_1k_teams" // limits and use among 1,000 teams, 10,000 machines
	accessSamples      = 200                    // per -n unit of the request round trips
	scaleTeams         = 1000
	scaleKeysPerTeam   = 10
	scaleMachinesEach  = 10
)

func measureAccess(ctx context.Context, cfg config, ns *nullspaceSide, res *results) error {
	fmt.Fprintf(os.Stderr, "bench: access: the API's key, rate and scope checks, the quota check, %d teams and %d keys\n",
		scaleTeams, scaleTeams*scaleKeysPerTeam)
	hc := &http.Client{}
	base := ns.client.BaseURL()
	get := func(path string, key string) (time.Duration, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		start := time.Now()
		resp, err := hc.Do(req)
		if err != nil {
			return 0, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		d := time.Since(start)
		if resp.StatusCode != http.StatusOK {
			return 0, fmt.Errorf("GET %s: %s", path, resp.Status)
		}
		return d, nil
	}
	// Warm the connection and the key's last use.
	for range 20 {
		get("/v1/health", "")
		get("/v1/keys/current", ns.key)
	}
	n := cfg.n * accessSamples
	for i := range n {
		pub, err := get("/v1/health", "")
		if err != nil {
			return err
		}
		authed, err := get("/v1/keys/current", ns.key)
		if err != nil {
			return err
		}
		res.addDuration(metricAPIPublic, sideNullspace, "", pub)
		res.addDuration(metricAPIAuthed, sideNullspace, "", authed)
		if i%accessSamples == 0 {
			progress(i/accessSamples+1, cfg.n)
		}
	}
	cur, err := ns.client.CurrentKey(ctx)
	if err != nil {
		return err
	}
	for range n {
		start := time.Now()
		if _, _, err := ns.inst.Manager.TeamQuota(ctx, cur.TeamID); err != nil {
			return err
		}
		res.addDuration(metricQuotaCheck, sideNullspace, "", time.Since(start))
	}
	lim := ratelimit.New(ratelimit.Config{Default: ratelimit.Limit{Rate: 1e9, Burst: 1e9}})
	for range n {
		start := time.Now()
		for range 1000 {
			lim.Allow("team/ak_1")
		}
		res.add(metricRateCheck, sideNullspace, "", "us", float64(time.Since(start).Nanoseconds())/1000/1000)
	}
	return measureAccessScale(ctx, cfg, res)
}

// measureAccessScale fills a SQLite store with 1,000 teams of 10 keys and
// 10 machines each and times lookups of random keys and quota checks of
// random teams.
func measureAccessScale(ctx context.Context, cfg config, res *results) error {
	dir, err := os.MkdirTemp("", "nullspace-bench-access-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	db, err := sqlstore.Open(ctx, filepath.Join(dir, "state.db"))
	if err != nil {
		return err
	}
	defer db.Close()
	svc := access.New(db)
	op := &access.Principal{TeamID: "team_default", KeyID: "ak_op", Scopes: access.Scopes{access.Operator}}
	now := time.Now().UTC()
	if err := db.CreateTeam(ctx, store.Team{ID: "team_default", Name: "default", CreatedAt: now}); err != nil {
		return err
	}
	var keys []string
	var teams []string
	for i := range scaleTeams {
		t, err := svc.CreateTeam(ctx, api.CreateTeamRequest{Name: fmt.Sprintf("team-%04d", i)})
		if err != nil {
			return err
		}
		teams = append(teams, t.ID)
		for range scaleKeysPerTeam {
			k, err := svc.CreateKey(ctx, op, api.CreateAPIKeyRequest{TeamID: t.ID, Scopes: []string{access.MachinesWrite}})
			if err != nil {
				return err
			}
			keys = append(keys, k.Key)
		}
		for j := range scaleMachinesEach {
			m := &store.Machine{ID: fmt.Sprintf("mch_%04d%016d", i, j), TeamID: t.ID, State: api.StateStopped, Template: "minimal",
				CPUCount: 1, MemoryMB: 64, ContainerID: fmt.Sprintf("c%d-%d", i, j), AgentToken: "t", CreatedAt: now}
			if err := db.CreateMachine(ctx, m, 1<<20); err != nil {
				return err
			}
		}
	}
	samples := cfg.n * accessSamples
	var lookups []float64
	for range samples {
		k := keys[rand.IntN(len(keys))]
		start := time.Now()
		if _, err := svc.Authenticate(ctx, k); err != nil {
			return err
		}
		d := time.Since(start)
		lookups = append(lookups, ms(d))
		res.addDuration(metricKeyLookup10k, sideNullspace, "", d)
	}
	for range samples {
		team := teams[rand.IntN(len(teams))]
		start := time.Now()
		if _, err := db.GetQuota(ctx, team); err != nil {
			return err
		}
		if _, err := db.TeamUsage(ctx, team, now.Add(-time.Minute)); err != nil {
			return err
		}
		res.addDuration(metricQuota10k, sideNullspace, "", time.Since(start))
	}
	slices.Sort(lookups)
	res.Notes = append(res.Notes, fmt.Sprintf("access: key lookup among %d keys of %d teams, p50 %.3f ms, p99 %.3f ms (SQLite)",
		len(keys), scaleTeams, percentile(lookups, 0.5), percentile(lookups, 0.99)))
	return nil
}
