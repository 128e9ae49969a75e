package httpapi

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/access"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/store"
)

// Nodes is what the nodes routes read and change.
type Nodes interface {
	GetNode(ctx context.Context, id string) (*store.Node, error)
	ListNodes(ctx context.Context) ([]store.Node, time.Time, error)
	SetNodeDrained(ctx context.Context, id string, drained bool) (*store.Node, error)
}

// WithNodes serves the cluster's nodes (operator scope).
func (s *Server) WithNodes(n Nodes) *Server {
	s.nodes = n
	return s
}

func (s *Server) nodeRoutes() []Route {
	return []Route{
		{Method: "GET", Path: "/v1/nodes", Scope: access.Operator, Handler: s.listNodes},
		{Method: "POST", Path: "/v1/nodes/{name}/drain", Scope: access.Operator, Handler: s.drainNode(true)},
		{Method: "POST", Path: "/v1/nodes/{name}/undrain", Scope: access.Operator, Handler: s.drainNode(false)},
	}
}

func (s *Server) listNodes(w http.ResponseWriter, r *http.Request, _ string) error {
	if s.nodes == nil {
		return errNoNodes
	}
	nodes, now, err := s.nodes.ListNodes(r.Context())
	if err != nil {
		return err
	}
	out := api.NodeList{Nodes: []api.Node{}}
	for _, n := range nodes {
		out.Nodes = append(out.Nodes, s.nodeView(n, now))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// drainNode drains a node (no placements on it; it pauses its machines,
// which then resume elsewhere) or undrains it.
func (s *Server) drainNode(drained bool) func(w http.ResponseWriter, r *http.Request, _ string) error {
	return func(w http.ResponseWriter, r *http.Request, _ string) error {
		if s.nodes == nil {
			return errNoNodes
		}
		name := r.PathValue("name")
		if _, err := s.nodes.GetNode(r.Context(), name); err != nil {
			return err
		}
		n, err := s.nodes.SetNodeDrained(r.Context(), name, drained)
		if err != nil {
			return err
		}
		_, now, err := s.nodes.ListNodes(r.Context())
		if err != nil {
			now = n.HeartbeatAt
		}
		writeJSON(w, http.StatusOK, s.nodeView(*n, now))
		return nil
	}
}

func (s *Server) nodeView(n store.Node, now time.Time) api.Node {
	v := api.Node{Name: n.ID, Epoch: n.Epoch, State: n.State, Drained: n.Drained, PeerURL: n.PeerURL, APIURL: n.APIURL,
		HeartbeatAgeMS: max(0, now.Sub(n.HeartbeatAt).Milliseconds()), JoinedAt: n.JoinedAt, HeartbeatAt: n.HeartbeatAt, DeadAt: n.DeadAt,
		Reason: n.Reason, Self: n.ID == s.node,
		Capacity: api.NodeCapacity{CPUs: n.Capacity.CPUs, MemoryMB: n.Capacity.MemoryMB, CommittedMB: n.Capacity.CommittedMB,
			Slots: n.Capacity.Slots, FreeSlots: n.Capacity.FreeSlots, Machines: n.Capacity.Machines, Load: n.Capacity.Load}}
	_ = json.Unmarshal(n.Host, &v.Host)
	return v
}

var errNoNodes = errdefs.New(errdefs.ErrFailedPrecondition, errdefs.CodeFailedPrecondition, "this server keeps no nodes", "")
