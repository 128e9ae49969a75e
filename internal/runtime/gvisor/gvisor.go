// Package gvisor is the runtime driver that runs machines as gVisor
// sandboxes through the runsc OCI runtime.
//
// runsc is driven with plain exec.Command calls. Facts that shape this code
// (verified on the project's hosts, see DESIGN.md):
//   - detached runsc calls get *os.File stdio: a pipe would keep Wait hanging
//     for as long as the sandbox lives;
//   - every call gets the same global flags (derived from the container id),
//     and its own session so a Ctrl-C on the server never reaches sandboxes;
//   - the root is mounted read-write in the spec but overlaid with a private
//     upper layer (--overlay2=root:dir=...), so template rootfs stay shared
//     and untouched; an overlay is not applied to read-only roots;
//   - the upper layer is a tmpfs whose pages live in one host file (the
//     filestore) in the overlay directory; ",size=" bounds the tmpfs, so a
//     machine that fills it gets ENOSPC and the file stays bounded too;
//   - `runsc state` is the truth, `delete --force` follows `kill`.
package gvisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"nullspace.dev/nullspace/internal/runtime"
)

// Config configures the driver.
type Config struct {
	// Runsc is the path of the runsc binary.
	Runsc string
	// Root is runsc's state directory (--root).
	Root string
	// Platform is the gVisor platform; "systrap" on hosts without KVM.
	Platform string
	// CgroupParent is the cgroup under which every machine gets its own
	// cgroup, e.g. "/nullspace" gives "/nullspace/<id>".
	CgroupParent string
}

// Driver runs machines with runsc.
type Driver struct {
	cfg    Config
	cli    CLI
	logger *slog.Logger

	mu sync.Mutex
	// filestores remembers where each container's overlay file store is
	// open (see filestoreBytes).
	filestores map[string]string
}

var _ runtime.Driver = (*Driver)(nil)

// New returns a driver. It checks that runsc can be executed.
func New(cfg Config, logger *slog.Logger) (*Driver, error) {
	if cfg.Platform == "" {
		cfg.Platform = "systrap"
	}
	if cfg.CgroupParent == "" {
		cfg.CgroupParent = "/nullspace"
	}
	if _, err := os.Stat(cfg.Runsc); err != nil {
		return nil, fmt.Errorf("runsc binary: %w (run `make runsc` or set --runsc)", err)
	}
	if err := os.MkdirAll(cfg.Root, 0o700); err != nil {
		return nil, fmt.Errorf("runsc root: %w", err)
	}
	return &Driver{cfg: cfg, cli: CLI{Bin: cfg.Runsc, Root: cfg.Root, Platform: cfg.Platform}, logger: logger,
		filestores: map[string]string{}}, nil
}

func overlayDir(dir string) string { return filepath.Join(dir, "overlay") }
func bundleDir(dir string) string  { return filepath.Join(dir, "bundle") }

// overlayFlag is the value of --overlay2 for a machine: a private upper
// layer backed by a file in its overlay directory, bounded by its disk
// limit. run, create and restore are all given it.
func overlayFlag(spec runtime.Spec) string {
	flag := "root:dir=" + overlayDir(spec.Dir)
	if spec.DiskMB > 0 {
		flag += fmt.Sprintf(",size=%dm", spec.DiskMB)
	}
	return flag
}

// ConsoleLog is the file that receives the machine's init (agent) output.
func ConsoleLog(dir string) string { return filepath.Join(dir, "console.log") }

// Start writes the OCI bundle and runs the container detached.
func (d *Driver) Start(ctx context.Context, spec runtime.Spec) (err error) {
	if err := d.writeBundle(spec); err != nil {
		return err
	}
	overlay := overlayFlag(spec)
	if spec.Writable {
		overlay = "none" // writes go to the rootfs itself (template builds)
	}
	// The sandbox inherits the console log as its stdio: the agent logs there.
	if err := d.cli.RunLogged(ctx, overlay, ConsoleLog(spec.Dir), "run", "--detach", "--bundle="+bundleDir(spec.Dir), spec.ID); err != nil {
		// Leave nothing behind: a failed run may have left a created container.
		cleanupErr := d.Delete(context.WithoutCancel(ctx), spec.ID, "")
		return errors.Join(fmt.Errorf("start container %s: %w", spec.ID, err), cleanupErr)
	}
	return d.raiseMemoryLimit(spec)
}

// Freeze pauses every task of the sandbox (runsc pause).
func (d *Driver) Freeze(ctx context.Context, id string) error {
	if _, err := d.cli.Output(ctx, "pause", id); err != nil {
		return fmt.Errorf("freeze container %s: %w", id, err)
	}
	return nil
}

// Thaw resumes a frozen sandbox (runsc resume).
func (d *Driver) Thaw(ctx context.Context, id string) error {
	if _, err := d.cli.Output(ctx, "resume", id); err != nil {
		return fmt.Errorf("thaw container %s: %w", id, err)
	}
	return nil
}

// Checkpoint runs `runsc checkpoint --leave-running`. Pauses nest inside
// the sentry, so a frozen container stays frozen afterwards; without
// --leave-running a failed checkpoint (disk full) would kill the sandbox.
func (d *Driver) Checkpoint(ctx context.Context, id, imageDir string) error {
	if _, err := d.cli.Output(ctx, "checkpoint", "--leave-running", "--image-path="+imageDir, id); err != nil {
		return fmt.Errorf("checkpoint container %s: %w", id, err)
	}
	return nil
}

// Create writes the bundle and runs `runsc create`: the sandbox and gofer
// start and wait for a start or a restore. The sandbox inherits the console
// log as its stdio, as in Start.
func (d *Driver) Create(ctx context.Context, spec runtime.Spec) error {
	if err := d.writeBundle(spec); err != nil {
		return err
	}
	if err := d.cli.RunLogged(ctx, overlayFlag(spec), ConsoleLog(spec.Dir), "create", "--bundle="+bundleDir(spec.Dir), spec.ID); err != nil {
		cleanupErr := d.Delete(context.WithoutCancel(ctx), spec.ID, "")
		return errors.Join(fmt.Errorf("create container %s: %w", spec.ID, err), cleanupErr)
	}
	return d.raiseMemoryLimit(spec)
}

// Restore restores the container detached: into the container Create made,
// whose bundle is already written and whose sandbox is up, or else into a
// new one. --direct reads the page file with O_DIRECT, which halves the
// restore time of a large image (no double copy through the page cache).
func (d *Driver) Restore(ctx context.Context, spec runtime.Spec, imageDir string) error {
	if _, err := os.Stat(filepath.Join(bundleDir(spec.Dir), "config.json")); err != nil {
		if err := d.writeBundle(spec); err != nil {
			return err
		}
	}
	err := d.cli.RunLogged(ctx, overlayFlag(spec), ConsoleLog(spec.Dir),
		"restore", "--detach", "--direct", "--image-path="+imageDir, "--bundle="+bundleDir(spec.Dir), spec.ID)
	if err != nil {
		cleanupErr := d.Delete(context.WithoutCancel(ctx), spec.ID, "")
		return errors.Join(fmt.Errorf("restore container %s: %w", spec.ID, err), cleanupErr)
	}
	return d.raiseMemoryLimit(spec)
}

func (d *Driver) writeBundle(spec runtime.Spec) error {
	if err := os.MkdirAll(bundleDir(spec.Dir), 0o700); err != nil {
		return fmt.Errorf("bundle dir: %w", err)
	}
	if !spec.Writable {
		if err := os.MkdirAll(overlayDir(spec.Dir), 0o700); err != nil {
			return fmt.Errorf("overlay dir: %w", err)
		}
	}
	cfg, err := json.Marshal(d.ociSpec(spec))
	if err != nil {
		return fmt.Errorf("marshal spec: %w", err)
	}
	if err := os.WriteFile(filepath.Join(bundleDir(spec.Dir), "config.json"), cfg, 0o600); err != nil {
		return fmt.Errorf("write spec: %w", err)
	}
	return nil
}

// Delete kills and deletes the container, then removes dir. It does not ask
// for the state first (a runsc call is ~13 ms): kill fails harmlessly on a
// stopped or missing container, and only a failed delete is checked.
func (d *Driver) Delete(ctx context.Context, id, dir string) error {
	if _, err := d.cli.Output(ctx, "kill", "--all", id, "KILL"); err != nil {
		d.logger.DebugContext(ctx, "runsc kill", "container", id, "err", err)
	}
	if _, err := d.cli.Output(ctx, "delete", "--force", id); err != nil {
		if _, serr := d.State(ctx, id); !errors.Is(serr, runtime.ErrNotExist) {
			return fmt.Errorf("delete container %s: %w", id, err)
		}
	}
	d.mu.Lock()
	delete(d.filestores, id)
	d.mu.Unlock()
	if err := d.removeCgroups(ctx, id); err != nil {
		return err
	}
	if dir != "" {
		if err := os.RemoveAll(dir); err != nil {
			return fmt.Errorf("remove container dir: %w", err)
		}
	}
	return nil
}

// State asks runsc for the container's state.
func (d *Driver) State(ctx context.Context, id string) (runtime.State, error) {
	out, err := d.cli.Output(ctx, "state", id)
	if err != nil {
		if strings.Contains(err.Error(), "does not exist") || strings.Contains(err.Error(), "no such file") {
			return runtime.State{}, fmt.Errorf("container %s: %w", id, runtime.ErrNotExist)
		}
		return runtime.State{}, err
	}
	var st specs.State
	if err := json.Unmarshal(out, &st); err != nil {
		return runtime.State{}, fmt.Errorf("parse runsc state: %w", err)
	}
	return runtime.State{ID: st.ID, Status: runtime.Status(st.Status), Pid: st.Pid}, nil
}

// List returns the ids of the containers under the driver's root.
func (d *Driver) List(ctx context.Context) ([]string, error) { return d.cli.List(ctx) }

// defaultCaps is Docker's default capability set: root inside a machine
// behaves like root in a container; gVisor is the isolation boundary.
var defaultCaps = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
	"CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
	"CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

func (d *Driver) ociSpec(s runtime.Spec) *specs.Spec {
	mounts := []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc"},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs"},
		{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
	}
	for _, m := range s.Mounts {
		opts := []string{"rbind"}
		if m.ReadOnly {
			opts = append(opts, "ro")
		}
		mounts = append(mounts, specs.Mount{Destination: m.Destination, Type: "bind", Source: m.Source, Options: opts})
	}
	memLimit := int64(s.MemoryMB) << 20 // what the machine sees; see raiseMemoryLimit
	pidsLimit := hostPidsLimit(s.MemoryMB)
	quota := int64(s.CPUCount) * 100000
	period := uint64(100000)
	namespaces := []specs.LinuxNamespace{
		{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace}, {Type: specs.MountNamespace},
		{Type: specs.NetworkNamespace, Path: s.NetnsPath},
	}
	return &specs.Spec{
		Version: specs.Version,
		Process: &specs.Process{
			User: specs.User{UID: 0, GID: 0},
			Args: s.Args,
			Env:  s.Env,
			Cwd:  s.Cwd,
			Capabilities: &specs.LinuxCapabilities{
				Bounding: defaultCaps, Effective: defaultCaps, Permitted: defaultCaps,
			},
			Rlimits: []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 65536, Soft: 65536}},
		},
		// Read-write so that runsc applies the private overlay (see package doc).
		Root:     &specs.Root{Path: s.Rootfs, Readonly: false},
		Hostname: s.Hostname,
		Mounts:   mounts,
		Linux: &specs.Linux{
			CgroupsPath: d.cfg.CgroupParent + "/" + s.ID,
			Resources: &specs.LinuxResources{
				Memory: &specs.LinuxMemory{Limit: &memLimit},
				CPU:    &specs.LinuxCPU{Quota: &quota, Period: &period},
				Pids:   &specs.LinuxPids{Limit: &pidsLimit},
			},
			Namespaces: namespaces,
		},
	}
}

// SweepCgroups removes machine cgroups under the driver's cgroup parent
// whose container is not in keep: leftovers of a crash between a sandbox's
// death and its deletion, or of a lost runsc root. Processes still in such a
// cgroup are orphaned sandboxes of this server (the parent is the server's
// own) and are killed first. It must only run while no container is being
// created, i.e. at start-up.
func (d *Driver) SweepCgroups(ctx context.Context, keep map[string]bool) error {
	controllers, err := filepath.Glob("/sys/fs/cgroup/*" + d.cfg.CgroupParent)
	if err != nil {
		return err
	}
	var errs []error
	for _, parent := range controllers {
		entries, err := os.ReadDir(parent)
		if err != nil {
			continue
		}
		for _, e := range entries {
			if !e.IsDir() || keep[e.Name()] {
				continue
			}
			dir := filepath.Join(parent, e.Name())
			killCgroupTasks(dir)
			if err := rmdirRetry(ctx, dir); err != nil {
				errs = append(errs, fmt.Errorf("remove orphan cgroup %s: %w", dir, err))
			} else {
				d.logger.InfoContext(ctx, "removed orphan cgroup", "cgroup", dir)
			}
		}
	}
	return errors.Join(errs...)
}

// removeCgroups removes the container's cgroup in every controller if it
// is still there. runsc delete removes it, but a `runsc create` that failed
// before recording the container (its sandbox died while starting) leaves
// the cgroup behind with no container that delete could find.
func (d *Driver) removeCgroups(ctx context.Context, id string) error {
	dirs, err := filepath.Glob("/sys/fs/cgroup/*" + d.cfg.CgroupParent + "/" + id) // v1: one per controller
	if err != nil {
		return err
	}
	if _, err := os.Stat("/sys/fs/cgroup" + d.cfg.CgroupParent + "/" + id); err == nil {
		dirs = append(dirs, "/sys/fs/cgroup"+d.cfg.CgroupParent+"/"+id) // v2
	}
	var errs []error
	for _, dir := range dirs {
		killCgroupTasks(dir)
		if err := rmdirRetry(ctx, dir); err != nil {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", dir, err))
		}
	}
	return errors.Join(errs...)
}

func killCgroupTasks(dir string) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return
	}
	for _, f := range strings.Fields(string(b)) {
		var pid int
		if _, err := fmt.Sscan(f, &pid); err == nil && pid > 1 {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// rmdirRetry removes a cgroup directory, waiting briefly for killed tasks
// to leave it.
func rmdirRetry(ctx context.Context, dir string) error {
	var err error
	for i := 0; i < 50; i++ {
		if err = syscall.Rmdir(dir); err == nil || errors.Is(err, syscall.ENOENT) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return err
}

// Running reports cheaply whether a container's sandbox still has processes,
// by reading its cgroup instead of running `runsc state` (a process spawn of
// ~13 ms): the sandbox exits when the machine's init dies. ok is false when
// the cgroup cannot be read; the caller then asks State.
func (d *Driver) Running(id string) (running, ok bool) {
	for _, p := range []string{
		"/sys/fs/cgroup/pids" + d.cfg.CgroupParent + "/" + id + "/cgroup.procs", // cgroup v1
		"/sys/fs/cgroup" + d.cfg.CgroupParent + "/" + id + "/cgroup.procs",      // cgroup v2
	} {
		b, err := os.ReadFile(p)
		if err == nil {
			return len(strings.TrimSpace(string(b))) > 0, true
		}
	}
	return false, false
}

// Stats reads a container's CPU and memory counters from its cgroup (v1,
// or v2 when that is what the host has) and the size of its overlay file
// store: a few file reads, no runsc call.
func (d *Driver) Stats(id string) (runtime.Stats, error) {
	st, err := d.cgroupStats(id)
	if err != nil {
		return st, err
	}
	st.DiskBytes = d.filestoreBytes(id)
	return st, nil
}

// filestoreBytes returns the blocks a container's root overlay file store
// takes. runsc unlinks the file once the sandbox has it open, so it is
// found among the sandbox's open files; its /proc path is remembered.
func (d *Driver) filestoreBytes(id string) uint64 {
	d.mu.Lock()
	path, ok := d.filestores[id]
	d.mu.Unlock()
	if ok {
		if n, ok := blocksOf(path); ok {
			return n
		}
	}
	pids, err := os.ReadFile("/sys/fs/cgroup/pids" + d.cfg.CgroupParent + "/" + id + "/cgroup.procs")
	if err != nil {
		pids, _ = os.ReadFile("/sys/fs/cgroup" + d.cfg.CgroupParent + "/" + id + "/cgroup.procs")
	}
	for _, pid := range strings.Fields(string(pids)) {
		fds, err := os.ReadDir("/proc/" + pid + "/fd")
		if err != nil {
			continue
		}
		for _, fd := range fds {
			p := "/proc/" + pid + "/fd/" + fd.Name()
			if target, err := os.Readlink(p); err == nil && strings.Contains(target, "/overlay/runsc-filestore-") {
				d.mu.Lock()
				d.filestores[id] = p
				d.mu.Unlock()
				n, _ := blocksOf(p)
				return n
			}
		}
	}
	return 0
}

func blocksOf(path string) (uint64, bool) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, false
	}
	return uint64(st.Blocks) * 512, true
}

func (d *Driver) cgroupStats(id string) (runtime.Stats, error) {
	cg := d.cfg.CgroupParent + "/" + id
	var st runtime.Stats
	var err error
	if st.CPUNanos, err = readUint("/sys/fs/cgroup/cpuacct" + cg + "/cpuacct.usage"); err == nil {
		if st.MemoryBytes, err = readUint("/sys/fs/cgroup/memory" + cg + "/memory.usage_in_bytes"); err != nil {
			return st, err
		}
		st.MemoryLimit, _ = readUint("/sys/fs/cgroup/memory" + cg + "/memory.limit_in_bytes")
		return st, nil
	}
	// cgroup v2: cpu.stat usage_usec, memory.current, memory.max.
	b, err2 := os.ReadFile("/sys/fs/cgroup" + cg + "/cpu.stat")
	if err2 != nil {
		return st, fmt.Errorf("cgroup of container %s: %w", id, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
			us, _ := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			st.CPUNanos = us * 1000
		}
	}
	if st.MemoryBytes, err = readUint("/sys/fs/cgroup" + cg + "/memory.current"); err != nil {
		return st, err
	}
	st.MemoryLimit, _ = readUint("/sys/fs/cgroup" + cg + "/memory.max") // "max" reads as 0: no limit
	return st, nil
}

func readUint(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
}
