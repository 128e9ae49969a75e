package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"nullspace.dev/nullspace/client"
	"nullspace.dev/nullspace/internal/objstore"
	"nullspace.dev/nullspace/internal/objstore/s3test"
	"nullspace.dev/nullspace/internal/server"
	"nullspace.dev/nullspace/internal/store/pgtest"
)

// Host object names of the test server: distinct from a real server's and
// from the netns package's tests (which run in parallel), so tests can run
// beside `make run`.
var testNames = server.HostNames{
	NetnsPrefix:   "nse2e-",
	VethPrefix:    "nse",
	FirewallTable: "nullspace_e2e",
	CgroupParent:  "/nullspace-e2e",
}

const (
	testCIDR         = "10.232.0.0/16"
	testMaxFileBytes = 64 << 20
)

// env is the shared test server and a client for it.
var env struct {
	cfg     server.Config
	inst    *server.Instance
	client  *client.Client
	key     string
	logFile string
}

func TestMain(m *testing.M) {
	os.Exit(pgtest.MainWith(m, runTests))
}

// storeEnv set to "postgres" runs every server of the tests on a
// PostgreSQL database of its own (one per data dir, on a throwaway
// cluster) instead of SQLite; "postgres+s3" also gives each an object
// store (a prefix of its own in one bucket of a throwaway versitygw).
// `make test` runs the lifecycle tests once more the second way.
const storeEnv = "NULLSPACE_E2E_STORE"

// s3Env carries the test binary's versitygw (its URL) to the child
// servers of the crash tests, with the AWS_* variables.
const s3Env = "NULLSPACE_E2E_S3"

// stopS3 stops the versitygw this binary started, if any.
var stopS3 = func() {}

// databaseURL returns the database of a server's data dir in a
// PostgreSQL run, and "" otherwise. A child server of a crash test gets
// its parent's (same data dir, same cluster).
func databaseURL(dataDir string) string {
	if !strings.HasPrefix(os.Getenv(storeEnv), "postgres") {
		return ""
	}
	u, err := pgtest.Database("e2e_" + dirKey(dataDir))
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %s: %v\n", storeEnv, err)
		os.Exit(1)
	}
	return u
}

// objectStoreURL returns the object store of a server's data dir in a
// postgres+s3 run, and "" otherwise.
func objectStoreURL(dataDir string) string {
	if os.Getenv(storeEnv) != "postgres+s3" {
		return ""
	}
	base := os.Getenv(s3Env)
	if base == "" {
		root, err := os.MkdirTemp("", "nullspace-e2e-s3-")
		if err != nil {
			fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
			os.Exit(1)
		}
		bin := os.Getenv("NULLSPACE_VERSITYGW")
		if bin == "" {
			fmt.Fprintf(os.Stderr, "e2e: %s=postgres+s3 needs NULLSPACE_VERSITYGW: run `make test`, or `make versitygw`\n", storeEnv)
			os.Exit(1)
		}
		srv, stop, err := s3test.Run(bin, root)
		if err != nil {
			os.RemoveAll(root)
			fmt.Fprintf(os.Stderr, "e2e: %s: %v\n", storeEnv, err)
			os.Exit(1)
		}
		stopS3 = func() { stop(); os.RemoveAll(root) }
		for _, kv := range srv.Env() {
			k, v, _ := strings.Cut(kv, "=")
			os.Setenv(k, v)
		}
		base = srv.URL
		os.Setenv(s3Env, base)
	}
	loc, err := objstore.Parse(base)
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %s: %v\n", s3Env, err)
		os.Exit(1)
	}
	loc.Prefix = "e2e-" + dirKey(dataDir) + "/"
	return loc.String()
}

// dirKey names a data dir's database and object-store prefix.
func dirKey(dataDir string) string {
	sum := sha256.Sum256([]byte(dataDir))
	return hex.EncodeToString(sum[:6])
}

func runTests(m *testing.M) int {
	if addr := os.Getenv(serveAddrEnv); addr != "" {
		return serveForCrashTest(addr)
	}
	if why := cannotRun(); why != "" {
		fmt.Fprintf(os.Stderr, "e2e: cannot run the real gVisor tests: %s\n", why)
		return 1
	}
	// A fixed data dir: if an earlier run died with machines up, this run's
	// server adopts (reconciles) them and killAll removes them.
	dataDir := "/var/lib/nullspace-e2e"
	if s := os.Getenv(storeEnv); s != "" {
		// Its own: a run on SQLite and one on PostgreSQL do not share the
		// data dir's records of each other's machines.
		dataDir += "-" + strings.ReplaceAll(s, "+", "-")
	}
	env.logFile = filepath.Join(os.TempDir(), "nullspace-e2e.log")
	os.Remove(env.logFile)
	if err := startServer(dataDir); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: start server: %v (log: %s)\n", err, env.logFile)
		return 1
	}
	killAll()
	code := m.Run()
	killAll()
	env.inst.Shutdown(context.Background())
	stopS3()
	// The test pool's unreachable route (a server keeps its own).
	exec.Command("ip", "route", "del", "unreachable", testCIDR).Run()
	if code != 0 {
		fmt.Fprintf(os.Stderr, "e2e: server log: %s\n", env.logFile)
	}
	return code
}

// cannotRun says why the gVisor tests cannot run here, or "".
func cannotRun() string {
	if os.Geteuid() != 0 {
		return "they need root (sandboxes, network namespaces, cgroups); run `make test` as root"
	}
	for _, p := range []string{runscPath(), agentPath()} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Sprintf("%s is missing; run `make test`, which builds it", p)
		}
	}
	return ""
}

func repoPath(rel string) string {
	wd, _ := os.Getwd()
	return filepath.Join(wd, "..", rel)
}

func runscPath() string {
	if p := os.Getenv("NULLSPACE_RUNSC"); p != "" {
		return p
	}
	return repoPath("bin/runsc")
}

func agentPath() string {
	if p := os.Getenv("NULLSPACE_AGENT_BIN"); p != "" {
		return p
	}
	return repoPath("bin/nullspace-agent")
}

// serveAddrEnv makes the test binary a plain server on that address (the
// crash tests run it as a child process and kill it with SIGKILL).
const serveAddrEnv = "NULLSPACE_E2E_SERVE_ADDR"

// edgeAddrEnv is the edge address of such a child server.
const edgeAddrEnv = "NULLSPACE_E2E_EDGE_ADDR"

func serveForCrashTest(addr string) int {
	env.logFile = os.Getenv("NULLSPACE_E2E_LOG")
	env.cfg = testConfig(os.Getenv("NULLSPACE_E2E_DATA_DIR"))
	env.cfg.Addr = addr
	if err := restartServer(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e child server: %v\n", err)
		return 1
	}
	select {}
}

func startServer(dataDir string) error {
	env.cfg = testConfig(dataDir)
	// The shared server delivers its events to a webhook on loopback.
	env.cfg.WebhookURL = startWebhookReceiver()
	env.cfg.WebhookSecret = webhookSecret
	return restartServer()
}

func testConfig(dataDir string) server.Config {
	cfg := server.Defaults()
	cfg.Addr = "127.0.0.1:0"
	cfg.DataDir = dataDir
	cfg.DatabaseURL = databaseURL(dataDir)
	cfg.ObjectStore = objectStoreURL(dataDir)
	cfg.TemplatesDir = filepath.Join(cfg.CacheDir, "test-templates")
	cfg.Runsc = runscPath()
	cfg.AgentBinary = agentPath()
	cfg.NetworkCIDR = testCIDR
	cfg.MaxFileBytes = testMaxFileBytes
	// Its own node name: the data dir already holds a database, which
	// would make its default "local", `make run`'s.
	cfg.NodeName = "e2e"
	cfg.Names = testNames
	cfg.Version = "e2e"
	// Builds may name host paths only in here (TestTemplateBuild).
	cfg.TemplateSourceDirs = []string{templateSourceDir()}
	cfg.MetricsInterval = 500 * time.Millisecond
	// Two paused states holding 3.3 MB of random bytes each exceed it:
	// TestPersistence evicts sticky machines with it. Machines of other tests are
	// persistent and never evicted.
	cfg.SnapshotBudgetMB = 6
	// Beside a server of `make run` on the default port; the crash
	// tests' child server is told its own.
	cfg.EdgeAddr = "127.0.0.1:0"
	if a := os.Getenv(edgeAddrEnv); a != "" {
		cfg.EdgeAddr = a
	}
	cfg.EdgeHeaderTimeout = 2 * time.Second
	cfg.SSHAddr = "127.0.0.1:0"     // TestSSH
	cfg.MetricsAddr = "127.0.0.1:0" // TestPrometheus
	cfg.E2BAddr = "127.0.0.1:0"     // TestE2BSDK
	// A page on this origin may call the API (TestCORS).
	cfg.CORSOrigins = []string{corsOrigin}
	return cfg
}

// templateSourceDir is the test server's --template-source-dir.
func templateSourceDir() string {
	d := filepath.Join(os.TempDir(), "nullspace-e2e-template-sources")
	os.MkdirAll(d, 0o755)
	return d
}

// restartServer starts (or starts again) the server on env.cfg.
func restartServer() error {
	lf, err := os.OpenFile(env.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(lf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	inst, err := server.Start(ctx, env.cfg, logger)
	if err != nil {
		return err
	}
	env.inst = inst
	key, err := os.ReadFile(inst.APIKeyFile)
	if err != nil {
		return err
	}
	env.key = strings.TrimSpace(string(key))
	env.client = client.New("http://"+inst.Addr, env.key)
	return nil
}

// killAll kills every machine the tests left running.
func killAll() {
	ctx := context.Background()
	ms, err := env.client.ListMachines(ctx, client.ListOptions{})
	if err != nil {
		return
	}
	for _, m := range ms {
		env.client.KillMachine(ctx, m.ID)
	}
	snaps, err := env.client.ListSnapshots(ctx, "", "")
	if err != nil {
		return
	}
	for _, s := range snaps {
		env.client.DeleteSnapshot(ctx, s.ID, true)
	}
}
