package edge

import (
	"context"
	"sync"
	"time"

	"nullspace.dev/nullspace/api"
)

// routes caches the targets of running lineages, so that a request to a
// running machine costs no store lookup (~80 µs, on the one SQLite
// connection every API call shares). The manager tells the edge of every
// state change (Forget), which drops the lineage's route. A route read
// while any state changed is not kept: the read may predate the change.
// Entries also expire after routeTTL, so a change the edge was not told of
// cannot live on. Only running lineages are kept, so the cache is bounded
// by the number of running machines.
type routes struct {
	mu  sync.Mutex
	gen uint64 // counts Forget calls
	m   map[string]cachedRoute
}

type cachedRoute struct {
	t  Target
	at time.Time
}

const routeTTL = 5 * time.Second

// route returns the target of a lineage, from the cache when it is there.
func (s *Server) route(ctx context.Context, lineageID string) (Target, error) {
	c := &s.routes
	c.mu.Lock()
	if r, ok := c.m[lineageID]; ok && time.Since(r.at) < routeTTL {
		c.mu.Unlock()
		return r.t, nil
	}
	gen := c.gen
	c.mu.Unlock()
	t, err := s.machines.Route(ctx, lineageID)
	if err == nil && t.State == api.StateRunning {
		c.mu.Lock()
		if c.gen == gen {
			if c.m == nil {
				c.m = map[string]cachedRoute{}
			}
			c.m[lineageID] = cachedRoute{t: t, at: time.Now()}
		}
		c.mu.Unlock()
	}
	return t, err
}

// Forget drops the cached route of a lineage. The manager calls it after
// every state change of one of its machines.
func (s *Server) Forget(lineageID string) {
	c := &s.routes
	c.mu.Lock()
	c.gen++
	delete(c.m, lineageID)
	c.mu.Unlock()
}
