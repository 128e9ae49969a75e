// Command bench is `make bench`: it measures Nullspace against raw runsc on
// the same host, in one run, and checks the latency targets of the issue.
//
// Two sides run interleaved, one operation at a time, so that both see the
// same host at the same moment:
//
//   - nullspace: a server started in-process (server.Start) with a temporary
//     data dir, the shared template dir /var/cache/nullspace/bench-templates
//     and host object names of its own (netns nsbench-N, veth nsbN, nftables
//     table nullspace_bench, cgroup parent /nullspace-bench, pool
//     10.231.0.0/16), driven over HTTP by the public Go client, as a user
//     would; the store suite starts a second one beside it (nsbench2-N,
//     nscN, nullspace_bench2, /nullspace-bench2, 10.234.0.0/16);
//   - raw runsc: the same runsc binary and global flags, an OCI bundle over
//     the same minimal template rootfs (shared read-only through
//     --overlay2=root:dir=...), a fresh network namespace with a veth pair
//     per container (made outside the timed window), busybox sleep as init
//     (-raw-init agent: the agent, with the server's bind mounts).
//
// Measured, N times each (-n), in these suites (-suite):
//
//   - core: create to first command (CreateMachine until RunCommand(true)
//     returns, against `runsc run --detach` + `runsc exec /bin/true`), the
//     exec round trip on a warm machine, kill, and the idle memory of a
//     machine (its cgroup's usage and the RSS/PSS of its processes) and its
//     idle CPU (its cgroup's CPU time per second over idleWindow);
//   - hibernate: pause against `runsc checkpoint`, resume to the first
//     command against `runsc restore` + `runsc exec`, create_snapshot and its
//     pause window against `runsc checkpoint --leave-running`, a child from
//     the snapshot to its first command, snapshot sizes; for an idle machine
//     and for one holding 256 MiB (-skip-256 leaves that out). See
//     hibernate.go;
//   - lease: the lease scheduler with 10,000 leases, a lease refresh through
//     the API, and the cost of sampling a running machine's metrics; stop
//     against `runsc checkpoint` + kill + delete, and start to the first
//     command against `runsc restore` + `runsc exec`. See lease.go;
//   - edge: a wake on HTTP beside connect + the same request straight to
//     the machine, the proxy's added latency and throughput, a WebSocket
//     echo, and 200 concurrent requests to a paused machine. See edge.go;
//   - lists: the store queries of one API page over 1,000 and 10,000 rows,
//     and the disk 100 pause/resume cycles leave. See lists.go;
//   - terminal: a keystroke's echo through the WebSocket attach and through
//     the SSH gateway beside `runsc exec` of the same program, and ssh to a
//     prompt on a paused machine beside connect + the same. See terminal.go;
//   - sdk: the Python SDK's create to first command, exec round trip and
//     1 MiB file write and read beside the same calls made with raw HTTP
//     from the same Python process, and `import nullspace`. See sdk.go;
//   - e2b: create to first command and a command's round trip through
//     E2B's unmodified SDK against the E2B-compatible API, beside the same
//     through the TypeScript SDK against the Nullspace API. See e2b.go;
//   - disk: dd of 1 GiB inside a raw sandbox with the unlimited overlay,
//     one with the overlay limited to 2 GiB and a machine of disk_mb 2048,
//     without and with conv=fsync: the disk limit's cost. See disk.go;
//   - store: a second server beside the first, one on SQLite and the local
//     directory and the other on PostgreSQL and an S3 object store, driven
//     interleaved: pause, resume with the cache warm and cold, a child from
//     a snapshot, a lease refresh, the bytes uploaded by a first and a second
//     pause, and the list queries on both stores. See store.go.
//
// -store postgres and -object-store s3 put the benchmark's server on
// PostgreSQL (a throwaway PostgreSQL 15 cluster the benchmark starts, as
// the tests do) and on an object store (versitygw over a directory of the
// work dir), for every suite; the default is SQLite and the local
// directory. The store suite's second server has the other backend.
//
// The table goes to stdout, every sample and summary to -out as JSON, with
// the durations the server logged (at debug level too) by message.
//
// Everything the benchmark makes is removed on return, on error and on
// Ctrl-C, and the removal is checked (`ip netns list`, `runsc list`). It
// needs root and runsc; it fails with the reason when either is missing.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"nullspace.dev/nullspace/internal/mountinfo"
)

// config is the benchmark's configuration, from flags.
type config struct {
	suite        string        // all | core | hibernate | lease | edge
	skip256      bool          // leave out the 256 MiB pause/resume case
	n            int           // iterations per metric
	warmup       int           // untimed execs before the exec round-trip loop
	settle       time.Duration // idle time before a memory sample
	out          string        // JSON results file; "" writes none
	runsc        string        // runsc binary
	agent        string        // nullspace-agent binary
	templatesDir string        // shared template store of the benchmark
	cacheDir     string        // cache of slow artefacts (base template tarball)
	base         string        // auto | on | off: benchmark template base too
	rawInit      string        // sleep | agent: init of the raw sandboxes
	cpus         int           // vCPUs of every machine and raw sandbox
	memoryMB     int           // memory limit of every machine and raw sandbox
	logLevel     slog.Level    // server log level on stderr
	keepWorkDir  bool          // keep the temporary data dir (logs, bundles)
	backend      backend       // -store and -object-store: the server's backend
	versitygw    string        // versitygw binary (S3 server)
}

func main() {
	cfg, err := parseFlags()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	// Signals stay caught until cleanup is done: a Ctrl-C stops the
	// measurements, never the cleanup.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err = run(ctx, cfg)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func parseFlags() (config, error) {
	var c config
	var logLevel string
	flag.StringVar(&c.suite, "suite", "all", "measurements to run: all, core (create, exec, kill, memory), hibernate (pause, resume, snapshots) lease (issue 4: lease scheduler, metrics sampling, stop and start) or edge (issue 10: wake on HTTP, proxy overhead, WebSocket echo, 200 concurrent wakes) or lists (issue 11: pages over 1,000 and 10,000 rows, disk after 100 pause/resume cycles) or terminal (issue 14: keystroke echo via WebSocket and SSH beside runsc exec, ssh to a prompt on a paused machine) or sdk (issue 12: the Python SDK beside raw HTTP, import time) or e2b (issue 15: E2B's SDK through the compatibility API beside the TypeScript SDK) or store (issue 23: SQLite + local directory beside PostgreSQL + S3 object store: pause, resume warm and cold, child, lease refresh, upload sizes, list queries) or disk (issue 24: dd of 1 GiB with the disk limit beside the unlimited overlay) or access (issue 24: the API's key, rate and scope checks, the quota check, lookups among 10,000 keys; a quiet machine's exec beside a fork bomb, a disk fill and an output flood)")
	flag.BoolVar(&c.skip256, "skip-256", false, "hibernate suite: leave out the machines holding 256 MiB")
	flag.IntVar(&c.n, "n", 20, "iterations per metric")
	flag.IntVar(&c.warmup, "warmup", 3, "untimed commands on a warm machine before its exec round trips are timed")
	flag.DurationVar(&c.settle, "settle", time.Second, "idle time after the first command before a memory sample")
	flag.StringVar(&c.out, "out", "bench/results.json", `JSON results file ("" for none)`)
	flag.StringVar(&c.runsc, "runsc", envOr("NULLSPACE_RUNSC", "bin/runsc"), "runsc binary (env NULLSPACE_RUNSC)")
	flag.StringVar(&c.agent, "agent", envOr("NULLSPACE_AGENT_BIN", "bin/nullspace-agent"), "nullspace-agent binary (env NULLSPACE_AGENT_BIN)")
	flag.StringVar(&c.templatesDir, "templates-dir", "/var/cache/nullspace/bench-templates", "template store shared by benchmark runs")
	flag.StringVar(&c.cacheDir, "cache-dir", envOr("NULLSPACE_CACHE_DIR", "/var/cache/nullspace"), "cache of slow artefacts (env NULLSPACE_CACHE_DIR)")
	flag.StringVar(&c.base, "base", "auto", "benchmark template base too: auto (when it is ready or cached, never debootstrap), on, off")
	flag.StringVar(&c.rawInit, "raw-init", "sleep", "init of the raw sandboxes: sleep (busybox sleep), or agent (nullspace-agent with the server's bind mounts, to tell what is in a machine from what the server adds)")
	flag.IntVar(&c.cpus, "cpus", 2, "vCPUs of every machine and raw sandbox (cgroup CPU quota)")
	flag.IntVar(&c.memoryMB, "memory-mb", 512, "memory limit in MiB of every machine and raw sandbox")
	flag.StringVar(&logLevel, "log-level", "warn", "server log level on stderr: debug, info, warn, error")
	flag.BoolVar(&c.keepWorkDir, "keep", false, "keep the temporary work dir (server data dir, raw bundles, logs)")
	flag.StringVar(&c.backend.DB, "store", "sqlite", "the server's state store: sqlite (in its data dir) or postgres (a throwaway PostgreSQL 15 cluster the benchmark starts)")
	flag.StringVar(&c.backend.Objects, "object-store", "local", "where the server's snapshots go: local (its data dir only) or s3 (also to versitygw, an S3 server the benchmark starts)")
	flag.StringVar(&c.versitygw, "versitygw", envOr("NULLSPACE_VERSITYGW", "bin/versitygw"), "versitygw binary, the S3 server of -object-store s3 and the store suite (env NULLSPACE_VERSITYGW)")
	flag.Parse()
	if flag.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", flag.Args())
	}
	if c.n < 1 {
		return c, fmt.Errorf("-n must be at least 1, got %d", c.n)
	}
	if c.warmup < 0 || c.settle < 0 {
		return c, errors.New("-warmup and -settle must not be negative")
	}
	if c.cpus < 1 || c.memoryMB < 64 {
		return c, fmt.Errorf("-cpus %d / -memory-mb %d: need at least 1 CPU and 64 MiB", c.cpus, c.memoryMB)
	}
	switch c.base {
	case "auto", "on", "off":
	default:
		return c, fmt.Errorf("-base %q: want auto, on or off", c.base)
	}
	switch c.rawInit {
	case "sleep", "agent":
	default:
		return c, fmt.Errorf("-raw-init %q: want sleep or agent", c.rawInit)
	}
	switch c.suite {
	case "all", "core", "hibernate", "lease", "edge", "lists", "terminal", "sdk", "e2b", "store", "disk", "access":
	default:
		return c, fmt.Errorf("-suite %q: want all, core, hibernate, lease, edge, lists, terminal, sdk, e2b, store, disk or access", c.suite)
	}
	if c.backend.DB != "sqlite" && c.backend.DB != "postgres" {
		return c, fmt.Errorf("-store %q: want sqlite or postgres", c.backend.DB)
	}
	if c.backend.Objects != "local" && c.backend.Objects != "s3" {
		return c, fmt.Errorf("-object-store %q: want local or s3", c.backend.Objects)
	}
	if err := c.logLevel.UnmarshalText([]byte(logLevel)); err != nil {
		return c, fmt.Errorf("-log-level: %w", err)
	}
	for _, p := range []*string{&c.runsc, &c.agent, &c.templatesDir, &c.cacheDir, &c.versitygw} {
		abs, err := filepath.Abs(*p)
		if err != nil {
			return c, err
		}
		*p = abs
	}
	return c, nil
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// preflight fails with what to do when the host cannot run the benchmark.
func preflight(ctx context.Context, cfg config) error {
	if os.Geteuid() != 0 {
		return errors.New("the benchmark must run as root: it creates sandboxes, network namespaces and cgroups; run `sudo make bench`")
	}
	if fi, err := os.Stat(cfg.runsc); err != nil || fi.IsDir() {
		return fmt.Errorf("runsc not found at %s: run `make build` (it builds runsc), or pass -runsc / NULLSPACE_RUNSC", cfg.runsc)
	}
	if _, err := runscVersion(ctx, cfg.runsc); err != nil {
		return fmt.Errorf("runsc at %s does not run: %w", cfg.runsc, err)
	}
	if fi, err := os.Stat(cfg.agent); err != nil || fi.IsDir() {
		return fmt.Errorf("agent binary not found at %s: run `make build`, or pass -agent / NULLSPACE_AGENT_BIN", cfg.agent)
	}
	if _, err := lookIP(); err != nil {
		return errors.New("the `ip` command (iproute2) is missing; the raw runsc baseline makes its namespaces with it: apt-get install iproute2")
	}
	if _, err := os.Stat(memoryCgroupRoot()); err != nil {
		return fmt.Errorf("no memory cgroup at %s: the idle memory measurement needs it", memoryCgroupRoot())
	}
	return nil
}

// run runs the benchmark and cleans up after it, whatever happens.
func run(ctx context.Context, cfg config) (err error) {
	if err := preflight(ctx, cfg); err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "nullspace-bench-")
	if err != nil {
		return err
	}
	// The real path: mount points in mountinfo are compared with it.
	realWork, err := filepath.EvalSymlinks(work)
	if err != nil {
		os.Remove(work)
		return err
	}
	work = realWork
	res := newResults(cfg)
	res.Host = hostInfo(ctx, cfg)

	var (
		ns, ns2 *nullspaceSide // ns2: the store suite's second server
		raw     *rawSide
	)
	svc := &services{work: work, versitygw: cfg.versitygw}
	tap := newTapHandler(os.Stderr, cfg.logLevel)
	defer func() {
		// Cleanup ignores the signal context: it always runs to the end.
		cctx := context.WithoutCancel(ctx)
		if ctx.Err() != nil {
			fmt.Fprintln(os.Stderr, "bench: interrupted; cleaning up (this takes a few seconds)")
		}
		cerr := cleanup(cctx, ns, ns2, raw)
		// After the servers: they hold connections to both.
		cerr = errors.Join(cerr, svc.close())
		// After the sandboxes are gone: runsc's null-netns mounts in the roots.
		cerr = errors.Join(cerr, mountinfo.UnmountUnder(work))
		res.Cleanup = verifyClean(cctx, cfg, work)
		if cerr == nil && !res.Cleanup.OK {
			cerr = fmt.Errorf("leftovers after cleanup: %s", strings.Join(res.Cleanup.Leftovers, "; "))
		}
		if cfg.keepWorkDir {
			fmt.Fprintln(os.Stderr, "bench: kept work dir", work)
		} else if rerr := os.RemoveAll(work); rerr != nil {
			cerr = errors.Join(cerr, rerr)
		}
		if err != nil && ctx.Err() != nil {
			err = fmt.Errorf("interrupted: %w", err)
		}
		if err != nil {
			res.Error = err.Error()
		}
		if cerr != nil {
			res.Cleanup.Error = cerr.Error()
		}
		if res.hasSamples() {
			res.Server = tap.summary()
			res.summarize()
			if err != nil {
				fmt.Printf("\nPARTIAL RESULTS (%v)\n", err)
			}
			res.printTable(os.Stdout)
			res.printEdge(os.Stdout)
			res.printLists(os.Stdout)
			res.printTerminal(os.Stdout)
			res.printSDK(os.Stdout)
			res.printE2B(os.Stdout)
			res.printStore(os.Stdout)
			res.printDisk(os.Stdout)
		}
		if res.hasSamples() && cfg.out != "" {
			if werr := res.write(cfg.out); werr != nil {
				cerr = errors.Join(cerr, werr)
			} else {
				fmt.Printf("\nresults written to %s\n", cfg.out)
			}
		}
		err = errors.Join(err, cerr)
	}()

	templates, err := prepareTemplates(ctx, cfg, slog.New(tap))
	if err != nil {
		return err
	}
	res.Config.Templates = templates.names()
	if templates.baseSkipped != "" {
		res.Notes = append(res.Notes, "template base skipped: "+templates.baseSkipped)
		fmt.Fprintln(os.Stderr, "bench: template base skipped:", templates.baseSkipped)
	}

	raw, err = newRawSide(ctx, cfg, work, templates.minimalRootfs)
	if err != nil {
		return err
	}
	ns, err = startNullspace(ctx, cfg, work, templates, tap, mainServer(cfg.backend), svc)
	if err != nil {
		return err
	}
	res.Config.Backend = cfg.backend
	if cfg.suite == "all" || cfg.suite == "store" {
		ns2, err = startNullspace(ctx, cfg, work, templates, tap, secondServer(otherBackend(cfg.backend)), svc)
		if err != nil {
			return err
		}
	}
	res.Host.RunscFlags = raw.runsc.GlobalFlags("")

	return measure(ctx, cfg, work, ns, ns2, raw, svc, res)
}

// measure runs the suites -suite asks for.
func measure(ctx context.Context, cfg config, work string, ns, ns2 *nullspaceSide, raw *rawSide, svc *services, res *results) error {
	watchOthers := func() { res.Host.OtherSandboxes = max(res.Host.OtherSandboxes, otherSandboxes(work)) }
	watchOthers()
	if cfg.suite == "all" || cfg.suite == "core" {
		if err := measureCore(ctx, cfg, ns, raw, res, watchOthers); err != nil {
			return err
		}
	}
	if cfg.suite == "all" || cfg.suite == "hibernate" {
		if err := measureHibernate(ctx, cfg, ns, raw, res, watchOthers); err != nil {
			return err
		}
	}
	if cfg.suite == "all" || cfg.suite == "lease" {
		if err := measureLeases(ctx, cfg, ns, raw, res); err != nil {
			return err
		}
	}
	if cfg.suite == "all" || cfg.suite == "edge" {
		if err := measureEdge(ctx, cfg, ns, res); err != nil {
			return err
		}
	}
	if cfg.suite == "all" || cfg.suite == "lists" {
		if err := measureLists(ctx, cfg, ns, svc, res); err != nil {
			return err
		}
	}
	if cfg.suite == "all" || cfg.suite == "terminal" {
		if err := measureTerminal(ctx, cfg, ns, raw, res); err != nil {
			return err
		}
	}
	if cfg.suite == "all" || cfg.suite == "sdk" {
		if err := measureSDK(ctx, cfg, ns, res); err != nil {
			return err
		}
	}
	if cfg.suite == "all" || cfg.suite == "e2b" {
		if err := measureE2B(ctx, cfg, ns, raw, res); err != nil {
			return err
		}
	}
	if cfg.suite == "all" || cfg.suite == "disk" {
		if err := measureDisk(ctx, cfg, ns, raw, res); err != nil {
			return err
		}
	}
	if cfg.suite == "all" || cfg.suite == "access" {
		if err := measureAccess(ctx, cfg, ns, res); err != nil {
			return err
		}
		if err := measureNeighbours(ctx, cfg, ns, res); err != nil {
			return err
		}
	}
	if cfg.suite == "all" || cfg.suite == "store" {
		return measureStore(ctx, cfg, ns, ns2, raw, svc, res)
	}
	return nil
}

// measureCore runs the issue-2 measurements, interleaving the sides.
func measureCore(ctx context.Context, cfg config, ns *nullspaceSide, raw *rawSide, res *results, watchOthers func()) error {
	tmpls := append([]string{"minimal"}, ns.extraTemplates...)
	fmt.Fprintf(os.Stderr, "bench: create, idle memory and kill, %d iterations (templates %s; raw runsc)\n",
		cfg.n, strings.Join(tmpls, ", "))
	for i := range cfg.n {
		// Alternate which side goes first so that drift hits both alike.
		steps := []func() error{
			func() error { return raw.lifecycle(ctx, res) },
		}
		for _, t := range tmpls {
			steps = append(steps, func() error { return ns.lifecycle(ctx, t, res) })
		}
		if i%2 == 1 {
			steps[0], steps[len(steps)-1] = steps[len(steps)-1], steps[0]
		}
		for _, step := range steps {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := step(); err != nil {
				return err
			}
		}
		watchOthers()
		progress(i+1, cfg.n)
	}

	fmt.Fprintf(os.Stderr, "bench: exec round trips on warm machines, %d iterations (+%d warm-up)\n", cfg.n, cfg.warmup)
	warmRaw, err := raw.warm(ctx, cfg.warmup)
	if err != nil {
		return err
	}
	warmNS := make([]*warmMachine, 0, len(tmpls))
	for _, t := range tmpls {
		w, err := ns.warm(ctx, t, cfg.warmup)
		if err != nil {
			return err
		}
		warmNS = append(warmNS, w)
	}
	for i := range cfg.n {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := raw.execTrue(ctx, warmRaw, res); err != nil {
			return err
		}
		for _, w := range warmNS {
			if err := ns.execTrue(ctx, w, res); err != nil {
				return err
			}
		}
		watchOthers()
		progress(i+1, cfg.n)
	}
	if err := raw.kill(ctx, warmRaw, nil); err != nil {
		return err
	}
	for _, w := range warmNS {
		if err := ns.kill(ctx, w, nil); err != nil {
			return err
		}
	}
	return nil
}

func progress(done, total int) {
	if done == total || done%5 == 0 {
		fmt.Fprintf(os.Stderr, "bench:   %d/%d\n", done, total)
	}
}

// cleanup removes everything the sides made. It keeps going on errors. The
// server's firewall table and both parent cgroups go last: a production
// server keeps them across restarts, the benchmark owns its own.
func cleanup(ctx context.Context, ns, ns2 *nullspaceSide, raw *rawSide) error {
	var errs []error
	for _, s := range []*nullspaceSide{ns, ns2} {
		if s != nil {
			errs = append(errs, s.close(ctx))
		}
	}
	if raw != nil {
		errs = append(errs, raw.close(ctx))
	}
	if ip, err := lookIP(); err == nil {
		// The pool's unreachable route: a server keeps its own, the
		// benchmark's pool is used by nothing else.
		exec.Command(ip, "route", "del", "unreachable", benchCIDR).Run()
		if ns2 != nil {
			exec.Command(ip, "route", "del", "unreachable", benchCIDR2).Run()
		}
	}
	errs = append(errs, removeFirewallTable(benchNames.FirewallTable), removeFirewallTable(benchNames2.FirewallTable),
		removeCgroupParent(benchNames.CgroupParent), removeCgroupParent(benchNames2.CgroupParent), removeCgroupParent(rawCgroupParent))
	return errors.Join(errs...)
}
