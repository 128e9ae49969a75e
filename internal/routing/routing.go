// Package routing says which node of the cluster serves a call, and takes
// it there: one hop over the peer listener, never a redirect (SDKs, event
// streams, WebSockets and SSH do not follow redirects alike).
//
//   - A call that touches a machine's sandbox (commands, files, pause,
//     snapshot, kill, ...) goes to the node that runs it: the node of its
//     lineage's latest execution while that is live.
//   - A wake (connect, start, resume) of a machine that runs nowhere goes
//     where placement puts it (its last node if it has room).
//   - A create goes where placement puts it.
//   - Anything else (reads from the database, keys, templates) is served
//     by the node it reached.
//
// A request that came from a peer is served where it arrived: it is
// never forwarded again.
package routing

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/peer"
	"nullspace.dev/nullspace/internal/placement"
	"nullspace.dev/nullspace/internal/store"
)

// Store is what routing reads.
type Store interface {
	GetMachine(ctx context.Context, id string) (*store.Machine, error)
	LineageHead(ctx context.Context, lineageID string) (*store.Machine, error)
	GetSnapshot(ctx context.Context, id string) (*store.Snapshot, error)
	GetSnapshotByName(ctx context.Context, teamID, name string) (*store.Snapshot, error)
	GetNode(ctx context.Context, id string) (*store.Node, error)
}

// Router routes calls for the node Self.
type Router struct {
	Self   string
	Store  Store
	Placer *placement.Placer
	Peers  *peer.Client
	// Fence fails while this node is cut off from the database (nil: never).
	Fence func() error
}

// Here is the target of a call served by the node it reached.
const Here = ""

// Forwarded reports whether r came from a peer (and so is served here).
func Forwarded(r *http.Request) bool {
	_, ok := peer.FromContext(r.Context())
	return ok
}

// Check fails with errdefs.ErrFenced while the node is cut off.
func (rt *Router) Check() error {
	if rt == nil || rt.Fence == nil {
		return nil
	}
	return rt.Fence()
}

// Owner returns the node that runs machine id's sandbox (the latest
// execution of its lineage, while live), or Here.
func (rt *Router) Owner(ctx context.Context, teamID, id string) (string, error) {
	head, err := rt.head(ctx, teamID, id)
	if err != nil || head == nil {
		return Here, err
	}
	if live(head.State) {
		return rt.other(head.NodeID), nil
	}
	return Here, nil
}

// Wake returns the node that runs machine id, or, if it runs nowhere
// (paused, stopped), the node placement picks to wake it on.
func (rt *Router) Wake(ctx context.Context, teamID, id string) (string, error) {
	head, err := rt.head(ctx, teamID, id)
	if err != nil || head == nil {
		return Here, err
	}
	return rt.wake(ctx, head)
}

// WakeLineage is Wake of a lineage, whatever its team (the edge's: a
// signed URL names a lineage, not a team).
func (rt *Router) WakeLineage(ctx context.Context, lineageID string) (string, error) {
	head, err := rt.Store.LineageHead(ctx, lineageID)
	if err != nil {
		return Here, nil // the caller says what is wrong
	}
	return rt.wake(ctx, head)
}

func (rt *Router) wake(ctx context.Context, head *store.Machine) (string, error) {
	switch {
	case live(head.State):
		return rt.other(head.NodeID), nil
	case head.State != api.StatePaused && head.State != api.StateStopped:
		return Here, nil // the handler says what is wrong
	}
	w := placement.Want{MemoryMB: int64(head.MemoryMB), Lineage: head.LineageID, Prefer: head.NodeID}
	if head.SnapshotID != "" {
		sn, err := rt.Store.GetSnapshot(ctx, head.SnapshotID)
		if err != nil {
			return Here, nil // the handler says what is wrong
		}
		w.Host = sn.Host
		if !sn.Durable {
			w.Only = head.NodeID // its files are only where it paused
		}
	}
	return rt.place(ctx, w)
}

// OwnerOf is the node that runs rec's sandbox if it is live on another
// node, else Here.
func (rt *Router) OwnerOf(rec *store.Machine) string {
	if live(rec.State) {
		return rt.other(rec.NodeID)
	}
	return Here
}

// WakeSnapshot is Wake of the paused machine whose state snapshot id is.
func (rt *Router) WakeSnapshot(ctx context.Context, teamID, id string) (string, error) {
	sn, err := rt.Store.GetSnapshot(ctx, id)
	if err != nil || sn.TeamID != teamID {
		return Here, nil
	}
	return rt.Wake(ctx, teamID, sn.MachineID)
}

// Create returns the node placement picks for a new machine.
func (rt *Router) Create(ctx context.Context, teamID string, req api.CreateMachineRequest) (string, error) {
	w := placement.Want{MemoryMB: int64(req.MemoryMB)}
	if req.SnapshotID != "" {
		sn, err := rt.Store.GetSnapshot(ctx, req.SnapshotID)
		if errors.Is(err, errdefs.ErrNotFound) {
			sn, err = rt.Store.GetSnapshotByName(ctx, teamID, req.SnapshotID)
		}
		if err != nil || sn.TeamID != teamID {
			return Here, nil // the handler says what is wrong
		}
		w.Host = sn.Host
		if !sn.Durable {
			if src, err := rt.Store.GetMachine(ctx, sn.MachineID); err == nil {
				w.Only = src.NodeID
			}
		}
	}
	return rt.place(ctx, w)
}

func (rt *Router) place(ctx context.Context, w placement.Want) (string, error) {
	if rt.Placer == nil {
		return Here, nil
	}
	n, err := rt.Placer.Place(ctx, w)
	if err != nil {
		return Here, err
	}
	return rt.other(n.ID), nil
}

// head is the latest execution of id's lineage, or nil when the id is not
// the team's (the handler says so).
func (rt *Router) head(ctx context.Context, teamID, id string) (*store.Machine, error) {
	rec, err := rt.Store.GetMachine(ctx, id)
	if errors.Is(err, errdefs.ErrNotFound) || (err == nil && rec.TeamID != teamID) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if rec.Latest {
		return rec, nil
	}
	head, err := rt.Store.LineageHead(ctx, rec.LineageID)
	if err != nil {
		return rec, nil
	}
	return head, nil
}

func (rt *Router) other(node string) string {
	if node == rt.Self || node == "" {
		return Here
	}
	return node
}

// Forward takes r to node (route: "api", "e2b", "edge").
func (rt *Router) Forward(w http.ResponseWriter, r *http.Request, node, route string) {
	t, err := rt.target(r.Context(), node)
	if err != nil {
		if rt.Peers.OnError != nil {
			rt.Peers.OnError(w, r, node, err)
		} else {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
		}
		return
	}
	rt.Peers.Forward(w, r, t, route)
}

func (rt *Router) target(ctx context.Context, node string) (peer.Target, error) {
	n, err := rt.Store.GetNode(ctx, node)
	if err != nil {
		return peer.Target{}, err
	}
	if n.PeerURL == "" {
		return peer.Target{}, fmt.Errorf("node %s has no peer address (--peer-addr)", node)
	}
	return peer.Target{Node: n.ID, URL: n.PeerURL}, nil
}

func live(state string) bool { return slices.Contains(store.LiveStates, state) }
