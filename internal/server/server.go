// Package server wires Nullspace's parts into the `nullspace serve` process:
// state store, template store, network, runtime driver, machine manager and
// the HTTP API. It owns the process's configuration.
package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"strings"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/access"
	"nullspace.dev/nullspace/internal/apikey"
	"nullspace.dev/nullspace/internal/atomicfile"
	"nullspace.dev/nullspace/internal/audit"
	"nullspace.dev/nullspace/internal/cors"
	"nullspace.dev/nullspace/internal/edge"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/events"
	"nullspace.dev/nullspace/internal/httpapi"
	"nullspace.dev/nullspace/internal/idempotency"
	"nullspace.dev/nullspace/internal/machine"
	"nullspace.dev/nullspace/internal/minrate"
	"nullspace.dev/nullspace/internal/objstore"
	"nullspace.dev/nullspace/internal/objstore/chunks"
	"nullspace.dev/nullspace/internal/objstore/s3"
	"nullspace.dev/nullspace/internal/ratelimit"
	"nullspace.dev/nullspace/internal/retention"
	"nullspace.dev/nullspace/internal/runtime/gvisor"
	"nullspace.dev/nullspace/internal/snapshot"
	"nullspace.dev/nullspace/internal/sshgate"
	"nullspace.dev/nullspace/internal/store"
	"nullspace.dev/nullspace/internal/store/sqlstore"
	"nullspace.dev/nullspace/internal/telemetry"
	"nullspace.dev/nullspace/internal/template"
)

// Config is the configuration of `nullspace serve`. Every field has a
// default (see Defaults) and a flag; Validate checks it before anything runs.
type Config struct {
	// Addr is the API listen address. Default 127.0.0.1:7700.
	Addr string
	// DataDir holds the database, machine directories and the API key file.
	// Default /var/lib/nullspace (env NULLSPACE_DATA_DIR).
	DataDir string
	// TemplatesDir holds templates. Default <DataDir>/templates.
	TemplatesDir string
	// CacheDir caches slow artefacts (template rootfs) across data dirs and
	// clones. Default /var/cache/nullspace (env NULLSPACE_CACHE_DIR).
	CacheDir string
	// Runsc is the runsc binary. Default: runsc next to the nullspace
	// binary, else on PATH.
	Runsc string
	// AgentBinary is the static nullspace-agent binary put in every machine.
	// Default: nullspace-agent next to the nullspace binary.
	AgentBinary string
	// NetworkCIDR is the IPv4 pool machines get a /30 from. Default 10.200.0.0/16.
	NetworkCIDR string
	// AllowInternet lets machines that ask for it reach the internet (NAT).
	// Default false: no machine gets outbound traffic.
	AllowInternet bool
	// MaxFileBytes bounds one file upload. Default 1 GiB.
	MaxFileBytes int64
	// WebhookURL, if set, receives every lifecycle event as a JSON POST,
	// signed with WebhookSecret (header X-Nullspace-Signature: sha256=<hex
	// HMAC>; env NULLSPACE_WEBHOOK_SECRET) and retried with backoff.
	WebhookURL    string
	WebhookSecret string
	// SnapshotBudgetMB bounds the committed snapshots' size: over it, the
	// paused states of sticky machines are evicted, oldest first. 0: none.
	SnapshotBudgetMB int64
	// CheckpointRetention is how many unpinned states of its history
	// (pauses, checkpoints) a machine keeps unless it asks otherwise; 0
	// keeps all. Default 10.
	CheckpointRetention int
	// KilledRetention keeps the records of killed and failed machines
	// this long after they ended (GET still shows them); 0 keeps them
	// forever. Default 24 h.
	KilledRetention time.Duration
	// EventsRetention and EventsMax bound the lifecycle events kept, by
	// age and by count (0: no bound); events the webhook has not delivered
	// are kept. Defaults 7 days and 1,000,000.
	EventsRetention time.Duration
	EventsMax       int
	// AuditRetention and AuditMax bound the audit log the same way.
	AuditRetention time.Duration
	AuditMax       int
	// MetricsInterval is how often running machines are sampled; default
	// 5 s (tests shorten it).
	MetricsInterval time.Duration
	// MemoryOvercommit is how many times the host's memory may be given to
	// machines as their memory_mb (gVisor takes memory as a machine touches
	// it); a create, resume, start or fork past it is refused with 503
	// capacity_exhausted. Default machine.DefaultMemoryOvercommit (1.5).
	MemoryOvercommit float64
	// Quota is every team's default limits (0: none); the operator sets a
	// team's own with PUT /v1/teams/{id}/quota.
	Quota store.Quota
	// DiskDefaultMB is the disk limit of a machine whose create does not
	// set disk_mb: what it may write to its root file system, in MiB,
	// enforced by gVisor (past it, writes inside fail with ENOSPC).
	// Default machine.DefaultDiskMB (10240). DiskMaxMB is the largest
	// disk_mb a create may ask for; default machine.MaxDiskMB (102400).
	DiskDefaultMB int
	DiskMaxMB     int
	// Spares is how many containers are kept created ahead of restores, for
	// the shapes of the newest snapshots; each costs ~16 MiB and a network
	// slot and takes ~70 ms off a resume. 0 disables them. Default 2.
	Spares int
	// BuiltinTemplates are made ready at start (built once, then cached).
	// Default minimal,base.
	BuiltinTemplates []string
	// TemplateSourceDirs are the host directories whose directories and
	// tarballs POST /v1/templates may name as from_dir and from_tarball
	// (also once symlinks are resolved); any other host path is refused,
	// since an API key must not read the host's files. Absolute, existing
	// directories. Default none: templates are built from templates or
	// from tarballs uploaded through the API.
	TemplateSourceDirs []string
	// TemplateUploadMaxBytes bounds a tarball uploaded to POST
	// /v1/templates (413 above it); what it unpacks to is bounded by four
	// times as much. Default 2 GiB.
	TemplateUploadMaxBytes int64
	// Version is reported by /v1/health.
	Version string

	// MetricsAddr, if set, serves GET /metrics (Prometheus) there without
	// a key, for a scraper on a private network; on the API's address it
	// needs an operator key.
	MetricsAddr string

	// EdgeAddr is where public traffic to machine URLs is served; empty:
	// no edge. Default 127.0.0.1:7701.
	EdgeAddr string
	// EdgeDomain is the domain machine URLs are under (wildcard DNS
	// *.domain points at the edge), with the port clients use when it is
	// not the scheme's default. Default "localhost", with EdgeAddr's port.
	EdgeDomain string
	// EdgeTLSCert and EdgeTLSKey make the edge serve HTTPS (and HTTP/2)
	// with this certificate, normally a wildcard one for *.EdgeDomain.
	EdgeTLSCert, EdgeTLSKey string
	// EdgeWakeTimeout bounds how long a request is held while its machine
	// wakes. Default 30 s.
	EdgeWakeTimeout time.Duration
	// EdgeHoldBodyBytes bounds the body buffered of a held request.
	// Default 1 MiB.
	EdgeHoldBodyBytes int64
	// EdgeHeaderTimeout bounds how long a client may take to send its
	// request headers to the edge. Default 10 s.
	EdgeHeaderTimeout time.Duration
	// MinBodyRate is the slowest a request body may arrive at the API, the
	// edge and the E2B listener (internal/minrate): slower ones get 408
	// body_too_slow and are disconnected. Default minrate.Default (1 KiB
	// in every 10 s of waiting); a zero Bytes or Window means the default.
	MinBodyRate minrate.Rate
	// SSHAddr is where the SSH gateway listens (internal/sshgate); empty:
	// no gateway (the default).
	SSHAddr string
	// E2BAddr is where the E2B-compatible API listens (internal/e2bcompat:
	// E2B's control plane and envd on one listener); empty: none (the
	// default; `serve --e2b-compat` sets it to 127.0.0.1:7703).
	E2BAddr string
	// CORSOrigins are the browser origins allowed to call the API ("*" for
	// any); none by default (internal/cors).
	CORSOrigins []string

	// Rate limits (token buckets, internal/ratelimit); a zero Limit turns
	// one off. Past one, the API and the edge answer 429 rate_limited with
	// Retry-After, the SSH gateway refuses with rate_limited. The defaults
	// are far above what one client does by hand or with the SDKs (the e2e
	// suite included: 200 requests at once to one machine's URL, 500 execs
	// in a row); they are there to stop floods.
	//
	// RatePerKey limits the authenticated API requests of each API key
	// (by its id), on the API and the E2B-compatible control plane
	// together. Default DefaultRatePerKey.
	RatePerKey ratelimit.Limit
	// EdgeRatePerSource limits the edge's requests from one client address
	// (an IPv6 client's /64), EdgeRatePerMachine those to one machine's
	// URLs. Defaults DefaultEdgeRatePerSource, DefaultEdgeRatePerMachine.
	EdgeRatePerSource, EdgeRatePerMachine ratelimit.Limit
	// SSHRatePerSource limits the SSH gateway's new connections from one
	// client address, SSHRatePerMachine its new sessions on one machine.
	// Defaults DefaultSSHRatePerSource, DefaultSSHRatePerMachine.
	SSHRatePerSource, SSHRatePerMachine ratelimit.Limit

	// NodeName names this server on the host; its host objects' names
	// derive from it (NodeHostNames), so that servers with different node
	// names never touch each other's machines. Default: the one recorded in
	// the data dir, else "local" for /var/lib/nullspace (today's names),
	// else one derived from the data dir's path (resolveNodeName).
	NodeName string
	// DatabaseURL is the PostgreSQL database the server keeps its state
	// in (postgres://user@host:port/db; the password may come from
	// PGPASSWORD or ~/.pgpass); empty: SQLite in the data dir.
	DatabaseURL string
	// PeerAddr is the address of the peer listener, where the other nodes
	// of a cluster forward calls on this node's machines (empty: none; the
	// node then takes no machine another node places). PeerURL is how they
	// reach it (default http://PeerAddr). Requires DatabaseURL.
	PeerAddr, PeerURL string
	// NodeTTL is how long a node may go without a heartbeat before the
	// leader declares it dead (default cluster.DefaultTTL); NodeHeartbeat
	// how often it beats (default cluster.DefaultHeartbeat).
	NodeTTL, NodeHeartbeat time.Duration
	// ObjectStore is the S3-compatible store snapshots are copied to
	// (s3://BUCKET/PREFIX?endpoint=...&region=...; credentials from the
	// AWS_* variables); empty: none. CacheMaxBytes bounds the local
	// copies of the snapshots it holds (0: no bound).
	ObjectStore   string
	CacheMaxBytes int64
	// Names of the host objects the server makes. Empty fields derive from
	// the node name; tests and benchmarks set them.
	Names HostNames
}

// Default rate limits (Config), in requests (at the SSH gateway,
// connections and sessions) per second and burst.
var (
	DefaultRatePerKey         = ratelimit.Limit{Rate: 100, Burst: 1000}
	DefaultEdgeRatePerSource  = ratelimit.Limit{Rate: 100, Burst: 500}
	DefaultEdgeRatePerMachine = ratelimit.Limit{Rate: 200, Burst: 500}
	DefaultSSHRatePerSource   = ratelimit.Limit{Rate: 20, Burst: 100}
	DefaultSSHRatePerMachine  = ratelimit.Limit{Rate: 20, Burst: 100}
)

// HostNames name the host objects a server makes. Those of node "local"
// are in DefaultHostNames.
type HostNames struct {
	NetnsPrefix   string `json:"netns_prefix"`   // network namespaces; default "nullspace-"
	VethPrefix    string `json:"veth_prefix"`    // host-side veth interfaces; default "nsv"
	FirewallTable string `json:"firewall_table"` // nftables table; default "nullspace"
	CgroupParent  string `json:"cgroup_parent"`  // parent cgroup of machines; default "/nullspace"
}

// Defaults returns the default configuration, honouring NULLSPACE_DATA_DIR
// and NULLSPACE_CACHE_DIR.
func Defaults() Config {
	c := Config{
		Addr:                   "127.0.0.1:7700",
		DataDir:                envOr("NULLSPACE_DATA_DIR", DefaultDataDir),
		CacheDir:               envOr("NULLSPACE_CACHE_DIR", "/var/cache/nullspace"),
		NetworkCIDR:            "10.200.0.0/16",
		MaxFileBytes:           1 << 30,
		Spares:                 2,
		MemoryOvercommit:       machine.DefaultMemoryOvercommit,
		DiskDefaultMB:          machine.DefaultDiskMB,
		DiskMaxMB:              machine.MaxDiskMB,
		CheckpointRetention:    machine.DefaultCheckpointRetention,
		KilledRetention:        24 * time.Hour,
		EventsRetention:        7 * 24 * time.Hour,
		EventsMax:              1_000_000,
		AuditRetention:         90 * 24 * time.Hour,
		AuditMax:               1_000_000,
		WebhookSecret:          os.Getenv("NULLSPACE_WEBHOOK_SECRET"),
		BuiltinTemplates:       []string{"minimal", "base"},
		TemplateUploadMaxBytes: httpapi.DefaultTemplateUploadBytes,
		EdgeAddr:               "127.0.0.1:7701",
		EdgeDomain:             "localhost",
		EdgeWakeTimeout:        edge.DefaultWakeTimeout,
		EdgeHoldBodyBytes:      edge.DefaultHoldBodyLimit,
		EdgeHeaderTimeout:      10 * time.Second,
		MinBodyRate:            minrate.Default,
		RatePerKey:             DefaultRatePerKey,
		EdgeRatePerSource:      DefaultEdgeRatePerSource,
		EdgeRatePerMachine:     DefaultEdgeRatePerMachine,
		SSHRatePerSource:       DefaultSSHRatePerSource,
		SSHRatePerMachine:      DefaultSSHRatePerMachine,
		DatabaseURL:            os.Getenv("NULLSPACE_DATABASE_URL"),
		ObjectStore:            os.Getenv("NULLSPACE_OBJECT_STORE"),
	}
	if exe, err := os.Executable(); err == nil {
		dir := filepath.Dir(exe)
		c.Runsc = filepath.Join(dir, "runsc")
		c.AgentBinary = filepath.Join(dir, "nullspace-agent")
	}
	if _, err := os.Stat(c.Runsc); err != nil {
		if p, err := exec.LookPath("runsc"); err == nil {
			c.Runsc = p
		}
	}
	return c
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// Validate checks the configuration and fills derived defaults.
func (c *Config) Validate() error {
	if os.Geteuid() != 0 {
		return errors.New("nullspace serve must run as root: it creates sandboxes, network namespaces and cgroups")
	}
	if c.DataDir == "" {
		return errors.New("--data-dir is empty")
	}
	if c.NodeName != "" {
		if err := ValidateNodeName(c.NodeName); err != nil {
			return err
		}
	}
	if c.TemplatesDir == "" {
		c.TemplatesDir = filepath.Join(c.DataDir, "templates")
	}
	if c.ObjectStore != "" {
		if _, err := objstore.Parse(c.ObjectStore); err != nil {
			return fmt.Errorf("--object-store: %w", err)
		}
	}
	if c.CacheMaxBytes < 0 {
		return errors.New("--cache-max-gb must be 0 (no bound) or more")
	}
	if c.DatabaseURL != "" {
		if u, err := url.Parse(c.DatabaseURL); err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") || (u.Host == "" && u.Query().Get("host") == "") {
			return fmt.Errorf("--database-url %s: want postgres://USER@HOST:PORT/DATABASE (the password from PGPASSWORD or ~/.pgpass)", sqlstore.Redact(c.DatabaseURL))
		}
	}
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		return fmt.Errorf("--addr %q: %w", c.Addr, err)
	}
	if err := c.validateCluster(); err != nil {
		return err
	}
	if fi, err := os.Stat(c.Runsc); err != nil || fi.IsDir() {
		return fmt.Errorf("runsc not found at %q: run `make build` (it builds runsc from its Go module) or pass --runsc", c.Runsc)
	}
	if fi, err := os.Stat(c.AgentBinary); err != nil || fi.IsDir() {
		return fmt.Errorf("agent binary not found at %q: run `make build` or pass --agent", c.AgentBinary)
	}
	if c.WebhookURL != "" {
		if u, err := url.Parse(c.WebhookURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("--webhook-url %q is not an http(s) URL", c.WebhookURL)
		}
	}
	if c.SnapshotBudgetMB < 0 {
		return fmt.Errorf("--snapshot-budget-mb must be 0 (no budget) or more, got %d", c.SnapshotBudgetMB)
	}
	if c.KilledRetention < 0 || c.EventsRetention < 0 || c.EventsMax < 0 || c.AuditRetention < 0 || c.AuditMax < 0 {
		return errors.New("--killed-retention, --events-retention and --events-max must be 0 (keep forever) or more")
	}
	if c.CheckpointRetention < 0 {
		return fmt.Errorf("--checkpoint-retention must be 0 (keep all) or more, got %d", c.CheckpointRetention)
	}
	if c.MemoryOvercommit == 0 {
		c.MemoryOvercommit = machine.DefaultMemoryOvercommit
	}
	for name, v := range map[string]int64{"--quota-running-machines": c.Quota.RunningMachines, "--quota-vcpus": c.Quota.VCPUs,
		"--quota-memory-mb": c.Quota.MemoryMB, "--quota-snapshot-bytes": c.Quota.SnapshotBytes, "--quota-creates-per-minute": c.Quota.CreatesPerMinute} {
		if v < 0 {
			return fmt.Errorf("%s must be 0 (no limit) or more, got %d", name, v)
		}
	}
	if c.MemoryOvercommit < 0 || c.MemoryOvercommit > 100 {
		return fmt.Errorf("--memory-overcommit must be more than 0 and at most 100, got %g (1 commits the host's memory once; the default is %g)", c.MemoryOvercommit, machine.DefaultMemoryOvercommit)
	}
	if c.DiskDefaultMB == 0 {
		c.DiskDefaultMB = machine.DefaultDiskMB
	}
	if c.DiskMaxMB == 0 {
		c.DiskMaxMB = max(machine.MaxDiskMB, c.DiskDefaultMB)
	}
	if c.DiskDefaultMB < 0 || c.DiskMaxMB < 0 || c.DiskDefaultMB > c.DiskMaxMB {
		return fmt.Errorf("--disk-default-mb %d and --disk-max-mb %d: both must be positive and the default at most the maximum (defaults %d and %d)",
			c.DiskDefaultMB, c.DiskMaxMB, machine.DefaultDiskMB, machine.MaxDiskMB)
	}
	if c.Spares < 0 {
		return fmt.Errorf("--spares must be 0 (none) or more, got %d", c.Spares)
	}
	if c.MaxFileBytes <= 0 {
		return fmt.Errorf("--max-file-bytes must be positive, got %d", c.MaxFileBytes)
	}
	if c.TemplateUploadMaxBytes <= 0 {
		return fmt.Errorf("--template-upload-max-bytes must be positive, got %d", c.TemplateUploadMaxBytes)
	}
	for _, d := range c.TemplateSourceDirs {
		if !filepath.IsAbs(d) {
			return fmt.Errorf("--template-source-dir %q is not an absolute path", d)
		}
		if fi, err := os.Stat(d); err != nil {
			return fmt.Errorf("--template-source-dir %s: %w", d, err)
		} else if !fi.IsDir() {
			return fmt.Errorf("--template-source-dir %s is not a directory", d)
		}
	}
	if _, err := cors.Parse(c.CORSOrigins); err != nil {
		return fmt.Errorf("--cors-origin: %w", err)
	}
	if c.SSHAddr != "" {
		if _, _, err := net.SplitHostPort(c.SSHAddr); err != nil {
			return fmt.Errorf("--ssh-addr %q: %w", c.SSHAddr, err)
		}
	}
	if c.E2BAddr != "" {
		if _, _, err := net.SplitHostPort(c.E2BAddr); err != nil {
			return fmt.Errorf("--e2b-addr %q: %w", c.E2BAddr, err)
		}
	}
	return c.validateEdge()
}

// validateEdge checks the edge's settings and fills the domain's port.
func (c *Config) validateEdge() error {
	if c.EdgeAddr == "" {
		return nil
	}
	_, port, err := net.SplitHostPort(c.EdgeAddr)
	if err != nil {
		return fmt.Errorf("--edge-addr %q: %w", c.EdgeAddr, err)
	}
	if (c.EdgeTLSCert == "") != (c.EdgeTLSKey == "") {
		return errors.New("--edge-tls-cert and --edge-tls-key go together")
	}
	if c.EdgeDomain == "" {
		return errors.New("--edge-domain is empty: give the domain machine URLs are under, e.g. localhost or preview.example.com")
	}
	host := c.EdgeDomain
	if h, p, err := net.SplitHostPort(c.EdgeDomain); err == nil {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("--edge-domain %q: the port must be a number from 1 to 65535", c.EdgeDomain)
		}
		host = h
	} else if port != "0" && !(port == "80" && c.EdgeTLSCert == "") && !(port == "443" && c.EdgeTLSCert != "") {
		// URLs carry the port clients connect to: the edge's own unless
		// the domain names one (a proxy in front of the edge).
		c.EdgeDomain = net.JoinHostPort(host, port)
	}
	if strings.ContainsAny(host, "/:@ ") || strings.HasPrefix(host, ".") || strings.HasSuffix(host, ".") {
		return fmt.Errorf("--edge-domain %q is not a domain name", c.EdgeDomain)
	}
	if c.EdgeWakeTimeout <= 0 {
		return fmt.Errorf("--edge-wake-timeout must be positive, got %s", c.EdgeWakeTimeout)
	}
	if c.EdgeHeaderTimeout <= 0 {
		c.EdgeHeaderTimeout = 10 * time.Second
	}
	if c.MinBodyRate.Bytes <= 0 || c.MinBodyRate.Window <= 0 {
		c.MinBodyRate = minrate.Default
	}
	if c.EdgeHoldBodyBytes <= 0 {
		return fmt.Errorf("--edge-hold-body-bytes must be positive, got %d", c.EdgeHoldBodyBytes)
	}
	return nil
}

// Run runs the server until ctx is cancelled. Machines keep running after
// it returns; the next start reconciles with them.
func Run(ctx context.Context, cfg Config, logger *slog.Logger) error {
	ready, err := Start(ctx, cfg, logger)
	if err != nil {
		return err
	}
	<-ctx.Done()
	return ready.Shutdown(context.WithoutCancel(ctx))
}

// Instance is a started server.
type Instance struct {
	// Addr is the address the API listens on.
	Addr string
	// APIKeyFile holds the default team's key (written on first start).
	APIKeyFile string
	// Manager is the machine manager (tests use it to inspect state).
	Manager *machine.Manager
	// NodeName is the server's node name, and Names its host objects'.
	NodeName string
	Names    HostNames

	// EdgeAddr is the address the edge listens on ("" without an edge).
	EdgeAddr string
	// SSHAddr is the address the SSH gateway listens on ("" without one).
	SSHAddr string
	// E2BAddr is the address of the E2B-compatible API ("" without one).
	E2BAddr string
	// MetricsAddr is the address of the keyless metrics listener ("" without one).
	MetricsAddr string

	http     *http.Server
	edge     *http.Server
	edgeDone chan struct{}
	ssh      *sshListener
	sshDone  chan struct{}
	e2b      *e2bListener
	e2bDone  chan struct{}
	cancel   context.CancelFunc
	closers  []io.Closer
	locks    *hostLocks
	done     chan struct{}
	// sparesDone is closed when the spare containers are gone.
	sparesDone chan struct{}
	// peer is the peer listener (nil: none); memberDone is closed once the
	// node has left the cluster.
	peer       *clusterNode
	memberDone chan struct{}
}

// ShutdownTimeout bounds Shutdown, whatever is in flight.
const ShutdownTimeout = 15 * time.Second

// Shutdown stops serving, cancels the lifecycle operations in flight (they
// are undone: a pause in progress leaves its machine running) and removes
// the spare containers, and releases the data dir and the node name. It
// does not touch machines, and it returns within ShutdownTimeout whatever
// is in flight.
func (i *Instance) Shutdown(ctx context.Context) error {
	i.cancel()
	ctx, cancelAll := context.WithTimeout(ctx, ShutdownTimeout)
	defer cancelAll()
	// Operations in flight first: the requests waiting for them then end.
	// They get half the budget; the listeners and the spares the rest.
	mctx, cancelManager := context.WithTimeout(ctx, ShutdownTimeout/2)
	err := i.Manager.Shutdown(mctx)
	cancelManager()
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if herr := i.http.Shutdown(sctx); herr != nil {
		i.http.Close() // requests still running (a long command) end now
		err = errors.Join(err, herr)
	}
	waited := make(chan struct{})
	go func() {
		defer close(waited)
		i.waitServing(sctx)
	}()
	select {
	case <-waited:
	case <-ctx.Done():
		err = errors.Join(err, fmt.Errorf("shutdown: gave up waiting for the listeners and spares after %s", ShutdownTimeout))
	}
	for _, c := range i.closers {
		c.Close()
	}
	i.locks.Close()
	return err
}

// waitServing ends the edge, E2B and SSH listeners and waits for them and
// for the API server and the spares to be done.
func (i *Instance) waitServing(sctx context.Context) {
	if i.edge != nil {
		// Held and streaming requests end with the server; machines do not.
		i.edge.Shutdown(sctx)
		i.edge.Close()
		<-i.edgeDone
	}
	if i.e2b != nil {
		i.e2b.http.Shutdown(sctx)
		i.e2b.http.Close()
		<-i.e2bDone
	}
	if i.ssh != nil {
		// Sessions end with the server (each tells its client how to
		// reattach); their commands go on in the machines.
		i.ssh.ln.Close()
		<-i.sshDone
		i.ssh.gate.Wait()
	}
	i.peer.close(sctx)
	<-i.done
	<-i.sparesDone
	<-i.memberDone
}

// Start brings every part up and starts serving in the background.
func Start(ctx context.Context, cfg Config, logger *slog.Logger) (_ *Instance, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var closers []io.Closer
	locks := &hostLocks{}
	defer func() {
		if err != nil {
			for _, c := range closers {
				c.Close()
			}
			locks.Close() // last: nothing of this server is left working
		}
	}()
	for _, d := range []string{cfg.DataDir, cfg.TemplatesDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("create %s: %w", d, err)
		}
	}
	// Before anything reads the data dir or touches the host: a second
	// server would reconcile the first one's machines away.
	self := holder{PID: os.Getpid(), Started: time.Now().UTC(), DataDir: cfg.DataDir, NetworkCIDR: cfg.NetworkCIDR, NetNS: netNS()}
	if abs, err := filepath.Abs(cfg.DataDir); err == nil {
		self.DataDir = abs
	}
	if locks.dataDir, err = lockDataDir(cfg.DataDir, self); err != nil {
		return nil, err
	}
	if self.Node, err = resolveNodeName(cfg.DataDir, cfg.NodeName); err != nil {
		return nil, err
	}
	cfg.NodeName = self.Node
	cfg.Names = cfg.Names.or(NodeHostNames(cfg.NodeName))
	self.Names = cfg.Names
	if locks.node, err = claimNode(LockDir, self); err != nil {
		return nil, err
	}
	if err := recordNodeName(cfg.DataDir, cfg.NodeName); err != nil {
		return nil, err
	}
	db, err := openStore(ctx, cfg)
	if err != nil {
		return nil, err
	}
	closers = append(closers, db)
	db.SetNode(cfg.NodeName)
	if err := adoptSecrets(ctx, db, cfg.DataDir, logger); err != nil {
		return nil, err
	}
	keyFile, err := bootstrapKey(ctx, db, cfg.DataDir, logger)
	if err != nil {
		return nil, err
	}
	auditLog := audit.New(db, logger.With("component", "audit"))
	keys := access.New(db)
	keys.Audit = auditLog

	agentDir, err := installAgent(cfg.AgentBinary, filepath.Join(cfg.DataDir, "agent"))
	if err != nil {
		return nil, err
	}

	remote, err := openObjectStore(ctx, cfg, logger)
	if err != nil {
		return nil, err
	}
	templates, err := template.Open(cfg.TemplatesDir, logger, template.Options{
		Remote:           remote,
		CacheDir:         cfg.CacheDir,
		Progress:         func(msg string) { logger.Info(msg) },
		SourceDirs:       cfg.TemplateSourceDirs,
		MaxUnpackedBytes: 4 * cfg.TemplateUploadMaxBytes,
	})
	if err != nil {
		return nil, err
	}
	closers = append(closers, templates)
	for _, name := range cfg.BuiltinTemplates {
		if err := templates.EnsureBuiltin(ctx, name); err != nil {
			return nil, fmt.Errorf("template %s: %w", name, err)
		}
	}

	network, err := newNetwork(cfg, logger)
	if err != nil {
		return nil, err
	}
	closers = append(closers, network)

	driver, err := gvisor.New(gvisor.Config{
		Runsc:        cfg.Runsc,
		Root:         filepath.Join(cfg.DataDir, "runsc"),
		CgroupParent: cfg.Names.CgroupParent,
	}, logger)
	if err != nil {
		return nil, err
	}
	host, err := snapshot.DetectHost(cfg.Runsc, "systrap")
	if err != nil {
		return nil, err
	}
	evlog := events.New(db, logger)
	tel := telemetry.New(db)
	metricsAddr, err := serveMetrics(cfg.MetricsAddr, tel, logger, &closers)
	if err != nil {
		return nil, err
	}
	mgr, err := machine.New(machine.Config{
		DataDir:             cfg.DataDir,
		AgentDir:            agentDir,
		Host:                host,
		AllowInternet:       cfg.AllowInternet,
		MaxFileBytes:        cfg.MaxFileBytes,
		Nameservers:         hostNameservers(),
		Spares:              cfg.Spares,
		MemoryOvercommit:    cfg.MemoryOvercommit,
		Quota:               quotaDefaults(cfg),
		DefaultDiskMB:       cfg.DiskDefaultMB,
		MaxDiskMB:           cfg.DiskMaxMB,
		Events:              evlog,
		Observe:             tel.Observe,
		MetricsInterval:     cfg.MetricsInterval,
		SnapshotBudget:      cfg.SnapshotBudgetMB << 20,
		CheckpointRetention: cfg.CheckpointRetention,
		Remote:              remote,
		CacheMaxBytes:       cfg.CacheMaxBytes,
		Node:                cfg.NodeName,
	}, db, driver, network, templates, logger)
	if err != nil {
		return nil, err
	}
	node, err := joinCluster(ctx, cfg, db, mgr, host, logger)
	if err != nil {
		return nil, err
	}
	if node.ln != nil {
		closers = append(closers, node.ln)
	}
	tel.CountUsage(mgr)
	if err := mgr.Reconcile(ctx); err != nil {
		// Reconcile errors are about leftovers; the server can still serve.
		logger.Error("reconcile with the host after start", "err", err)
	}
	if err := upgradeBuiltins(ctx, cfg.BuiltinTemplates, templates, mgr, logger); err != nil {
		return nil, err
	}

	bg, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer func() {
		if err != nil {
			cancel()
		}
	}()
	// One budget per key, on the API and the E2B-compatible API alike.
	perKey := ratelimit.New(ratelimit.Config{Default: cfg.RatePerKey, Override: newTeamRates(db, cfg.RatePerKey).override})
	var edgeSrv *edgeListener
	var urls httpapi.URLIssuer
	if cfg.EdgeAddr != "" {
		if edgeSrv, err = startEdge(bg, cfg, mgr, node.router, tel, logger); err != nil {
			return nil, err
		}
		closers = append(closers, edgeSrv.ln)
		urls = edgeSrv.edge
	}
	sshAccess := &sshgate.Access{Keys: sshgate.NewKeys(db), Machines: &sshMachines{edgeMachines{mgr: mgr}}}
	var sshSrv *sshListener
	if cfg.SSHAddr != "" {
		if sshSrv, err = startSSH(bg, cfg, mgr, sshAccess.Keys, logger); err != nil {
			return nil, err
		}
		closers = append(closers, sshSrv.ln)
		sshAccess.Gate = sshSrv.gate
		sshAccess.Host, sshAccess.Port = sshgate.Advertised(sshSrv.ln.Addr())
	}
	var e2bSrv *e2bListener
	if cfg.E2BAddr != "" {
		domain := ""
		if edgeSrv != nil {
			domain = edgeSrv.domain
		}
		if e2bSrv, err = startE2B(bg, cfg, mgr, keys, domain, logger); err != nil {
			return nil, err
		}
		closers = append(closers, e2bSrv.ln)
		e2bSrv.compat.WithRateLimit(perKey).WithAudit(auditLog)
		if edgeSrv != nil {
			edgeSrv.edge.ServeE2B(edge.E2B{API: e2bSrv.compat, TrafficToken: e2bSrv.compat.TrafficToken})
		}
	}
	if err := offerSecrets(ctx, db, cfg.DataDir); err != nil {
		return nil, err
	}
	apiServer := httpapi.New(mgr, templates, &templateBuilder{templates: templates, machines: mgr},
		keys, evlog, tel, urls, logger, cfg.Version).WithAccess(keys).WithAudit(auditLog).WithIdempotency(idempotency.New(db)).WithSSH(sshAccess).WithNode(cfg.NodeName).
		WithTemplateUploadLimit(cfg.TemplateUploadMaxBytes).
		WithRateLimit(perKey)
	if e2bSrv != nil {
		apiServer.WithE2B(e2bSrv.advertised())
	}
	apiServer.WithNodes(db)
	if node.router != nil {
		apiServer.WithRouter(node.router)
	}
	corsPolicy, err := cors.Parse(cfg.CORSOrigins)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", cfg.Addr, err)
	}
	inst := &Instance{
		Addr: ln.Addr().String(), APIKeyFile: keyFile, Manager: mgr, cancel: cancel, closers: closers, locks: locks,
		NodeName: cfg.NodeName, Names: cfg.Names, MetricsAddr: metricsAddr,
		done: make(chan struct{}), sparesDone: make(chan struct{}), memberDone: make(chan struct{}),
		http: &http.Server{Handler: minrate.Handler(corsPolicy.Wrap(apiServer.Handler()), cfg.MinBodyRate, nil),
			ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
			ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
			// Streams and terminal sessions end with the server (they
			// are told so; their commands go on in the machines).
			BaseContext: func(net.Listener) context.Context { return bg }},
	}
	if edgeSrv != nil {
		inst.EdgeAddr, inst.edge, inst.edgeDone = edgeSrv.ln.Addr().String(), edgeSrv.http, make(chan struct{})
		go func() {
			defer close(inst.edgeDone)
			edgeSrv.serve(logger)
		}()
	}
	if sshSrv != nil {
		inst.SSHAddr, inst.ssh, inst.sshDone = sshSrv.ln.Addr().String(), sshSrv, make(chan struct{})
		go func() {
			defer close(inst.sshDone)
			sshSrv.serve(logger)
		}()
	}
	if e2bSrv != nil {
		inst.E2BAddr, inst.e2b, inst.e2bDone = e2bSrv.ln.Addr().String(), e2bSrv, make(chan struct{})
		go func() {
			defer close(inst.e2bDone)
			e2bSrv.serve(logger)
		}()
	}
	go mgr.Watch(bg, 2*time.Second)
	go mgr.RunLeases(bg)
	go mgr.RunMetrics(bg)
	go mgr.RunMainWatch(bg)
	go mgr.RunUploads(bg)
	rc := retention.Config{Ended: cfg.KilledRetention, EventsAge: cfg.EventsRetention, EventsMax: cfg.EventsMax,
		AuditAge: cfg.AuditRetention, AuditMax: cfg.AuditMax}
	go auditLog.Run(bg)
	if cfg.WebhookURL != "" {
		rc.Consumer = events.WebhookCursor
	}
	// The cluster's chores run on its leader (a single server leads
	// itself); safe if two leaders overlap for a moment.
	node.member.OnLeader("retention", func(ctx context.Context) { retention.Run(ctx, rc, db, logger.With("component", "retention")) })
	if cfg.WebhookURL != "" {
		node.member.OnLeader("webhook", func(ctx context.Context) {
			(&events.Webhook{Log: evlog, URL: cfg.WebhookURL, Secret: cfg.WebhookSecret, Logger: logger}).Run(ctx)
		})
	}
	node.member.OnLeader("object-store sweep", mgr.RunRemoteSweeps)
	go func() {
		defer close(inst.memberDone)
		node.member.Run(bg)
	}()
	var edgeHandler, e2bHandler http.Handler
	if edgeSrv != nil {
		edgeHandler = edgeSrv.http.Handler
	}
	if e2bSrv != nil {
		e2bHandler = e2bSrv.http.Handler
	}
	node.servePeers(bg, apiServer.Handler(), edgeHandler, e2bHandler, mgr, logger)
	inst.peer = node
	go func() {
		defer close(inst.sparesDone)
		mgr.RunSpares(bg)
	}()
	go func() {
		defer close(inst.done)
		if err := inst.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error("http server", "err", err)
		}
	}()
	logger.Info("nullspace serving", "addr", inst.Addr, "edge_addr", inst.EdgeAddr, "ssh_addr", inst.SSHAddr, "e2b_addr", inst.E2BAddr, "edge_domain", cfg.EdgeDomain,
		"data_dir", cfg.DataDir, "store", storeName(cfg), "api_key_file", keyFile, "node", cfg.NodeName, "netns_prefix", cfg.Names.NetnsPrefix,
		"veth_prefix", cfg.Names.VethPrefix, "firewall_table", cfg.Names.FirewallTable, "cgroup_parent", cfg.Names.CgroupParent)
	return inst, nil
}

// upgradeBuiltins rebuilds the built-in templates that an older recipe made
// (base before it had sudo, say), so that an upgraded server, and CI's
// persistent template dir, get this binary's. One that a machine or a
// snapshot still uses is kept, with a warning: their overlays lie on its
// root filesystem as it is. It runs before the server serves or makes spares.
// builtinUpgradeTimeout bounds the build of a built-in template's new
// recipe at start; past it the old template is kept.
const builtinUpgradeTimeout = 10 * time.Minute

func upgradeBuiltins(ctx context.Context, names []string, templates *template.Store, mgr *machine.Manager, logger *slog.Logger) error {
	for _, name := range names {
		recipe, stale, err := templates.StaleBuiltin(name)
		if err != nil {
			return fmt.Errorf("template %s: %w", name, err)
		}
		if !stale {
			continue
		}
		keep := func(use string) {
			logger.Warn("built-in template made by an older recipe is kept while machines or snapshots use it; "+
				"kill them and restart the server to get the new one", "template", name, "recipe", recipe, "use", use)
		}
		// Checked first so that a template in use costs no build; checked
		// again, under the manager's lock, by DeleteTemplate.
		use, err := mgr.TemplateUse(ctx, name)
		if err != nil {
			return fmt.Errorf("template %s: %w", name, err)
		}
		if use.InUse() {
			keep(fmt.Sprintf("%d machines, %d snapshots", len(use.Machines), len(use.Snapshots)))
			continue
		}
		// The new recipe is built beside the old template before it goes:
		// a host that cannot build it (no mirror) keeps serving the old one.
		// Bounded: an unreachable mirror must not hold the start for
		// ever (a build here takes about two minutes).
		pctx, cancel := context.WithTimeout(ctx, builtinUpgradeTimeout)
		err = templates.PrepareBuiltin(pctx, name)
		cancel()
		if err != nil {
			logger.Warn("cannot build the built-in template of this recipe; keeping the one of an older recipe",
				"template", name, "recipe", recipe, "err", err)
			continue
		}
		err = mgr.DeleteTemplate(ctx, "", name, templates.DeleteStale)
		var e *errdefs.Error
		if errors.As(err, &e) && e.Code == errdefs.CodeTemplateInUse {
			keep(e.Message)
			continue
		}
		if err != nil {
			return fmt.Errorf("template %s: %w", name, err)
		}
		if err := templates.EnsureBuiltin(ctx, name); err != nil {
			return fmt.Errorf("template %s: %w", name, err)
		}
	}
	return nil
}

// bootstrapKey creates the default team and its API key, the operator's,
// on first start and writes the key where the CLI and SDKs on this host
// find it.
func bootstrapKey(ctx context.Context, db store.Teams, dataDir string, logger *slog.Logger) (string, error) {
	keyFile := filepath.Join(dataDir, "api-key")
	n, err := db.CountTeams(ctx)
	if err != nil {
		return "", err
	}
	if n > 0 {
		return keyFile, nil
	}
	key, hash, display := apikey.Generate()
	// A data dir that already has a key (its server moves to a new, empty
	// database) keeps it: the CLI, SDKs and scripts that hold it go on
	// working, and the file is not replaced under them.
	if b, err := os.ReadFile(keyFile); err == nil {
		if old := strings.TrimSpace(string(b)); strings.HasPrefix(old, apikey.Prefix) && len(old) > len(apikey.Prefix)+6 {
			key, hash, display = old, apikey.Hash(old), old[:len(apikey.Prefix)+6]
		}
	}
	now := time.Now().UTC()
	team := store.Team{ID: template.LegacyTeam, Name: "default", CreatedAt: now}
	if err := db.CreateTeam(ctx, team); err != nil {
		return "", err
	}
	k := store.APIKey{ID: access.NewID("ak_"), TeamID: team.ID, Hash: hash, Prefix: display, Name: "operator",
		Scopes: []string{access.Operator}, CreatedAt: now}
	if err := db.AddAPIKey(ctx, k); err != nil {
		return "", err
	}
	if err := atomicfile.Write(keyFile, []byte(key+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write api key: %w", err)
	}
	logger.Info("the default team's API key; the CLI and SDKs on this host read it from the file",
		"file", keyFile, "key_prefix", display)
	return keyFile, nil
}

// quotaDefaults are every team's default limits: the --quota-* flags,
// and the per-key rate limit (--rate-limit-per-key) a team's quota may
// override.
func quotaDefaults(cfg Config) store.Quota {
	q := cfg.Quota
	q.APIRate, q.APIBurst = 0, 0
	if !cfg.RatePerKey.Unlimited() {
		q.APIRate, q.APIBurst = int64(math.Ceil(cfg.RatePerKey.Rate)), int64(max(cfg.RatePerKey.Burst, 1))
	}
	return q
}

// serveMetrics serves the Prometheus metrics without a key on addr ("":
// not at all), and returns the address it listens on.
func serveMetrics(addr string, tel *telemetry.Metrics, logger *slog.Logger, closers *[]io.Closer) (string, error) {
	if addr == "" {
		return "", nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("metrics: listen on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", tel.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn)}
	go srv.Serve(ln)
	*closers = append(*closers, srv)
	return ln.Addr().String(), nil
}

// installAgent copies the agent binary into a directory named by its
// content hash, which is bind-mounted into machines. A binary never changes
// under a machine: a paused machine's memory holds the agent it ran, and its
// restore mounts that same directory, so older directories stay as long as
// snapshots may need them.
func installAgent(src, root string) (string, error) {
	b, err := os.ReadFile(src)
	if err != nil {
		return "", fmt.Errorf("read agent binary: %w", err)
	}
	sum := sha256.Sum256(b)
	dir := filepath.Join(root, hex.EncodeToString(sum[:8]))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	if err := atomicfile.Write(filepath.Join(dir, "nullspace-agent"), b, 0o755); err != nil {
		return "", fmt.Errorf("install agent: %w", err)
	}
	return dir, nil
}

// hostNameservers returns the host's non-loopback resolvers, which machines
// with internet access use.
func hostNameservers() []string {
	b, err := os.ReadFile("/etc/resolv.conf")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == "nameserver" {
			if ip := net.ParseIP(f[1]); ip != nil && !ip.IsLoopback() {
				out = append(out, f[1])
			}
		}
	}
	return out
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// templateBuilder builds templates whose steps run in machines.
type templateBuilder struct {
	templates *template.Store
	machines  *machine.Manager
}

func (b *templateBuilder) Build(ctx context.Context, team string, req api.BuildTemplateRequest) (api.Template, error) {
	return b.templates.Build(ctx, team, req, b.machines)
}

func (b *templateBuilder) BuildUpload(ctx context.Context, team string, req api.BuildTemplateRequest, tarball io.Reader) (api.Template, error) {
	return b.templates.BuildUpload(ctx, team, req, tarball, b.machines)
}

// openStore opens the state store: PostgreSQL with a database URL, else
// SQLite in the data dir.
func openStore(ctx context.Context, cfg Config) (store.Store, error) {
	if cfg.DatabaseURL != "" {
		return sqlstore.OpenPostgres(ctx, cfg.DatabaseURL)
	}
	return sqlstore.Open(ctx, filepath.Join(cfg.DataDir, "nullspace.db"))
}

// storeName says where the state is, for the log (never a password).
func storeName(cfg Config) string {
	if cfg.DatabaseURL != "" {
		return sqlstore.Redact(cfg.DatabaseURL)
	}
	return "sqlite:" + filepath.Join(cfg.DataDir, "nullspace.db")
}

// openObjectStore connects to the object store, if one is configured,
// checking its bucket and credentials.
func openObjectStore(ctx context.Context, cfg Config, logger *slog.Logger) (*chunks.Store, error) {
	if cfg.ObjectStore == "" {
		return nil, nil
	}
	loc, err := objstore.Parse(cfg.ObjectStore)
	if err != nil {
		return nil, fmt.Errorf("--object-store: %w", err)
	}
	log := logger.With("component", "objstore")
	r, err := s3.Open(ctx, loc, objstore.CredentialsFromEnv(os.Getenv), log)
	if err != nil {
		return nil, fmt.Errorf("object store %s: %w", loc, err)
	}
	cs := chunks.New(r, log)
	// Uploads are background work: on a small host they leave a core to
	// the lifecycle operations in the foreground (a resume right after a
	// pause competes with that pause's upload).
	cs.Workers = max(1, goruntime.NumCPU()/2)
	return cs, nil
}
