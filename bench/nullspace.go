package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/nftables"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/client"
	"nullspace.dev/nullspace/internal/ratelimit"
	"nullspace.dev/nullspace/internal/server"
	"nullspace.dev/nullspace/internal/template"
)

// Host objects of the benchmark's server: distinct from a real server's
// (nullspace-, nsv, 10.200/16) and the tests' (nstest-, nst, 10.232/16).
var benchNames = server.HostNames{
	NetnsPrefix:   "nsbench-",
	VethPrefix:    "nsb",
	FirewallTable: "nullspace_bench",
	CgroupParent:  "/nullspace-bench",
}

const (
	benchCIDR = "10.231.0.0/16"
	// defaultTeam is the team server.Start creates with the first API key.
	defaultTeam = "team_default"
)

// templateSet is what prepareTemplates made ready.
type templateSet struct {
	minimalRootfs string
	base          bool
	baseSkipped   string // why base is not benchmarked, if it is not
}

func (t templateSet) names() []string {
	if t.base {
		return []string{template.Minimal, template.Base}
	}
	return []string{template.Minimal}
}

// prepareTemplates makes minimal ready in the benchmark's template store, and
// base when -base asks for it. In auto mode base is used only when it is
// ready or cached: a debootstrap, or a wait for another process building it,
// skips base instead of stalling the benchmark.
func prepareTemplates(ctx context.Context, cfg config, logger *slog.Logger) (templateSet, error) {
	var onProgress func(string)
	store, err := template.Open(cfg.templatesDir, logger, template.Options{
		CacheDir: cfg.cacheDir,
		Progress: func(msg string) {
			fmt.Fprintln(os.Stderr, "bench: templates:", msg)
			if onProgress != nil {
				onProgress(msg) // same goroutine as EnsureBuiltin
			}
		},
	})
	if err != nil {
		return templateSet{}, err
	}
	if err := store.EnsureBuiltin(ctx, template.Minimal); err != nil {
		return templateSet{}, err
	}
	var set templateSet
	if set.minimalRootfs, err = store.RootfsDir(template.Minimal); err != nil {
		return templateSet{}, err
	}
	switch cfg.base {
	case "off":
		set.baseSkipped = "-base=off"
		return set, nil
	case "on":
		if err := store.EnsureBuiltin(ctx, template.Base); err != nil {
			return templateSet{}, err
		}
		set.base = true
		return set, nil
	}
	bctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	var why string
	onProgress = func(msg string) {
		switch {
		case strings.Contains(msg, "debootstrap"):
			why = "not built yet and not cached (it would need debootstrap); run with -base=on to build it"
			cancel()
		case strings.Contains(msg, "waiting for another process"):
			why = "another process is building it; run again later or with -base=on to wait"
			cancel()
		}
	}
	err = store.EnsureBuiltin(bctx, template.Base)
	onProgress = nil
	switch {
	case err == nil:
		set.base = true
	case ctx.Err() != nil:
		return templateSet{}, ctx.Err()
	case why != "":
		set.baseSkipped = why
	default:
		set.baseSkipped = err.Error()
	}
	return set, nil
}

// nullspaceSide is a server started in-process and a client for it.
type nullspaceSide struct {
	cfg            config
	inst           *server.Instance
	client         *client.Client
	key            string   // the server's API key
	extraTemplates []string // templates beyond minimal to benchmark
	tap            *tapHandler
	spec           serverSpec
	dataDir        string // the server's data dir

	// live holds the machines made and not yet killed (one goroutine only).
	live map[string]bool
}

// startNullspace starts a server as spec says, on spec's backend (svc
// starts PostgreSQL and the S3 server when it needs them); the second
// server's log lines are marked with its backend.
func startNullspace(ctx context.Context, cfg config, work string, tmpls templateSet, tap *tapHandler, spec serverSpec, svc *services) (*nullspaceSide, error) {
	sc := server.Defaults()
	sc.Addr = "127.0.0.1:0"
	sc.EdgeAddr = "127.0.0.1:0" // beside a server of make run
	sc.SSHAddr = "127.0.0.1:0"
	sc.E2BAddr = "127.0.0.1:0"
	sc.DataDir = filepath.Join(work, spec.dataDir)
	if err := svc.configure(ctx, &sc, spec.backend, spec.node); err != nil {
		return nil, fmt.Errorf("%s server: %w", spec.backend, err)
	}
	sc.TemplatesDir = cfg.templatesDir
	sc.CacheDir = cfg.cacheDir
	sc.Runsc = cfg.runsc
	sc.AgentBinary = cfg.agent
	sc.NetworkCIDR = spec.cidr
	sc.BuiltinTemplates = tmpls.names() // ready already: Start only checks
	sc.NodeName = spec.node
	sc.Names = spec.names
	sc.Version = "bench"
	// The rate limits stay on, so their checks are part of what is
	// measured, but far above what the benchmark sends: the edge's
	// throughput runs and the exec loops would otherwise measure them.
	high := ratelimit.Limit{Rate: 1e9, Burst: 1e9}
	sc.RatePerKey, sc.EdgeRatePerSource, sc.EdgeRatePerMachine, sc.SSHRatePerSource, sc.SSHRatePerMachine = high, high, high, high, high
	var h slog.Handler = tap
	if spec.node != mainServer(spec.backend).node {
		h = tap.forServer(spec.backend.String())
	}
	inst, err := server.Start(ctx, sc, slog.New(h))
	if err != nil {
		return nil, fmt.Errorf("start nullspace server (%s): %w", spec.backend, err)
	}
	s := &nullspaceSide{cfg: cfg, inst: inst, tap: tap, spec: spec, dataDir: sc.DataDir, live: map[string]bool{}}
	if tmpls.base {
		s.extraTemplates = []string{template.Base}
	}
	key, err := os.ReadFile(inst.APIKeyFile)
	if err != nil {
		return s, fmt.Errorf("read the server's api key: %w", err)
	}
	s.key = strings.TrimSpace(string(key))
	s.client = client.New("http://"+inst.Addr, s.key)
	return s, nil
}

// autoResumeMachine creates a machine that pauses at the end of an hour's
// lease and wakes on traffic; release kills its latest execution.
func (s *nullspaceSide) autoResumeMachine(ctx context.Context, tmpl string) (*api.Machine, func(), error) {
	m, err := s.client.CreateMachine(ctx, api.CreateMachineRequest{Template: tmpl, CPUCount: s.cfg.cpus, MemoryMB: s.cfg.memoryMB,
		OnTimeout: api.TimeoutPause, AutoResume: true, TimeoutMS: ptr(int64(time.Hour / time.Millisecond))})
	if err != nil {
		return nil, nil, err
	}
	s.live[m.ID] = true
	return m, func() {
		if info, err := s.client.GetMachine(context.WithoutCancel(ctx), m.ID); err == nil {
			s.client.KillMachine(context.WithoutCancel(ctx), info.LatestID)
		}
		delete(s.live, m.ID)
	}, nil
}

// create creates a machine and runs its first command; it returns the
// machine id and the time to each.
func (s *nullspaceSide) create(ctx context.Context, tmpl string, memoryMB int) (id string, created, firstCmd time.Duration, err error) {
	start := time.Now()
	m, err := s.client.CreateMachine(ctx, api.CreateMachineRequest{
		Template: tmpl, CPUCount: s.cfg.cpus, MemoryMB: memoryMB,
	})
	if err != nil {
		return "", 0, 0, fmt.Errorf("create machine from %s: %w", tmpl, err)
	}
	created = time.Since(start)
	s.live[m.ID] = true
	if err := s.runTrue(ctx, m.ID); err != nil {
		return m.ID, 0, 0, err
	}
	return m.ID, created, time.Since(start) - created, nil
}

func (s *nullspaceSide) runTrue(ctx context.Context, id string) error {
	_, err := s.run(ctx, id, "true")
	return err
}

// run runs a command in a machine and returns its stdout; a non-zero exit
// is an error.
func (s *nullspaceSide) run(ctx context.Context, id string, argv ...string) (string, error) {
	res, err := s.client.RunCommand(ctx, id, api.RunCommandRequest{Cmd: argv})
	if err != nil {
		return "", fmt.Errorf("run %s in %s: %w", argv[0], id, err)
	}
	if res.ExitCode != 0 {
		return "", fmt.Errorf("run %s in %s: exit code %d: %s", argv[0], id, res.ExitCode, res.Stderr)
	}
	return res.Stdout, nil
}

// lifecycle measures one machine: create to first command, idle memory, kill.
func (s *nullspaceSide) lifecycle(ctx context.Context, tmpl string, res *results) error {
	id, created, first, err := s.create(ctx, tmpl, s.cfg.memoryMB)
	if err != nil {
		return err
	}
	res.addDuration(metricCreate, sideNullspace, tmpl, created+first)
	res.addDuration(metricCreateStart, sideNullspace, tmpl, created)
	res.addDuration(metricCreateFirst, sideNullspace, tmpl, first)
	if err := sleep(ctx, s.cfg.settle); err != nil {
		return err
	}
	mem, err := s.memory(ctx, id)
	if err != nil {
		return err
	}
	res.addMemory(sideNullspace, tmpl, mem)
	rec, err := s.inst.Manager.Get(ctx, defaultTeam, id)
	if err != nil {
		return err
	}
	cpu, err := idleCPU(ctx, benchNames.CgroupParent, rec.ContainerID)
	if err != nil {
		return err
	}
	res.addDuration(metricIdleCPU, sideNullspace, tmpl, cpu)
	return s.kill(ctx, &warmMachine{id: id, template: tmpl}, res)
}

// warmMachine is a running machine kept for exec round trips.
type warmMachine struct{ id, template string }

func (s *nullspaceSide) warm(ctx context.Context, tmpl string, warmup int) (*warmMachine, error) {
	id, _, _, err := s.create(ctx, tmpl, s.cfg.memoryMB)
	if err != nil {
		return nil, err
	}
	for range warmup {
		if err := s.runTrue(ctx, id); err != nil {
			return nil, err
		}
	}
	return &warmMachine{id: id, template: tmpl}, nil
}

func (s *nullspaceSide) execTrue(ctx context.Context, w *warmMachine, res *results) error {
	start := time.Now()
	if err := s.runTrue(ctx, w.id); err != nil {
		return err
	}
	res.addDuration(metricExec, sideNullspace, w.template, time.Since(start))
	return nil
}

// kill kills a machine; res, when set, gets the time it took.
func (s *nullspaceSide) kill(ctx context.Context, w *warmMachine, res *results) error {
	start := time.Now()
	if _, err := s.client.KillMachine(ctx, w.id); err != nil {
		return fmt.Errorf("kill machine %s: %w", w.id, err)
	}
	if res != nil {
		res.addDuration(metricKill, sideNullspace, w.template, time.Since(start))
	}
	delete(s.live, w.id)
	return nil
}

// memory samples an idle machine's cgroup and processes.
func (s *nullspaceSide) memory(ctx context.Context, id string) (memSample, error) {
	rec, err := s.inst.Manager.Get(ctx, defaultTeam, id)
	if err != nil {
		return memSample{}, fmt.Errorf("find container of machine %s: %w", id, err)
	}
	return readMemory(benchNames.CgroupParent, rec.ContainerID)
}

// close kills every machine the benchmark left, deletes its snapshots and
// stops the server.
func (s *nullspaceSide) close(ctx context.Context) error {
	var errs []error
	if s.client != nil {
		s.tap.setPhase("")
		for id := range s.live {
			if _, err := s.client.KillMachine(ctx, id); err != nil && !client.IsCode(err, "machine_not_found") {
				errs = append(errs, fmt.Errorf("kill machine %s: %w", id, err))
			}
		}
		// Machines whose create was cut short by Ctrl-C are not in live.
		ms, err := s.client.ListMachines(ctx, client.ListOptions{})
		if err != nil {
			errs = append(errs, fmt.Errorf("list machines: %w", err))
		}
		for _, m := range ms {
			if m.State == api.StateKilled {
				continue
			}
			if _, err := s.client.KillMachine(ctx, m.ID); err != nil {
				errs = append(errs, fmt.Errorf("kill machine %s: %w", m.ID, err))
			}
		}
		// Killing a lineage drops its hibernate snapshots; reusable ones
		// left by a run cut short are deleted here.
		sns, err := s.client.ListSnapshots(ctx, "", "")
		if err != nil {
			errs = append(errs, fmt.Errorf("list snapshots: %w", err))
		}
		for _, sn := range sns {
			if err := s.client.DeleteSnapshot(ctx, sn.ID, true); err != nil {
				errs = append(errs, fmt.Errorf("delete snapshot %s: %w", sn.ID, err))
			}
		}
	}
	if s.inst != nil {
		if err := s.inst.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("shut down server: %w", err))
		}
	}
	return errors.Join(errs...)
}

// removeFirewallTable deletes the benchmark server's nftables table.
func removeFirewallTable(name string) error {
	conn, err := nftables.New()
	if err != nil {
		return fmt.Errorf("remove firewall table %s: %w", name, err)
	}
	if !firewallTableExists(conn, name) {
		return nil
	}
	conn.DelTable(&nftables.Table{Name: name, Family: nftables.TableFamilyINet})
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("remove firewall table inet %s: %w", name, err)
	}
	return nil
}

func firewallTableExists(conn *nftables.Conn, name string) bool {
	tables, err := conn.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return false
	}
	for _, t := range tables {
		if t.Name == name {
			return true
		}
	}
	return false
}

// sleep waits for d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
