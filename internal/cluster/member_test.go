package cluster

import (
	"context"
	"errors"
	"os"
	"sync"
	"testing"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/store"
	"nullspace.dev/nullspace/internal/store/pgtest"
	"nullspace.dev/nullspace/internal/store/sqlstore"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// cutDB is a node's database handle that a test can cut off: while cut,
// its heartbeats and leadership calls fail as an unreachable database's.
type cutDB struct {
	store.Store
	mu  sync.Mutex
	cut bool
}

var errCut = errors.New("connection refused (cut by the test)")

func (c *cutDB) setCut(v bool) { c.mu.Lock(); c.cut = v; c.mu.Unlock() }
func (c *cutDB) isCut() bool   { c.mu.Lock(); defer c.mu.Unlock(); return c.cut }

func (c *cutDB) Heartbeat(ctx context.Context, cp store.NodeCapacity) (time.Time, error) {
	if c.isCut() {
		return time.Time{}, errCut
	}
	return c.Store.Heartbeat(ctx, cp)
}

func (c *cutDB) Leadership(ctx context.Context) (store.Leader, bool, error) {
	if c.isCut() {
		return nil, false, errCut
	}
	return c.Store.Leadership(ctx)
}

// local records what the membership did to a node's sandboxes, and when.
type local struct {
	mu     sync.Mutex
	events []string
	at     map[string]time.Time
}

func (l *local) record(what string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, what)
	if l.at == nil {
		l.at = map[string]time.Time{}
	}
	if _, ok := l.at[what]; !ok {
		l.at[what] = time.Now()
	}
}
func (l *local) Freeze(context.Context)  { l.record("freeze") }
func (l *local) Thaw(context.Context)    { l.record("thaw") }
func (l *local) Abandon(context.Context) { l.record("abandon") }
func (l *local) Drain(context.Context)   { l.record("drain") }
func (l *local) when(what string) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	t, ok := l.at[what]
	return t, ok
}

type node struct {
	db     *cutDB
	local  *local
	member *Member
	stop   context.CancelFunc
	done   chan struct{}
	lostMu sync.Mutex
	lost   []store.NodeLoss
	lostAt time.Time
}

const (
	beat = 100 * time.Millisecond
	ttl  = 800 * time.Millisecond
)

func startNode(t *testing.T, url, name string) *node {
	t.Helper()
	db, err := sqlstore.OpenPostgres(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	db.SetNode(name)
	n := &node{db: &cutDB{Store: db}, local: &local{}, done: make(chan struct{})}
	n.member, err = Join(t.Context(), n.db, Config{Node: name, PeerURL: "http://" + name, Heartbeat: beat, TTL: ttl, Local: n.local,
		Lost: func(_ context.Context, loss store.NodeLoss) {
			n.lostMu.Lock()
			defer n.lostMu.Unlock()
			if n.lost == nil {
				n.lostAt = time.Now()
			}
			n.lost = append(n.lost, loss)
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n.stop = cancel
	go func() { defer close(n.done); n.member.Run(ctx) }()
	t.Cleanup(func() { n.halt(); db.Close() })
	return n
}

func (n *node) halt() {
	n.stop()
	<-n.done
}

func waitFor(t *testing.T, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestCutOffNodeFreezesBeforeItIsDeclaredDead: a node cut off from the
// database freezes its sandboxes and refuses lifecycle calls before the
// leader may declare it dead; the leader then fails its running machine
// (node_lost); when the node is back, it finds its epoch gone, abandons
// its sandboxes and joins again at the next epoch.
func TestCutOffNodeFreezesBeforeItIsDeclaredDead(t *testing.T) {
	url := pgtest.URL(t)
	a := startNode(t, url, "a")
	b := startNode(t, url, "b")
	waitFor(t, "a leader", 5*time.Second, func() bool { return a.member.Leader() || b.member.Leader() })
	if a.member.Leader() {
		// The cut-off node must not be the one that judges: restart a so
		// that b leads.
		a.halt()
		waitFor(t, "b leads", 5*time.Second, b.member.Leader)
		a = startNode(t, url, "a")
	}
	m := &store.Machine{ID: "m1", TeamID: "t", State: api.StateRunning, CreatedAt: time.Now()}
	if err := a.db.CreateMachine(t.Context(), m, 10); err != nil {
		t.Fatal(err)
	}
	epoch := a.member.Epoch()

	cut := time.Now()
	a.db.setCut(true)
	waitFor(t, "a freezes", 2*ttl, func() bool { _, ok := a.local.when("freeze"); return ok })
	if err := a.member.Check(); err == nil {
		t.Fatal("a cut-off node takes lifecycle calls")
	}
	waitFor(t, "b declares a dead", 4*ttl, func() bool { b.lostMu.Lock(); defer b.lostMu.Unlock(); return len(b.lost) > 0 })
	froze, _ := a.local.when("freeze")
	if !froze.Before(b.lostAt) || froze.Sub(cut) > ttl {
		t.Fatalf("a froze %s after it was cut, and was declared dead %s after: it must freeze first, within the TTL (%s)", froze.Sub(cut), b.lostAt.Sub(cut), ttl)
	}
	got, err := b.db.GetMachine(t.Context(), "m1")
	if err != nil || got.State != api.StateFailed || got.FailureReason != api.FailureNodeLost {
		t.Fatalf("a's machine after a was declared dead: %v %+v", err, got)
	}

	a.db.setCut(false)
	waitFor(t, "a rejoins", 4*ttl, func() bool { return a.member.Epoch() > epoch && a.member.Check() == nil })
	if _, ok := a.local.when("abandon"); !ok {
		t.Fatal("a rejoined without killing its sandboxes")
	}
	if _, ok := a.local.when("thaw"); ok {
		t.Fatal("a thawed sandboxes whose machines were failed")
	}
}

// TestShortCutThaws: a node back before the TTL keeps its epoch and thaws.
func TestShortCutThaws(t *testing.T) {
	url := pgtest.URL(t)
	a := startNode(t, url, "a")
	startNode(t, url, "b")
	epoch := a.member.Epoch()
	a.db.setCut(true)
	waitFor(t, "a freezes", 2*ttl, func() bool { _, ok := a.local.when("freeze"); return ok })
	a.db.setCut(false)
	waitFor(t, "a thaws", 2*ttl, func() bool { _, ok := a.local.when("thaw"); return ok })
	if a.member.Epoch() != epoch || a.member.Check() != nil {
		t.Fatalf("after a short cut: epoch %d (was %d), check %v", a.member.Epoch(), epoch, a.member.Check())
	}
	if _, ok := a.local.when("abandon"); ok {
		t.Fatal("a abandoned its sandboxes though its epoch held")
	}
}

// TestOneLeader: one node leads at a time, and another takes over when
// the leader leaves.
func TestOneLeader(t *testing.T) {
	url := pgtest.URL(t)
	nodes := []*node{startNode(t, url, "a"), startNode(t, url, "b"), startNode(t, url, "c")}
	leaders := func() []int {
		var out []int
		for i, n := range nodes {
			if n.member.Leader() {
				out = append(out, i)
			}
		}
		return out
	}
	waitFor(t, "a leader", 5*time.Second, func() bool { return len(leaders()) == 1 })
	for range 5 {
		time.Sleep(beat)
		if l := leaders(); len(l) != 1 {
			t.Fatalf("leaders: %v", l)
		}
	}
	first := leaders()[0]
	nodes[first].halt()
	waitFor(t, "another leader", 5*time.Second, func() bool { l := leaders(); return len(l) == 1 && l[0] != first })
}
