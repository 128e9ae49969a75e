package server

import (
	"context"
	"sync"
	"time"

	"nullspace.dev/nullspace/internal/access"
	"nullspace.dev/nullspace/internal/ratelimit"
	"nullspace.dev/nullspace/internal/store"
)

// teamRateTTL is how long a team's own rate limit is used before it is
// read again: an operator's change applies within it.
const teamRateTTL = 10 * time.Second

// teamRates gives the per-key rate limiter each team's own limit, set by
// the operator in the team's quota (api_rate, api_burst), read from the
// store at most once per teamRateTTL per team.
type teamRates struct {
	store store.Teams
	def   ratelimit.Limit
	now   func() time.Time

	mu    sync.Mutex
	cache map[string]teamRate
}

type teamRate struct {
	lim  ratelimit.Limit
	own  bool
	read time.Time
}

func newTeamRates(st store.Teams, def ratelimit.Limit) *teamRates {
	return &teamRates{store: st, def: def, now: time.Now, cache: map[string]teamRate{}}
}

// override is ratelimit.Config.Override for keys made by access.RateKey.
func (t *teamRates) override(key string) (ratelimit.Limit, bool) {
	team := access.TeamOfRateKey(key)
	now := t.now()
	t.mu.Lock()
	c, ok := t.cache[team]
	t.mu.Unlock()
	if ok && now.Sub(c.read) < teamRateTTL {
		return c.lim, c.own
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	q, err := t.store.GetQuota(ctx, team)
	if err != nil {
		// The store is down: the last known limit, else the default.
		return c.lim, ok && c.own
	}
	c = teamRate{read: now}
	if q.APIRate >= 0 {
		c.own = true
		c.lim = ratelimit.Limit{Rate: float64(q.APIRate), Burst: t.def.Burst}
		if q.APIBurst >= 0 {
			c.lim.Burst = int(q.APIBurst)
		}
	} else if q.APIBurst >= 0 && !t.def.Unlimited() {
		c.own, c.lim = true, ratelimit.Limit{Rate: t.def.Rate, Burst: int(q.APIBurst)}
	}
	t.mu.Lock()
	if len(t.cache) > 100_000 {
		clear(t.cache) // bounded: teams are few, but keys of deleted teams come and go
	}
	t.cache[team] = c
	t.mu.Unlock()
	return c.lim, c.own
}
