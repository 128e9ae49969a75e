// Package devcluster runs a cluster of `nullspace serve` nodes on one host,
// for tests and for trying the cluster by hand: a bridge and one network
// namespace per node, all of the project's own, a PostgreSQL and a versitygw
// (S3) the nodes share, each node with its own address, node name and data
// dir.
//
//	host (root netns)                      <Name>-n1 netns
//	  <Name>-br 10.213.0.1/24 ─┬─ <Name>-v1 ═══ eth0 10.213.0.11/24  nullspace serve
//	  PostgreSQL, versitygw    ├─ <Name>-v2 ═══ eth0 10.213.0.12/24  (<Name>-n2)
//	  on 10.213.0.1            └─ <Name>-v3 ═══ eth0 10.213.0.13/24  (<Name>-n3)
//
// Nodes reach each other, PostgreSQL and the object store inside one L2
// segment, so the host's IP forwarding is left as it is. Partition sets a
// node's host-side veth down: the node loses the database, the store and
// its peers at once, as a node behind a broken switch port would.
//
// Every host object's name carries Options.Name, so two clusters (or a
// cluster and its tests) never touch each other's objects, and a run that
// crashed is cleaned up by the next Up or by Down, which remove only
// objects of their own Name.
package devcluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/objstore/s3test"
	"nullspace.dev/nullspace/internal/store/pgtest"
)

// Defaults of Options.
const (
	DefaultNodes        = 3
	DefaultBaseDir      = "/var/lib/nullspace-cluster"
	DefaultName         = "nsc"
	DefaultSubnet       = "10.213.0.0/24"
	DefaultStartTimeout = 3 * time.Minute
	DefaultStopTimeout  = 30 * time.Second

	// Each node listens on these ports of its own address.
	APIPort  = 8080
	EdgePort = 8081
	SSHPort  = 2222
	E2BPort  = 3000
	PeerPort = 7946

	// maxNodes keeps node addresses (.11 on) inside a /24 and host-side
	// veth names inside Linux's 15 bytes.
	maxNodes = 99
	// maxNameLen leaves room for "-v99" within 15 bytes ("-br" is shorter).
	maxNameLen = 10
)

// Options configures a cluster. The zero value, with Bin, AgentBin, Runsc
// and Versitygw set, is three nodes on 10.213.0.0/24 named nsc.
type Options struct {
	// Nodes is how many nodes to run (1 to 99). Default 3.
	Nodes int
	// Bin, AgentBin and Runsc are the nullspace, nullspace-agent and runsc
	// binaries; the last two are passed to serve as --agent and --runsc.
	Bin, AgentBin, Runsc string
	// Versitygw is the versitygw binary, started when ObjectStore is empty.
	Versitygw string
	// BaseDir holds the nodes' data dirs (BaseDir/<node>), their logs, the
	// object store's files and the pid files a later run cleans up by.
	// Default /var/lib/nullspace-cluster.
	BaseDir string
	// Name prefixes every host object of the cluster: bridge <Name>-br,
	// namespaces and node names <Name>-n<i>, host-side veths <Name>-v<i>.
	// 1 to 10 lower-case letters and digits, starting with a letter.
	// Default "nsc".
	Name string
	// Subnet is the nodes' IPv4 network: the bridge holds .1, node i
	// .(10+i). Default 10.213.0.0/24; it must not overlap an address the
	// host has.
	Subnet string
	// DatabaseURL is the PostgreSQL database the nodes share, reachable
	// from Subnet. Empty: a throwaway PostgreSQL 15 is started on the
	// bridge address (and removed by Close).
	DatabaseURL string
	// ObjectStore is the S3 store the nodes share (serve's --object-store;
	// its credentials go in Env as AWS_*). Empty: versitygw is started on
	// the bridge address over BaseDir/<Name>-s3.
	ObjectStore string
	// PeerAddr passes --peer-addr <ip>:7946 to each node.
	PeerAddr bool
	// E2BCompat passes --e2b-compat (the E2B API on <ip>:3000).
	E2BCompat bool
	// NodeTTL, when non-zero, is passed as --node-ttl.
	NodeTTL time.Duration
	// ExtraFlags are appended to every node's serve flags.
	ExtraFlags []string
	// Env is added to the nodes' environment (after the caller's own).
	Env []string
	// Output returns where a node's stdout and stderr go. Default: the
	// file BaseDir/<node>/serve.log, appended to across restarts.
	Output func(node string) io.Writer
	// StartTimeout bounds how long a node may take to answer its health
	// check (built-in templates are made ready before it does). Default 3
	// minutes.
	StartTimeout time.Duration
	// StopTimeout is how long Stop and Close wait after SIGTERM before
	// SIGKILL. Default 30s.
	StopTimeout time.Duration
	// Logger gets a line for each slow step. Default: none.
	Logger *slog.Logger
}

var validName = regexp.MustCompile(`^[a-z][a-z0-9]*$`)

// withDefaults returns o with its defaults filled in, or why o is invalid.
func (o Options) withDefaults() (Options, error) {
	if o.Nodes == 0 {
		o.Nodes = DefaultNodes
	}
	if o.BaseDir == "" {
		o.BaseDir = DefaultBaseDir
	}
	if o.Name == "" {
		o.Name = DefaultName
	}
	if o.Subnet == "" {
		o.Subnet = DefaultSubnet
	}
	if o.StartTimeout == 0 {
		o.StartTimeout = DefaultStartTimeout
	}
	if o.StopTimeout == 0 {
		o.StopTimeout = DefaultStopTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Nodes < 1 || o.Nodes > maxNodes {
		return o, fmt.Errorf("devcluster: %d nodes: run 1 to %d: %w", o.Nodes, maxNodes, errdefs.ErrInvalidArgument)
	}
	// No dash in Name: object names then split unambiguously at their
	// first dash, so one Name's objects never match another's. The nv and
	// nsv prefixes are those of nullspace's own machine veths, which a
	// server's firewall matches by prefix.
	if len(o.Name) > maxNameLen || !validName.MatchString(o.Name) {
		return o, fmt.Errorf("devcluster: name %q: use 1 to %d lower-case letters and digits, starting with a letter: %w",
			o.Name, maxNameLen, errdefs.ErrInvalidArgument)
	}
	if len(o.Name) >= 2 && (o.Name[:2] == "nv" || (len(o.Name) >= 3 && o.Name[:3] == "nsv")) {
		return o, fmt.Errorf("devcluster: name %q starts like nullspace's machine interfaces (nv, nsv): pick another: %w",
			o.Name, errdefs.ErrInvalidArgument)
	}
	pfx, err := netip.ParsePrefix(o.Subnet)
	if err != nil || !pfx.Addr().Is4() || pfx.Bits() > 24 || pfx.Masked() != pfx {
		return o, fmt.Errorf("devcluster: subnet %q: want an IPv4 network of /24 or larger such as %s: %w",
			o.Subnet, DefaultSubnet, errdefs.ErrInvalidArgument)
	}
	return o, nil
}

// validateBinaries checks what Up needs to start nodes and the stores.
func (o Options) validateBinaries() error {
	bins := []struct{ what, path string }{{"nullspace (Bin)", o.Bin}, {"nullspace-agent (AgentBin)", o.AgentBin}, {"runsc (Runsc)", o.Runsc}}
	if o.ObjectStore == "" {
		bins = append(bins, struct{ what, path string }{"versitygw (Versitygw; or set ObjectStore)", o.Versitygw})
	}
	for _, b := range bins {
		if b.path == "" {
			return fmt.Errorf("devcluster: no %s binary given: run `make build versitygw`: %w", b.what, errdefs.ErrInvalidArgument)
		}
		if fi, err := os.Stat(b.path); err != nil || fi.IsDir() {
			return fmt.Errorf("devcluster: %s binary %s is not usable (%v): run `make build versitygw`: %w", b.what, b.path, err, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// Names of the cluster's host objects. Node i counts from 1.

func bridgeName(name string) string          { return name + "-br" }
func netnsName(name string, i int) string    { return name + "-n" + strconv.Itoa(i) }
func hostVethName(name string, i int) string { return name + "-v" + strconv.Itoa(i) }

// nodeName is a node's --node-name: its namespace's name, so that one
// name finds both (nullspace derives its machines' objects from it as
// nullspace-<node>-N, which no cluster name matches).
func nodeName(name string, i int) string { return netnsName(name, i) }

// bridgeIP and nodeIP are the bridge's and node i's addresses in subnet.
func bridgeIP(subnet netip.Prefix) netip.Addr { return nthAddr(subnet, 1) }
func nodeIP(subnet netip.Prefix, i int) netip.Addr {
	return nthAddr(subnet, 10+i)
}

func nthAddr(p netip.Prefix, n int) netip.Addr {
	b := p.Masked().Addr().As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += uint32(n)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// NodeInfo describes node i. Addresses are reachable from the host.
type NodeInfo struct {
	Name     string // node name and network namespace, <Name>-n<i>
	IP       netip.Addr
	APIURL   string // http://IP:8080
	EdgeAddr string // IP:8081
	SSHAddr  string // IP:2222
	E2BAddr  string // IP:3000
	PeerURL  string // http://IP:7946 (served once --peer-addr exists)
	DataDir  string // BaseDir/<node>
	PID      int    // 0 when the node is not running
}

// layout is what Options decide, without touching the system: names,
// addresses, paths and command lines. It is pure, so it is unit-tested.
type layout struct {
	o      Options
	subnet netip.Prefix
	// dbURL is given to the nodes without its password, which goes in
	// PGPASSWORD (a command line is world-readable in /proc).
	dbURL, dbPassword string
	objectStore       string
}

func newLayout(o Options) (layout, error) {
	o, err := o.withDefaults()
	if err != nil {
		return layout{}, err
	}
	return layout{o: o, subnet: netip.MustParsePrefix(o.Subnet)}, nil
}

func (l layout) bridge() string        { return bridgeName(l.o.Name) }
func (l layout) netns(i int) string    { return netnsName(l.o.Name, i) }
func (l layout) hostVeth(i int) string { return hostVethName(l.o.Name, i) }
func (l layout) netnsPath(i int) string {
	return filepath.Join(netnsDir, l.netns(i))
}

func (l layout) node(i int) NodeInfo {
	ip := nodeIP(l.subnet, i)
	hp := func(port int) string { return netip.AddrPortFrom(ip, uint16(port)).String() }
	name := nodeName(l.o.Name, i)
	return NodeInfo{
		Name:     name,
		IP:       ip,
		APIURL:   "http://" + hp(APIPort),
		EdgeAddr: hp(EdgePort),
		SSHAddr:  hp(SSHPort),
		E2BAddr:  hp(E2BPort),
		PeerURL:  "http://" + hp(PeerPort),
		DataDir:  filepath.Join(l.o.BaseDir, name),
	}
}

// pidFile records a running node's pid, for a later run to stop it if
// this one dies without doing so.
func (l layout) pidFile(i int) string { return filepath.Join(l.node(i).DataDir, "cluster.pid") }

func (l layout) s3Dir() string { return filepath.Join(l.o.BaseDir, l.o.Name+"-s3") }
func (l layout) versitygwPIDFile() string {
	return filepath.Join(l.o.BaseDir, l.o.Name+"-versitygw.pid")
}

// nodeArgs is node i's command line: nsenter into its namespace (only the
// network one: `ip netns exec` would also unshare the mount namespace and
// remount /sys), then serve.
func (l layout) nodeArgs(i int) []string {
	n := l.node(i)
	ip := n.IP.String()
	hp := func(port int) string { return ip + ":" + strconv.Itoa(port) }
	args := []string{
		"nsenter", "--net=" + l.netnsPath(i), "--",
		l.o.Bin, "serve",
		"--data-dir", n.DataDir,
		"--node-name", n.Name,
		"--addr", hp(APIPort),
		"--edge-addr", hp(EdgePort),
		"--ssh-addr", hp(SSHPort),
		"--e2b-addr", hp(E2BPort),
		"--agent", l.o.AgentBin,
		"--runsc", l.o.Runsc,
		"--spares", "0",
	}
	if l.o.PeerAddr {
		args = append(args, "--peer-addr", hp(PeerPort))
	}
	if l.o.E2BCompat {
		args = append(args, "--e2b-compat")
	}
	if l.o.NodeTTL != 0 {
		args = append(args, "--node-ttl", l.o.NodeTTL.String())
	}
	if l.dbURL != "" {
		args = append(args, "--database-url", l.dbURL)
	}
	if l.objectStore != "" {
		args = append(args, "--object-store", l.objectStore)
	}
	return append(args, l.o.ExtraFlags...)
}

// withDatabase sets the database URL, moving its password out of it.
func (l *layout) withDatabase(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return fmt.Errorf("devcluster: database URL is not postgres://USER:PASSWORD@HOST:PORT/DB: %w", errdefs.ErrInvalidArgument)
	}
	if pw, ok := u.User.Password(); ok {
		l.dbPassword = pw
		u.User = url.User(u.User.Username())
	}
	l.dbURL = u.String()
	return nil
}

// databaseURL is the database URL with its password, for a shell.
func (l layout) databaseURL() string {
	if l.dbURL == "" || l.dbPassword == "" {
		return l.dbURL
	}
	u, _ := url.Parse(l.dbURL)
	u.User = url.UserPassword(u.User.Username(), l.dbPassword)
	return u.String()
}

// Cluster is a running cluster. Its methods are safe for concurrent use.
type Cluster struct {
	l   layout
	log *slog.Logger
	// env is what every node gets on top of os.Environ: Options.Env,
	// PGPASSWORD, the object store's AWS_* credentials.
	env    []string
	apiKey string

	// stopPG and stopS3 stop what Up started (nil: nothing, or stopped).
	stopPG func() error
	stopS3 func()

	mu     sync.Mutex
	nodes  []*proc // index i-1 is node i; nil when not running
	closed bool
}

// Node returns node i's description (1 ≤ i ≤ Nodes).
func (c *Cluster) Node(i int) NodeInfo {
	n := c.l.node(i)
	c.mu.Lock()
	defer c.mu.Unlock()
	if i >= 1 && i <= len(c.nodes) && c.nodes[i-1] != nil && !c.nodes[i-1].exitedNow() {
		n.PID = c.nodes[i-1].pid()
	}
	return n
}

// Nodes returns how many nodes the cluster has.
func (c *Cluster) Nodes() int { return c.l.o.Nodes }

// APIKey returns the operator key node 1 made for the default team; every
// node accepts it, since they share the database.
func (c *Cluster) APIKey() string { return c.apiKey }

// DatabaseURL returns the nodes' database, password included.
func (c *Cluster) DatabaseURL() string { return c.l.databaseURL() }

// ObjectStore returns the nodes' object store URL.
func (c *Cluster) ObjectStore() string { return c.l.objectStore }

// Env returns NAME=value lines that point a shell or a test at the
// cluster: each node's addresses (NULLSPACE_NODE<i>_API, ..._EDGE,
// ..._SSH, ..._E2B, ..._PEER), NULLSPACE_API_URL (node 1) and
// NULLSPACE_API_KEY for the CLI, the database and object store the nodes
// share, and the store's credentials.
func (c *Cluster) Env() []string { return c.l.env(c.apiKey, c.env) }

func (l layout) env(apiKey string, nodeEnv []string) []string {
	var out []string
	for i := 1; i <= l.o.Nodes; i++ {
		n := l.node(i)
		p := "NULLSPACE_NODE" + strconv.Itoa(i) + "_"
		out = append(out, p+"API="+n.APIURL, p+"EDGE="+n.EdgeAddr, p+"SSH="+n.SSHAddr, p+"E2B="+n.E2BAddr, p+"PEER="+n.PeerURL)
	}
	out = append(out,
		"NULLSPACE_API_URL="+l.node(1).APIURL,
		"NULLSPACE_API_KEY="+apiKey,
		"NULLSPACE_DATABASE_URL="+l.databaseURL(),
		"NULLSPACE_OBJECT_STORE="+l.objectStore)
	for _, kv := range nodeEnv {
		if k, _, _ := strings.Cut(kv, "="); k == "AWS_ACCESS_KEY_ID" || k == "AWS_SECRET_ACCESS_KEY" {
			out = append(out, kv)
		}
	}
	return out
}

// Up cleans up what an earlier run of the same Name left, then builds the
// network, starts PostgreSQL and versitygw unless given, and starts the
// nodes, node 1 first (it makes the operator key), each waited for until
// it answers GET /v1/health. On error, everything it made is removed.
func Up(ctx context.Context, o Options) (*Cluster, error) {
	l, err := newLayout(o)
	if err != nil {
		return nil, err
	}
	o = l.o
	if err := o.validateBinaries(); err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("devcluster: needs root (it creates a bridge, network namespaces and gVisor sandboxes): run it as root: %w", errdefs.ErrFailedPrecondition)
	}
	c := &Cluster{l: l, log: o.Logger.With("cluster", o.Name), nodes: make([]*proc, o.Nodes)}
	if err := down(ctx, l, c.log); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			// Under WithoutCancel: ctx may be why Up failed, and a
			// half-built cluster must still go.
			if cerr := c.Close(context.WithoutCancel(ctx)); cerr != nil {
				c.log.Error("clean up after a failed start", "err", cerr)
			}
		}
	}()

	if err := os.MkdirAll(o.BaseDir, 0o755); err != nil {
		return nil, fmt.Errorf("devcluster: make %s: %w", o.BaseDir, err)
	}
	start := time.Now()
	if err := setupNetwork(l); err != nil {
		return nil, err
	}
	c.log.Info("network ready", "bridge", l.bridge(), "subnet", l.subnet, "nodes", o.Nodes, "took", time.Since(start).Round(time.Millisecond))

	c.env = append(c.env, o.Env...)
	if err := c.startDatabase(ctx); err != nil {
		return nil, err
	}
	if err := c.startObjectStore(); err != nil {
		return nil, err
	}
	if c.l.dbPassword != "" {
		c.env = append(c.env, "PGPASSWORD="+c.l.dbPassword)
	}

	for i := 1; i <= o.Nodes; i++ {
		if err := c.Start(ctx, i); err != nil {
			return nil, err
		}
		if i == 1 {
			if c.apiKey, err = readAPIKey(l.node(1).DataDir); err != nil {
				return nil, err
			}
		}
	}
	ok = true
	c.log.Info("cluster ready", "nodes", o.Nodes, "api", l.node(1).APIURL)
	return c, nil
}

func (c *Cluster) startDatabase(ctx context.Context) error {
	if c.l.o.DatabaseURL != "" {
		return c.l.withDatabase(c.l.o.DatabaseURL)
	}
	start := time.Now()
	br := bridgeIP(c.l.subnet).String()
	raw, stop, err := pgtest.StartClusterWith(ctx, pgtest.ClusterOptions{
		Listen: []string{br},
		Allow:  []string{c.l.subnet.String()},
		Logf:   func(format string, args ...any) { c.log.Info(fmt.Sprintf(format, args...)) },
	})
	if err != nil {
		return fmt.Errorf("devcluster: start PostgreSQL (or pass a database URL): %w", err)
	}
	c.stopPG = stop
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("devcluster: PostgreSQL URL: %w", err)
	}
	// pgtest names loopback; the nodes reach the bridge address.
	u.Host = netip.AddrPortFrom(bridgeIP(c.l.subnet), mustPort(u.Port())).String()
	if err := c.l.withDatabase(u.String()); err != nil {
		return err
	}
	c.log.Info("PostgreSQL ready", "addr", u.Host, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

func mustPort(s string) uint16 {
	p, _ := strconv.ParseUint(s, 10, 16)
	return uint16(p)
}

func (c *Cluster) startObjectStore() error {
	if c.l.o.ObjectStore != "" {
		c.l.objectStore = c.l.o.ObjectStore
		return nil
	}
	start := time.Now()
	// The store is as throwaway as the database: a bucket left by an
	// earlier run belongs to that run's generated credentials, and
	// versitygw refuses to make it again for this run's.
	if err := os.RemoveAll(c.l.s3Dir()); err != nil {
		return fmt.Errorf("devcluster: remove an earlier run's object store: %w", err)
	}
	srv, stop, err := s3test.RunOn(c.l.o.Versitygw, c.l.s3Dir(), bridgeIP(c.l.subnet).String())
	if err != nil {
		return fmt.Errorf("devcluster: start the object store (or pass one): %w", err)
	}
	c.stopS3 = stop
	if err := os.WriteFile(c.l.versitygwPIDFile(), []byte(strconv.Itoa(srv.PID)), 0o644); err != nil {
		return fmt.Errorf("devcluster: record versitygw's pid: %w", err)
	}
	c.l.objectStore = srv.URL
	c.env = append(c.env, srv.Env()...)
	c.log.Info("object store ready", "url", srv.URL, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// Close stops the nodes (SIGTERM, then SIGKILL after StopTimeout), stops
// the PostgreSQL and versitygw Up started (and removes their files), and
// removes the veths, namespaces and bridge. The nodes' data dirs and logs
// stay in BaseDir. It may be called more than once.
func (c *Cluster) Close(ctx context.Context) error {
	ctx = context.WithoutCancel(ctx)
	c.mu.Lock()
	c.closed = true
	procs := c.nodes
	c.nodes = make([]*proc, len(procs))
	c.mu.Unlock()

	var errs []error
	var wg sync.WaitGroup
	var emu sync.Mutex
	for i, p := range procs {
		if p == nil {
			continue
		}
		wg.Go(func() {
			if err := p.stop(c.l.o.StopTimeout); err != nil {
				emu.Lock()
				errs = append(errs, fmt.Errorf("stop node %d: %w", i+1, err))
				emu.Unlock()
			}
			os.Remove(c.l.pidFile(i + 1))
		})
	}
	wg.Wait()
	if c.stopS3 != nil {
		c.stopS3()
		c.stopS3 = nil
		os.Remove(c.l.versitygwPIDFile())
		if err := os.RemoveAll(c.l.s3Dir()); err != nil {
			errs = append(errs, fmt.Errorf("remove the object store's files: %w", err))
		}
	}
	if c.stopPG != nil {
		if err := c.stopPG(); err != nil {
			errs = append(errs, fmt.Errorf("stop PostgreSQL: %w", err))
		}
		c.stopPG = nil
	}
	// What a crashed earlier run left goes too, with the network.
	errs = append(errs, down(ctx, c.l, c.log))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("devcluster: close: %w", err)
	}
	c.log.Info("cluster closed")
	return nil
}

// Down removes what a cluster of o.Name left on the host: it stops nodes
// and a versitygw a dead run started (by the pids it recorded, each
// checked against the process's command line), PostgreSQL clusters whose
// starter died, and the cluster's veths, namespaces and bridge. It touches
// nothing whose name does not carry o.Name.
func Down(ctx context.Context, o Options) error {
	l, err := newLayout(o)
	if err != nil {
		return err
	}
	return down(ctx, l, l.o.Logger.With("cluster", l.o.Name))
}

func down(ctx context.Context, l layout, log *slog.Logger) error {
	var errs []error
	for i := 1; i <= maxNodes; i++ {
		n := l.node(i)
		if err := stopRecorded(ctx, l.pidFile(i), "--data-dir\x00"+n.DataDir+"\x00", l.o.StopTimeout, log); err != nil {
			errs = append(errs, fmt.Errorf("node %s: %w", n.Name, err))
		}
	}
	if err := stopRecorded(ctx, l.versitygwPIDFile(), l.s3Dir(), l.o.StopTimeout, log); err != nil {
		errs = append(errs, fmt.Errorf("versitygw: %w", err))
	} else if err := os.RemoveAll(l.s3Dir()); err != nil {
		errs = append(errs, fmt.Errorf("remove the object store's files: %w", err))
	}
	pgtest.Sweep(ctx, func(format string, args ...any) { log.Info(fmt.Sprintf(format, args...)) })
	if err := removeNetwork(l.o.Name, log); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
