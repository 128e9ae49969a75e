package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/client"
	"nullspace.dev/nullspace/internal/mountinfo"
	"nullspace.dev/nullspace/internal/server"
)

// Node names and pools of TestTwoServers' servers: apart from `make run`'s
// (local, 10.200/16) and the shared test server's (e2e, 10.232/16).
const (
	twoNodeA, twoCIDRA = "e2ea", "10.236.0.0/16"
	twoNodeB, twoCIDRB = "e2eb", "10.237.0.0/16"
)

// TestTwoServers: a second server on the same data dir, or with the same
// node name, or with an overlapping pool, refuses to start and names the
// first; servers with their own node names run side by side on one host,
// the second's start touching none of the first's machines or objects.
func TestTwoServers(t *testing.T) {
	root, err := os.MkdirTemp("/var/lib", "nullspace-e2e-two-")
	if err != nil {
		t.Fatal(err)
	}
	dirA, dirB := filepath.Join(root, "a"), filepath.Join(root, "b")
	lf, err := os.OpenFile(env.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	var a, b *twoServer
	var mA, mB *api.Machine
	t.Cleanup(func() {
		for _, s := range []struct {
			srv *twoServer
			m   *api.Machine
		}{{a, mA}, {b, mB}} {
			if s.srv != nil && s.m != nil {
				s.srv.client.KillMachine(context.Background(), s.m.ID)
			}
			if s.srv != nil {
				s.srv.inst.Shutdown(context.Background())
			}
		}
		lf.Close()
		// After the sandboxes are gone: runsc's null-netns mounts in the roots.
		if err := mountinfo.UnmountUnder(root); err != nil {
			t.Error(err)
		}
		if err := os.RemoveAll(root); err != nil {
			t.Error(err)
		}
		removeNodeObjects(t, twoNodeA, twoCIDRA)
		removeNodeObjects(t, twoNodeB, twoCIDRB)
	})
	a = startTwo(t, lf, twoConfig(dirA, twoNodeA, twoCIDRA))
	if h, err := a.client.Health(t.Context()); err != nil || h.Node != twoNodeA {
		t.Errorf("health of server A: got %+v, %v, want node %s", h, err, twoNodeA)
	}
	mA = a.newMachine(t)
	before := nodeObjects(twoNodeA)
	if len(before.netns) != 1 || len(before.veths) != 1 || len(before.cgroups) != 1 || !before.table {
		t.Fatalf("server A's objects with one machine: got %+v, want one netns, veth and cgroup, and its table", before)
	}

	pid := fmt.Sprintf("pid %d", os.Getpid())
	refusals := []struct {
		name string
		cfg  server.Config
		want []string
	}{
		{"same data dir", twoConfig(dirA, twoNodeB, twoCIDRB), []string{"data dir " + dirA + " is in use by nullspace serve " + pid}},
		{"same node name", twoConfig(dirB, twoNodeA, twoCIDRB), []string{`node name "e2ea" is in use`, pid, "data dir " + dirA}},
		{"overlapping pool", twoConfig(dirB, twoNodeB, "10.236.128.0/17"), []string{"--network-cidr 10.236.128.0/17 overlaps " + twoCIDRA, pid, "data dir " + dirA}},
	}
	for _, tc := range refusals {
		inst, err := server.Start(t.Context(), tc.cfg, slog.New(slog.DiscardHandler))
		if err == nil {
			inst.Shutdown(context.Background())
			t.Errorf("%s: the second server started, want a refusal", tc.name)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: got %q, want it to say %q", tc.name, err, w)
			}
		}
	}
	// The refusals touched nothing of A's.
	a.run(t, mA.ID, "true")

	// Another node name and pool: B starts beside A (its start sweeps its
	// own orphans, none of A's objects) and both serve machines.
	b = startTwo(t, lf, twoConfig(dirB, twoNodeB, twoCIDRB))
	mB = b.newMachine(t)
	if got := a.run(t, mA.ID, "echo a"); got != "a\n" {
		t.Errorf("machine of A after B started: got %q", got)
	}
	if got := b.run(t, mB.ID, "echo b"); got != "b\n" {
		t.Errorf("machine of B: got %q", got)
	}
	if after := nodeObjects(twoNodeA); !slices.Equal(after.netns, before.netns) || !slices.Equal(after.veths, before.veths) ||
		!slices.Equal(after.cgroups, before.cgroups) || !after.table {
		t.Errorf("server A's objects after B started: got %+v, want %+v", after, before)
	}
	if objs := nodeObjects(twoNodeB); len(objs.netns) != 1 || len(objs.veths) != 1 || len(objs.cgroups) != 1 || !objs.table {
		t.Errorf("server B's objects with one machine: got %+v", objs)
	}

	// A restarted on its data dir, beside B, adopts its machine.
	a.inst.Shutdown(context.Background())
	a = nil
	a = startTwo(t, lf, twoConfig(dirA, "", twoCIDRA))
	if a.inst.NodeName != twoNodeA {
		t.Errorf("node name recorded in A's data dir: got %q, want %q", a.inst.NodeName, twoNodeA)
	}
	a.run(t, mA.ID, "true")
	b.run(t, mB.ID, "true")
}

type twoServer struct {
	inst   *server.Instance
	client *client.Client
}

func twoConfig(dataDir, node, cidr string) server.Config {
	cfg := testConfig(dataDir)
	cfg.NodeName, cfg.Names, cfg.NetworkCIDR = node, server.HostNames{}, cidr
	cfg.EdgeAddr, cfg.SSHAddr, cfg.E2BAddr, cfg.CORSOrigins = "", "", "", nil
	cfg.Spares, cfg.BuiltinTemplates = 0, []string{"minimal"}
	return cfg
}

func startTwo(t *testing.T, log *os.File, cfg server.Config) *twoServer {
	return startTwoKey(t, log, cfg, "")
}

// startTwoKey starts a server whose client uses key ("": the key file the
// server wrote).
func startTwoKey(t *testing.T, log *os.File, cfg server.Config, key string) *twoServer {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(log, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", cfg.NodeName)
	inst, err := server.Start(t.Context(), cfg, logger)
	if err != nil {
		t.Fatalf("start server on %s: %v", cfg.DataDir, err)
	}
	if key == "" {
		b, err := os.ReadFile(inst.APIKeyFile)
		if err != nil {
			inst.Shutdown(context.Background())
			t.Fatal(err)
		}
		key = strings.TrimSpace(string(b))
	}
	return &twoServer{inst: inst, client: client.New("http://"+inst.Addr, key)}
}

func (s *twoServer) newMachine(t *testing.T) *api.Machine {
	t.Helper()
	m, err := s.client.CreateMachine(t.Context(), api.CreateMachineRequest{Template: "minimal"})
	if err != nil {
		t.Fatalf("create machine: %v", err)
	}
	return m
}

func (s *twoServer) run(t *testing.T, id, shell string) string {
	t.Helper()
	res, err := s.client.RunCommand(t.Context(), id, api.RunCommandRequest{Shell: shell})
	if err != nil {
		t.Fatalf("run %q in %s: %v", shell, id, err)
	}
	if res.ExitCode != 0 {
		t.Fatalf("run %q in %s: exit %d, stderr %q", shell, id, res.ExitCode, res.Stderr)
	}
	return res.Stdout
}

// twoObjects are a node's objects on the host.
type twoObjects struct {
	netns, veths, cgroups []string
	table                 bool
}

func nodeObjects(node string) twoObjects {
	n := server.NodeHostNames(node)
	o := twoObjects{
		netns:   globBase("/run/netns/" + n.NetnsPrefix + "*"),
		veths:   globBase("/sys/class/net/" + n.VethPrefix + "*"),
		cgroups: dirsIn("/sys/fs/cgroup/memory" + n.CgroupParent),
	}
	if conn, err := nftables.New(); err == nil {
		tables, _ := conn.ListTablesOfFamily(nftables.TableFamilyINet)
		o.table = slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == n.FirewallTable })
	}
	return o
}

// removeNodeObjects removes what a test node's server keeps on the host
// after its machines are gone: its table, cgroup parents and pool route.
func removeNodeObjects(t *testing.T, node, cidr string) {
	n := server.NodeHostNames(node)
	if conn, err := nftables.New(); err == nil {
		conn.DelTable(&nftables.Table{Name: n.FirewallTable, Family: nftables.TableFamilyINet})
		conn.Flush()
	}
	dirs, _ := filepath.Glob("/sys/fs/cgroup/*" + n.CgroupParent)
	for _, d := range dirs {
		os.Remove(d)
	}
	exec.Command("ip", "route", "del", "unreachable", cidr).Run()
	if left := nodeObjects(node); len(left.netns)+len(left.veths) > 0 {
		t.Errorf("node %s left %+v", node, left)
	}
}
