package cli

import (
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"nullspace.dev/nullspace/internal/server"
)

// NewServeCommand returns `nullspace serve`, which runs the API server, the
// machine manager and the runtime in this process.
func NewServeCommand(version string) *cobra.Command {
	cfg := server.Defaults()
	cfg.Version = version
	var templates, logLevel, e2bAddr string
	var e2bCompat bool
	var cacheMaxGB float64
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the Nullspace server (API, machine manager, runtime); needs root",
		Long: `serve runs the HTTP API, the machine manager and the gVisor runtime in one
process, with an embedded SQLite database in the data directory.

On first start it creates an API key for the default team and writes it to
<data dir>/api-key, where the CLI and SDKs on this host find it. Built-in
templates are made ready before the API opens (base takes about 2 minutes the
first time, seconds afterwards from the cache).

Stopping the server never stops machines: the next start reconciles with them.

One server runs per data directory (it holds <data dir>/serve.lock). Several
servers may run on one host, each with its own --data-dir and --node-name:
the names of a server's network namespaces, interfaces, nftables table and
cgroups derive from its node name, and a server refuses to start beside a
live one whose node name, host object names or --network-cidr (in the same
network namespace) clash with its own (registry: /run/nullspace).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return usageError{fmt.Errorf("--log-level %q: use debug, info, warn or error", logLevel)}
			}
			logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			if e2bCompat {
				cfg.E2BAddr = e2bAddr
			}
			cfg.CacheMaxBytes = int64(cacheMaxGB * (1 << 30))
			cfg.BuiltinTemplates = nil
			for _, t := range strings.Split(templates, ",") {
				if t = strings.TrimSpace(t); t != "" {
					cfg.BuiltinTemplates = append(cfg.BuiltinTemplates, t)
				}
			}
			return server.Run(cmd.Context(), cfg, logger)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Addr, "addr", cfg.Addr, "API listen address")
	f.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "data directory (env NULLSPACE_DATA_DIR)")
	f.StringVar(&cfg.TemplatesDir, "templates-dir", "", "template directory (default <data dir>/templates)")
	f.StringVar(&cfg.CacheDir, "cache-dir", cfg.CacheDir, "cache for slow artefacts such as template rootfs (env NULLSPACE_CACHE_DIR)")
	f.StringVar(&cfg.Runsc, "runsc", cfg.Runsc, "runsc binary")
	f.StringVar(&cfg.AgentBinary, "agent", cfg.AgentBinary, "nullspace-agent binary")
	f.StringVar(&cfg.NodeName, "node-name", "", "name of this server on the host, which its netns, interface, nftables and cgroup names derive from "+
		"(default: the one recorded in the data dir, else \"local\" for /var/lib/nullspace, else derived from the data dir's path)")
	f.StringVar(&cfg.DatabaseURL, "database-url", cfg.DatabaseURL, "PostgreSQL database to keep state in, postgres://USER@HOST:PORT/DB; the password from PGPASSWORD or ~/.pgpass "+
		"(env NULLSPACE_DATABASE_URL; default: SQLite in the data dir)")
	f.StringVar(&cfg.PeerAddr, "peer-addr", "", "address of this node's peer listener, HOST:PORT, where the other nodes of a cluster (servers sharing --database-url) forward calls on its machines "+
		"(default: none; the node then takes no machine another node places)")
	f.StringVar(&cfg.PeerURL, "peer-url", "", "how the other nodes reach the peer listener (default http://PEER-ADDR)")
	f.DurationVar(&cfg.NodeTTL, "node-ttl", 0, "how long a node of a cluster may go without a heartbeat before it is declared dead and its running machines failed (default 15s)")
	f.DurationVar(&cfg.NodeHeartbeat, "node-heartbeat", 0, "how often a node of a cluster reports that it is alive (default 2s; the TTL must be at least three)")
	f.StringVar(&cfg.ObjectStore, "object-store", cfg.ObjectStore, "S3-compatible store to copy snapshots to, s3://BUCKET/PREFIX?endpoint=http(s)://HOST:PORT&region=R; "+
		"credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (env NULLSPACE_OBJECT_STORE; default: none)")
	f.Float64Var(&cacheMaxGB, "cache-max-gb", 0, "with --object-store, bound the local copies of snapshots the object store holds to this many GiB (0: no bound)")
	f.StringVar(&cfg.NetworkCIDR, "network-cidr", cfg.NetworkCIDR, "IPv4 pool machines get a /30 from (two servers on one host need pools that do not overlap)")
	f.BoolVar(&cfg.AllowInternet, "allow-internet", false, "let machines created with allow_internet reach the internet")
	f.Int64Var(&cfg.MaxFileBytes, "max-file-bytes", cfg.MaxFileBytes, "largest file one upload may write")
	f.IntVar(&cfg.Spares, "spares", cfg.Spares, "containers kept created ahead of resumes (~16 MiB each; 0: none)")
	f.Int64Var(&cfg.Quota.RunningMachines, "quota-running-machines", cfg.Quota.RunningMachines, "each team's default limit of machines with a sandbox (0: none; the operator sets a team's own with nullspace quota set)")
	f.Int64Var(&cfg.Quota.VCPUs, "quota-vcpus", cfg.Quota.VCPUs, "each team's default limit of vCPUs of its machines with a sandbox (0: none)")
	f.Int64Var(&cfg.Quota.MemoryMB, "quota-memory-mb", cfg.Quota.MemoryMB, "each team's default limit of MiB of memory of its machines with a sandbox (0: none)")
	f.Int64Var(&cfg.Quota.SnapshotBytes, "quota-snapshot-bytes", cfg.Quota.SnapshotBytes, "each team's default limit of bytes of paused states, snapshots and checkpoints (0: none)")
	f.Int64Var(&cfg.Quota.CreatesPerMinute, "quota-creates-per-minute", cfg.Quota.CreatesPerMinute, "each team's default limit of machines created a minute (0: none)")
	f.Float64Var(&cfg.MemoryOvercommit, "memory-overcommit", cfg.MemoryOvercommit, "how many times the host's memory may be given to machines (their memory_mb); creates, resumes and starts past it answer 503 capacity_exhausted")
	f.IntVar(&cfg.DiskDefaultMB, "disk-default-mb", cfg.DiskDefaultMB, "disk limit in MiB of a machine created without disk_mb: what it may write to its root file system before writes fail with ENOSPC inside it")
	f.IntVar(&cfg.DiskMaxMB, "disk-max-mb", cfg.DiskMaxMB, "largest disk_mb a create may ask for; more is refused with 400 invalid_argument")
	f.DurationVar(&cfg.KilledRetention, "killed-retention", cfg.KilledRetention, "keep the records of killed and failed machines this long (0: forever)")
	f.DurationVar(&cfg.EventsRetention, "events-retention", cfg.EventsRetention, "keep lifecycle events this long (0: no age bound; undelivered webhook events stay)")
	f.IntVar(&cfg.EventsMax, "events-max", cfg.EventsMax, "keep at most this many of the newest lifecycle events (0: no bound)")
	f.DurationVar(&cfg.AuditRetention, "audit-retention", cfg.AuditRetention, "keep audit log entries (key, team and quota changes; refused requests) this long (0: no age bound)")
	f.IntVar(&cfg.AuditMax, "audit-max", cfg.AuditMax, "keep at most this many of the newest audit log entries (0: no bound)")
	f.IntVar(&cfg.CheckpointRetention, "checkpoint-retention", cfg.CheckpointRetention, "unpinned checkpoints (pauses included) a machine keeps unless it asks otherwise; older ones are pruned (0: keep all)")
	f.Int64Var(&cfg.SnapshotBudgetMB, "snapshot-budget-mb", 0, "snapshot storage budget in MiB: over it, sticky machines' paused states are evicted, oldest first (0: none)")
	f.StringVar(&cfg.WebhookURL, "webhook-url", "", "POST every lifecycle event to this URL (retried with backoff)")
	f.StringVar(&cfg.WebhookSecret, "webhook-secret", cfg.WebhookSecret, "HMAC-SHA256 key of the webhook's X-Nullspace-Signature (env NULLSPACE_WEBHOOK_SECRET)")
	f.StringVar(&cfg.MetricsAddr, "metrics-addr", cfg.MetricsAddr, "listen address of a keyless GET /metrics for Prometheus, on a private network (empty: none; on the API's address /metrics needs an operator key)")
	f.StringVar(&cfg.EdgeAddr, "edge-addr", cfg.EdgeAddr, "listen address of the edge, which serves machine URLs (empty: no edge)")
	f.StringVar(&cfg.EdgeDomain, "edge-domain", cfg.EdgeDomain, "domain machine URLs are under, DOMAIN[:PORT] (wildcard DNS *.DOMAIN points at the edge; default port: --edge-addr's)")
	f.StringVar(&cfg.EdgeTLSCert, "edge-tls-cert", "", "TLS certificate of the edge (a wildcard certificate for *.DOMAIN): URLs become https/wss")
	f.StringVar(&cfg.EdgeTLSKey, "edge-tls-key", "", "TLS key of --edge-tls-cert")
	f.DurationVar(&cfg.EdgeWakeTimeout, "edge-wake-timeout", cfg.EdgeWakeTimeout, "how long a request is held while its paused machine wakes; then 503 machine_wake_timeout")
	f.StringSliceVar(&cfg.CORSOrigins, "cors-origin", nil, "browser origins allowed to call the API, e.g. https://app.example.com (repeat or comma-separate; * for any; none by default)")
	f.StringVar(&cfg.SSHAddr, "ssh-addr", "", "listen address of the SSH gateway, e.g. 127.0.0.1:2222 (`ssh -p 2222 MACHINE-ID@host`; empty: no gateway)")
	f.BoolVar(&e2bCompat, "e2b-compat", false, "serve the E2B-compatible API (E2B's SDKs, unmodified) on --e2b-addr; `nullspace e2b env` prints the SDKs' variables")
	f.StringVar(&e2bAddr, "e2b-addr", "127.0.0.1:7703", "listen address of the E2B-compatible API (control plane and envd), with --e2b-compat")
	f.Int64Var(&cfg.EdgeHoldBodyBytes, "edge-hold-body-bytes", cfg.EdgeHoldBodyBytes, "largest request body held while its machine wakes; a larger one gets 503 machine_wake_body_too_large")
	f.StringArrayVar(&cfg.TemplateSourceDirs, "template-source-dir", nil, "host directory whose directories and tarballs POST /v1/templates may name as from_dir/from_tarball (repeatable; none by default: other host paths are refused, uploads work)")
	f.Int64Var(&cfg.TemplateUploadMaxBytes, "template-upload-max-bytes", cfg.TemplateUploadMaxBytes, "largest tarball one template upload may send (it may unpack to 4 times as much)")
	f.Var(&cfg.RatePerKey, "rate-limit-per-key", "API requests per second and burst allowed to each API key; past it 429 rate_limited with Retry-After (0: no limit)")
	f.Var(&cfg.EdgeRatePerSource, "edge-rate-per-source", "edge requests per second and burst allowed from one client address (an IPv6 /64); past it 429 rate_limited (0: no limit; use 0 behind a proxy, whose address every request has)")
	f.Var(&cfg.EdgeRatePerMachine, "edge-rate-per-machine", "edge requests per second and burst allowed to one machine's URLs; past it 429 rate_limited (0: no limit)")
	f.Var(&cfg.SSHRatePerSource, "ssh-rate-per-source", "new SSH gateway connections per second and burst allowed from one client address (0: no limit)")
	f.Var(&cfg.SSHRatePerMachine, "ssh-rate-per-machine", "new SSH sessions per second and burst allowed on one machine (0: no limit)")
	f.StringVar(&templates, "builtin-templates", strings.Join(cfg.BuiltinTemplates, ","), "built-in templates to make ready at start")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	return cmd
}
