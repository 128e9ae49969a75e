package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"nullspace.dev/nullspace/internal/runtime/gvisor"
)

// Host objects of the raw baseline, distinct from the server's.
const (
	rawNetnsPrefix  = "nsbraw-"
	rawVethPrefix   = "nbr"
	rawCgroupParent = "/nullspace-bench-raw"
)

// rawCIDR holds one /30 per raw container; only the namespace side (.2) gets
// an address, and nothing is ever sent: init only sleeps.
var rawCIDR = netip.MustParsePrefix("10.233.0.0/16")

// rawContainer is one raw sandbox and its network namespace.
type rawContainer struct {
	id       string
	dir      string // bundle, overlay upper layer, log
	netns    string
	veth     string
	memoryMB int // memory limit
}

func (c *rawContainer) log() string { return filepath.Join(c.dir, "runsc.log") }

// rawSide runs sandboxes with runsc directly.
type rawSide struct {
	cfg    config
	runsc  *gvisor.CLI
	dir    string
	rootfs string
	ip     string // the ip binary
	slot   int    // next network slot

	// live holds containers made and not yet deleted; netns the namespaces
	// made and not yet removed (one goroutine only).
	live  map[string]*rawContainer
	netns map[string]bool
}

// vethOf returns the host-side veth of a raw namespace: nsbraw-N has nbrN.
func vethOf(netns string) string { return rawVethPrefix + strings.TrimPrefix(netns, rawNetnsPrefix) }

func newRawSide(ctx context.Context, cfg config, work, rootfs string) (*rawSide, error) {
	ip, err := lookIP()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(work, "raw")
	r := &rawSide{
		cfg: cfg, dir: dir, rootfs: rootfs, ip: ip,
		runsc: &gvisor.CLI{Bin: cfg.runsc, Root: filepath.Join(dir, "runsc-root")},
		live:  map[string]*rawContainer{}, netns: map[string]bool{},
	}
	if err := os.MkdirAll(r.runsc.Root, 0o700); err != nil {
		return nil, err
	}
	if cfg.rawInit == "agent" {
		if err := r.installAgent(); err != nil {
			return nil, err
		}
	}
	// Namespaces of an earlier run that was killed hard: ours by name.
	for _, name := range listNetns(ctx, ip) {
		if strings.HasPrefix(name, rawNetnsPrefix) {
			fmt.Fprintf(os.Stderr, "bench: removing network namespace %s left by an earlier run\n", name)
			r.netns[name] = true
		}
	}
	return r, errors.Join(r.removeNetnsAll(ctx))
}

func lookIP() (string, error) {
	if p, err := exec.LookPath("ip"); err == nil {
		return p, nil
	}
	for _, p := range []string{"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("ip not found")
}

func (r *rawSide) ipCmd(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, r.ip, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// prepare makes a container's network namespace and bundle: the untimed
// part, like a pool of namespaces would.
func (r *rawSide) prepare(ctx context.Context, memoryMB int) (*rawContainer, error) {
	slot := r.slot
	r.slot++
	block := rawCIDR.Addr().As4()
	off := uint32(slot) * 4
	if off+4 > 1<<(32-rawCIDR.Bits()) {
		return nil, fmt.Errorf("raw address pool %s exhausted", rawCIDR)
	}
	base := uint32(block[0])<<24 | uint32(block[1])<<16 | uint32(block[2])<<8 | uint32(block[3])
	u := base + off
	addrOf := func(v uint32) netip.Addr {
		return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	}
	gateway, guest := addrOf(u+1), addrOf(u+2)

	c := &rawContainer{
		id:       "rb" + randomHex(8), // fixed length: runsc matches id prefixes
		netns:    rawNetnsPrefix + strconv.Itoa(slot),
		veth:     rawVethPrefix + strconv.Itoa(slot),
		memoryMB: memoryMB,
	}
	c.dir = filepath.Join(r.dir, c.id)
	if err := r.ipCmd(ctx, "netns", "add", c.netns); err != nil {
		return nil, err
	}
	r.netns[c.netns] = true
	steps := [][]string{
		{"link", "add", c.veth, "type", "veth", "peer", "name", "eth0", "netns", c.netns},
		{"-n", c.netns, "addr", "add", guest.String() + "/30", "dev", "eth0"},
		{"-n", c.netns, "link", "set", "lo", "up"},
		{"-n", c.netns, "link", "set", "eth0", "up"},
		{"-n", c.netns, "route", "add", "default", "via", gateway.String(), "dev", "eth0"},
	}
	for i, args := range steps {
		if err := r.ipCmd(ctx, args...); err != nil {
			return nil, err
		}
		if i == 0 {
			// As the server does: no IPv6 chatter on the host end.
			if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+c.veth+"/disable_ipv6", []byte("1"), 0o644); err != nil && !errors.Is(err, os.ErrNotExist) {
				return nil, err
			}
			if err := r.ipCmd(ctx, "link", "set", c.veth, "up"); err != nil {
				return nil, err
			}
		}
	}
	if err := os.MkdirAll(filepath.Join(c.dir, "bundle"), 0o700); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(c.dir, "overlay"), 0o700); err != nil {
		return nil, err
	}
	spec, err := json.Marshal(r.spec(c))
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(c.dir, "bundle", "config.json"), spec, 0o600); err != nil {
		return nil, err
	}
	return c, nil
}

// start runs the container detached, as the gvisor driver does.
func (r *rawSide) start(ctx context.Context, c *rawContainer) error {
	r.live[c.id] = c
	return r.runsc.RunLogged(ctx, "root:dir="+filepath.Join(c.dir, "overlay"), c.log(),
		"run", "--detach", "--bundle="+filepath.Join(c.dir, "bundle"), c.id)
}

func (r *rawSide) execTrueIn(ctx context.Context, c *rawContainer) error {
	return r.runsc.RunLogged(ctx, "", c.log(), "exec", c.id, "/bin/true")
}

// lifecycle measures one raw sandbox: run + first exec, idle memory, kill.
func (r *rawSide) lifecycle(ctx context.Context, res *results) error {
	c, err := r.prepare(ctx, r.cfg.memoryMB)
	if err != nil {
		return err
	}
	start := time.Now()
	if err := r.start(ctx, c); err != nil {
		return err
	}
	ran := time.Since(start)
	if err := r.execTrueIn(ctx, c); err != nil {
		return err
	}
	total := time.Since(start)
	res.addDuration(metricCreate, sideRaw, "minimal", total)
	res.addDuration(metricCreateStart, sideRaw, "minimal", ran)
	res.addDuration(metricCreateFirst, sideRaw, "minimal", total-ran)
	if err := sleep(ctx, r.cfg.settle); err != nil {
		return err
	}
	mem, err := readMemory(rawCgroupParent, c.id)
	if err != nil {
		return err
	}
	res.addMemory(sideRaw, "minimal", mem)
	cpu, err := idleCPU(ctx, rawCgroupParent, c.id)
	if err != nil {
		return err
	}
	res.addDuration(metricIdleCPU, sideRaw, "minimal", cpu)
	return r.kill(ctx, c, res)
}

func (r *rawSide) warm(ctx context.Context, warmup int) (*rawContainer, error) {
	c, err := r.prepare(ctx, r.cfg.memoryMB)
	if err != nil {
		return nil, err
	}
	if err := r.start(ctx, c); err != nil {
		return nil, err
	}
	for range warmup + 1 {
		if err := r.execTrueIn(ctx, c); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func (r *rawSide) execTrue(ctx context.Context, c *rawContainer, res *results) error {
	start := time.Now()
	if err := r.execTrueIn(ctx, c); err != nil {
		return err
	}
	res.addDuration(metricExec, sideRaw, "minimal", time.Since(start))
	return nil
}

// kill kills and deletes a container (timed into res when set), then
// removes its namespace and directory (untimed).
func (r *rawSide) kill(ctx context.Context, c *rawContainer, res *results) error {
	start := time.Now()
	if _, err := r.runsc.Output(ctx, "kill", "--all", c.id, "KILL"); err != nil {
		return err
	}
	if _, err := r.runsc.Output(ctx, "delete", "--force", c.id); err != nil {
		return err
	}
	if res != nil {
		res.addDuration(metricKill, sideRaw, "minimal", time.Since(start))
	}
	delete(r.live, c.id)
	return r.release(ctx, c)
}

func (r *rawSide) release(ctx context.Context, c *rawContainer) error {
	var errs []error
	if r.netns[c.netns] {
		errs = append(errs, r.removeNetns(ctx, c.netns))
	}
	return errors.Join(append(errs, os.RemoveAll(c.dir))...)
}

// removeNetns removes a namespace and its veth pair. The pair is deleted
// first, by its host end: that is synchronous, whereas the kernel destroys a
// deleted namespace's interfaces later, in the background.
func (r *rawSide) removeNetns(ctx context.Context, name string) error {
	var errs []error
	veth := vethOf(name)
	if _, err := net.InterfaceByName(veth); err == nil {
		if err := r.ipCmd(ctx, "link", "del", veth); err != nil {
			errs = append(errs, err)
		}
	}
	if err := r.ipCmd(ctx, "netns", "del", name); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		delete(r.netns, name)
	}
	return errors.Join(errs...)
}

func (r *rawSide) removeNetnsAll(ctx context.Context) error {
	var errs []error
	for name := range r.netns {
		errs = append(errs, r.removeNetns(ctx, name))
	}
	return errors.Join(errs...)
}

// close deletes every container under the private root and the namespaces.
func (r *rawSide) close(ctx context.Context) error {
	var errs []error
	ids, err := r.runsc.List(ctx)
	if err != nil {
		errs = append(errs, err)
	}
	for id := range r.live {
		ids = append(ids, id)
	}
	seen := map[string]bool{}
	for _, id := range ids {
		if seen[id] {
			continue
		}
		seen[id] = true
		// kill fails on a stopped or half-made container; delete --force is what counts.
		r.runsc.Output(ctx, "kill", "--all", id, "KILL")
		if _, err := r.runsc.Output(ctx, "delete", "--force", id); err != nil && !strings.Contains(err.Error(), "does not exist") {
			errs = append(errs, err)
		}
	}
	errs = append(errs, r.removeNetnsAll(ctx), os.RemoveAll(r.imagesDir()))
	return errors.Join(errs...)
}

// defaultCaps is the gvisor driver's capability set.
var defaultCaps = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
	"CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
	"CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

// Where -raw-init agent puts what the server mounts into a machine.
func (r *rawSide) agentDir() string { return filepath.Join(r.dir, "agent") }
func (r *rawSide) etcDir() string   { return filepath.Join(r.dir, "etc") }

// installAgent copies the agent binary and writes /etc files for sandboxes
// whose init is the agent, as the server does for its machines.
func (r *rawSide) installAgent() error {
	b, err := os.ReadFile(r.cfg.agent)
	if err != nil {
		return fmt.Errorf("read agent binary: %w", err)
	}
	for _, d := range []string{r.agentDir(), r.etcDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(r.agentDir(), "nullspace-agent"), b, 0o755); err != nil {
		return err
	}
	files := map[string]string{"hostname": "rawbench\n", "hosts": "127.0.0.1\tlocalhost\n", "resolv.conf": "nameserver 127.0.0.1\n"}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(r.etcDir(), name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// spec is the gvisor driver's OCI spec with busybox sleep as init and no
// bind mounts; with -raw-init agent, the agent as init with the bind mounts
// the server adds (/etc files and the agent directory).
func (r *rawSide) spec(c *rawContainer) *specs.Spec {
	memLimit := int64(c.memoryMB) << 20
	quota := int64(r.cfg.cpus) * 100000
	period := uint64(100000)
	args := []string{"/bin/sleep", "1000000"}
	env := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	mounts := []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc"},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs"},
		{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
	}
	if r.cfg.rawInit == "agent" {
		args = []string{"/.nullspace/nullspace-agent"}
		env = append(env, "NULLSPACE_AGENT_TOKEN=rawbench", "GOMAXPROCS=1", "NULLSPACE_AGENT_STARTUP_GOMAXPROCS=1")
		for _, name := range []string{"hostname", "hosts", "resolv.conf"} {
			mounts = append(mounts, specs.Mount{Destination: "/etc/" + name, Type: "bind",
				Source: filepath.Join(r.etcDir(), name), Options: []string{"rbind"}})
		}
		mounts = append(mounts, specs.Mount{Destination: "/.nullspace", Type: "bind", Source: r.agentDir(),
			Options: []string{"rbind", "ro"}})
	}
	return &specs.Spec{
		Version: specs.Version,
		Process: &specs.Process{
			User: specs.User{UID: 0, GID: 0},
			Args: args,
			Env:  env,
			Cwd:  "/",
			Capabilities: &specs.LinuxCapabilities{
				Bounding: defaultCaps, Effective: defaultCaps, Permitted: defaultCaps,
			},
			Rlimits: []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 65536, Soft: 65536}},
		},
		// Read-write, or runsc does not apply the --overlay2 upper layer.
		Root:     &specs.Root{Path: r.rootfs, Readonly: false},
		Hostname: "rawbench",
		Mounts:   mounts,
		Linux: &specs.Linux{
			CgroupsPath: rawCgroupParent + "/" + c.id,
			Resources: &specs.LinuxResources{
				Memory: &specs.LinuxMemory{Limit: &memLimit},
				CPU:    &specs.LinuxCPU{Quota: &quota, Period: &period},
			},
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace}, {Type: specs.MountNamespace},
				{Type: specs.NetworkNamespace, Path: "/run/netns/" + c.netns},
			},
		},
	}
}

// listNetns returns the names `ip netns list` prints.
func listNetns(ctx context.Context, ip string) []string {
	out, err := exec.CommandContext(ctx, ip, "netns", "list").Output()
	if err != nil {
		return nil
	}
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			names = append(names, f[0])
		}
	}
	return names
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// runscVersion returns `runsc --version`, on one line.
func runscVersion(ctx context.Context, bin string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--version").CombinedOutput()
	if err != nil {
		if msg := strings.TrimSpace(string(out)); msg != "" {
			err = fmt.Errorf("%w: %s", err, msg)
		}
		return "", err
	}
	return strings.Join(strings.Fields(string(out)), " "), nil
}
