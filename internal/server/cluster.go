package server

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"time"

	"nullspace.dev/nullspace/internal/cluster"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/machine"
	"nullspace.dev/nullspace/internal/peer"
	"nullspace.dev/nullspace/internal/placement"
	"nullspace.dev/nullspace/internal/routing"
	"nullspace.dev/nullspace/internal/snapshot"
	"nullspace.dev/nullspace/internal/store"
)

// peerSecret is the cluster's key that peer requests are signed with. It
// lives only in the database: the first node makes it, every node reads
// it, and a node cannot start with one of its own.
const peerSecret = "peer.key"

func (c *Config) validateCluster() error {
	if c.PeerAddr != "" {
		if _, _, err := net.SplitHostPort(c.PeerAddr); err != nil {
			return fmt.Errorf("--peer-addr %q: %w", c.PeerAddr, err)
		}
		if c.DatabaseURL == "" {
			return errors.New("--peer-addr needs --database-url: the nodes of a cluster share one PostgreSQL database")
		}
	}
	if c.PeerURL != "" {
		if u, err := url.Parse(c.PeerURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("--peer-url %q is not an http(s) URL", c.PeerURL)
		}
		if c.PeerAddr == "" {
			return errors.New("--peer-url needs --peer-addr (the listener it advertises)")
		}
	}
	hb, ttl := c.NodeHeartbeat, c.NodeTTL
	if hb == 0 {
		hb = cluster.DefaultHeartbeat
	}
	if ttl == 0 {
		ttl = cluster.DefaultTTL
	}
	if hb < 100*time.Millisecond || ttl < 3*hb {
		return fmt.Errorf("--node-ttl %s and --node-heartbeat %s: the heartbeat is at least 100ms and the TTL at least three heartbeats", ttl, hb)
	}
	return nil
}

// peerKey is the cluster's key: the database's, or a new one this node
// stores if it is the first (the newest wins a race, and both read it).
func peerKey(ctx context.Context, db store.Secrets) ([]byte, error) {
	key, _, err := db.Secret(ctx, peerSecret)
	if err != nil || key != nil {
		return key, err
	}
	fresh := make([]byte, 32)
	rand.Read(fresh)
	key, _, err = db.PutSecret(ctx, peerSecret, fresh, time.Now())
	return key, err
}

// clusterNode is a server's part in a cluster: its membership, the router
// of its calls, and its peer listener.
type clusterNode struct {
	member *cluster.Member
	router *routing.Router
	peers  *peer.Client
	key    []byte
	relays *peer.Relays
	// ln and http are the peer listener (nil without --peer-addr).
	ln   net.Listener
	http *http.Server
}

// joinCluster joins the cluster (every server is a node: a single one is
// a cluster of one) before the manager reconciles, so that its writes are
// fenced from the first. Routing is on for a shared database only.
func joinCluster(ctx context.Context, cfg Config, db store.Store, mgr *machine.Manager, host snapshot.Host, logger *slog.Logger) (*clusterNode, error) {
	hostJSON, _ := json.Marshal(host)
	c := &clusterNode{}
	peerURL := cfg.PeerURL
	if cfg.PeerAddr != "" {
		ln, err := net.Listen("tcp", cfg.PeerAddr)
		if err != nil {
			return nil, fmt.Errorf("listen on --peer-addr %s: %w", cfg.PeerAddr, err)
		}
		c.ln = ln
		if peerURL == "" {
			peerURL = "http://" + ln.Addr().String()
		}
	}
	member, err := cluster.Join(ctx, db, cluster.Config{
		Node: cfg.NodeName, PeerURL: peerURL, APIURL: "http://" + cfg.Addr, Host: hostJSON,
		Heartbeat: cfg.NodeHeartbeat, TTL: cfg.NodeTTL,
		Capacity: mgr.Capacity, Local: mgr, Lost: mgr.NodeLost, Logger: logger,
	})
	if err != nil {
		if c.ln != nil {
			c.ln.Close()
		}
		return nil, err
	}
	c.member = member
	if cfg.DatabaseURL == "" {
		return c, nil
	}
	key, err := peerKey(ctx, db)
	if err != nil {
		return nil, fmt.Errorf("the cluster's peer key: %w", err)
	}
	c.key = key
	c.peers = &peer.Client{Self: cfg.NodeName, Key: key, Now: member.Now, Logger: logger.With("component", "peer"),
		OnError: func(w http.ResponseWriter, r *http.Request, node string, err error) {
			writePeerError(w, errdefs.Wrap(err, errdefs.ErrUnavailable, errdefs.CodeNodeUnreachable,
				fmt.Sprintf("node %s, which runs the machine, did not answer", node),
				"retry; if the node is down, the cluster declares it dead after --node-ttl and its paused machines resume elsewhere"))
		}}
	ttl := cfg.NodeTTL
	if ttl == 0 {
		ttl = cluster.DefaultTTL
	}
	c.router = &routing.Router{Self: cfg.NodeName, Store: db, Peers: c.peers, Fence: member.Check,
		Placer: &placement.Placer{Self: cfg.NodeName, Nodes: db, TTL: ttl}}
	return c, nil
}

// servePeers serves the peer listener: signed requests of the other nodes,
// each to the part its route names, and the relays to local machines.
func (c *clusterNode) servePeers(bg context.Context, api, edge, e2b http.Handler, mgr *machine.Manager, logger *slog.Logger) {
	if c.ln == nil || c.key == nil {
		return
	}
	mux := http.NewServeMux()
	c.relays = &peer.Relays{Logger: logger.With("component", "relay"), Dial: func(ctx context.Context, id string, port int) (net.Conn, error) {
		conn, err := mgr.DialLocal(ctx, id, port)
		if errors.Is(err, machine.ErrNotHere) {
			return nil, fmt.Errorf("%w: %v", peer.ErrNoSuchMachine, err)
		}
		return conn, err
	}}
	mux.Handle(peer.RelayPath, c.relays)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		o, _ := peer.FromContext(r.Context())
		// The client's address, not the forwarding node's: rate limits,
		// the audit log and the edge's per-source limits count clients.
		if o.ClientAddr != "" {
			r.RemoteAddr = o.ClientAddr
			if _, _, err := net.SplitHostPort(o.ClientAddr); err != nil {
				r.RemoteAddr = net.JoinHostPort(o.ClientAddr, "0")
			}
		}
		var h http.Handler
		switch o.Route {
		case "api":
			h = api
		case "edge":
			h = edge
		case "e2b":
			h = e2b
		}
		if h == nil {
			writePeerError(w, errdefs.New(errdefs.ErrNotFound, errdefs.CodeNotFound,
				fmt.Sprintf("this node serves no %q route", o.Route), "check that every node runs the same flags and version"))
			return
		}
		h.ServeHTTP(w, r)
	})
	v := &peer.Verifier{Self: c.member.Node(), Key: c.key, Now: c.member.Now}
	c.http = &http.Server{Handler: v.Middleware(mux), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog:    slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		BaseContext: func(net.Listener) context.Context { return bg }}
	go func() {
		if err := c.http.Serve(c.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error("peer listener", "err", err)
		}
	}()
}

// writePeerError writes err as the API's error body.
func writePeerError(w http.ResponseWriter, err error) {
	p := errdefs.Classify(err)
	w.Header().Set("Content-Type", "application/json")
	if p.Status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "5")
	}
	w.WriteHeader(p.Status)
	json.NewEncoder(w).Encode(map[string]any{"code": p.Code, "message": p.Message, "retryable": p.Retryable, "suggested_action": p.SuggestedAction})
}

// close ends the peer listener and its relays.
func (c *clusterNode) close(ctx context.Context) {
	if c.http == nil {
		return
	}
	c.http.Shutdown(ctx)
	c.http.Close()
	c.relays.Close()
}
