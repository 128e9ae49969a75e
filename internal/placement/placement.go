// Package placement chooses the node of the cluster that gets a new
// sandbox: a create, a resume, a start, a create from a snapshot.
//
// The candidates are the live, undrained nodes that heartbeat within the
// TTL, can restore what is asked (their host matches the snapshot's), and
// have room (free memory under their overcommit, a free network slot).
// Among them:
//
//   - a wake of a lineage (resume, connect, start) goes to its last node
//     when that node has room (its cache holds the snapshot's files and
//     template), else to the candidate that rendezvous hashing of the
//     lineage picks: every node picks the same one for the same lineage,
//     so a storm of connects of one paused machine, spread over the
//     nodes, converges on one node, where the lineage lock lets one
//     resume happen;
//   - anything else (a create) goes to the best of K candidates drawn at
//     random, scored by free memory and load, with a bonus for a node
//     that has the template cached: random draws spread a burst of
//     creates that all see the same (heartbeat-old) capacities, which a
//     plain "most free" choice would pile onto one node.
//
// Capacities are those of the last heartbeats, seconds old: the chosen
// node's own admission check is the last word.
package placement

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/snapshot"
	"nullspace.dev/nullspace/internal/store"
)

// Nodes lists the cluster's nodes and the database's time.
type Nodes interface {
	ListNodes(ctx context.Context) ([]store.Node, time.Time, error)
}

// Placer chooses nodes.
type Placer struct {
	// Self is the node placing: the only one that may take a machine
	// without a peer listener (no other node could forward it there).
	Self  string
	Nodes Nodes
	// TTL: a node whose last heartbeat is older is not placed on, dead or
	// not yet declared so.
	TTL time.Duration
	// K is how many random candidates a create compares (default 2).
	K int
	// CacheFor is how long a list of nodes is reused (default 500 ms).
	CacheFor time.Duration

	mu      sync.Mutex
	cached  []store.Node
	cacheAt time.Time // local, when cached was read
	dbAt    time.Time // the database's time then
}

// Forget drops the cached list: the next placement reads the nodes again
// (after a node refused what it was given).
func (p *Placer) Forget() {
	p.mu.Lock()
	p.cached = nil
	p.mu.Unlock()
}

func (p *Placer) cacheNow() time.Time { return p.dbAt.Add(time.Since(p.cacheAt)) }

// Want is what a sandbox needs.
type Want struct {
	MemoryMB int64
	// Host is the snapshot's host (snapshot.Host as JSON) a restore needs
	// (nil: a boot from a template, any host).
	Host json.RawMessage
	// Lineage makes the choice a wake's: the same for every node.
	Lineage string
	// Prefer is the node to take when it has room (the lineage's last).
	Prefer string
	// Only restricts the choice to one node (a snapshot whose files are
	// only there).
	Only string
	// Digest is the template's content digest: a node that has it cached
	// scores higher.
	Digest string
}

// Place returns the node for w, or a retryable capacity_exhausted error
// that says why each node was left out.
func (p *Placer) Place(ctx context.Context, w Want) (store.Node, error) {
	nodes, now, err := p.nodes(ctx)
	if err != nil {
		return store.Node{}, err
	}
	var cands []store.Node
	var why []string
	for _, n := range nodes {
		if reason := p.exclude(n, now, w); reason != "" {
			if n.State == store.NodeLive {
				why = append(why, n.ID+": "+reason)
			}
			continue
		}
		cands = append(cands, n)
	}
	if len(cands) == 0 {
		msg := "no node of the cluster has room for this machine"
		if len(why) > 0 {
			msg += " (" + strings.Join(why, "; ") + ")"
		}
		return store.Node{}, &errdefs.Error{Class: errdefs.ErrUnavailable, Code: errdefs.CodeCapacityExhausted, Message: msg,
			SuggestedAction: "retry later, kill or pause machines, or add a node", RetryAfter: 5 * time.Second}
	}
	if w.Prefer != "" {
		if i := slices.IndexFunc(cands, func(n store.Node) bool { return n.ID == w.Prefer }); i >= 0 {
			return cands[i], nil
		}
	}
	if w.Lineage != "" {
		return rendezvous(cands, w.Lineage), nil
	}
	k := p.K
	if k <= 0 {
		k = 2
	}
	best, bestScore := store.Node{}, -1e18
	for _, i := range rand.Perm(len(cands))[:min(k, len(cands))] {
		if s := score(cands[i], w); s > bestScore {
			best, bestScore = cands[i], s
		}
	}
	return best, nil
}

// exclude says why n cannot take w ("" if it can).
func (p *Placer) exclude(n store.Node, now time.Time, w Want) string {
	switch {
	case n.State != store.NodeLive:
		return n.State
	case w.Only != "" && n.ID != w.Only:
		return "the snapshot's files are only on node " + w.Only
	case n.Drained:
		return "drained"
	case n.PeerURL == "" && n.ID != p.Self:
		return "no peer listener (--peer-addr)"
	case p.TTL > 0 && now.Sub(n.HeartbeatAt) > p.TTL:
		return fmt.Sprintf("no heartbeat for %s", now.Sub(n.HeartbeatAt).Round(time.Second))
	case n.Capacity.FreeSlots <= 0:
		return "no free network slot"
	case n.Capacity.MemoryMB > 0 && n.Capacity.MemoryMB-n.Capacity.CommittedMB < w.MemoryMB:
		return fmt.Sprintf("%d MiB free, %d MiB asked", n.Capacity.MemoryMB-n.Capacity.CommittedMB, w.MemoryMB)
	}
	if len(w.Host) > 0 {
		var saved, here snapshot.Host
		if err := json.Unmarshal(w.Host, &saved); err == nil {
			if err := json.Unmarshal(n.Host, &here); err != nil {
				return "its host is unknown"
			}
			if err := snapshot.CheckHost("", saved, here); err != nil {
				msg := errdefs.Classify(err).Message
				if _, after, ok := strings.Cut(msg, "here: "); ok {
					msg = after
				}
				return "cannot restore the snapshot: " + msg
			}
		}
	}
	return ""
}

// score ranks a candidate for a create: the share of its memory free,
// less its load, plus a bonus for the template in its cache.
func score(n store.Node, w Want) float64 {
	s := 0.0
	if n.Capacity.MemoryMB > 0 {
		s = float64(n.Capacity.MemoryMB-n.Capacity.CommittedMB) / float64(n.Capacity.MemoryMB)
	}
	s -= n.Capacity.Load / 4
	if w.Digest != "" && slices.Contains(n.Capacity.Templates, w.Digest) {
		s += 0.25
	}
	return s
}

// rendezvous picks the candidate with the highest hash of (key, node):
// the same node on every node for the same candidates, and when a
// candidate leaves, only its keys move.
func rendezvous(cands []store.Node, key string) store.Node {
	var best store.Node
	var bestH uint64
	for _, n := range cands {
		h := fnv.New64a()
		h.Write([]byte(key))
		h.Write([]byte{0})
		h.Write([]byte(n.ID))
		if v := h.Sum64(); best.ID == "" || v > bestH {
			best, bestH = n, v
		}
	}
	return best
}

// nodes returns the cluster's nodes, from a short cache.
func (p *Placer) nodes(ctx context.Context) ([]store.Node, time.Time, error) {
	ttl := p.CacheFor
	if ttl <= 0 {
		ttl = 500 * time.Millisecond
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cached != nil && time.Since(p.cacheAt) < ttl {
		return p.cached, p.cacheNow(), nil
	}
	nodes, now, err := p.Nodes.ListNodes(ctx)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("list the cluster's nodes: %w", err)
	}
	p.cached, p.cacheAt, p.dbAt = nodes, time.Now(), now
	return nodes, now, nil
}
