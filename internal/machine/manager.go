// Package machine is the machine manager: it owns the lifecycle state
// machine, creates machines from templates (network slot, container, agent),
// kills them, proxies to their agents and reconciles the store with the
// runtime after a restart.
package machine

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	goruntime "runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/agent/agentclient"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/lease"
	"nullspace.dev/nullspace/internal/objstore/chunks"
	"nullspace.dev/nullspace/internal/runtime"
	"nullspace.dev/nullspace/internal/snapshot"
	"nullspace.dev/nullspace/internal/store"
)

// AgentPort is the port the agent listens on inside every machine.
const AgentPort = 49983

// Network gives machines their network namespace and firewall rules.
type Network interface {
	// Setup makes slot's namespace and veth pair; on error nothing is left.
	Setup(ctx context.Context, slot int) (NetInfo, error)
	// Teardown removes slot's namespace and veth pair; idempotent.
	Teardown(ctx context.Context, slot int) error
	// SetInternet allows or revokes outbound internet for a machine's IP.
	SetInternet(ip netip.Addr, allow bool) error
	// Slots is the number of slots in the address pool.
	Slots() int
	// GuestIP is the machine-side address of a slot.
	GuestIP(slot int) (netip.Addr, error)
	// Existing returns the slots that have a namespace or veth on the host.
	Existing() ([]int, error)
}

// NetInfo is a machine's network.
type NetInfo struct {
	NetnsPath string
	HostIP    netip.Addr
	GuestIP   netip.Addr
}

// Templates resolves template names to ready root filesystems.
type Templates interface {
	Get(ctx context.Context, name string) (api.Template, error)
	RootfsDir(name string) (string, error)
	// Digest is the content digest of a template's root filesystem: a
	// snapshot records it, so that it restores on any server that has,
	// or can fetch, the same tree.
	Digest(ctx context.Context, name string) (string, error)
	// RootfsByDigest returns a root filesystem with that digest (the
	// template's, a kept copy, or one fetched from the object store).
	RootfsByDigest(ctx context.Context, name, digest string) (string, error)
	// Upload puts a template's tree of that digest in the object store
	// now, unless it is there.
	Upload(ctx context.Context, name, digest string) error
}

// Config configures the manager.
type Config struct {
	// DataDir holds per-machine directories under machines/.
	DataDir string
	// AgentDir is the host directory holding the nullspace-agent binary; it
	// is bind-mounted read-only at /.nullspace in every machine. A machine
	// keeps the directory it started with (restores need the same binary),
	// so a new agent goes into a new directory.
	AgentDir string
	// SnapshotDir holds snapshots; default <DataDir>/snapshots.
	SnapshotDir string
	// Remote is the object store snapshots are copied to (nil: none);
	// CacheMaxBytes bounds the local copies of those it holds (0: no
	// bound). See upload.go.
	Remote        *chunks.Store
	CacheMaxBytes int64
	// VolumesDir holds named volumes; default <DataDir>/volumes.
	VolumesDir string
	// Host is what snapshots written here depend on; restores of snapshots
	// from a host that differs fail with snapshot_incompatible.
	Host snapshot.Host
	// AllowInternet is the operator's switch: without it no machine gets
	// outbound internet, whatever it asks for.
	AllowInternet bool
	// MaxFileBytes bounds one file write through the API.
	MaxFileBytes int64
	// Defaults and bounds for machine resources.
	DefaultTemplate string
	DefaultCPU      int
	DefaultMemoryMB int
	MaxCPU          int // default: host CPUs
	MaxMemoryMB     int // default: host memory minus 512 MiB
	// DefaultDiskMB and MaxDiskMB bound what a machine writes to its root
	// file system (disk_mb): DefaultDiskMB (default DefaultDiskMB) when a
	// create does not say, at most MaxDiskMB (default MaxDiskMB).
	DefaultDiskMB int
	MaxDiskMB     int
	// ReadyTimeout bounds how long a new machine's agent may take to answer.
	ReadyTimeout time.Duration
	// HostMemoryMB is the host's memory (default: read from
	// /proc/meminfo) and MemoryOvercommit how many times it may be
	// committed to sandboxes (default DefaultMemoryOvercommit); see
	// admission.go.
	HostMemoryMB     int
	MemoryOvercommit float64
	// Quota is every team's default limits (zero: no limit); a team's own,
	// set by the operator, take precedence (see quota.go).
	Quota store.Quota
	// AgentPort is the port agents listen on; default AgentPort (unit
	// tests point it at a fake agent).
	AgentPort int
	// AgentSilence is how long a running machine's agent may go without
	// answering a health probe before the machine is failed (reason
	// agent_unresponsive); default DefaultAgentSilence.
	AgentSilence time.Duration
	// Node is the cluster node this manager runs the sandboxes of: its
	// loops (leases, metrics, watches, reconcile) act on that node's
	// machines only ("": every machine, a store without nodes).
	Node string
	// Nameservers for machines with internet; others get the host side IP,
	// which the firewall rejects at once so lookups fail fast.
	Nameservers []string
	// Spares is how many containers are kept created ahead of restores
	// (see spares.go); 0 disables them. RunSpares keeps them.
	Spares int
	// Events records lifecycle events; nil records none.
	Events EventSink
	// MetricsInterval is how often running machines are sampled
	// (default DefaultMetricsInterval).
	MetricsInterval time.Duration
	// Observe, if set, receives the duration of every successful lifecycle
	// operation: create, pause, snapshot, checkpoint, resume, child,
	// restore.
	Observe func(op string, d time.Duration)
	// SnapshotBudget bounds the bytes of committed snapshots before the
	// paused states of sticky machines are evicted (0: no bound).
	SnapshotBudget int64
	// CheckpointRetention is how many unpinned states of its history a
	// machine keeps unless it says otherwise; 0 (the zero value) keeps all.
	// The server's default is DefaultCheckpointRetention.
	CheckpointRetention int
}

// Manager manages machines.
type Manager struct {
	cfg       Config
	store     store.Store
	driver    runtime.Driver
	net       Network
	templates Templates
	snaps     *snapshot.Store
	uploads   *uploader
	spares    *spares
	frozen    frozen
	leases    *lease.Scheduler
	metrics   *metrics
	activity  *activity
	mainWatch *mainWatch
	silence   *silence
	admission admission
	memWatch  memWatch
	logger    *slog.Logger
	// root is the context of the manager's own operations (leases, idle
	// pauses); Shutdown cancels it. bg counts those operations.
	root     context.Context
	stopRoot context.CancelFunc
	bg       sync.WaitGroup
	// evictMu serializes evictions of sticky machines' paused states.
	evictMu sync.Mutex

	observersMu sync.RWMutex
	observers   []func(lineageID, machineID, state string)
	sessions    sessions

	// locks serializes lifecycle operations per machine id (and lineage).
	// An entry lives while someone holds or waits for it, so the map holds
	// the ids in use, not every id there ever was.
	locksMu sync.Mutex
	locks   map[string]*idLock

	// templateMu is read-held by a create from a template from its check
	// of the template until its machine's row is written, and held by
	// DeleteTemplate: no machine starts on a template being deleted.
	templateMu sync.RWMutex
}

// New returns a manager.
func New(cfg Config, db store.Store, driver runtime.Driver, net Network, templates Templates, logger *slog.Logger) (*Manager, error) {
	if cfg.DefaultTemplate == "" {
		cfg.DefaultTemplate = "base"
	}
	if cfg.DefaultCPU == 0 {
		cfg.DefaultCPU = 2
	}
	if cfg.DefaultMemoryMB == 0 {
		cfg.DefaultMemoryMB = 512
	}
	if cfg.MaxCPU == 0 {
		cfg.MaxCPU = goruntime.NumCPU()
	}
	if cfg.MaxMemoryMB == 0 {
		cfg.MaxMemoryMB = hostMemoryMB() - 512
	}
	if cfg.DefaultDiskMB == 0 {
		cfg.DefaultDiskMB = DefaultDiskMB
	}
	if cfg.MaxDiskMB == 0 {
		cfg.MaxDiskMB = max(MaxDiskMB, cfg.DefaultDiskMB)
	}
	if cfg.HostMemoryMB == 0 {
		cfg.HostMemoryMB = hostMemoryMB()
	}
	if cfg.MemoryOvercommit == 0 {
		cfg.MemoryOvercommit = DefaultMemoryOvercommit
	}
	if cfg.AgentPort == 0 {
		cfg.AgentPort = AgentPort
	}
	if cfg.AgentSilence == 0 {
		cfg.AgentSilence = DefaultAgentSilence
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 20 * time.Second
	}
	if cfg.MaxFileBytes == 0 {
		cfg.MaxFileBytes = 1 << 30
	}
	if cfg.MetricsInterval == 0 {
		cfg.MetricsInterval = DefaultMetricsInterval
	}
	if cfg.CheckpointRetention < 0 {
		cfg.CheckpointRetention = 0
	}
	if cfg.SnapshotDir == "" {
		cfg.SnapshotDir = filepath.Join(cfg.DataDir, "snapshots")
	}
	if cfg.VolumesDir == "" {
		cfg.VolumesDir = filepath.Join(cfg.DataDir, "volumes")
	}
	for _, d := range []string{filepath.Join(cfg.DataDir, "machines"), cfg.VolumesDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("data dir: %w", err)
		}
	}
	snaps, err := snapshot.Open(cfg.SnapshotDir)
	if err != nil {
		return nil, err
	}
	if cfg.Remote != nil {
		snaps.SetRemote(cfg.Remote)
	}
	m := &Manager{cfg: cfg, store: db, driver: driver, net: net, templates: templates, snaps: snaps, logger: logger,
		locks: map[string]*idLock{}}
	m.spares = newSpares(m, cfg.Spares)
	m.uploads = newUploader()
	m.root, m.stopRoot = context.WithCancel(context.Background())
	m.silence = newSilence()
	m.leases = lease.New(func(id string) { m.background(func() { m.expire(id) }) })
	m.metrics = newMetrics()
	m.activity = newActivity()
	m.mainWatch = newMainWatch()
	return m, nil
}

var (
	envKeyRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

const (
	maxMetadataKeys = 64
	maxMetadataKey  = 128
	maxMetadataVal  = 1024
)

// validate fills defaults into req and checks it against the host.
func (m *Manager) validate(ctx context.Context, teamID string, req *api.CreateMachineRequest) error {
	if req.SnapshotID == "" {
		if req.Template == "" {
			req.Template = m.cfg.DefaultTemplate
		}
		if req.CPUCount == 0 {
			req.CPUCount = m.cfg.DefaultCPU
		}
		if req.MemoryMB == 0 {
			req.MemoryMB = m.cfg.DefaultMemoryMB
		}
		if req.DiskMB == 0 {
			req.DiskMB = m.cfg.DefaultDiskMB
		}
	}
	bad := func(format string, args ...any) error {
		return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument, fmt.Sprintf(format, args...),
			"fix the request and create the machine again")
	}
	if req.SnapshotID != "" {
		// A child's memory holds its processes' view of the machine: its
		// shape and mounts must be the snapshot's.
		if req.Template != "" || req.CPUCount != 0 || req.MemoryMB != 0 || req.DiskMB != 0 || len(req.Env) > 0 || len(req.Volumes) > 0 || req.Hooks != nil || req.Command != nil {
			return bad("snapshot_id cannot be combined with template, cpu_count, memory_mb, disk_mb, env, volumes, hooks or command: a machine created from a snapshot has the snapshot's")
		}
	} else {
		if req.CPUCount < 1 || req.CPUCount > m.cfg.MaxCPU {
			return bad("cpu_count %d is out of range: this host allows 1 to %d", req.CPUCount, m.cfg.MaxCPU)
		}
		if req.MemoryMB < 64 || req.MemoryMB > m.cfg.MaxMemoryMB {
			return bad("memory_mb %d is out of range: this host allows 64 to %d", req.MemoryMB, m.cfg.MaxMemoryMB)
		}
		if req.DiskMB < 1 || req.DiskMB > m.cfg.MaxDiskMB {
			return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
				fmt.Sprintf("disk_mb %d is out of range: this server allows 1 to %d (default %d)", req.DiskMB, m.cfg.MaxDiskMB, m.cfg.DefaultDiskMB),
				fmt.Sprintf("ask for at most %d MiB, or leave disk_mb out for the default; the operator sets the bound with --disk-max-mb", m.cfg.MaxDiskMB))
		}
	}
	for k, v := range req.Env {
		if !envKeyRe.MatchString(k) {
			return bad("env name %q is invalid: use letters, digits and underscores, not starting with a digit", k)
		}
		if strings.HasPrefix(k, "NULLSPACE_AGENT_") {
			return bad("env name %q is reserved", k)
		}
		if strings.ContainsRune(v, 0) {
			return bad("env %s contains a NUL byte", k)
		}
	}
	if req.Command != nil {
		if len(req.Command) == 0 || req.Command[0] == "" {
			return bad("command is empty: give the main process as an argv, e.g. [\"python3\", \"app.py\"]")
		}
		for _, a := range req.Command {
			if strings.ContainsRune(a, 0) {
				return bad("command contains a NUL byte")
			}
		}
	}
	if len(req.Metadata) > maxMetadataKeys {
		return bad("metadata has %d keys: at most %d are allowed", len(req.Metadata), maxMetadataKeys)
	}
	for k, v := range req.Metadata {
		if k == "" || len(k) > maxMetadataKey || len(v) > maxMetadataVal {
			return bad("metadata %q: keys must be 1 to %d bytes and values at most %d bytes", k, maxMetadataKey, maxMetadataVal)
		}
	}
	if req.Hooks != nil {
		if err := validateHooks(*req.Hooks); err != nil {
			return err
		}
	}
	if err := m.validateVolumes(ctx, teamID, req.Volumes); err != nil {
		return err
	}
	if err := validateLease(req); err != nil {
		return err
	}
	if err := validateIdle(req); err != nil {
		return err
	}
	if err := validatePersistence(req); err != nil {
		return err
	}
	if req.CheckpointRetention != nil && *req.CheckpointRetention < 0 {
		return bad("checkpoint_retention %d is negative: give how many checkpoints to keep, or 0 to keep all", *req.CheckpointRetention)
	}
	if req.AllowInternet && !m.cfg.AllowInternet {
		return errdefs.New(errdefs.ErrFailedPrecondition, errdefs.CodeInternetNotAllowed,
			"this server does not allow machines to reach the internet",
			"create the machine without allow_internet, or start the server with --allow-internet")
	}
	return nil
}

const (
	maxHooks     = 16
	maxHookBytes = 4096
)

func validateHooks(h api.Hooks) error {
	for name, list := range map[string][]string{"on_pause": h.OnPause, "on_resume": h.OnResume} {
		if len(list) > maxHooks {
			return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
				fmt.Sprintf("hooks.%s has %d commands: at most %d are allowed", name, len(list), maxHooks), "merge hook commands into a script")
		}
		for _, c := range list {
			if strings.TrimSpace(c) == "" || len(c) > maxHookBytes || strings.ContainsRune(c, 0) {
				return errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
					fmt.Sprintf("hooks.%s: each command must be a non-empty shell command line of at most %d bytes", name, maxHookBytes),
					"fix the hook commands")
			}
		}
	}
	return nil
}

// Create makes a machine from a template, or from a snapshot when
// req.SnapshotID is set, and returns it running, with its agent answering.
// On any error nothing is left behind: no netns, cgroup, container,
// directory or row.
func (m *Manager) Create(ctx context.Context, teamID string, req api.CreateMachineRequest) (*store.Machine, error) {
	start := time.Now()
	if err := m.validate(ctx, teamID, &req); err != nil {
		return nil, err
	}
	if req.SnapshotID != "" {
		return m.createFromSnapshot(ctx, teamID, req)
	}
	m.templateMu.RLock()
	releaseTemplate := sync.OnceFunc(m.templateMu.RUnlock)
	defer releaseTemplate()
	tmpl, err := m.Template(ctx, teamID, req.Template)
	if err != nil {
		return nil, err
	}
	if tmpl.State != api.TemplateReady {
		return nil, errdefs.New(errdefs.ErrFailedPrecondition, errdefs.CodeTemplateNotReady,
			fmt.Sprintf("template %s is %s", req.Template, tmpl.State), "wait for the template build to finish, or rebuild it")
	}
	rootfs, err := m.templates.RootfsDir(req.Template)
	if err != nil {
		return nil, err
	}
	rec := &store.Machine{
		ID:                  newMachineID(),
		TeamID:              teamID,
		State:               api.StateCreating,
		Template:            req.Template,
		CPUCount:            req.CPUCount,
		MemoryMB:            req.MemoryMB,
		DiskMB:              req.DiskMB,
		Env:                 req.Env,
		Metadata:            req.Metadata,
		AllowInternet:       req.AllowInternet,
		ContainerID:         newContainerID(),
		AgentToken:          randomHex(32),
		CreatedAt:           time.Now().UTC(),
		Volumes:             req.Volumes,
		AgentDir:            m.cfg.AgentDir,
		TimeoutMS:           *req.TimeoutMS,
		OnTimeout:           req.OnTimeout,
		AutoResume:          req.AutoResume,
		IdleTimeoutMS:       req.IdleTimeoutMS,
		Persistence:         req.Persistence,
		Command:             req.Command,
		PublicPorts:         req.PublicPorts,
		CheckpointRetention: retentionOr(req.CheckpointRetention),
		Origin:              req.Origin,
	}
	if req.Hooks != nil {
		rec.Hooks = *req.Hooks
	}
	unlock, err := m.lock(ctx, rec.ID)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := m.admit(ctx, rec, true, func() error { return m.store.CreateMachine(ctx, rec, m.net.Slots()) }); err != nil {
		return nil, err
	}
	releaseTemplate() // the row in state creating now holds the template
	log := m.logger.With("machine_id", rec.ID, "slot", rec.Slot)
	_, err = m.boot(ctx, rec, rootfs, false, tmpl)
	if err == nil {
		err = m.startMain(ctx, rec)
	}
	if err != nil {
		if uerr := m.undoCreate(ctx, rec); uerr != nil {
			log.ErrorContext(ctx, "clean up failed create", "err", uerr)
		}
		return nil, fmt.Errorf("create machine: %w", err)
	}
	if err := m.setState(ctx, rec, api.StateRunning); err != nil {
		return nil, err
	}
	log.InfoContext(ctx, "machine running", "template", rec.Template, "ip", m.guestIP(rec))
	m.emit(ctx, api.EventMachineCreated, rec, map[string]any{"template": rec.Template})
	m.observe("create", start)
	return rec, nil
}

// boot sets up the network, starts the container and waits for the agent.
func (m *Manager) boot(ctx context.Context, rec *store.Machine, rootfs string, writable bool, tmpl api.Template) (*agentclient.Client, error) {
	t0 := time.Now()
	ni, err := m.setupNetwork(ctx, rec, nil)
	if err != nil {
		return nil, err
	}
	spec, err := m.machineSpec(rec, ni, rootfs, tmpl.Env, tmpl.Workdir)
	if err != nil {
		return nil, err
	}
	spec.Writable = writable
	t1 := time.Now()
	sctx, cancel := context.WithTimeout(ctx, runscTimeout(0))
	err = m.driver.Start(sctx, spec)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("start container: %w", err)
	}
	t2 := time.Now()
	agent := agentclient.New(m.agentURL(ni.GuestIP), rec.AgentToken, nil)
	if err := m.waitAgent(ctx, agent); err != nil {
		return nil, err
	}
	rec.StartedAt = time.Now().UTC()
	m.logger.DebugContext(ctx, "machine booted", "machine_id", rec.ID, "prepare", t1.Sub(t0),
		"runsc_run", t2.Sub(t1), "agent_ready", rec.StartedAt.Sub(t2))
	return agent, nil
}

func (m *Manager) waitAgent(ctx context.Context, agent *agentclient.Client) error {
	rctx, cancel := context.WithTimeout(ctx, m.cfg.ReadyTimeout)
	defer cancel()
	if err := agent.WaitReady(rctx); err != nil {
		return errdefs.Wrap(err, errdefs.ErrUnavailable, errdefs.CodeAgentUnavailable,
			"the machine started but its agent did not answer in time", "retry; if it keeps failing, check the server log")
	}
	return nil
}

// setupNetwork makes the machine's namespace, unless made is the one a
// spare made, and its firewall entry.
func (m *Manager) setupNetwork(ctx context.Context, rec *store.Machine, made *NetInfo) (NetInfo, error) {
	var ni NetInfo
	if made != nil {
		ni = *made
	} else {
		var err error
		if ni, err = m.net.Setup(ctx, rec.Slot); err != nil {
			return NetInfo{}, fmt.Errorf("network: %w", err)
		}
	}
	if rec.AllowInternet {
		if err := m.net.SetInternet(ni.GuestIP, true); err != nil {
			return NetInfo{}, fmt.Errorf("allow internet: %w", err)
		}
	}
	return ni, nil
}

// etcFiles are the files a machine's identity lives in, bind-mounted at
// /etc/<name> and rewritten by the agent after a restore.
func (m *Manager) etcFiles(rec *store.Machine, ni NetInfo) map[string]string {
	hostname := hostnameOf(rec.ID)
	return map[string]string{
		"hostname":    hostname + "\n",
		"hosts":       fmt.Sprintf("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n%s\t%s\n", ni.GuestIP, hostname),
		"resolv.conf": m.resolvConf(rec, ni),
	}
}

// machineSpec writes the machine's /etc files and returns its container
// spec. Boot and restore build it the same way: a restore needs the same
// mount destinations, args and cwd as the checkpointed container.
func (m *Manager) machineSpec(rec *store.Machine, ni NetInfo, rootfs string, tmplEnv map[string]string, workdir string) (runtime.Spec, error) {
	dir := m.machineDir(rec.ID)
	etc := filepath.Join(dir, "etc")
	if err := os.MkdirAll(etc, 0o755); err != nil {
		return runtime.Spec{}, err
	}
	files := m.etcFiles(rec, ni)
	var mounts []runtime.Mount
	for name, content := range files {
		p := filepath.Join(etc, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return runtime.Spec{}, err
		}
		mounts = append(mounts, runtime.Mount{Source: p, Destination: "/etc/" + name})
	}
	sort.Slice(mounts, func(i, j int) bool { return mounts[i].Destination < mounts[j].Destination })
	mounts = append(mounts, runtime.Mount{Source: m.localAgent(rec.AgentDir), Destination: "/.nullspace", ReadOnly: true})
	for _, v := range rec.Volumes {
		mounts = append(mounts, runtime.Mount{Source: m.volumeDir(rec.TeamID, v.Name), Destination: v.Path, ReadOnly: v.ReadOnly})
	}

	env := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"}
	for _, e := range []map[string]string{tmplEnv, rec.Env} {
		for _, k := range sortedKeys(e) {
			env = append(env, k+"="+e[k])
		}
	}
	env = append(env,
		"NULLSPACE_AGENT_TOKEN="+rec.AgentToken,
		fmt.Sprintf("NULLSPACE_AGENT_ADDR=:%d", AgentPort),
		fmt.Sprintf("NULLSPACE_AGENT_MAX_FILE_BYTES=%d", m.cfg.MaxFileBytes),
		"NULLSPACE_WORKDIR="+workdir,
		"NULLSPACE_MACHINE_ID="+rec.ID,
	)
	if _, set := rec.Env["GOMAXPROCS"]; !set && tmplEnv["GOMAXPROCS"] == "" {
		// The agent runs with one P (see cmd/nullspace-agent for why) and
		// keeps the setting from user commands.
		env = append(env, "GOMAXPROCS=1", "NULLSPACE_AGENT_STARTUP_GOMAXPROCS=1")
	}
	return runtime.Spec{
		ID:        rec.ContainerID,
		Dir:       filepath.Join(dir, "container"),
		Rootfs:    rootfs,
		Args:      []string{"/.nullspace/nullspace-agent"},
		Env:       env,
		Cwd:       "/",
		Hostname:  hostnameOf(rec.ID),
		NetnsPath: ni.NetnsPath,
		CPUCount:  rec.CPUCount,
		MemoryMB:  rec.MemoryMB,
		DiskMB:    m.diskMB(rec.DiskMB),
		Mounts:    mounts,
	}, nil
}

// diskMB is the disk limit a machine (or a snapshot's spec) records, or
// the server's default where it records none: rows and snapshots written
// before machines had a limit hold 0, and run with the default of the
// server that boots or restores them.
func (m *Manager) diskMB(recorded int) int {
	if recorded > 0 {
		return recorded
	}
	return m.cfg.DefaultDiskMB
}

func (m *Manager) resolvConf(rec *store.Machine, ni NetInfo) string {
	if rec.AllowInternet && len(m.cfg.Nameservers) > 0 {
		var b strings.Builder
		for _, ns := range m.cfg.Nameservers {
			fmt.Fprintf(&b, "nameserver %s\n", ns)
		}
		return b.String()
	}
	// The firewall rejects everything a machine sends to the host side, so a
	// lookup fails at once instead of hanging for the resolver timeout.
	return fmt.Sprintf("nameserver %s\noptions timeout:1 attempts:1\n", ni.HostIP)
}

// undoCreate removes a machine that never became running: its resources,
// then its row. If freeing fails the row stays, so that Reconcile finishes
// the cleanup later. It runs under a context that survives the caller's
// cancellation.
func (m *Manager) undoCreate(ctx context.Context, rec *store.Machine) error {
	ctx = context.WithoutCancel(ctx)
	if err := m.release(ctx, rec); err != nil {
		return err
	}
	return m.store.DeleteMachine(ctx, rec.ID)
}

// release frees everything a machine holds: container, network, directory.
func (m *Manager) release(ctx context.Context, rec *store.Machine) error {
	m.recordEgress(ctx, rec)
	var errs []error
	dir := m.machineDir(rec.ID)
	if err := m.driver.Delete(ctx, rec.ContainerID, filepath.Join(dir, "container")); err != nil {
		errs = append(errs, err)
	}
	if rec.Slot >= 0 {
		if rec.AllowInternet {
			if ip, err := m.guestAddr(rec); err == nil {
				if err := m.net.SetInternet(ip, false); err != nil {
					errs = append(errs, err)
				}
			}
		}
		if err := m.net.Teardown(ctx, rec.Slot); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// setState moves a machine to a new state through the guard and persists
// it. The lease follows: its window starts when the machine starts running
// (created, resumed, restored) and stops when it stops.
func (m *Manager) setState(ctx context.Context, rec *store.Machine, to string) error {
	if err := checkTransition(rec.ID, rec.State, to); err != nil {
		return err
	}
	prev, prevDeadline := rec.State, rec.Deadline
	rec.State = to
	now := time.Now().UTC()
	switch {
	case to == api.StateKilled || to == api.StateFailed:
		rec.EndedAt = now
		rec.Deadline = time.Time{}
	case to == api.StatePaused || to == api.StateStopped:
		rec.Deadline = time.Time{}
	case to == api.StateRunning && (prev == api.StateCreating || prev == api.StateResuming || prev == api.StateRestoring || prev == api.StateStarting):
		startLease(rec, now)
	}
	if err := m.store.UpdateMachine(context.WithoutCancel(ctx), rec); err != nil {
		rec.State, rec.Deadline = prev, prevDeadline
		return err
	}
	m.transitioned(rec)
	return nil
}

// transitioned runs what follows every persisted state change of rec: its
// lease is scheduled or cancelled, its main process followed or not, the
// calls into it ended if it no longer runs, and the observers are told.
func (m *Manager) transitioned(rec *store.Machine) {
	m.schedule(rec)
	m.watchMain(rec)
	m.watchMemory(rec)
	switch rec.State {
	case api.StatePaused, api.StateStopped, api.StateKilled, api.StateFailed:
		m.silence.forget(rec.ID)
	}
	m.sessions.end(rec.ID, rec.State)
	m.observersMu.RLock()
	defer m.observersMu.RUnlock()
	for _, fn := range m.observers {
		fn(rec.LineageID, rec.ID, rec.State)
	}
}

// OnTransition registers fn to be called after every persisted state
// change of a machine (the edge drops its cached route of the lineage).
// fn must not block.
func (m *Manager) OnTransition(fn func(lineageID, machineID, state string)) {
	m.observersMu.Lock()
	defer m.observersMu.Unlock()
	m.observers = append(m.observers, fn)
}

// Get returns a team's machine.
func (m *Manager) Get(ctx context.Context, teamID, id string) (*store.Machine, error) {
	rec, err := m.store.GetMachine(ctx, id)
	if err != nil || rec.TeamID != teamID {
		return nil, machineNotFound(id)
	}
	return rec, nil
}

func machineNotFound(id string) error {
	return errdefs.New(errdefs.ErrNotFound, errdefs.CodeMachineNotFound,
		fmt.Sprintf("machine %s not found: it does not exist, or it ended and its record was deleted (--killed-retention)", id),
		"list your machines with GET /v1/machines or `nullspace machine list`")
}

// ListFilter selects machines of a team.
type ListFilter struct {
	State    string
	Template string
	Metadata map[string]string
	// Aliases lists every execution id; without it, one row per machine
	// (its lineage's latest execution).
	Aliases bool
	// Desc lists newest first; otherwise oldest first.
	Desc bool
	// CreatedFrom and CreatedBefore bound when the machine (its lineage)
	// was first created, or the execution with Aliases: inclusive and
	// exclusive; zero: unbounded.
	CreatedFrom, CreatedBefore time.Time
}

// ListPage returns up to limit of a team's machines after the position
// after (zero: from the start), and whether more follow. Without a state
// filter, killed machines are left out. One indexed query, whatever the
// number of machines and aliases.
func (m *Manager) ListPage(ctx context.Context, teamID string, f ListFilter, after store.MachineCursor, limit int) ([]*store.Machine, bool, error) {
	q := store.MachinePageQuery{TeamID: teamID, Template: f.Template, Metadata: f.Metadata, Aliases: f.Aliases, Desc: f.Desc,
		CreatedFrom: f.CreatedFrom, CreatedBefore: f.CreatedBefore, After: after, Limit: limit}
	if f.State != "" {
		if _, ok := transitions[f.State]; !ok {
			return nil, false, errdefs.New(errdefs.ErrInvalidArgument, errdefs.CodeInvalidArgument,
				fmt.Sprintf("unknown state %q", f.State), "use one of "+strings.Join(sortedStates(), ", "))
		}
		q.States = []string{f.State}
	} else {
		q.States = visibleStates
	}
	return m.store.ListMachinesPage(ctx, q)
}

func sortedStates() []string {
	var out []string
	for s := range transitions {
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}

// Kill terminates a machine at once and frees its resources: its latest
// execution, whichever id of the lineage names it (an operation on a paused
// alias acts on the lineage's latest execution), its paused aliases, and
// the lineage's hibernate and checkpoint snapshots that no other machine was
// made from. Killing a killed machine returns it unchanged.
//
// A kill always wins: it cancels the lifecycle operation in flight on the
// lineage (a pause waiting for a silent agent, a resume), which is undone,
// and it is never queued behind the operations that arrive after it.
func (m *Manager) Kill(ctx context.Context, teamID, id string) (*store.Machine, error) {
	rec, err := m.Get(ctx, teamID, id)
	if err != nil {
		return nil, err
	}
	key := lineageKey(rec.LineageID)
	done := m.preempt(key, errKilled)
	defer done()
	wctx, cancel := context.WithTimeout(ctx, killWait)
	defer cancel()
	unlockLineage, err := m.lock(wctx, key)
	if err != nil {
		return nil, err
	}
	defer unlockLineage()
	head, err := m.lineageHead(ctx, rec.LineageID)
	if err != nil {
		return nil, err
	}
	unlock, err := m.lock(wctx, head.ID)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if head, err = m.store.GetMachine(ctx, head.ID); err != nil {
		return nil, err
	}
	if err := m.ownHere(head); err != nil {
		return nil, err
	}
	if head.State != api.StateKilled {
		err = m.killHead(ctx, head)
	}
	if rec, gerr := m.store.GetMachine(ctx, id); gerr == nil {
		return rec, err
	}
	return head, err
}

// killHead kills a lineage's latest execution and with it the lineage: its
// paused aliases and its hibernate and checkpoint snapshots. The caller
// holds the lineage and machine locks.
func (m *Manager) killHead(ctx context.Context, rec *store.Machine) error {
	if err := m.killLocked(ctx, rec); err != nil {
		return err
	}
	members, err := m.store.ListMachines(ctx, store.MachineFilter{LineageID: rec.LineageID, States: append([]string{api.StateFailed}, heldStates...)})
	if err != nil {
		return err
	}
	var errs []error
	for _, alias := range members {
		if err := m.killLocked(ctx, alias); err != nil {
			errs = append(errs, err)
		}
	}
	if err := m.dropLineageSnapshots(ctx, rec.LineageID); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (m *Manager) killLocked(ctx context.Context, rec *store.Machine) error {
	// A kill, once begun, finishes; a sandbox that does not let itself be
	// killed in time leaves the machine killing, which the next start
	// finishes.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), killTimeout)
	defer cancel()
	if rec.State != api.StateKilling {
		if err := m.setState(ctx, rec, api.StateKilling); err != nil {
			return err
		}
	}
	if err := m.release(ctx, rec); err != nil {
		return fmt.Errorf("kill machine %s: %w", rec.ID, err)
	}
	rec.Slot = -1
	if err := m.setState(ctx, rec, api.StateKilled); err != nil {
		return err
	}
	m.logger.InfoContext(ctx, "machine killed", "machine_id", rec.ID)
	m.emit(ctx, api.EventMachineKilled, rec, nil)
	m.spares.poke() // its shape may no longer be wanted
	return nil
}

func notRunning(rec *store.Machine) error {
	msg := fmt.Sprintf("machine %s is %s", rec.ID, rec.State)
	if rec.Error != "" {
		msg += ": " + rec.Error
	}
	action := "create a new machine; a killed or failed machine cannot run commands"
	switch rec.State {
	case api.StateFailed:
		action = "create a new machine: a failed machine cannot run commands; when the error names its last checkpoint, create it from that (snapshot_id)"
	case api.StatePaused:
		action = "resume it with POST /v1/machines/{id}/connect (`nullspace machine connect`) and use the id it returns"
	case api.StateStopped:
		action = "start it with POST /v1/machines/{id}/start (`nullspace machine start`)"
	case api.StatePausing, api.StateResuming, api.StateRestoring, api.StateCreating, api.StateStopping, api.StateStarting:
		action = "retry when the operation in progress has finished"
	}
	return errdefs.New(errdefs.ErrFailedPrecondition, errdefs.CodeMachineNotRunning, msg, action)
}

// CheckAgentError is called by the API when a call to a machine's agent
// failed to connect. If the machine's sandbox is gone (its init, the agent,
// crashed), the machine is marked failed, its resources are freed, and a
// machine_not_running error is returned in place of err.
func (m *Manager) CheckAgentError(ctx context.Context, teamID, id string, err error) error {
	if !errors.Is(err, errdefs.ErrUnavailable) {
		return err
	}
	rec, gerr := m.callTarget(ctx, teamID, id)
	if gerr != nil || rec.State != api.StateRunning {
		return err
	}
	if m.alive(ctx, rec) {
		return err
	}
	if ferr := m.fail(ctx, rec, api.FailureSandboxExit, "the machine's init process (the agent) exited"); ferr != nil {
		return errors.Join(err, ferr)
	}
	return notRunning(rec)
}

func (m *Manager) alive(ctx context.Context, rec *store.Machine) bool {
	st, err := m.driver.State(ctx, rec.ContainerID)
	return err == nil && st.Status == runtime.StatusRunning
}

// fail marks a running machine failed and frees its resources.
func (m *Manager) fail(ctx context.Context, rec *store.Machine, reason, msg string) error {
	unlock, err := m.lock(ctx, rec.ID)
	if err != nil {
		return err
	}
	defer unlock()
	cur, err := m.store.GetMachine(ctx, rec.ID)
	if err != nil {
		return err
	}
	if cur.State != api.StateRunning {
		*rec = *cur
		return nil
	}
	err = m.failFrom(ctx, cur, reason, msg)
	*rec = *cur
	return err
}

// failFrom marks a machine failed from its current state (the caller holds
// its lock) and frees its resources. reason is a stable code (api.Failure*),
// msg says what happened; the machine's error adds the lineage's last
// checkpoint, from which a new machine can be made.
func (m *Manager) failFrom(ctx context.Context, rec *store.Machine, reason, msg string) error {
	cur := rec
	ctx = context.WithoutCancel(ctx)
	m.logger.WarnContext(ctx, "machine failed", "machine_id", rec.ID, "reason", reason, "error", msg)
	if err := m.release(ctx, cur); err != nil {
		return fmt.Errorf("free failed machine %s: %w", rec.ID, err)
	}
	details := map[string]any{"reason": reason, "error": msg}
	if last := m.lastCheckpoint(ctx, cur); last != "" {
		msg += fmt.Sprintf("; its last checkpoint %s can be made into a new machine (POST /v1/machines {\"snapshot_id\": %q})", last, last)
		details["last_checkpoint"] = last
	}
	cur.Slot = -1
	cur.Error = msg
	cur.FailureReason = reason
	if err := m.setState(ctx, cur, api.StateFailed); err != nil {
		return err
	}
	m.emit(ctx, api.EventMachineFailed, cur, details)
	return nil
}

// lastCheckpoint is the newest ready state of rec's lineage that a machine
// can be created from (a checkpoint, a reusable snapshot or a pause), or "".
func (m *Manager) lastCheckpoint(ctx context.Context, rec *store.Machine) string {
	return m.newestState(ctx, rec, false)
}

// newestState is lastCheckpoint, among the durable states only if
// durable is set.
func (m *Manager) newestState(ctx context.Context, rec *store.Machine, durable bool) string {
	snaps, err := m.store.ListSnapshots(ctx, store.SnapshotFilter{LineageID: rec.LineageID, States: []string{store.SnapshotReady}})
	if err != nil {
		return ""
	}
	var last *store.Snapshot
	for _, sn := range snaps {
		if sn.Kind == api.SnapshotDisk || sn.ID == rec.SnapshotID || sn.TeamID != rec.TeamID || (durable && !sn.Durable) {
			continue // a disk holds no machine to restore; rec's own state goes with it
		}
		if last == nil || sn.CreatedAt.After(last.CreatedAt) {
			last = sn
		}
	}
	if last == nil {
		return ""
	}
	return last.ID
}

// Watch checks the running machines every interval and fails those whose
// sandbox died, until ctx ends. The check is a cgroup read per machine when
// the driver offers one; `runsc state` confirms before a machine is failed.
// Every probeEvery-th round it also asks each live machine's agent whether
// it answers (see silence.go): one silent for longer than AgentSilence is
// failed too, instead of staying a running zombie.
func (m *Manager) Watch(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	probeEvery := max(1, int(probeInterval/interval))
	for round := 1; ; round++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		recs, err := m.store.ListMachines(ctx, store.MachineFilter{States: []string{api.StateRunning}, NodeID: m.cfg.Node})
		if err != nil {
			continue
		}
		var live []*store.Machine
		for _, rec := range recs {
			if rc, ok := m.driver.(runningChecker); ok {
				if running, known := rc.Running(rec.ContainerID); known && running {
					live = append(live, rec)
					continue // the cheap check says alive; skip runsc state
				}
			}
			if m.alive(ctx, rec) {
				live = append(live, rec)
				continue
			}
			if ctx.Err() == nil {
				reason, msg := m.sandboxExit(rec)
				if err := m.fail(withCause(ctx, "sandbox_exit"), rec, reason, msg); err != nil {
					m.logger.ErrorContext(ctx, "fail dead machine", "machine_id", rec.ID, "err", err)
				}
			}
		}
		if round%probeEvery == 0 {
			m.probeAgents(ctx, live)
		}
	}
}

// Reconcile brings the store and the host in line after a (re)start:
//   - creating and resuming machines are undone (row and resources go; the
//     paused source of a resume is untouched);
//   - killing machines are finished;
//   - pausing and snapshotting machines whose checkpoint was never committed
//     go back to running (their sandbox is thawed), or fail if it is gone;
//   - restoring machines go back to paused on the checkpoint they were
//     being restored to;
//   - running machines whose sandbox is gone are failed;
//   - snapshots never committed, and snapshot directories, containers,
//     network slots and machine directories that nothing owns, are removed.
//
// Running machines are never touched.
func (m *Manager) Reconcile(ctx context.Context) error {
	ctx = withCause(ctx, "reconcile")
	recs, err := m.store.ListMachines(ctx, store.MachineFilter{States: liveStates, NodeID: m.cfg.Node})
	if err != nil {
		return err
	}
	var errs []error
	// Spares do not outlive a server: without their rows, the orphan sweep
	// below removes their containers, slots and directories.
	if spares, err := m.store.ListSpares(ctx); err == nil {
		for _, sp := range spares {
			errs = append(errs, m.store.DeleteSpare(ctx, sp.MachineID))
		}
	} else {
		errs = append(errs, err)
	}
	// A pause or stop that committed but had not yet freed the machine's
	// sandbox and slot: free them now.
	if paused, err := m.store.ListMachines(ctx, store.MachineFilter{States: heldStates, NodeID: m.cfg.Node}); err == nil {
		for _, rec := range paused {
			if rec.Slot < 0 {
				continue
			}
			m.logger.InfoContext(ctx, "freeing a paused machine's sandbox and slot", "machine_id", rec.ID)
			if err := m.release(ctx, rec); err != nil {
				errs = append(errs, err)
				continue
			}
			rec.Slot = -1
			errs = append(errs, m.store.UpdateMachine(ctx, rec))
		}
	} else {
		errs = append(errs, err)
	}
	// Uncommitted snapshots first: no machine may point at one afterwards.
	if pending, err := m.store.ListSnapshots(ctx, store.SnapshotFilter{States: []string{store.SnapshotWriting}}); err == nil {
		for _, sn := range pending {
			if !m.writesFor(ctx, sn.MachineID) {
				continue // another node's, being written now
			}
			m.logger.InfoContext(ctx, "discarding uncommitted snapshot", "snapshot_id", sn.ID, "machine_id", sn.MachineID)
			if err := m.snaps.Delete(sn.ID); err != nil {
				errs = append(errs, err)
			}
			if err := m.store.DeleteSnapshot(ctx, sn.ID); err != nil {
				errs = append(errs, err)
			}
		}
	} else {
		errs = append(errs, err)
	}
	ownedContainers := map[string]bool{}
	ownedSlots := map[int]bool{}
	ownedDirs := map[string]bool{}
	for _, rec := range recs {
		log := m.logger.With("machine_id", rec.ID)
		switch rec.State {
		case api.StateCreating, api.StateResuming:
			log.InfoContext(ctx, "undoing interrupted create", "state", rec.State)
			if err := m.undoCreate(ctx, rec); err != nil {
				errs = append(errs, err)
			}
			continue
		case api.StateKilling:
			log.InfoContext(ctx, "finishing interrupted kill")
			if err := m.killLocked(ctx, rec); err != nil {
				errs = append(errs, err)
			}
			continue
		case api.StateRestoring, api.StateStarting:
			// A restore in place that did not finish: the machine is back
			// where it was, on the snapshot it was being restored from.
			back := map[string]string{api.StateRestoring: api.StatePaused, api.StateStarting: api.StateStopped}[rec.State]
			log.InfoContext(ctx, "interrupted restore in place: machine goes back", "state", back, "snapshot_id", rec.SnapshotID)
			if err := m.release(ctx, rec); err != nil {
				errs = append(errs, err)
				continue
			}
			rec.Slot = -1
			if err := m.setState(ctx, rec, back); err != nil {
				errs = append(errs, err)
			}
			continue
		case api.StatePausing, api.StateSnapshotting, api.StateStopping:
			// The checkpoint was not committed (a committed pause is
			// paused): the machine is still the running one.
			st, err := m.driver.State(ctx, rec.ContainerID)
			if err == nil && st.Status == runtime.StatusPaused {
				err = m.driver.Thaw(ctx, rec.ContainerID)
			}
			if err != nil || !m.alive(ctx, rec) {
				if ferr := m.failFrom(ctx, rec, api.FailureServerRestart, "the server stopped while the machine was being checkpointed, and its sandbox was gone"); ferr != nil {
					errs = append(errs, ferr)
				}
				continue
			}
			log.InfoContext(ctx, "interrupted checkpoint: machine kept running", "state", rec.State)
			if err := m.setState(ctx, rec, api.StateRunning); err != nil {
				errs = append(errs, err)
				continue
			}
		case api.StateRunning:
			if st, err := m.driver.State(ctx, rec.ContainerID); err == nil && st.Status == runtime.StatusPaused {
				if err := m.driver.Thaw(ctx, rec.ContainerID); err != nil {
					errs = append(errs, err)
				}
			}
			if !m.alive(ctx, rec) {
				if err := m.fail(ctx, rec, api.FailureSandboxExit, "the machine's sandbox was gone when the server started"); err != nil {
					errs = append(errs, err)
				}
				continue
			}
			log.InfoContext(ctx, "machine still running")
		}
		ownedContainers[rec.ContainerID] = true
		ownedSlots[rec.Slot] = true
		ownedDirs[rec.ID] = true
		if rec.AllowInternet {
			if ip, err := m.guestAddr(rec); err == nil {
				if err := m.net.SetInternet(ip, true); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	// A start that committed but was cut off before it deleted the disk it
	// booted from: delete it now (only a stopped machine reads its disk).
	if disks, err := m.store.ListSnapshots(ctx, store.SnapshotFilter{Kinds: []string{api.SnapshotDisk}, States: []string{store.SnapshotReady}}); err == nil {
		for _, sn := range disks {
			if owner, err := m.store.GetMachine(ctx, sn.MachineID); err == nil && (owner.State == api.StateStopped && owner.SnapshotID == sn.ID || owner.NodeID != m.cfg.Node) {
				continue // still its disk, or another node's to judge
			}
			m.logger.InfoContext(ctx, "deleting the disk snapshot of a machine that started", "snapshot_id", sn.ID, "machine_id", sn.MachineID)
			errs = append(errs, m.removeSnapshot(ctx, sn))
		}
	} else {
		errs = append(errs, err)
	}
	if err := m.sweepSnapshots(ctx); err != nil {
		errs = append(errs, err)
	}
	if err := m.finishPrunes(ctx); err != nil {
		errs = append(errs, err)
	}
	// Orphans: things on the host that no live machine owns.
	if ids, err := m.driver.List(ctx); err == nil {
		for _, id := range ids {
			if !ownedContainers[id] {
				m.logger.InfoContext(ctx, "removing orphan container", "container", id)
				if err := m.driver.Delete(ctx, id, ""); err != nil {
					errs = append(errs, err)
				}
			}
		}
	} else {
		errs = append(errs, err)
	}
	if sw, ok := m.driver.(cgroupSweeper); ok {
		if err := sw.SweepCgroups(ctx, ownedContainers); err != nil {
			errs = append(errs, err)
		}
	}
	if slots, err := m.net.Existing(); err == nil {
		for _, s := range slots {
			if !ownedSlots[s] {
				m.logger.InfoContext(ctx, "removing orphan network slot", "slot", s)
				if err := m.net.Teardown(ctx, s); err != nil {
					errs = append(errs, err)
				}
			}
		}
	} else {
		errs = append(errs, err)
	}
	entries, _ := os.ReadDir(filepath.Join(m.cfg.DataDir, "machines"))
	for _, e := range entries {
		if !ownedDirs[e.Name()] {
			os.RemoveAll(filepath.Join(m.cfg.DataDir, "machines", e.Name()))
		}
	}
	return errors.Join(errs...)
}

// sweepSnapshots removes snapshot directories without a ready row.
func (m *Manager) sweepSnapshots(ctx context.Context) error {
	ready, err := m.store.ListSnapshots(ctx, store.SnapshotFilter{States: []string{store.SnapshotReady}})
	if err != nil {
		return err
	}
	keep := map[string]bool{}
	for _, sn := range ready {
		keep[sn.ID] = true
	}
	removed, err := m.snaps.Sweep(keep)
	for _, name := range removed {
		m.logger.InfoContext(ctx, "removed orphan snapshot files", "name", name)
	}
	return err
}

// runningChecker is a driver that can tell cheaply whether a container's
// sandbox still runs; Watch uses it to avoid a runsc call per machine.
type runningChecker interface {
	Running(id string) (running, known bool)
}

// cgroupSweeper is a driver that can remove cgroups no container owns.
type cgroupSweeper interface {
	SweepCgroups(ctx context.Context, keep map[string]bool) error
}

// View returns the public view of a machine.
func (m *Manager) View(ctx context.Context, rec *store.Machine) api.Machine {
	return m.Views(ctx, []*store.Machine{rec})[0]
}

// Views returns the public views of machines, reading what they show of
// their lineages (latest execution, paused aliases) in one query for all.
func (m *Manager) Views(ctx context.Context, recs []*store.Machine) []api.Machine {
	lineages := make([]string, len(recs))
	for i, rec := range recs {
		lineages[i] = rec.LineageID
	}
	sums, err := m.store.LineageSummaries(ctx, lineages)
	if err != nil {
		m.logger.WarnContext(ctx, "lineage summaries of machine views", "err", err)
	}
	out := make([]api.Machine, len(recs))
	for i, rec := range recs {
		out[i] = m.view(rec, sums[rec.LineageID])
	}
	return out
}

// view is the public view of rec, given its lineage's summary.
func (m *Manager) view(rec *store.Machine, sum store.LineageSummary) api.Machine {
	v := api.Machine{
		ID: rec.ID, State: rec.State, Template: rec.Template, CPUCount: rec.CPUCount, MemoryMB: rec.MemoryMB, DiskMB: m.diskMB(rec.DiskMB),
		Env: rec.Env, Metadata: rec.Metadata, AllowInternet: rec.AllowInternet, CreatedAt: rec.CreatedAt, Error: rec.Error, FailureReason: rec.FailureReason,
		Volumes: rec.Volumes, SnapshotID: rec.SnapshotID, LineageID: rec.LineageID, LatestID: rec.ID, RestoredFrom: rec.RestoredFrom,
	}
	if len(rec.Hooks.OnPause)+len(rec.Hooks.OnResume) > 0 {
		h := rec.Hooks
		v.Hooks = &h
	}
	if !slices.Contains(heldStates, rec.State) {
		v.SnapshotID = ""
	}
	v.Command, v.MainPID, v.Exit = rec.Command, rec.MainPID, rec.MainExit
	if rec.State != api.StateRunning && rec.State != api.StateSnapshotting {
		v.MainPID = 0 // no boot, no main process
	}
	if sum.LatestID != "" {
		v.LatestID = sum.LatestID
	}
	v.PausedAliases, v.SnapshotBytes = sum.PausedAliases, sum.SnapshotBytes
	if rec.Slot >= 0 {
		v.IP = m.guestIP(rec)
	}
	if !rec.StartedAt.IsZero() {
		t := rec.StartedAt
		v.StartedAt = &t
	}
	if !rec.EndedAt.IsZero() {
		t := rec.EndedAt
		v.EndedAt = &t
	}
	if rec.State != api.StateKilled && rec.State != api.StateFailed && rec.TimeoutMS > 0 {
		l := LeaseOf(rec, time.Now())
		v.TimeoutMS, v.TimeoutAt, v.RemainingMS, v.TimeoutAction = l.TimeoutMS, l.TimeoutAt, l.RemainingMS, l.TimeoutAction
		v.OnTimeout, v.AutoResume = rec.OnTimeout, rec.AutoResume
	}
	v.IdleTimeoutMS, v.Persistence, v.PublicPorts = rec.IdleTimeoutMS, rec.Persistence, rec.PublicPorts
	v.CheckpointRetention = m.retentionOf(rec)
	return v
}

func (m *Manager) machineDir(id string) string { return filepath.Join(m.cfg.DataDir, "machines", id) }

func (m *Manager) guestAddr(rec *store.Machine) (netip.Addr, error) {
	return m.net.GuestIP(rec.Slot)
}

func (m *Manager) guestIP(rec *store.Machine) string {
	ip, err := m.guestAddr(rec)
	if err != nil {
		return ""
	}
	return ip.String()
}

// IDs. Container ids all have the same length so that no id is a prefix of
// another (runsc matches id prefixes).
func newMachineID() string   { return "mch_" + randomHex(10) }
func newContainerID() string { return "ns" + randomHex(12) }
func hostnameOf(id string) string {
	return strings.ReplaceAll(id, "_", "-")
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func hostMemoryMB() int {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 4096
	}
	var kb int
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "MemTotal:") {
			fmt.Sscanf(strings.TrimPrefix(line, "MemTotal:"), "%d", &kb)
		}
	}
	return kb / 1024
}

// Endpoint is where a machine's agent answers and the token it wants.
type Endpoint struct {
	URL   string
	Token string
}

// AgentEndpoint returns the agent endpoint of a running machine.
func (m *Manager) AgentEndpoint(ctx context.Context, teamID, id string) (Endpoint, error) {
	rec, err := m.callTarget(ctx, teamID, id)
	if err != nil {
		return Endpoint{}, err
	}
	if rec.State != api.StateRunning && rec.State != api.StateSnapshotting {
		return Endpoint{}, notRunning(rec)
	}
	if err := m.ownHere(rec); err != nil {
		return Endpoint{}, err
	}
	ip, err := m.guestAddr(rec)
	if err != nil {
		return Endpoint{}, err
	}
	m.Touch(rec.ID) // an API command or file call is activity (idle suspend)
	return Endpoint{URL: m.agentURL(ip), Token: rec.AgentToken}, nil
}

// agentURL is the base URL of the agent of the machine at ip.
// callTarget is the execution a call on machine id goes to: the id's own,
// or, for a paused alias (an id its lineage has moved on from), the
// lineage's latest.
func (m *Manager) callTarget(ctx context.Context, teamID, id string) (*store.Machine, error) {
	rec, err := m.Get(ctx, teamID, id)
	if err != nil || rec.Latest || rec.State == api.StateRunning || rec.State == api.StateSnapshotting {
		return rec, err
	}
	if head, err := m.lineageHead(ctx, rec.LineageID); err == nil {
		return head, nil
	}
	return rec, nil
}

// agentURL is the address of the agent of the machine at ip.
func (m *Manager) agentURL(ip netip.Addr) string {
	return "http://" + netip.AddrPortFrom(ip, uint16(m.cfg.AgentPort)).String()
}

// Record returns a machine's stored record, whatever its team. It is for
// operators and tests, not for the API.
func (m *Manager) Record(ctx context.Context, id string) (*store.Machine, error) {
	return m.store.GetMachine(ctx, id)
}

// localAgent returns where the agent binary a machine ran (recorded as
// its directory on the server that started it, "" for the configured
// one) is on this server. An agent's directory is named by its digest
// (<data dir>/agent/<digest>/), so a machine recorded by a server with
// another data dir finds the same binary under this server's agent
// directory, if it is installed here.
func (m *Manager) localAgent(dir string) string {
	if dir == "" {
		return m.cfg.AgentDir
	}
	if _, err := os.Stat(filepath.Join(dir, "nullspace-agent")); err == nil {
		return dir
	}
	here := filepath.Join(filepath.Dir(m.cfg.AgentDir), filepath.Base(dir))
	if _, err := os.Stat(filepath.Join(here, "nullspace-agent")); err == nil {
		return here
	}
	return dir
}
