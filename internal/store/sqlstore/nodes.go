package sqlstore

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store"
)

// fence is the node a store writes for, and the epoch it joined with.
// Every write of machines, spares and snapshot commits checks it in its
// own transaction (checkFence): the row lock it takes on the node's row
// (FOR SHARE) orders it with the leader's DeclareDead (FOR UPDATE), so a
// write either commits while the node is alive at its epoch, and the
// leader then finds it, or fails.
type fence struct {
	node  atomic.Pointer[string]
	epoch atomic.Int64 // 0: not joined (tools, tests), no check
}

func (f *fence) nodeID() string {
	if f == nil {
		return ""
	}
	if p := f.node.Load(); p != nil {
		return *p
	}
	return ""
}

// SetNode names the node this store writes for.
func (s *DB) SetNode(id string) { s.f.node.Store(&id) }

// checkFence fails with errdefs.ErrFenced unless the store's node is
// live at its epoch (no check before the node joined).
func checkFence(ctx context.Context, c conn) error {
	if c.f == nil {
		return nil
	}
	epoch := c.f.epoch.Load()
	if epoch == 0 {
		return nil
	}
	node := c.f.nodeID()
	var have int64
	var state string
	err := c.queryRow(ctx, `SELECT epoch, state FROM nodes WHERE id=?`+c.d.forShare, node).Scan(&have, &state)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("node %s has no row: %w", node, errdefs.ErrFenced)
	}
	if err != nil {
		return fmt.Errorf("check the fence of node %s: %w", node, err)
	}
	if have != epoch || state != store.NodeLive {
		return fmt.Errorf("node %s is %s at epoch %d, not live at epoch %d: %w", node, state, have, epoch, errdefs.ErrFenced)
	}
	return nil
}

// dbNow is the database's time: PostgreSQL's now() (the transaction's
// start), or the process's clock for SQLite, where one process is the
// whole cluster.
func dbNow(ctx context.Context, c conn) (time.Time, error) {
	if c.d.textTimes {
		return time.Now().UTC().Truncate(time.Microsecond), nil
	}
	var t time.Time
	if err := c.queryRow(ctx, `SELECT now()`).Scan(timeDest{&t}); err != nil {
		return time.Time{}, fmt.Errorf("read the database's time: %w", err)
	}
	return t, nil
}

const nodeColumns = `id, epoch, state, drained, peer_url, api_url, host, capacity, joined_at, heartbeat_at, dead_at, reason`

func scanNode(r scanner) (*store.Node, error) {
	var n store.Node
	var host, capacity string
	if err := r.Scan(&n.ID, &n.Epoch, &n.State, &n.Drained, &n.PeerURL, &n.APIURL, &host, &capacity,
		timeDest{&n.JoinedAt}, timeDest{&n.HeartbeatAt}, timeDest{&n.DeadAt}, &n.Reason); err != nil {
		return nil, err
	}
	if host != "" {
		n.Host = json.RawMessage(host)
	}
	if err := json.Unmarshal([]byte(capacity), &n.Capacity); err != nil {
		return nil, fmt.Errorf("node %s capacity: %w", n.ID, err)
	}
	return &n, nil
}

// JoinNode records the store's node as live at one past its last epoch,
// with n's addresses, host and capacity, and fences the store's writes
// with that epoch. A node that was drained stays drained.
func (s *DB) JoinNode(ctx context.Context, n store.Node) (*store.Node, error) {
	id := s.f.nodeID()
	if id == "" || n.ID != id {
		return nil, fmt.Errorf("join node %q: the store writes for node %q (SetNode first)", n.ID, id)
	}
	capacity, _ := json.Marshal(n.Capacity)
	var out *store.Node
	err := s.inTx(ctx, "join node "+id, func(c conn) error {
		now, err := dbNow(ctx, c)
		if err != nil {
			return err
		}
		// The epoch is the row's plus one: a node that joins again (a
		// restart, or a rejoin after it was fenced) never writes under the
		// epoch of its previous life.
		_, err = c.exec(ctx, `INSERT INTO nodes (`+nodeColumns+`) VALUES (?, 1, ?, FALSE, ?, ?, ?, ?, ?, ?, NULL, '')
			ON CONFLICT (id) DO UPDATE SET epoch = nodes.epoch + 1, state = excluded.state, peer_url = excluded.peer_url,
				api_url = excluded.api_url, host = excluded.host, capacity = excluded.capacity, joined_at = excluded.joined_at,
				heartbeat_at = excluded.heartbeat_at, dead_at = NULL, reason = ''`,
			id, store.NodeLive, n.PeerURL, n.APIURL, rawOr(n.Host, ""), string(capacity), at(now), at(now))
		if err != nil {
			return err
		}
		// Rows from before nodes (a single server's) become the first
		// joining node's: their slots and memory are counted as its own.
		for _, table := range []string{"machines", "spares"} {
			if _, err := c.exec(ctx, `UPDATE `+table+` SET node_id=? WHERE node_id=''`, id); err != nil {
				return err
			}
		}
		out, err = scanNode(c.queryRow(ctx, `SELECT `+nodeColumns+` FROM nodes WHERE id=?`, id))
		return err
	})
	if err != nil {
		return nil, err
	}
	s.f.epoch.Store(out.Epoch)
	return out, nil
}

// Heartbeat records that the store's node is alive at its epoch.
func (s *DB) Heartbeat(ctx context.Context, cp store.NodeCapacity) (time.Time, error) {
	id, epoch := s.f.nodeID(), s.f.epoch.Load()
	if epoch == 0 {
		return time.Time{}, fmt.Errorf("heartbeat of node %q: it has not joined", id)
	}
	capacity, _ := json.Marshal(cp)
	var now time.Time
	err := s.inTx(ctx, "heartbeat of node "+id, func(c conn) error {
		var err error
		if now, err = dbNow(ctx, c); err != nil {
			return err
		}
		res, err := c.exec(ctx, `UPDATE nodes SET heartbeat_at=?, capacity=? WHERE id=? AND epoch=? AND state=?`,
			at(now), string(capacity), id, epoch, store.NodeLive)
		if err != nil {
			return err
		}
		if !exactlyOne(res) {
			return checkFence(ctx, c) // says why
		}
		return nil
	})
	return now, err
}

// LeaveNode marks the store's node left; its fence no longer holds.
func (s *DB) LeaveNode(ctx context.Context, reason string) error {
	id, epoch := s.f.nodeID(), s.f.epoch.Load()
	if epoch == 0 {
		return nil
	}
	return s.inTx(ctx, "leave node "+id, func(c conn) error {
		_, err := c.exec(ctx, `UPDATE nodes SET state=?, reason=? WHERE id=? AND epoch=? AND state=?`,
			store.NodeLeft, reason, id, epoch, store.NodeLive)
		return err
	})
}

// GetNode returns a node by name.
func (s *DB) GetNode(ctx context.Context, id string) (*store.Node, error) {
	n, err := scanNode(s.c().queryRow(ctx, `SELECT `+nodeColumns+` FROM nodes WHERE id=?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, errdefs.New(errdefs.ErrNotFound, errdefs.CodeNodeNotFound,
			fmt.Sprintf("no node named %q has joined the cluster", id), "GET /v1/nodes lists the nodes")
	}
	return n, err
}

// ListNodes returns every node by name, and the database's time.
func (s *DB) ListNodes(ctx context.Context) ([]store.Node, time.Time, error) {
	var nodes []store.Node
	var now time.Time
	err := s.inTx(ctx, "list nodes", func(c conn) error {
		var err error
		if now, err = dbNow(ctx, c); err != nil {
			return err
		}
		ns, err := queryAll(ctx, c, "list nodes", `SELECT `+nodeColumns+` FROM nodes ORDER BY id`, nil, scanNode)
		nodes = nodes[:0]
		for _, n := range ns {
			nodes = append(nodes, *n)
		}
		return err
	})
	return nodes, now, err
}

// SetNodeDrained drains or undrains a node.
func (s *DB) SetNodeDrained(ctx context.Context, id string, drained bool) (*store.Node, error) {
	if _, err := s.c().exec(ctx, `UPDATE nodes SET drained=? WHERE id=?`, drained, id); err != nil {
		return nil, fmt.Errorf("drain node %s: %w", id, err)
	}
	return s.GetNode(ctx, id)
}

// DeclareDead marks dead the live nodes whose heartbeat is older than ttl
// by the database's clock, and, in the same transaction, ends what their
// sandboxes were doing (see reapMachines). Taking the node's row lock
// first makes every fenced write of that node either land before (and be
// reaped here) or fail.
func (s *DB) DeclareDead(ctx context.Context, ttl time.Duration, reason string) ([]store.NodeLoss, error) {
	var out []store.NodeLoss
	err := s.inTx(ctx, "declare nodes dead", func(c conn) error {
		out = out[:0]
		now, err := dbNow(ctx, c)
		if err != nil {
			return err
		}
		dead, err := queryAll(ctx, c, "declare nodes dead", `SELECT `+nodeColumns+` FROM nodes WHERE state=? AND heartbeat_at < ? ORDER BY id`+c.d.forUpdate,
			[]any{store.NodeLive, at(now.Add(-ttl))}, scanNode)
		if err != nil {
			return err
		}
		for _, n := range dead {
			msg := fmt.Sprintf("%s: no heartbeat since %s (%s ago, the TTL is %s)", reason, n.HeartbeatAt.Format(time.RFC3339), now.Sub(n.HeartbeatAt).Round(time.Millisecond), ttl)
			if _, err := c.exec(ctx, `UPDATE nodes SET state=?, dead_at=?, reason=? WHERE id=? AND epoch=?`,
				store.NodeDead, at(now), msg, n.ID, n.Epoch); err != nil {
				return err
			}
			n.State, n.DeadAt, n.Reason = store.NodeDead, now, msg
			loss := store.NodeLoss{Node: *n}
			if loss.Machines, err = reapMachines(ctx, c, n.ID, now); err != nil {
				return fmt.Errorf("machines of node %s: %w", n.ID, err)
			}
			out = append(out, loss)
		}
		return nil
	})
	return out, err
}

// ReapNode ends what a node that is not live (dead, or left while its
// sandboxes ran) left in a live state; the leader calls it for a node
// whose reap a crash cut short.
func (s *DB) ReapNode(ctx context.Context, id string) ([]store.ReapedMachine, error) {
	var out []store.ReapedMachine
	err := s.inTx(ctx, "reap node "+id, func(c conn) error {
		now, err := dbNow(ctx, c)
		if err != nil {
			return err
		}
		var state string
		if err := c.queryRow(ctx, `SELECT state FROM nodes WHERE id=?`+c.d.forUpdate, id).Scan(&state); err != nil {
			return err
		}
		if state != store.NodeDead {
			out = nil
			return nil
		}
		out, err = reapMachines(ctx, c, id, now)
		return err
	})
	return out, err
}

// reapMachines ends the live executions of a dead node, as a restart's
// reconcile would with no sandbox left, but without the node: the
// sandboxes died with it, and so did the state in their memory.
//   - creating, resuming: the row goes (a failed create or resume leaves
//     nothing; a resume's paused source is the lineage's head again, and
//     resumes on another node);
//   - starting: back to stopped (its disk snapshot is untouched);
//   - killing: killed;
//   - any other live state: failed, reason node_lost.
func reapMachines(ctx context.Context, c conn, node string, now time.Time) ([]store.ReapedMachine, error) {
	var w where
	w.eq("node_id", node)
	w.in("state", store.LiveStates)
	rows, err := queryAll(ctx, c, "machines of node "+node, `SELECT `+machineColumns+` FROM machines`+w.sql()+` ORDER BY created_at, id`+c.d.forUpdate, w.args, scanMachine)
	if err != nil {
		return nil, err
	}
	// Its spares died with it.
	if _, err := c.exec(ctx, `DELETE FROM spares WHERE node_id=?`, node); err != nil {
		return nil, err
	}
	var out []store.ReapedMachine
	for _, m := range rows {
		from := m.State
		switch m.State {
		case api.StateCreating, api.StateResuming:
			if err := deleteMachine(ctx, c, m.ID); err != nil {
				return nil, err
			}
			out = append(out, store.ReapedMachine{Machine: m, From: from, Deleted: true})
			continue
		case api.StateStarting:
			m.State, m.Slot = api.StateStopped, -1
		case api.StateKilling:
			m.State, m.Slot, m.EndedAt = api.StateKilled, -1, now
		default:
			m.State, m.Slot, m.EndedAt = api.StateFailed, -1, now
			m.FailureReason = api.FailureNodeLost
			m.Error = fmt.Sprintf("node %s was lost while the machine ran there; what its memory held since its last checkpoint is gone", node)
			m.Deadline = time.Time{}
		}
		if err := updateMachine(ctx, c, m); err != nil {
			return nil, err
		}
		m.Version++
		out = append(out, store.ReapedMachine{Machine: m, From: from})
	}
	return out, nil
}

// Leadership tries to become the cluster's leader. On PostgreSQL the
// leadership is a session advisory lock on a connection of its own: it
// ends when the session does, so a leader that dies, or is cut off long
// enough for PostgreSQL to drop its session (keepalives and an idle
// timeout bound that to seconds), lets another take over. Two leaders may
// overlap for that moment; the chores they run are safe to run twice.
// On SQLite the one server is the leader.
func (s *DB) Leadership(ctx context.Context) (store.Leader, bool, error) {
	if s.d.lock == "" {
		return soleLeader{}, true, nil
	}
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return nil, false, fmt.Errorf("leadership: %w", s.d.classify(err))
	}
	// Best effort: settings PostgreSQL before 14 lacks are skipped.
	for _, q := range []string{`SET tcp_keepalives_idle = 5`, `SET tcp_keepalives_interval = 2`, `SET tcp_keepalives_count = 3`, `SET idle_session_timeout = '20s'`} {
		_, _ = conn.ExecContext(ctx, q)
	}
	var ok bool
	if err := conn.QueryRowContext(ctx, `SELECT pg_try_advisory_lock($1)`, lockLeader).Scan(&ok); err != nil {
		conn.Close()
		return nil, false, fmt.Errorf("leadership: %w", s.d.classify(err))
	}
	if !ok {
		conn.Close()
		return nil, false, nil
	}
	return &pgLeader{conn: conn, d: s.d}, true, nil
}

type soleLeader struct{}

func (soleLeader) Check(context.Context) error { return nil }
func (soleLeader) Release()                    {}

type pgLeader struct {
	conn *sql.Conn
	d    *dialect
}

// Check asks the leader's own session whether it still holds the lock.
func (l *pgLeader) Check(ctx context.Context) error {
	var held bool
	err := l.conn.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND objid = $1 AND pid = pg_backend_pid() AND granted)`, lockLeader).Scan(&held)
	if err != nil {
		return fmt.Errorf("leadership: %w", l.d.classify(err))
	}
	if !held {
		return errors.New("leadership: the session no longer holds the leader's lock")
	}
	return nil
}

// Release unlocks and closes the session (closing alone would release it
// too).
func (l *pgLeader) Release() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, _ = l.conn.ExecContext(ctx, `SELECT pg_advisory_unlock($1)`, lockLeader)
	// A conn with a session lock must not go back to the pool.
	_ = l.conn.Raw(func(any) error { return driver.ErrBadConn })
	l.conn.Close()
}
