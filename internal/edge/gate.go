package edge

import (
	"context"
	"sync"
	"time"
)

// New connections to a machine are paced: at most newConnsPerMachine may be
// unanswered at once, each counting from its dial until the machine sends
// its first byte on it (or newConnGrace passes, so a long poll does not hold
// a slot). Without this, 200 requests released together by a wake open 200
// connections at once; a server with a small listen backlog (5 for
// Python's http.server, 9 for busybox httpd) drops the SYNs that do not
// fit, and clients wait for their retransmission: 1, 3, 7, 15, 31 s.
// Connections kept alive are reused without a slot.
const (
	newConnsPerMachine = 8
	newConnGrace       = time.Second
)

// gates holds the pacing of each sandbox (by container id) that has a new
// connection in flight; an idle one is dropped.
type gates struct {
	mu sync.Mutex
	m  map[string]*gate
}

type gate struct {
	slots chan struct{}
	users int // holders and waiters
}

// acquire waits for a slot of key's gate and returns its release, which
// may be called any number of times.
func (g *gates) acquire(ctx context.Context, key string) (func(), error) {
	g.mu.Lock()
	if g.m == nil {
		g.m = map[string]*gate{}
	}
	gt, ok := g.m[key]
	if !ok {
		gt = &gate{slots: make(chan struct{}, newConnsPerMachine)}
		g.m[key] = gt
	}
	gt.users++
	g.mu.Unlock()
	done := func() {
		g.mu.Lock()
		if gt.users--; gt.users == 0 {
			delete(g.m, key)
		}
		g.mu.Unlock()
	}
	select {
	case gt.slots <- struct{}{}:
	case <-ctx.Done():
		done()
		return nil, ctx.Err()
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			<-gt.slots
			done()
		})
	}, nil
}
