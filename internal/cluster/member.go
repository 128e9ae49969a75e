// Package cluster makes a server one node of a cluster of servers that
// share PostgreSQL: it joins (a row in nodes at a new epoch), heartbeats,
// fences itself when it loses the database, takes the cluster's
// leadership when no one holds it, and, as leader, declares dead the nodes
// that stopped heartbeating. PostgreSQL is the only arbiter: every time
// that decides something is the database's, and everything exclusive is a
// row or an advisory lock.
//
// The timeline of a node cut off from the database, with TTL the time
// after which the leader declares a silent node dead:
//
//	t0          last heartbeat sent (heartbeat_at >= t0 in the database)
//	t0 + TTL/2  the node freezes its sandboxes and refuses lifecycle calls
//	t0 + TTL    at the earliest, the leader declares it dead, fails its
//	            running machines (node_lost) and its lineages may resume
//	            elsewhere
//
// so a lineage never runs on two nodes at once: by the time another node
// may claim it, the cut-off node's sandbox is frozen. When the node
// reaches the database again, either its epoch still holds (it thaws and
// goes on) or it does not (it kills its sandboxes and joins again at a new
// epoch).
package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store"
)

// Defaults.
const (
	DefaultHeartbeat = 2 * time.Second
	DefaultTTL       = 15 * time.Second
)

// Config configures a node's membership.
type Config struct {
	Node            string
	PeerURL, APIURL string
	// Host is what the node's snapshots depend on (snapshot.Host).
	Host json.RawMessage
	// Heartbeat is how often the node reports; TTL how long a silent node
	// lives (at least three heartbeats).
	Heartbeat, TTL time.Duration
	// Capacity reports the node's room at each heartbeat.
	Capacity func(ctx context.Context) store.NodeCapacity
	// Local acts on the node's own sandboxes when its membership changes.
	Local Local
	// Lost is told, on the leader, what became of a dead node's machines.
	Lost   func(ctx context.Context, loss store.NodeLoss)
	Logger *slog.Logger
}

// Local is what the membership does to the node's own sandboxes.
type Local interface {
	// Freeze stops every sandbox of the node (cut off for TTL/2).
	Freeze(ctx context.Context)
	// Thaw lets them run again (the epoch held).
	Thaw(ctx context.Context)
	// Abandon kills them without writing to the database: the node was
	// declared dead, and its machines are failed or resumed elsewhere.
	Abandon(ctx context.Context)
	// Drain pauses them, so that they resume on other nodes (the node was
	// drained). It is called again, after it returns, while the node stays
	// drained.
	Drain(ctx context.Context)
}

// Member is a node's membership of the cluster.
type Member struct {
	cfg Config
	db  store.Nodes
	log *slog.Logger

	epoch atomic.Int64
	// lastOK is the local monotonic time at which the last heartbeat that
	// succeeded was sent.
	lastOK atomic.Pointer[time.Time]
	frozen atomic.Bool
	// offset is the database's clock minus this node's, from the last
	// heartbeat.
	offset atomic.Int64
	leader atomic.Bool
	// draining is set while a Drain runs.
	draining atomic.Bool

	choresMu sync.Mutex
	chores   []chore
}

type chore struct {
	name string
	run  func(ctx context.Context)
}

// Join joins the cluster as cfg.Node at a new epoch.
func Join(ctx context.Context, db store.Nodes, cfg Config) (*Member, error) {
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = DefaultHeartbeat
	}
	if cfg.TTL <= 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.TTL < 3*cfg.Heartbeat {
		return nil, fmt.Errorf("--node-ttl %s: make it at least three heartbeats (%s)", cfg.TTL, 3*cfg.Heartbeat)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	m := &Member{cfg: cfg, db: db, log: cfg.Logger.With("component", "cluster", "node", cfg.Node)}
	if err := m.join(ctx); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *Member) join(ctx context.Context) error {
	sent := time.Now()
	n, err := m.db.JoinNode(ctx, store.Node{ID: m.cfg.Node, PeerURL: m.cfg.PeerURL, APIURL: m.cfg.APIURL, Host: m.cfg.Host, Capacity: m.capacity(ctx)})
	if err != nil {
		return fmt.Errorf("join the cluster as node %s: %w", m.cfg.Node, err)
	}
	m.epoch.Store(n.Epoch)
	m.lastOK.Store(&sent)
	m.offset.Store(int64(n.HeartbeatAt.Sub(sent)))
	m.log.Info("joined the cluster", "epoch", n.Epoch, "drained", n.Drained)
	return nil
}

func (m *Member) capacity(ctx context.Context) store.NodeCapacity {
	if m.cfg.Capacity == nil {
		return store.NodeCapacity{}
	}
	return m.cfg.Capacity(ctx)
}

// Node is the node's name; Epoch its current epoch.
func (m *Member) Node() string { return m.cfg.Node }
func (m *Member) Epoch() int64 { return m.epoch.Load() }

// Leader reports whether the node holds the cluster's leadership.
func (m *Member) Leader() bool { return m.leader.Load() }

// Now is the database's clock as this node estimates it (its own clock
// corrected by the offset seen at the last heartbeat): what nodes compare
// times by, so that their own clocks' skew does not matter.
func (m *Member) Now() time.Time { return time.Now().Add(time.Duration(m.offset.Load())) }

// Check fails with errdefs.ErrFenced while the node is cut off from the
// database (its sandboxes frozen): it takes no lifecycle call then.
func (m *Member) Check() error {
	if m.frozen.Load() || m.silentFor() >= m.cfg.TTL/2 {
		return errdefs.ErrFenced
	}
	return nil
}

func (m *Member) silentFor() time.Duration {
	p := m.lastOK.Load()
	if p == nil {
		return 0
	}
	return time.Since(*p)
}

// OnLeader registers a chore that runs, under a context cancelled when
// the leadership ends, on whichever node leads the cluster. Call before
// Run.
func (m *Member) OnLeader(name string, run func(ctx context.Context)) {
	m.choresMu.Lock()
	defer m.choresMu.Unlock()
	m.chores = append(m.chores, chore{name, run})
}

// Run heartbeats, watches the fence and leads when it can, until ctx
// ends; then it leaves the cluster.
func (m *Member) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); m.heartbeats(ctx) }()
	go func() { defer wg.Done(); m.lead(ctx) }()
	wg.Wait()
	leaveCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := m.db.LeaveNode(leaveCtx, "shut down"); err != nil {
		m.log.Warn("leave the cluster", "err", err)
	}
}

// heartbeats reports every Heartbeat; a tick that finds the last success
// TTL/2 old freezes the node's sandboxes first.
func (m *Member) heartbeats(ctx context.Context) {
	tick := time.NewTicker(m.cfg.Heartbeat / 2)
	defer tick.Stop()
	next := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if !m.frozen.Load() && m.silentFor() >= m.cfg.TTL/2 {
			m.log.Error("cut off from the database for half the node TTL: freezing this node's sandboxes and refusing lifecycle calls until it is back",
				"silent", m.silentFor().Round(time.Millisecond), "ttl", m.cfg.TTL)
			m.frozen.Store(true)
			m.cfg.Local.Freeze(ctx)
		}
		if time.Now().Before(next) {
			continue
		}
		next = time.Now().Add(m.cfg.Heartbeat)
		m.beat(ctx)
	}
}

func (m *Member) beat(ctx context.Context) {
	hctx, cancel := context.WithTimeout(ctx, m.cfg.Heartbeat)
	defer cancel()
	sent := time.Now()
	dbNow, err := m.db.Heartbeat(hctx, m.capacity(hctx))
	switch {
	case err == nil:
		got := time.Now()
		m.offset.Store(int64(dbNow.Sub(sent.Add(got.Sub(sent) / 2))))
		m.lastOK.Store(&sent)
		if m.frozen.Load() {
			m.log.Warn("the database is back and this node's epoch holds: thawing its sandboxes")
			m.cfg.Local.Thaw(ctx)
			m.frozen.Store(false)
		}
		if n, err := m.db.GetNode(hctx, m.cfg.Node); err == nil && n.Drained && m.draining.CompareAndSwap(false, true) {
			go func() {
				defer m.draining.Store(false)
				m.cfg.Local.Drain(ctx)
			}()
		}
	case errors.Is(err, errdefs.ErrFenced):
		m.log.Error("this node was declared dead while cut off: killing its sandboxes (their machines failed or moved on) and joining again", "epoch", m.Epoch(), "err", err)
		m.frozen.Store(true)
		m.cfg.Local.Abandon(ctx)
		if err := m.join(ctx); err != nil {
			m.log.Error("join again", "err", err)
			return
		}
		m.frozen.Store(false)
	case ctx.Err() == nil:
		m.log.Warn("heartbeat failed", "err", err, "silent", m.silentFor().Round(time.Millisecond))
	}
}

// lead takes the leadership when it is free and runs the chores while it
// holds: the reaper of dead nodes, and what the server registered.
func (m *Member) lead(ctx context.Context) {
	tick := time.NewTicker(m.cfg.Heartbeat)
	defer tick.Stop()
	var held store.Leader
	stop := func() {}
	var running sync.WaitGroup
	resign := func(why string, err error) {
		if held == nil {
			return
		}
		m.log.Warn("no longer the cluster's leader", "why", why, "err", err)
		m.leader.Store(false)
		stop()
		running.Wait()
		held.Release()
		held = nil
	}
	defer func() { resign("shutting down", nil) }()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if held != nil {
			cctx, cancel := context.WithTimeout(ctx, m.cfg.Heartbeat)
			err := held.Check(cctx)
			cancel()
			switch {
			case err != nil:
				resign("lost the leader's lock", err)
			case m.Check() != nil:
				resign("cut off from the database", nil)
			}
			continue
		}
		if m.Check() != nil {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, m.cfg.Heartbeat)
		l, ok, err := m.db.Leadership(cctx)
		cancel()
		if err != nil || !ok {
			continue
		}
		held = l
		m.leader.Store(true)
		m.log.Info("leading the cluster")
		lctx, cancelChores := context.WithCancel(ctx)
		stop = cancelChores
		m.choresMu.Lock()
		chores := append([]chore{{"reaper", m.reap}}, m.chores...)
		m.choresMu.Unlock()
		for _, c := range chores {
			running.Add(1)
			go func() {
				defer running.Done()
				c.run(lctx)
			}()
		}
	}
}

// reap declares dead, every heartbeat, the nodes silent for the TTL.
func (m *Member) reap(ctx context.Context) {
	tick := time.NewTicker(m.cfg.Heartbeat)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		losses, err := m.db.DeclareDead(ctx, m.cfg.TTL, "missed heartbeats")
		if err != nil {
			if ctx.Err() == nil {
				m.log.Warn("declare silent nodes dead", "err", err)
			}
			continue
		}
		for _, loss := range losses {
			m.log.Error("declared a node dead", "dead", loss.Node.ID, "epoch", loss.Node.Epoch, "reason", loss.Node.Reason, "machines", len(loss.Machines))
			if m.cfg.Lost != nil {
				m.cfg.Lost(ctx, loss)
			}
		}
	}
}
